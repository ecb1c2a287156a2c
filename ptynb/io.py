"""Saving and loading ptynb data: HDF5 (netCDF4 via h5netcdf), Zarr v3, CXI, plain arrays.

Formats
-------
``.h5``, ``.hdf5``, ``.nc``
    HDF5 written by xarray's ``h5netcdf`` engine (a netCDF4-compatible layout). complex64 /
    complex128 are stored natively (h5netcdf's compound complex type) and round-trip bit
    for bit, NaN payloads and negative zeros included; bool variables round-trip as bool.
    The diffraction ``intensity`` is stored in per-pattern chunks ``(1, ..., 1, qy, qx)`` so a
    single pattern is one chunk read; other variables use HDF5's default (contiguous) layout
    unless ``chunks=``/``compression=`` say otherwise.
``.zarr``
    A Zarr v3 directory. ``intensity`` is *sharded*: inner chunks of one pattern
    ``(1, ..., 1, qy, qx)`` (cheap single-pattern reads) packed into shards of many patterns
    (about 96 MiB each, see :data:`SHARD_BYTES`) so bulk reads and the file count stay
    reasonable. Zarr's default compressor (zstd) is used unless ``compression=`` says
    otherwise. Every chunk is written (``write_empty_chunks=True``) so values equal to the
    fill value (e.g. ``-0.0`` vs ``0.0``) are stored exactly.
``.cxi``
    The Coherent X-ray Imaging format (Maia et al. 2012), see :func:`write_cxi` and
    :func:`read_cxi`. ``save(ds, "x.cxi")`` calls :func:`write_cxi`; ``load("x.cxi")`` calls
    :func:`read_cxi`.

What is stored
--------------
Any :class:`xarray.Dataset`, :class:`xarray.DataArray` or :class:`xarray.DataTree`.
:func:`load` returns the same kind of object: the root attr ``_ptynb_io_object`` records it
(``"Dataset"``, ``"DataArray"``, ``"DataTree"``), together with the DataArray/DataTree name.
A DataArray is stored as a one-variable dataset (its name, attrs and coords are restored).
Files without these markers (netCDF/Zarr written by other programs) load as a Dataset, or as
a DataTree when they contain sub-groups.

Attrs that netCDF cannot hold natively (bool, None, dicts, lists, tuples, complex numbers,
multi-dimensional arrays, numpy scalars in Zarr, strings that begin with the marker) are
stored as a JSON string starting with ``"ptynb-json:"`` (with type tags for tuples, numpy
arrays/scalars and complex numbers) and decoded on load, so attrs round-trip with their types.
An attr value that cannot be represented at all raises :class:`ptynb.data.ValidationError`.

Variables' ``encoding`` (from the file they were read from) is ignored when saving: the layout
is always the one described above.

Atomic saves
------------
Every save writes to a temporary sibling ``.<name>.tmp-<random>`` in the target's directory
and only then moves it onto the target, so an exception or ``KeyboardInterrupt`` during
writing leaves an existing file untouched and removes the temporary. For a single HDF5/CXI
file, :func:`os.replace` is atomic (POSIX). A Zarr store is a directory and cannot be
replaced atomically by ``rename``: on Linux the new directory is swapped with the old one in a
single ``renameat2(RENAME_EXCHANGE)`` call (atomic), then the old one is deleted; where that
call is unavailable, the old directory is renamed aside, the new one renamed in (the target
path is missing for the microseconds between the two renames), and the old one deleted. If
the second rename fails, the old directory is put back.

Errors
------
A missing path raises :class:`FileNotFoundError`; a truncated, corrupt or foreign file (a PNG
or text file named ``.h5``, an HDF5 file that is not netCDF-like, a directory that is not a
Zarr store, a CXI file missing a required field) raises :class:`FileFormatError` (a
``ValueError``) naming the path and the problem, chained to the library's own exception.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .data import ValidationError

__all__ = [
    "LENGTH_UNITS",
    "SHARD_BYTES",
    "FileFormatError",
    "from_arrays",
    "load",
    "open_intensity",
    "read_cxi",
    "save",
    "write_cxi",
]

#: Target size (bytes) of one Zarr shard of diffraction patterns.
SHARD_BYTES = 96 * 2**20

#: Length units understood by :func:`from_arrays` (factor to metres).
LENGTH_UNITS = {
    "m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "micron": 1e-6, "nm": 1e-9,
    "A": 1e-10, "Å": 1e-10, "angstrom": 1e-10, "pm": 1e-12,
}

_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nc", ".nc4", ".he5")
_ZARR_SUFFIXES = (".zarr",)
_CXI_SUFFIXES = (".cxi",)
_FORMATS = {"hdf5": "hdf5", "h5": "hdf5", "netcdf": "hdf5", "nc": "hdf5", "h5netcdf": "hdf5",
            "zarr": "zarr", "cxi": "cxi"}

_JSON_PREFIX = "ptynb-json:"
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


# ============================================================================ attrs codec
_TAGS = ("__tuple__", "__ndarray__", "__npscalar__", "__complex__", "__dict__")


def _to_json(value, key):
    """A JSON-serialisable, type-tagged form of ``value`` (raises ValidationError if impossible)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_, np.number)):
        v = value.item()
        if isinstance(v, complex):
            v = [v.real, v.imag]
        return {"__npscalar__": v, "dtype": value.dtype.str}
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, complex):
        return {"__complex__": [value.real, value.imag]}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufcU":
            raise ValidationError(f"attrs[{key!r}]", f"numpy array of dtype {value.dtype} cannot be saved")
        a = value
        if a.dtype.kind == "c":
            data = np.stack([a.real, a.imag], axis=-1).tolist()
        else:
            data = a.tolist()
        return {"__ndarray__": data, "dtype": a.dtype.str, "shape": list(a.shape)}
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v, key) for v in value]}
    if isinstance(value, list):
        return [_to_json(v, key) for v in value]
    if isinstance(value, Mapping):
        items = [(k, _to_json(v, key)) for k, v in value.items()]
        if all(isinstance(k, str) for k, _ in items) and not any(k in _TAGS for k, _ in items):
            return dict(items)
        return {"__dict__": [[_to_json(k, key), v] for k, v in items]}
    raise ValidationError(
        f"attrs[{key!r}]", f"value of type {type(value).__name__} cannot be saved "
        "(use numbers, strings, bools, None, lists, tuples, dicts or numpy arrays)")


