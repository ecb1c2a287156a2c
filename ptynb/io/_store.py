"""HDF5 (h5netcdf) and Zarr v3 storage of Datasets, DataArrays and DataTrees (see :mod:`ptynb.io`)."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..data import ValidationError
from . import _common
from ._atomic import atomic_write
from ._attrs import _JSON_PREFIX, _decode_attrs, _decode_value, _encode_attrs, _to_json
from ._common import (
    _CXI_SUFFIXES,
    _DA_PLACEHOLDER,
    _IO_VERSION,
    _MARK,
    _NAME_KEY,
    _OBJ_KEY,
    _PATTERN_DIMS,
    _VAR_KEY,
    _VERSION_KEY,
    FileFormatError,
    _as_path,
    _check_exists,
    _format_of,
    _h5_inspect,
    _is_zarr_dir,
    _quiet_zarr,
    _sniff,
    _wrap_errors,
    _zarr_inspect,
)
from .cxi import read_cxi, write_cxi


def _is_pattern_var(var: xr.Variable | xr.DataArray, name) -> bool:
    dims = tuple(var.dims)
    return len(dims) >= 3 and dims[-3:] == ("scan",) + _PATTERN_DIMS and var.dtype.kind in "iuf"


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
    n = max(1, min(var.shape[scan_axis], _common.SHARD_BYTES // pattern_bytes))
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
                if all(var.shape):
                    e["fletcher32"] = True  # per-chunk checksum: corruption is an error on read
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
    return atomic_write(p, lambda tmp: writer(prepared, tmp, chunks, shards, compression),
                        overwrite=overwrite, replaceable_dir=_is_zarr_dir)


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


def _missing_zarr_chunks(p: Path, arrays=None) -> list[str]:
    """``["var: 4 of 6 chunks stored", ...]`` for Zarr arrays with chunks absent from the store."""
    import zarr

    with _quiet_zarr(), _wrap_errors(p, "corrupt or unreadable Zarr store"):
        if arrays is None:
            root = zarr.open_group(str(p), mode="r")
            arrays = [(path, a) for path, a in root.members(max_depth=None) if isinstance(a, zarr.Array)]
        out = []
        for path, a in arrays:
            have, want = a.nchunks_initialized, a.nchunks
            if have >= want:
                continue
            if a.shards is not None:  # zarr counts stored shards times the chunks per shard
                per_shard = math.prod(s // c for s, c in zip(a.shards, a.chunks))
                n_shards = math.prod(-(-n // s) for n, s in zip(a.shape, a.shards))
                out.append(f"{path}: {-(-have // per_shard)} of {n_shards} shards stored")
            else:
                out.append(f"{path}: {have} of {want} chunks stored")
    return out


def _check_zarr_complete(p: Path, arrays=None):
    missing = _missing_zarr_chunks(p, arrays)
    if missing:
        raise FileFormatError(p, "Zarr store has missing chunks (" + "; ".join(missing[:5])
                              + (f"; ... {len(missing) - 5} more" if len(missing) > 5 else "")
                              + "): incomplete copy or damaged store. Pass fill_missing=True to read "
                              "them as the fill value (e.g. for a store written sparsely on purpose)")


def _check_read_memory(p: Path, nbytes: int, allow_exceeding: bool):
    """Refuse to read ``nbytes`` into memory when they do not fit (before reading a byte)."""
    from .._memory import check_available

    check_available(int(nbytes), f"reading {str(p)!r} into memory",
                    "the data read: load(path, lazy=True) reads patterns on demand, group= one node",
                    allow_exceeding=allow_exceeding)


def load(path, *, lazy: bool = False, group: str | None = None, chunks=None, fill_missing: bool = False,
         allow_exceeding: bool = False):
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
    fill_missing : bool
        Zarr only. False (default): a store in which some chunk/shard objects are absent
        (an interrupted copy, a deleted file) raises :class:`FileFormatError`, checked when
        the store is opened, lazily or not. True: missing chunks read as the fill value
        (zarr's own behaviour; for stores written sparsely on purpose).
    allow_exceeding : bool
        ``lazy=False`` forecasts the memory of the data (their in-memory size) before reading
        and raises :class:`ptynb._memory.MemoryForecastError` when it exceeds the available
        memory; True warns and reads anyway.

    Returns
    -------
    xarray.Dataset, xarray.DataArray or xarray.DataTree
        The kind of object that was saved, with attrs decoded.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    FileFormatError
        Truncated, corrupt or foreign file, an HDF5 chunk failing its Fletcher32 checksum,
        a Zarr store with missing chunks; the message names the path and the problem.
    MemoryForecastError
        ``lazy=False`` and the data do not fit in the available memory (nothing was read).
    """
    p = _as_path(path)
    _check_exists(p)
    if p.suffix.lower() in _CXI_SUFFIXES and p.is_file():
        return read_cxi(p, allow_exceeding=allow_exceeding)
    fmt = _sniff(p)
    info = _h5_inspect(p) if fmt == "hdf5" else _zarr_inspect(p)
    if fmt == "zarr" and not fill_missing:
        _check_zarr_complete(p)
    marker = info["attrs"].get(_OBJ_KEY)
    if marker is None and info["cxi"]:
        return read_cxi(p, allow_exceeding=allow_exceeding)
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
                    _check_read_memory(p, sum(n.to_dataset(inherit=False).nbytes for n in tree.subtree),
                                       allow_exceeding)
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
                _check_read_memory(p, ds.nbytes, allow_exceeding)
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

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValidationError
        ``index`` has the wrong length or is out of range (named ``index``).
    FileFormatError
        No such variable/group; the chunk fails its checksum (HDF5); the Zarr array has
        missing chunks.
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
            _check_zarr_complete(p, [(variable, a)])
            return np.asarray(a[idx])


