"""Shared pieces of :mod:`ptynb.io`: constants, errors, path/format checks and file sniffing."""
from __future__ import annotations

import contextlib
import errno
import os
import warnings
from pathlib import Path

from ..data import ValidationError

#: Target size (bytes) of one Zarr shard of diffraction patterns.
SHARD_BYTES = 96 * 2**20

_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nc", ".nc4", ".he5")
_ZARR_SUFFIXES = (".zarr",)
_CXI_SUFFIXES = (".cxi",)
_FORMATS = {"hdf5": "hdf5", "h5": "hdf5", "netcdf": "hdf5", "nc": "hdf5", "h5netcdf": "hdf5",
            "zarr": "zarr", "cxi": "cxi"}

_MARK = "_ptynb_io_"  # prefix of the bookkeeping attrs in the root node
_OBJ_KEY = _MARK + "object"
_NAME_KEY = _MARK + "name"
_VAR_KEY = _MARK + "variable"
_VERSION_KEY = _MARK + "version"
_IO_VERSION = 1
_DA_PLACEHOLDER = "__ptynb_dataarray__"
_PATTERN_DIMS = ("qy", "qx")
_ELECTRON_VOLT = 1.602176634e-19  # J (exact, SI 2019)


class FileFormatError(ValueError):
    """A file is truncated, corrupt or not in a layout ptynb can read.

    Attributes
    ----------
    path : str
        The offending file or directory.
    problem : str
        What is wrong.
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

def _as_path(path) -> Path:
    if isinstance(path, (str, os.PathLike)):
        return Path(os.path.expanduser(os.fspath(path)))
    raise ValidationError("path", f"must be a str or os.PathLike, got {type(path).__name__}")


def _format_of(path: Path, format: str | None) -> str:
    if format is not None:
        key = str(format).lower().lstrip(".")
        if key not in _FORMATS:
            raise ValidationError("format", f"unknown format {format!r}; use 'hdf5', 'zarr' or 'cxi'")
        return _FORMATS[key]
    suf = path.suffix.lower()
    if suf in _HDF5_SUFFIXES:
        return "hdf5"
    if suf in _ZARR_SUFFIXES:
        return "zarr"
    if suf in _CXI_SUFFIXES:
        return "cxi"
    raise ValidationError(
        "path", f"cannot tell the format from the suffix {path.suffix!r} of {str(path)!r}: use "
        ".h5/.hdf5/.nc (HDF5), .zarr (Zarr v3) or .cxi, or pass format=")


@contextlib.contextmanager
def _quiet_zarr():
    """Silence zarr's warnings about dtypes (fixed-width strings) without a v3 spec."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        yield


def _is_zarr_dir(p: Path) -> bool:
    return any((p / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray"))



def _check_exists(p: Path):
    if not p.exists():
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(p))


def _sniff(p: Path) -> str:
    """'hdf5', 'zarr' or raise FileFormatError describing what the path holds."""
    if p.is_dir():
        if _is_zarr_dir(p):
            return "zarr"
        raise FileFormatError(p, "is a directory but not a Zarr store (no zarr.json or .zgroup)")
    import h5py

    try:
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError as e:
        raise FileFormatError(p, f"cannot be read: {e}") from e
    try:
        is_h5 = h5py.is_hdf5(str(p))
    except Exception as e:  # pragma: no cover - h5py raising here is unusual
        raise FileFormatError(p, f"cannot be checked for HDF5: {e}") from e
    if is_h5:
        return "hdf5"
    if not head:
        raise FileFormatError(p, "is empty (0 bytes): not an HDF5 or Zarr file")
    if head.startswith(b"\x89PNG"):
        what = "a PNG image"
    elif head.startswith(b"CDF"):
        what = "a netCDF-3 (classic) file, which ptynb does not read"
    elif head.startswith(b"PK"):
        what = "a ZIP archive"
    elif all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        what = "a text file"
    else:
        what = f"an unknown binary file (starts with {head[:8]!r})"
    raise FileFormatError(p, f"is not an HDF5 file: it looks like {what}")


def _h5_inspect(p: Path) -> dict:
    """Root attrs and whether the HDF5 file has sub-groups; FileFormatError if unreadable."""
    import h5py

    try:
        with h5py.File(p, "r") as f:
            attrs = {}
            for k in (_OBJ_KEY, _VAR_KEY, _NAME_KEY):
                if k in f.attrs:
                    v = f.attrs[k]
                    attrs[k] = v.decode() if isinstance(v, bytes) else str(v)
            has_groups = any(isinstance(f.get(k), h5py.Group) for k in f)
            n_items = len(f.keys())
            is_cxi = "cxi_version" in f or "cxi_version" in f.attrs
            no_dims: list[str] = []

            def visit(name, obj):
                if (isinstance(obj, h5py.Dataset) and obj.ndim > 0 and "DIMENSION_LIST" not in obj.attrs
                        and obj.attrs.get("CLASS") != b"DIMENSION_SCALE" and len(no_dims) < 3):
                    no_dims.append("/" + name)

            if _OBJ_KEY not in attrs and not is_cxi:
                f.visititems(visit)
    except OSError as e:
        msg = str(e)
        hint = "truncated or corrupt HDF5 file" if ("truncated" in msg or "eof" in msg.lower()
                                                     or "signature" in msg) else "unreadable HDF5 file"
        raise FileFormatError(p, f"{hint} ({msg})") from e
    if no_dims:
        raise FileFormatError(p, f"is an HDF5 file but not a ptynb/netCDF layout: dataset(s) {no_dims} "
                                 "have no netCDF dimensions (HDF5 dimension scales)")
    return {"attrs": attrs, "groups": has_groups, "n": n_items, "cxi": is_cxi}


def _zarr_inspect(p: Path) -> dict:
    import zarr

    try:
        with _quiet_zarr():
            g = zarr.open_group(str(p), mode="r")
            attrs = dict(g.attrs)
            has_groups = any(True for _ in g.group_keys())
            n_items = len(list(g.keys()))
    except Exception as e:
        raise FileFormatError(p, f"corrupt or unreadable Zarr store ({type(e).__name__}: {e})") from e
    keep = {k: str(attrs[k]) for k in (_OBJ_KEY, _VAR_KEY, _NAME_KEY) if k in attrs}
    return {"attrs": keep, "groups": has_groups, "n": n_items, "cxi": False}



def _wrap_errors(p: Path, what: str):
    @contextlib.contextmanager
    def cm():
        try:
            yield
        except (FileFormatError, FileNotFoundError, ValidationError, MemoryError):
            raise
        except Exception as e:
            msg = str(e)
            if isinstance(e, OSError) and ("filter returned failure" in msg or "checksum" in msg.lower()):
                # h5py reports a failed Fletcher32 check (or a damaged compressed chunk) like this
                raise FileFormatError(p, f"corrupt data: a chunk fails its checksum or cannot be "
                                         f"decompressed, the file is damaged ({type(e).__name__}: {msg})") from e
            raise FileFormatError(p, f"{what} ({type(e).__name__}: {msg})") from e
    return cm()