def _from_json(obj):
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tuple__" in obj and len(obj) == 1:
        return tuple(_from_json(v) for v in obj["__tuple__"])
    if "__complex__" in obj and len(obj) == 1:
        re, im = obj["__complex__"]
        return complex(re, im)
    if "__npscalar__" in obj and len(obj) == 2:
        dt = np.dtype(obj["dtype"])
        v = obj["__npscalar__"]
        if dt.kind == "c":
            v = complex(*v)
        return dt.type(v)
    if "__ndarray__" in obj and len(obj) == 3:
        dt = np.dtype(obj["dtype"])
        shape = tuple(obj["shape"])
        if dt.kind == "c":
            raw = np.asarray(obj["__ndarray__"], dtype=np.float64).reshape(shape + (2,))
            return (raw[..., 0] + 1j * raw[..., 1]).astype(dt)
        return np.asarray(obj["__ndarray__"], dtype=dt).reshape(shape)
    if "__dict__" in obj and len(obj) == 1:
        return {_from_json(k): _from_json(v) for k, v in obj["__dict__"]}
    return {k: _from_json(v) for k, v in obj.items()}


def _native_attr_ok(value, fmt: str) -> bool:
    """Whether ``value`` is stored natively (without JSON) in format ``fmt``."""
    if isinstance(value, str):
        return not value.startswith(_JSON_PREFIX)
    if type(value) is int:
        return -(2**63) <= value < 2**63
    if type(value) is float:
        return fmt != "zarr" or math.isfinite(value)
    if fmt == "zarr":  # JSON attrs: everything else goes through the tagged JSON codec
        return False
    if isinstance(value, (np.integer, np.floating)) and not isinstance(value, np.bool_):
        return True
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.size > 0 and value.dtype.kind in "iuf"
    return False


def _encode_attrs(attrs: Mapping, fmt: str) -> dict:
    out = {}
    for k, v in attrs.items():
        if not isinstance(k, str):
            raise ValidationError(f"attrs[{k!r}]", "attr names must be strings")
        if _native_attr_ok(v, fmt):
            out[k] = v
        else:
            out[k] = _JSON_PREFIX + json.dumps(_to_json(v, k), allow_nan=True)
    return out


def _decode_value(v):
    if isinstance(v, str) and v.startswith(_JSON_PREFIX):
        return _from_json(json.loads(v[len(_JSON_PREFIX):]))
    return v


def _decode_attrs(attrs: Mapping) -> dict:
    return {k: _decode_value(v) for k, v in attrs.items()}


# ============================================================================ helpers
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


def _is_pattern_var(var: xr.Variable | xr.DataArray, name) -> bool:
    dims = tuple(var.dims)
    return len(dims) >= 3 and dims[-3:] == ("scan",) + _PATTERN_DIMS and var.dtype.kind in "iuf"


def _temp_sibling(path: Path, tag: str = "tmp") -> Path:
    return path.parent / f".{path.name}.{tag}-{secrets.token_hex(4)}"


