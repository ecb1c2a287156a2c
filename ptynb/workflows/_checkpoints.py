"""Per-angle checkpoints of the workflows that reconstruct one ptychography scan per angle
(MSPT per tilt, ADePt per laminography angle): one HDF5 file per angle in a run directory,
reused only when its fingerprint (the settings and a digest of that angle's data) matches, so a
stopped run resumes where it was and a changed input is redone."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["block_path", "fingerprint", "load_block", "save_block"]


def block_path(run_dir, prefix: str, angle: float) -> Path | None:
    """``run_dir/<prefix>_p012_500.h5`` for angle +12.5 deg (None without a run directory)."""
    if not run_dir:
        return None
    key = f"{prefix}_{float(angle):+09.3f}".replace("+", "p").replace("-", "m").replace(".", "_")
    return Path(run_dir) / f"{key}.h5"


def fingerprint(block: xr.Dataset, opts: dict) -> str:
    """Digest of the settings ``opts`` (JSON), the block's ``intensity`` and its scan positions."""
    h = hashlib.sha256(np.ascontiguousarray(np.asarray(block["intensity"].values, np.float32)).tobytes())
    for v in ("scan_y", "scan_x"):
        if v in block.variables:
            h.update(np.asarray(block[v].values, np.float64).tobytes())
    h.update(json.dumps(opts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def load_block(path: Path | None, fp: str) -> xr.Dataset | None:
    """The saved result at ``path`` if its ``fingerprint`` attr is ``fp``; None otherwise (no file,
    another input, or an unreadable file: the angle is redone)."""
    if path is None or not path.exists():
        return None
    from .. import io

    try:
        old = io.load(path)
    except Exception:  # noqa: BLE001 - an unreadable file is redone
        return None
    return old if isinstance(old, xr.Dataset) and old.attrs.get("fingerprint") == fp else None


def save_block(out: xr.Dataset, path: Path | None) -> None:
    """Write ``out`` (with its ``fingerprint`` attr) to ``path`` (atomic, :func:`ptynb.io.save`)."""
    if path is None:
        return
    from .. import io

    path.parent.mkdir(parents=True, exist_ok=True)
    io.save(out, path)
