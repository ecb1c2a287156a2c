"""A file picker rooted in the apps' data directory (never the whole file system)."""
from __future__ import annotations

import os
from pathlib import Path

import panel as pn

FILE_SUFFIXES = (".h5", ".hdf5", ".nc", ".cxi", ".zarr")
NONE = "(choose a file)"


def data_dir() -> Path:
    """Root of the app file pickers: ``PTYNB_DATA_DIR`` or ``~/ptynb-data`` (created if missing)."""
    d = Path(os.environ.get("PTYNB_DATA_DIR", Path.home() / "ptynb-data")).expanduser().resolve()
    d.mkdir(parents=True, exist_ok=True)
    return d


def list_data_files(root: Path | None = None, limit: int = 500) -> list[str]:
    """Measurement files (by suffix) under ``root``, as paths relative to it, sorted.

    Zarr stores are directories and are listed as one entry; nothing outside ``root`` is
    followed (symlinks that leave it are skipped).
    """
    root = (root or data_dir()).resolve()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in dirnames:
            p = here / d
            if d.lower().endswith(".zarr"):
                if p.resolve().is_relative_to(root):
                    out.append(str(p.relative_to(root)))
            elif not d.startswith("."):
                keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            p = here / f
            if f.lower().endswith(FILE_SUFFIXES) and p.resolve().is_relative_to(root):
                out.append(str(p.relative_to(root)))
        if len(out) >= limit:
            break
    return sorted(out)[:limit]


class DataFilePicker:
    """A Select of the data files plus a refresh button; ``path`` is the chosen absolute path."""

    def __init__(self, **select_kwargs):
        self.select = pn.widgets.Select(name="data file", options=[NONE], css_classes=["ptynb-file"],
                                        **select_kwargs)
        self.refresh_button = pn.widgets.Button(name="Refresh", width=80)
        self.refresh_button.on_click(lambda _e: self.refresh())
        self.refresh()

    def refresh(self):
        self.select.options = [NONE] + list_data_files()

    @property
    def path(self) -> Path | None:
        v = self.select.value
        if not v or v == NONE:
            return None
        p = (data_dir() / v).resolve()
        if not p.is_relative_to(data_dir()):
            raise ValueError(f"{v}: outside the data directory")
        return p

    @property
    def visible(self):
        return self.select.visible

    @visible.setter
    def visible(self, value):
        self.select.visible = value
        self.refresh_button.visible = value

    def __panel__(self):
        return pn.Row(self.select, self.refresh_button)