def _remove(p: Path):
    if p.is_dir() and not p.is_symlink():
        # zarr writes from a background event loop: after an interrupt a few writes may still
        # land in the directory while it is being deleted, so retry briefly
        for delay in (0.0, 0.05, 0.2, 0.5):
            time.sleep(delay)
            shutil.rmtree(p, ignore_errors=True)
            if not p.exists():
                break
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _fsync_dir(d: Path):
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Atomically swap ``a`` and ``b`` (Linux renameat2 RENAME_EXCHANGE). False if unsupported."""
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _commit(tmp: Path, target: Path):
    """Move the finished temporary ``tmp`` onto ``target`` (see the module docs on atomicity)."""
    target_exists = target.exists() or target.is_symlink()
    if not tmp.is_dir() and not (target_exists and target.is_dir() and not target.is_symlink()):
        os.replace(tmp, target)  # atomic for files
        _fsync_dir(target.parent)
        return
    if not target_exists:
        os.rename(tmp, target)
        _fsync_dir(target.parent)
        return
    # directory involved: swap atomically where possible, then delete the old one
    if _renameat2_exchange(tmp, target):
        _remove(tmp)  # now holds the old contents
        _fsync_dir(target.parent)
        return
    old = _temp_sibling(target, "old")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    _remove(old)
    _fsync_dir(target.parent)


def _is_zarr_dir(p: Path) -> bool:
    return any((p / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray"))


def _atomic_write(path: Path, overwrite: bool, writer):
    """Run ``writer(tmp_path)`` and move the result onto ``path``; clean up on any failure."""
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(errno.EEXIST, "file exists and overwrite=False", str(path))
    if path.is_dir() and not path.is_symlink() and not _is_zarr_dir(path):
        raise FileExistsError(errno.EEXIST, "is a directory but not a Zarr store; refusing to replace it",
                              str(path))
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "directory does not exist", str(parent))
    tmp = _temp_sibling(path)
    try:
        writer(tmp)
        if not overwrite and (path.exists() or path.is_symlink()):
            raise FileExistsError(errno.EEXIST, "file appeared during saving and overwrite=False", str(path))
        _commit(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return path


# ============================================================================ encoding plans
def _prepare_dataset(ds: xr.Dataset, fmt: str) -> xr.Dataset:
    """Copy of ``ds`` with encodable attrs everywhere and no inherited encoding."""
    out = ds.copy(deep=False).drop_encoding()
    out.attrs = _encode_attrs(ds.attrs, fmt)
    for name in out.variables:
        out[name].attrs = _encode_attrs(ds[name].attrs, fmt)
    return out


def _as_shape(value, var_name, what, ndim) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in value)
    except TypeError:
        raise ValidationError(what, f"for {var_name!r} must be a tuple of ints, got {value!r}") from None
    if len(shape) != ndim or any(s < 1 for s in shape):
        raise ValidationError(what, f"{shape} for {var_name!r} must have {ndim} positive entries")
    return shape


def _per_var(spec, name, var) -> Any:
    """Resolve a chunks/shards spec (None, a value for pattern variables, or a mapping)."""
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        return spec.get(name)
    return spec if _is_pattern_var(var, name) else None


def _pattern_chunks(var) -> tuple[int, ...]:
    return (1,) * (var.ndim - 2) + tuple(var.shape[-2:])


def _auto_shards(var, chunks) -> tuple[int, ...]:
    """Shard shape for a pattern variable: whole patterns along ``scan``, ~SHARD_BYTES each."""
    pattern_bytes = max(1, int(np.prod(chunks)) * var.dtype.itemsize)
    scan_axis = var.ndim - 3
    n = max(1, min(var.shape[scan_axis], SHARD_BYTES // pattern_bytes))
    shape = list(chunks)
    shape[scan_axis] = n * chunks[scan_axis]
    shape[scan_axis] = min(shape[scan_axis], max(chunks[scan_axis], var.shape[scan_axis]))
    return tuple(shape)


def _compression_hdf5(compression):
    if compression is None or compression is False or compression == "none":
        return {}
    if isinstance(compression, str):
        c = compression.lower()
        if c in ("gzip", "zlib"):
            return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        if c == "lzf":
            return {"compression": "lzf", "shuffle": True}
    if isinstance(compression, tuple) and len(compression) == 2 and str(compression[0]).lower() in ("gzip", "zlib"):
        return {"compression": "gzip", "compression_opts": int(compression[1]), "shuffle": True}
    raise ValidationError("compression", f"{compression!r} is not available for HDF5; use None, 'gzip', ('gzip', level) or 'lzf'")


def _compression_zarr(compression):
    if compression is None:
        return None  # zarr's default (zstd)
    import zarr.codecs as zc

    if compression is False or compression == "none":
        return ()
    if isinstance(compression, tuple) and len(compression) == 2:
        name, level = str(compression[0]).lower(), int(compression[1])
    elif isinstance(compression, str):
        name, level = compression.lower(), None
    else:
        name, level = None, None
    if name == "zstd":
        return (zc.ZstdCodec(level=3 if level is None else level),)
    if name in ("gzip", "zlib"):
        return (zc.GzipCodec(level=5 if level is None else level),)
    if name == "blosc":
        return (zc.BloscCodec(cname="zstd", clevel=5 if level is None else level, shuffle="shuffle"),)
    raise ValidationError("compression", f"{compression!r} is not available for Zarr; use None, False, "
                                         "'zstd', 'gzip', 'blosc' or (name, level)")


def _encoding_for(ds: xr.Dataset, fmt: str, chunks, shards, compression) -> dict:
    enc: dict[str, dict] = {}
    comp_h5 = _compression_hdf5(compression) if fmt == "hdf5" else None
    comp_z = _compression_zarr(compression) if fmt == "zarr" else None
    for name, var in ds.variables.items():
        e: dict[str, Any] = {}
        if var.dtype.kind in "fc":
            e["_FillValue"] = None  # no masking: values (NaN payloads included) are stored as is
        user_chunks = _per_var(chunks, name, var)
        c = None
        if user_chunks is not None:
            c = _as_shape(user_chunks, name, "chunks", var.ndim)
        elif _is_pattern_var(var, name):
            c = _pattern_chunks(var)
        if fmt == "hdf5":
            if var.ndim and var.dtype.kind not in "OUS":
                if c is not None and all(var.shape):
                    e["chunksizes"] = tuple(min(ci, si) for ci, si in zip(c, var.shape))
                e.update(comp_h5)
        else:
            if c is not None:
                e["chunks"] = c
            user_shards = _per_var(shards, name, var)
            s = None
            if user_shards is False:
                s = None
            elif isinstance(user_shards, (int, np.integer)) and not isinstance(user_shards, bool):
                if not _is_pattern_var(var, name):
                    raise ValidationError("shards", f"an int (patterns per shard) only applies to intensity, not {name!r}")
                if user_shards < 1:
                    raise ValidationError("shards", f"patterns per shard must be >= 1, got {user_shards}")
                s = list(c)
                s[var.ndim - 3] = int(user_shards) * c[var.ndim - 3]
                s = tuple(s)
            elif user_shards is not None:
                s = _as_shape(user_shards, name, "shards", var.ndim)
            elif _is_pattern_var(var, name) and c is not None:
                s = _auto_shards(var, c)
            if s is not None:
                if c is None:
                    raise ValidationError("shards", f"for {name!r} need chunks= as well (inner chunk shape)")
                if any(si % ci for si, ci in zip(s, c)):
                    raise ValidationError("shards", f"{s} for {name!r} must be a multiple of the chunks {c}")
                e["shards"] = s
            if comp_z is not None and var.dtype.kind not in "OUS":
                e["compressors"] = comp_z
        if e:
            enc[name] = e
    return enc


def _align_dask(ds: xr.Dataset, enc: dict) -> xr.Dataset:
    """Rechunk dask-backed variables so each dask chunk covers whole shards/chunks (Zarr safety)."""
    for name, e in enc.items():
        var = ds.variables[name]
        if not hasattr(var.data, "chunks") or isinstance(var.data, np.ndarray):
            continue
        target = e.get("shards") or e.get("chunks")
        if target is None:
            continue
        ok = all(all(cs % t == 0 for cs in chunks_d[:-1]) for chunks_d, t in zip(var.chunks, target))
        if not ok:
            new = var.chunk(dict(zip(var.dims, target)))
            if name in ds.coords:
                ds = ds.assign_coords({name: new})
            else:
                ds[name] = new
    return ds


# ============================================================================ writers
def _write_hdf5(obj, tmp: Path, chunks, shards, compression):
    if shards is not None:
        raise ValidationError("shards", "sharding applies to Zarr only (.zarr); HDF5 uses per-pattern chunks")
    if isinstance(obj, xr.DataTree):
        enc = {node.path: _encoding_for(node.to_dataset(inherit=False), "hdf5", chunks, None, compression)
               for node in obj.subtree}
        obj.to_netcdf(tmp, engine="h5netcdf", encoding=enc, invalid_netcdf=True)
    else:
        enc = _encoding_for(obj, "hdf5", chunks, None, compression)
        obj.to_netcdf(tmp, engine="h5netcdf", encoding=enc, invalid_netcdf=True)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())


def _write_zarr(obj, tmp: Path, chunks, shards, compression):
    with _quiet_zarr():
        if isinstance(obj, xr.DataTree):
            enc = {}
            for node in obj.subtree:
                nds = node.to_dataset(inherit=False)
                e = _encoding_for(nds, "zarr", chunks, shards, compression)
                aligned = _align_dask(nds, e)
                if aligned is not nds:
                    node.dataset = aligned
                enc[node.path] = e
            obj.to_zarr(tmp, mode="w-", encoding=enc, consolidated=False, zarr_format=3,
                        write_empty_chunks=True)
        else:
            enc = _encoding_for(obj, "zarr", chunks, shards, compression)
            obj = _align_dask(obj, enc)
            obj.to_zarr(tmp, mode="w-", encoding=enc, consolidated=False, zarr_format=3,
                        write_empty_chunks=True)


def _prepare(obj, fmt: str):
    """Marker attrs + encoded attrs; returns the object to hand to xarray's writer."""
    if isinstance(obj, xr.DataTree):
        tree = obj.copy(deep=False)
        for node in tree.subtree:
            ds = _prepare_dataset(node.to_dataset(inherit=False), fmt)
            node.dataset = ds
        root_attrs = dict(tree.attrs)
        root_attrs[_OBJ_KEY] = "DataTree"
        root_attrs[_VERSION_KEY] = _IO_VERSION
        root_attrs[_NAME_KEY] = _JSON_PREFIX + json.dumps(_to_json(obj.name, "name"))
        tree.attrs = root_attrs
        return tree
    if isinstance(obj, xr.DataArray):
        var = obj.name if isinstance(obj.name, str) and obj.name not in obj.coords else _DA_PLACEHOLDER
        ds = obj.to_dataset(name=var, promote_attrs=False)
        ds = _prepare_dataset(ds, fmt)
        ds.attrs = {_OBJ_KEY: "DataArray", _VERSION_KEY: _IO_VERSION, _VAR_KEY: var,
                    _NAME_KEY: _JSON_PREFIX + json.dumps(_to_json(obj.name, "name"))}
        return ds
    ds = _prepare_dataset(obj, fmt)
    ds.attrs[_OBJ_KEY] = "Dataset"
    ds.attrs[_VERSION_KEY] = _IO_VERSION
    return ds


