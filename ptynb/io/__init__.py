"""Saving and loading ptynb data: HDF5 (netCDF4 via h5netcdf), Zarr v3, CXI, plain arrays.

Formats
-------
``.h5``, ``.hdf5``, ``.nc``
    HDF5 written by xarray's ``h5netcdf`` engine (a netCDF4-compatible layout). complex64 /
    complex128 are stored natively (h5netcdf's compound complex type) and round-trip bit
    for bit, NaN payloads and negative zeros included; bool variables round-trip as bool.
    The diffraction ``intensity`` is stored in per-pattern chunks ``(1, ..., 1, qy, qx)`` so a
    single pattern is one chunk read; other non-empty variables are chunked by h5py's
    automatic chunk shape (needed for the Fletcher32 checksum filter, see *Integrity*)
    unless ``chunks=`` says otherwise.
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
Every save writes to a temporary sibling ``.<name>.tmp-<pid>-<random>`` in the target's directory
and only then moves it onto the target, so an exception or ``KeyboardInterrupt`` during
writing leaves an existing file untouched and removes the temporary. For a single HDF5/CXI
file, :func:`os.replace` is atomic (POSIX). A Zarr store is a directory and cannot be
replaced atomically by ``rename``: on Linux the new directory is swapped with the old one in a
single ``renameat2(RENAME_EXCHANGE)`` call (atomic), then the old one is deleted; where that
call is unavailable, the old directory is renamed aside, the new one renamed in (the target
path is missing for the microseconds between the two renames), and the old one deleted. If
the second rename fails, the old directory is put back. Temporaries left by a process that
was killed outright are removed by the next save of the same target (see
:mod:`ptynb.io._atomic`).

Integrity
---------
HDF5 datasets that have chunks (every non-scalar numeric variable written by :func:`save`)
carry the Fletcher32 checksum filter, so a flipped bit in the file makes :func:`load` raise
:class:`FileFormatError` ("checksum") instead of returning wrong numbers. A Zarr store with
missing chunk (or shard) objects raises :class:`FileFormatError` on :func:`load` unless
``fill_missing=True`` (then missing chunks read as the fill value, as zarr does by default).

Errors
------
A missing path raises :class:`FileNotFoundError`; a truncated, corrupt or foreign file (a PNG
or text file named ``.h5``, an HDF5 file that is not netCDF-like, a directory that is not a
Zarr store, a CXI file missing a required field) raises :class:`FileFormatError` (a
``ValueError``) naming the path and the problem, chained to the library's own exception.
"""
from __future__ import annotations

from pathlib import Path

import xarray as xr

from ._arrays import LENGTH_UNITS, from_arrays
from ._common import SHARD_BYTES, FileFormatError
from ._store import load, open_intensity, save
from .cxi import read_cxi, write_cxi

__all__ = [
    "LENGTH_UNITS",
    "SHARD_BYTES",
    "FileFormatError",
    "from_arrays",
    "load",
    "load_any",
    "open_intensity",
    "read_cxi",
    "save",
    "write_cxi",
]


def load_any(path, *, allow_exceeding: bool = False) -> xr.Dataset:
    """Load one measurement from a ptynb HDF5/netCDF/Zarr file or a CXI file.

    Parameters
    ----------
    path : str or os.PathLike
        ``.cxi`` -> :func:`read_cxi`; anything else -> :func:`load` (format from the contents).
        For a DataTree file, the first node (in tree order) holding an ``intensity`` variable
        is returned, with the attrs it inherits from its ancestors.
    allow_exceeding : bool
        Read even when the forecast memory exceeds the available memory (a warning instead of
        :class:`ptynb._memory.MemoryForecastError`; see :func:`load`).

    Returns
    -------
    xarray.Dataset
        A measurement: ``intensity`` (..., scan, qy, qx) in counts, positions ``scan_y``,
        ``scan_x`` (m), attrs as in :func:`ptynb.data.measurement`.

    Raises
    ------
    FileNotFoundError, FileFormatError
        Missing or unreadable file (see :func:`load`).
    ValidationError
        The file holds no measurement (no ``intensity`` variable in any node); the error
        names ``intensity``.
    """
    from ..data import ValidationError, node_dataset

    p = Path(path)
    if p.suffix.lower() == ".cxi":
        return read_cxi(p, allow_exceeding=allow_exceeding)
    obj = load(p, allow_exceeding=allow_exceeding)
    if isinstance(obj, xr.DataTree):
        for node in obj.subtree:
            if node.has_data and "intensity" in node.dataset:
                return node_dataset(obj, node.path)
        raise ValidationError("intensity", f"no measurement node (with 'intensity') in {str(p)!r}")
    if not isinstance(obj, xr.Dataset) or "intensity" not in obj:
        raise ValidationError("intensity", f"{str(p)!r} is not a measurement (no 'intensity' variable)")
    return obj