def save(
    obj,
    path,
    *,
    format: str | None = None,
    overwrite: bool = True,
    shards=None,
    chunks=None,
    compression=None,
) -> Path:
    """Save a Dataset, DataArray or DataTree to HDF5 (h5netcdf), Zarr v3 or CXI, atomically.

    Parameters
    ----------
    obj : xarray.Dataset, xarray.DataArray or xarray.DataTree
        Any ptynb object (measurement, reconstruction, projections, volume, experiment) or
        other xarray data. Data are written exactly (complex64 bit for bit).
    path : str or os.PathLike
        Target. The suffix picks the format unless ``format`` is given: ``.h5``, ``.hdf5``,
        ``.nc`` -> HDF5; ``.zarr`` -> Zarr v3 directory; ``.cxi`` -> :func:`write_cxi`.
    format : {"hdf5", "zarr", "cxi"}, optional
        Overrides the suffix.
    overwrite : bool
        If False and ``path`` exists, raise :class:`FileExistsError` (nothing is written).
    shards : None, False, int, tuple or mapping, optional
        Zarr only. Shard shape: ``None`` -> automatic for ``intensity`` (whole patterns along
        ``scan``, about :data:`SHARD_BYTES`); an int -> that many patterns per shard; a tuple
        -> the shard shape of ``intensity``; a mapping ``{variable: shape}``; ``False`` -> no
        sharding. Shards must be multiples of the chunks.
    chunks : None, tuple or mapping, optional
        Chunk shape (the inner chunk in a Zarr shard): a tuple applies to ``intensity``, a
        mapping ``{variable: shape}`` to the named variables. Default: one pattern
        ``(1, ..., 1, qy, qx)`` for ``intensity``; library defaults elsewhere.
    compression : None, False, str or (str, level), optional
        HDF5: None/False (uncompressed, default), ``"gzip"`` (level 4) or ``"lzf"``.
        Zarr: None (zarr default, zstd), False (none), ``"zstd"``, ``"gzip"``, ``"blosc"``.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    ValidationError
        ``obj`` is not an xarray object, the suffix/format is unknown, an attr cannot be
        stored, or chunks/shards are inconsistent.
    FileExistsError
        ``overwrite=False`` and ``path`` exists.
    """
    p = _as_path(path)
    if not isinstance(obj, (xr.Dataset, xr.DataArray, xr.DataTree)):
        raise ValidationError(
            "obj", f"must be an xarray Dataset, DataArray or DataTree, got {type(obj).__name__}")
    fmt = _format_of(p, format)
    if fmt == "cxi":
        if not isinstance(obj, xr.Dataset):
            raise ValidationError("obj", "CXI export needs a measurement Dataset")
        return write_cxi(obj, p, overwrite=overwrite)
    prepared = _prepare(obj, fmt)
    writer = _write_hdf5 if fmt == "hdf5" else _write_zarr
    return _atomic_write(p, overwrite, lambda tmp: writer(prepared, tmp, chunks, shards, compression))


# ============================================================================ readers
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


def _finish_dataset(ds: xr.Dataset) -> xr.Dataset:
    ds.attrs = _decode_attrs({k: v for k, v in ds.attrs.items() if not k.startswith(_MARK)})
    for name in ds.variables:
        a = ds.variables[name].attrs
        if any(isinstance(v, str) and v.startswith(_JSON_PREFIX) for v in a.values()):
            ds.variables[name].attrs = _decode_attrs(a)
    return ds


def _load_coords(ds: xr.Dataset) -> xr.Dataset:
    """Bring (small) lazily opened coordinates into memory; data variables stay lazy."""
    lazy = {k: c.variable.load() for k, c in ds.coords.items()
            if hasattr(c.data, "chunks") and not isinstance(c.data, np.ndarray)}
    return ds.assign_coords(lazy) if lazy else ds


def _wrap_errors(p: Path, what: str):
    @contextlib.contextmanager
    def cm():
        try:
            yield
        except (FileFormatError, FileNotFoundError, ValidationError, MemoryError):
            raise
        except Exception as e:
            raise FileFormatError(p, f"{what} ({type(e).__name__}: {e})") from e
    return cm()


def load(path, *, lazy: bool = False, group: str | None = None, chunks=None):
    """Load what :func:`save` wrote (or a netCDF4/HDF5, Zarr or CXI file from elsewhere).

    Parameters
    ----------
    path : str or os.PathLike
        An HDF5/netCDF4 file, a Zarr directory or a CXI file. The format is detected from
        the contents, not the suffix (a ``.cxi`` suffix or a root ``cxi_version`` without
        ptynb markers reads the file with :func:`read_cxi`).
    lazy : bool
        False: read everything into memory and close the file. True: open with dask arrays
        without reading the data variables (coordinates are read); the ``intensity`` dask
        chunks are the stored chunks (one pattern each for files written by :func:`save`).
        The file stays open until the object is closed or garbage-collected.
    group : str, optional
        Path of one node (e.g. ``"angle_000"``): returns that node's own Dataset.
    chunks : mapping, optional
        Dask chunks for ``lazy=True`` (e.g. ``{"scan": 256}``); default: the stored chunks.
        Ignored when ``lazy=False``. Errors while computing lazily loaded data come from
        h5py/zarr directly (the file was checked when opened).

    Returns
    -------
    xarray.Dataset, xarray.DataArray or xarray.DataTree
        The kind of object that was saved, with attrs decoded.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    FileFormatError
        Truncated, corrupt or foreign file; the message names the path and the problem.
    """
    p = _as_path(path)
    _check_exists(p)
    if p.suffix.lower() in _CXI_SUFFIXES and p.is_file():
        return read_cxi(p)
    fmt = _sniff(p)
    info = _h5_inspect(p) if fmt == "hdf5" else _zarr_inspect(p)
    marker = info["attrs"].get(_OBJ_KEY)
    if marker is None and info["cxi"]:
        return read_cxi(p)
    if marker is None and info["n"] == 0:
        raise FileFormatError(p, f"{'HDF5 file' if fmt == 'hdf5' else 'Zarr store'} holds no "
                                 "variables or groups: not a ptynb/netCDF layout")
    kind = marker or ("DataTree" if info["groups"] else "Dataset")
    if group is not None and kind == "DataTree":
        kind = "Dataset"
    if lazy and chunks is None:
        chunks = {}
    kw: dict[str, Any] = {"engine": "h5netcdf"} if fmt == "hdf5" else {"engine": "zarr", "consolidated": False}
    if lazy:
        kw["chunks"] = chunks
    layout = "not a ptynb/netCDF layout, or corrupt" if fmt == "hdf5" else "corrupt or not a ptynb Zarr layout"
    with _quiet_zarr(), _wrap_errors(p, layout):
        if kind == "DataTree":
            if lazy:
                tree = xr.open_datatree(p, **kw)
            else:
                tree = xr.open_datatree(p, **kw)
                try:
                    tree = tree.load()
                finally:
                    tree.close()
            for node in tree.subtree:
                ds = node.to_dataset(inherit=False)
                if lazy:
                    ds = _load_coords(ds)
                node.dataset = _finish_dataset(ds)
            name_json = info["attrs"].get(_NAME_KEY)
            if name_json is not None:
                tree.name = _decode_value(name_json)
            return tree
        ds = xr.open_dataset(p, group=group, **kw)
        if lazy:
            ds = _load_coords(ds)
        else:
            try:
                ds = ds.load()
            finally:
                ds.close()
        if marker is None and not ds.variables and group is None:
            raise FileFormatError(p, "holds no netCDF variables: not a ptynb/netCDF layout")
        if kind == "DataArray" and group is None:
            var = info["attrs"].get(_VAR_KEY, _DA_PLACEHOLDER)
            if var not in ds:
                raise FileFormatError(p, f"marked as a DataArray but variable {var!r} is missing")
            ds = _finish_dataset(ds)
            da = ds[var]
            name_json = info["attrs"].get(_NAME_KEY)
            da.name = _decode_value(name_json) if name_json is not None else var
            return da
        return _finish_dataset(ds)


def open_intensity(path, index, *, group: str | None = None, variable: str = "intensity") -> np.ndarray:
    """Read one diffraction pattern without opening the whole dataset.

    Parameters
    ----------
    path : str or os.PathLike
        HDF5 file or Zarr store written by :func:`save` (any netCDF4/Zarr file with an
        ``intensity`` (..., scan, qy, qx) variable works).
    index : int or tuple of int
        Scan index, or ``(beam/angle indices..., scan index)`` for leading dims.
    group : str, optional
        Node path inside a DataTree file.
    variable : str
        Variable name (default ``"intensity"``).

    Returns
    -------
    numpy.ndarray (qy, qx)
        The stored values (float32 for ptynb files). Reads one chunk with the ptynb layout.
    """
    p = _as_path(path)
    _check_exists(p)
    fmt = _sniff(p)
    idx = (index,) if np.isscalar(index) else tuple(index)

    def check(shape):
        if len(idx) != len(shape) - 2:
            raise ValidationError("index", f"needs {len(shape) - 2} integer(s) for {variable} of shape {shape}")
        for i, n in zip(idx, shape):
            if not isinstance(i, (int, np.integer)) or not -n <= int(i) < n:
                raise ValidationError("index", f"{index!r} is out of range for {variable} of shape {shape}")
    with _wrap_errors(p, f"cannot read pattern {index!r} of {variable!r}"):
        if fmt == "hdf5":
            import h5py

            with h5py.File(p, "r") as f:
                g = f[group] if group else f
                if variable not in g:
                    raise FileFormatError(p, f"has no variable {variable!r}" + (f" in group {group!r}" if group else ""))
                d = g[variable]
                check(d.shape)
                return np.asarray(d[idx])
        import zarr

        with _quiet_zarr():
            root = zarr.open_group(str(p), mode="r")
            g = root[group] if group else root
            if variable not in g:
                raise FileFormatError(p, f"has no variable {variable!r}" + (f" in group {group!r}" if group else ""))
            a = g[variable]
            check(a.shape)
            return np.asarray(a[idx])


# ============================================================================ from arrays
def from_arrays(
    intensity,
    positions,
    *,
    radiation: str,
    energy_eV: float,
    positions_order: str = "yx",
    position_units: str = "m",
    **kwargs,
) -> xr.Dataset:
    """Build a measurement Dataset from plain arrays (e.g. read from a beamline file).

    Parameters
    ----------
    intensity : array (..., scan, qy, qx)
        Diffraction patterns (counts), detector-centred.
    positions : array (..., scan, 2) or (..., scan, 3)
        Probe positions, columns in ``positions_order``; a third (``z``) column is ignored.
    radiation : {"xray", "electron"}
    energy_eV : float
        Photon energy or electron kinetic energy (eV).
    positions_order : {"yx", "xy", "yxz", "xyz"}
        Meaning of the position columns.
    position_units : {"m", "mm", "um", "nm", "A", "pm"}
        Unit of ``positions``; converted to metres (see :data:`LENGTH_UNITS`).
    **kwargs
        Passed to :func:`ptynb.data.measurement` (``detector_distance`` and
        ``detector_pixel_size`` in m, ``reciprocal_pixel_size`` in 1/m, ``pixel_size`` in m,
        ``mask`` (True = valid), ``angle``, ``beam``, extra attrs).

    Returns
    -------
    xarray.Dataset
        A validated measurement.
    """
    from .data import measurement

    order = str(positions_order).lower()
    if order not in ("yx", "xy", "yxz", "xyz"):
        raise ValidationError("positions_order", f"must be 'yx', 'xy', 'yxz' or 'xyz', got {positions_order!r}")
    if position_units not in LENGTH_UNITS:
        raise ValidationError("position_units", f"unknown unit {position_units!r}; use one of {sorted(LENGTH_UNITS)}")
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim < 2 or pos.shape[-1] != len(order):
        raise ValidationError("positions", f"has shape {pos.shape}; expected (..., scan, {len(order)}) "
                                           f"for positions_order={positions_order!r}")
    pos = pos * LENGTH_UNITS[position_units]
    sy = pos[..., order.index("y")]
    sx = pos[..., order.index("x")]
    return measurement(intensity, sy, sx, radiation=radiation, energy_eV=energy_eV, **kwargs)


# ============================================================================ CXI
_CXI_VERSION = 150
_DET = "instrument_1/detector_1"


def _cxi_leading(ds: xr.Dataset) -> list[tuple[dict, dict]]:
    """[(selection, labels)] for each leading (beam/angle) index combination."""
    inten = ds["intensity"]
    lead = [d for d in inten.dims[:-3]]
    combos: list[tuple[dict, dict]] = [({}, {})]
    for d in lead:
        new = []
        for sel, lab in combos:
            for i in range(inten.sizes[d]):
                s = dict(sel, **{d: i})
                lab2 = dict(lab)
                value = ds[d].values[i]
                lab2[d] = _to_json(value.item() if isinstance(value, np.generic) else value, d)
                if d == "beam" and "beam_tilt" in ds.coords:
                    lab2["beam_tilt"] = float(ds["beam_tilt"].values[i])
                new.append((s, lab2))
        combos = new
    return combos


def write_cxi(ds: xr.Dataset, path, *, overwrite: bool = True) -> Path:
    """Export a measurement to a CXI file (Maia et al. 2012 layout), atomically.

    Layout (lengths in m, energy in J)::

        /cxi_version                                  150
        /entry_k/instrument_1/source_1/energy         photon/electron energy (J)
        /entry_k/instrument_1/detector_1/data         (N, ny, nx) float32 intensities
        /entry_k/instrument_1/detector_1/distance     detector distance (m)
        /entry_k/instrument_1/detector_1/x_pixel_size, y_pixel_size   (m)
        /entry_k/instrument_1/detector_1/mask         (ny, nx) uint32, 0 = good, 1 = bad
        /entry_k/sample_1/geometry_1/translation      (N, 3) m: [scan_x, scan_y, 0]
        /entry_k/data_1/data                          soft link to detector_1/data
        /entry_k/ptynb/                               ptynb extras (see below)

    Conventions: ``translation[:, 0] = scan_x`` and ``translation[:, 1] = scan_y`` (the
    probe-centre positions of the ptynb frame, no sign change), ``translation[:, 2] = 0``.
    The CXI mask is nonzero for bad pixels (ptynb's ``mask`` is True for valid pixels); no
    mask is written if the dataset has none.

    A measurement with leading ``beam``/``angle`` dims is written as one entry per
    combination (``entry_1``, ``entry_2``, ... in C order), each with its labels in
    ``entry_k/ptynb`` attrs ``index_<dim>`` and ``label_<dim>`` (JSON).

    ``entry_k/ptynb`` holds: attr ``attrs`` (all dataset attrs, JSON), ``radiation``,
    ``geometry_derived`` (1 if distance/pixel sizes were synthesised, see below), variable
    attrs, and every extra data variable (e.g. ``true_object``, ``true_probe``) as a dataset
    with its dims in attr ``dims``. CXI is X-ray oriented: electron data store
    ``reciprocal_pixel_size`` in the ptynb attrs, and the standard fields get an equivalent
    geometry (``distance`` = the ``detector_distance`` attr or 1 m, pixel size =
    ``reciprocal_pixel_size * wavelength * distance``) so programs that only read the
    standard fields recover the same sampling. The same holds for an X-ray measurement that
    has only ``pixel_size``.

    Parameters
    ----------
    ds : xarray.Dataset
        A measurement (see :func:`ptynb.data.measurement`); validated first.
    path : str or os.PathLike
        Target file (``.cxi`` recommended).
    overwrite : bool
        If False and ``path`` exists, raise FileExistsError.

    Returns
    -------
    pathlib.Path
    """
    from .data import validate
    from .physics.units import wavelength as _wl

    if not isinstance(ds, xr.Dataset):
        raise ValidationError("ds", f"write_cxi needs a measurement Dataset, got {type(ds).__name__}")
    validate(ds)
    if ds.attrs.get("kind", "measurement") != "measurement" or "intensity" not in ds:
        raise ValidationError("ds", "write_cxi needs a measurement Dataset with an 'intensity' variable")
    p = _as_path(path)
    a = ds.attrs
    radiation = str(a["radiation"])
    energy_eV = float(a["energy_eV"])
    lam = _wl(energy_eV, radiation)
    ny, nx = ds.sizes["qy"], ds.sizes["qx"]
    derived = False
    if a.get("detector_distance") is not None and a.get("detector_pixel_size") is not None:
        dist = float(a["detector_distance"])
        pix = float(a["detector_pixel_size"])
    else:
        derived = True
        dist = float(a["detector_distance"]) if a.get("detector_distance") is not None else 1.0
        if a.get("reciprocal_pixel_size") is not None:
            pix = float(a["reciprocal_pixel_size"]) * lam * dist
        else:
            pix = lam * dist / (ny * float(a["pixel_size"]))
    extras = [v for v in ds.data_vars if v not in ("intensity", "mask")]
    var_attrs = {name: dict(ds[name].attrs) for name in ds.variables}
    combos = _cxi_leading(ds)

    def writer(tmp: Path):
        import h5py

        with h5py.File(tmp, "w") as f:
            f.create_dataset("cxi_version", data=np.int32(_CXI_VERSION))
            f.attrs["creator"] = "ptynb"
            for k, (sel, labels) in enumerate(combos, start=1):
                sub = ds.isel(sel) if sel else ds
                e = f.create_group(f"entry_{k}")
                e.attrs["NX_class"] = "NXentry"
                src = e.create_group("instrument_1/source_1")
                src.create_dataset("energy", data=np.float64(energy_eV * _ELECTRON_VOLT))
                src["energy"].attrs["units"] = "J"
                det = e.create_group(_DET)
                inten = sub["intensity"]
                d = det.create_dataset("data", shape=inten.shape, dtype=np.float32,
                                       chunks=(1, ny, nx))
                step = max(1, int(SHARD_BYTES // max(1, ny * nx * 4)))
                for i0 in range(0, inten.shape[0], step):  # stream (works for dask too)
                    d[i0:i0 + step] = np.asarray(inten[i0:i0 + step].values, dtype=np.float32)
                d.attrs["axes"] = "translation:y:x"
                det.create_dataset("distance", data=np.float64(dist))
                det.create_dataset("x_pixel_size", data=np.float64(pix))
                det.create_dataset("y_pixel_size", data=np.float64(pix))
                for name in ("distance", "x_pixel_size", "y_pixel_size"):
                    det[name].attrs["units"] = "m"
                if "mask" in ds:
                    det.create_dataset("mask", data=(~np.asarray(ds["mask"].values, bool)).astype(np.uint32))
                n = inten.shape[0]
                tr = np.zeros((n, 3), np.float64)
                tr[:, 0] = np.asarray(sub["scan_x"].values, np.float64).reshape(n)
                tr[:, 1] = np.asarray(sub["scan_y"].values, np.float64).reshape(n)
                geo = e.create_group("sample_1/geometry_1")
                geo.create_dataset("translation", data=tr)
                geo["translation"].attrs["units"] = "m"
                data1 = e.create_group("data_1")
                data1["data"] = h5py.SoftLink(f"/entry_{k}/{_DET}/data")
                pg = e.create_group("ptynb")
                pg.attrs["attrs"] = json.dumps(_to_json(dict(a), "attrs"))
                pg.attrs["variable_attrs"] = json.dumps(_to_json(var_attrs, "variable attrs"))
                pg.attrs["radiation"] = radiation
                pg.attrs["geometry_derived"] = int(derived)
                pg.attrs["translation_convention"] = "x=scan_x, y=scan_y, z=0 (probe centre, m)"
                pg.attrs["n_entries"] = len(combos)
                for dim, lab in labels.items():
                    if dim != "beam_tilt":
                        pg.attrs[f"index_{dim}"] = int(sel[dim])
                    pg.attrs[f"label_{dim}"] = json.dumps(lab)
                for name in extras:
                    v = sub[name]
                    pg.create_dataset(name, data=np.asarray(v.values))
                    pg[name].attrs["dims"] = json.dumps(list(v.dims))
                    pg[name].attrs["full_dims"] = json.dumps(list(ds[name].dims))
            f.flush()

    return _atomic_write(p, overwrite, writer)


def _read_scalar(g, name, p, entry):
    if name not in g:
        return None
    try:
        return float(np.asarray(g[name][()]).reshape(-1)[0])
    except Exception as e:
        raise FileFormatError(p, f"CXI field {entry}/{name} is unreadable ({e})") from e


def _read_entry(f, entry: str, p: Path, overrides: dict, translation_sign: float):
    import h5py

    from .physics.units import wavelength as _wl

    e = f[entry]
    det_path = f"{entry}/{_DET}"
    if _DET + "/data" in e:
        data = e[_DET + "/data"]
    elif "data_1/data" in e:
        data = e["data_1/data"]
    else:
        raise FileFormatError(p, f"missing CXI field {det_path}/data (diffraction intensities)")
    if data.ndim == 2:
        intensity = np.asarray(data[()])[None]
    elif data.ndim == 3:
        intensity = np.asarray(data[()])
    else:
        raise FileFormatError(p, f"CXI field {det_path}/data has shape {data.shape}; expected (N, ny, nx)")
    n, ny, nx = intensity.shape
    pg = e["ptynb"] if "ptynb" in e and isinstance(e["ptynb"], h5py.Group) else None
    saved_attrs = _from_json(json.loads(pg.attrs["attrs"])) if pg is not None and "attrs" in pg.attrs else {}
    radiation = overrides.pop("radiation", None) or (str(pg.attrs["radiation"]) if pg is not None and "radiation" in pg.attrs else "xray")

    energy_eV = overrides.pop("energy_eV", None)
    if energy_eV is None:
        ej = _read_scalar(e, "instrument_1/source_1/energy", p, entry)
        if ej is None:
            raise FileFormatError(p, f"missing CXI field {entry}/instrument_1/source_1/energy (J); "
                                     "pass energy_eV= to read_cxi")
        energy_eV = ej / _ELECTRON_VOLT
        if "energy_eV" in saved_attrs and np.isclose(saved_attrs["energy_eV"], energy_eV, rtol=1e-12):
            energy_eV = saved_attrs["energy_eV"]  # exact value (J <-> eV conversion rounds)
    lam = _wl(energy_eV, radiation)

    geo_keys = ("pixel_size", "detector_distance", "detector_pixel_size", "reciprocal_pixel_size")
    over_geo = {k: overrides.pop(k) for k in geo_keys if k in overrides}
    saved_geo = {k: saved_attrs[k] for k in geo_keys if saved_attrs.get(k) is not None}
    if saved_geo and not over_geo:
        geo = saved_geo  # exact values from the ptynb group
    elif "pixel_size" in over_geo or "reciprocal_pixel_size" in over_geo:
        geo = over_geo
    else:
        dist = over_geo.get("detector_distance")
        pix = over_geo.get("detector_pixel_size")
        if dist is None:
            dist = _read_scalar(e, _DET + "/distance", p, entry)
        if pix is None:
            xp = _read_scalar(e, _DET + "/x_pixel_size", p, entry)
            yp = _read_scalar(e, _DET + "/y_pixel_size", p, entry)
            if xp is not None and yp is not None and not np.isclose(xp, yp, rtol=1e-6):
                raise FileFormatError(p, f"CXI detector pixels are not square (x {xp} m, y {yp} m); "
                                         "ptynb needs square pixels (pass pixel_size= to override)")
            pix = xp if xp is not None else yp
        if dist is None or pix is None:
            missing = "distance" if dist is None else "x_pixel_size"
            raise FileFormatError(p, f"missing CXI field {det_path}/{missing}; pass detector_distance= "
                                     "and detector_pixel_size= (m), or pixel_size= (m), to read_cxi")
        if radiation == "electron":
            geo = {"reciprocal_pixel_size": float(pix) / (lam * float(dist))}
        else:
            geo = {"detector_distance": float(dist), "detector_pixel_size": float(pix)}

    if "positions" in overrides:
        pos = np.asarray(overrides.pop("positions"), np.float64)
        sy, sx = pos[:, 0], pos[:, 1]
    else:
        tpath = "sample_1/geometry_1/translation"
        if tpath not in e:
            raise FileFormatError(p, f"missing CXI field {entry}/{tpath} (N, 3) in m; pass positions= "
                                     "(N, 2) [y, x] in m to read_cxi")
        tr = np.asarray(e[tpath][()], np.float64)
        if tr.ndim != 2 or tr.shape[0] != n or tr.shape[1] < 2:
            raise FileFormatError(p, f"CXI field {entry}/{tpath} has shape {tr.shape}; expected ({n}, 3)")
        sx, sy = translation_sign * tr[:, 0], translation_sign * tr[:, 1]

    mask = overrides.pop("mask", None)
    if mask is None and _DET + "/mask" in e:
        m = np.asarray(e[_DET + "/mask"][()])
        if m.shape != (ny, nx):
            raise FileFormatError(p, f"CXI field {det_path}/mask has shape {m.shape}; detector is {(ny, nx)}")
        mask = m == 0

    extra_vars = {}
    var_attrs = {}
    if pg is not None:
        if "variable_attrs" in pg.attrs:
            var_attrs = _from_json(json.loads(pg.attrs["variable_attrs"]))
        for name, obj in pg.items():
            if hasattr(obj, "shape"):
                dims = tuple(json.loads(obj.attrs.get("dims", "[]")))
                full = tuple(json.loads(obj.attrs.get("full_dims", json.dumps(list(dims)))))
                extra_vars[name] = (dims, full, np.asarray(obj[()]))
    attrs = {k: v for k, v in saved_attrs.items()
             if k not in ("kind", "radiation", "energy_eV", "wavelength", "pixel_size", "detector_distance",
                          "detector_pixel_size", "reciprocal_pixel_size", "ptynb_version")}
    attrs.update(overrides)
    labels = {}
    if pg is not None:
        for k, v in pg.attrs.items():
            if k.startswith("label_"):
                labels[k[6:]] = _from_json(json.loads(v))
    return {"intensity": intensity, "sy": sy, "sx": sx, "radiation": radiation, "energy_eV": energy_eV,
            "geo": geo, "mask": mask, "attrs": attrs, "extra": extra_vars, "var_attrs": var_attrs,
            "labels": labels, "version": saved_attrs.get("ptynb_version")}


def read_cxi(path, *, entry: str | None = None, translation_sign: float = 1.0, **overrides) -> xr.Dataset:
    """Import a CXI file as a measurement Dataset.

    Reads the standard fields (see :func:`write_cxi`); a file written by another program
    (without an ``entry_1/ptynb`` group) is read from them alone, as X-ray data unless
    ``radiation="electron"`` is passed (then the reciprocal pixel size is
    ``x_pixel_size / (wavelength * distance)``). With a ptynb group, the original attrs,
    geometry, extra variables and beam/angle labels are restored, and the several
    ``entry_k`` of a multi-beam/angle measurement are stacked back into leading dims.

    Parameters
    ----------
    path : str or os.PathLike
        CXI (HDF5) file.
    entry : str, optional
        Read only this entry (e.g. ``"entry_2"``). Default: all ptynb-labelled entries
        stacked, or the only entry. A foreign file with several entries needs ``entry=``.
    translation_sign : {1.0, -1.0}
        Multiplies ``translation`` (use -1 for files storing sample translations with the
        opposite sign to probe positions).
    **overrides
        Values used instead of (or in place of missing) file fields: ``energy_eV``,
        ``radiation``, ``detector_distance``, ``detector_pixel_size``, ``pixel_size``,
        ``reciprocal_pixel_size``, ``positions`` ((N, 2) [y, x] in m), ``mask`` (True =
        valid); any other keyword becomes an attr.

    Returns
    -------
    xarray.Dataset
        A validated measurement (see :func:`ptynb.data.measurement`).

    Raises
    ------
    FileNotFoundError, FileFormatError
        Missing path; not HDF5; a required CXI field missing (named in the message).
    """
    import h5py

    from .data import measurement

    p = _as_path(path)
    _check_exists(p)
    if _sniff(p) != "hdf5":
        raise FileFormatError(p, "is a Zarr store, not a CXI (HDF5) file")
    _h5_inspect(p)  # truncated/corrupt -> FileFormatError
    with h5py.File(p, "r") as f, _wrap_errors(p, "unreadable CXI file"):
        if "cxi_version" not in f and "cxi_version" not in f.attrs:
            raise FileFormatError(p, "missing CXI field /cxi_version: not a CXI file")
        entries = sorted((k for k in f if k.startswith("entry_") and isinstance(f[k], h5py.Group)),
                         key=lambda k: int(k[6:]) if k[6:].isdigit() else 10**9)
        if not entries:
            raise FileFormatError(p, "missing CXI group /entry_1")
        if entry is not None:
            if entry not in f:
                raise FileFormatError(p, f"has no CXI entry {entry!r} (entries: {entries})")
            entries = [entry]
        parts = [_read_entry(f, en, p, dict(overrides), translation_sign) for en in entries]
    if len(parts) > 1 and not all(pt["labels"] for pt in parts):
        raise FileFormatError(p, f"has {len(parts)} entries without ptynb labels; choose one with entry=")
    first = parts[0]
    kwargs = dict(first["geo"])
    kwargs.update(first["attrs"])
    if len(parts) == 1 and (entry is not None or not first["labels"]):
        intensity, sy, sx, lead = first["intensity"], first["sy"], first["sx"], {}
        dims = None
    else:
        lead_dims = [d for d in ("beam", "angle") if d in first["labels"]]
        values = {d: [] for d in lead_dims}
        for pt in parts:
            for d in lead_dims:
                if pt["labels"][d] not in values[d]:
                    values[d].append(pt["labels"][d])
        shape = tuple(len(values[d]) for d in lead_dims)
        if int(np.prod(shape)) != len(parts):
            raise FileFormatError(p, f"ptynb entry labels {lead_dims} do not form a full grid")
        intensity = np.stack([pt["intensity"] for pt in parts]).reshape(shape + first["intensity"].shape)
        sy = np.stack([pt["sy"] for pt in parts]).reshape(shape + first["sy"].shape)
        sx = np.stack([pt["sx"] for pt in parts]).reshape(shape + first["sx"].shape)
        lead = {}
        if "beam" in values:
            lead["beam"] = values["beam"]
            tilts = [next(pt["labels"].get("beam_tilt") for pt in parts if pt["labels"]["beam"] == b)
                     for b in values["beam"]]
            if all(t is not None for t in tilts):
                lead["beam_tilt"] = tilts
        if "angle" in values:
            lead["angle"] = values["angle"]
        dims = tuple(lead_dims) + ("scan", "qy", "qx")
    ds = measurement(intensity, sy, sx, radiation=first["radiation"], energy_eV=first["energy_eV"],
                     mask=first["mask"], dims=dims, **lead, **kwargs)
    if first["version"] is not None:
        ds.attrs["ptynb_version"] = first["version"]
    for name, (vdims, full, arr) in first["extra"].items():
        if len(parts) > 1:
            lead_dims = list(dims[:-3])
            shape = tuple(ds.sizes[d] for d in lead_dims)
            stacked = np.stack([pt["extra"][name][2] for pt in parts])
            da = xr.DataArray(stacked.reshape(shape + arr.shape), dims=tuple(lead_dims) + vdims)
            da = da.isel({d: 0 for d in lead_dims if d not in full})
            ds[name] = da.transpose(*full).variable
        else:
            ds[name] = (vdims, arr)
    for name, va in first["var_attrs"].items():
        if name in ds.variables:
            ds[name].attrs = dict(va)
    return ds
