"""Atomic HDF5 checkpoints for long reconstructions.

A checkpoint is one HDF5 file holding named numpy arrays (object slices, probe modes,
positions, momentum buffers, RNG state, cost history, ...) and a JSON-serialised ``meta``
dict (iteration, engine settings, ...). Writing is atomic (:func:`ptynb.io._atomic.atomic_write`):
the data go to a hidden temporary ``.<name>.tmp-<pid>-XXXXXXXX`` in the same directory, which
is flushed, ``fsync``-ed and then moved over ``path`` with :func:`os.replace`. An interrupted
write (crash, KeyboardInterrupt, full disk) therefore never damages the previous checkpoint at
``path``; its temporary is removed (or, if the process was killed, by the next save).

Arrays round-trip bit-exactly, whatever their dtype (complex64, float32, uint32 RNG state,
bool masks, 0-d scalars). Reading a truncated or foreign file raises :class:`CheckpointError`
(a ``ValueError``) naming the path.

File layout (format version :data:`CHECKPOINT_VERSION`)::

    /                attrs: ptynb_checkpoint_version (int), ptynb_version (str),
                            meta (JSON str)
    /arrays/<name>   one dataset per array
"""
from __future__ import annotations

import json
import os  # noqa: F401  (tests patch checkpoint.os.replace)
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CHECKPOINT_VERSION", "CheckpointError", "save_checkpoint", "load_checkpoint"]

#: Version of the checkpoint file layout written by :func:`save_checkpoint`.
CHECKPOINT_VERSION = 1
_VERSION_ATTR = "ptynb_checkpoint_version"


class CheckpointError(ValueError):
    """A checkpoint file cannot be written or read (truncated, foreign, wrong version)."""


def _json_default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"meta value of type {type(o).__name__} is not JSON-serialisable")


def save_checkpoint(path, arrays: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``arrays`` and ``meta`` to an HDF5 checkpoint at ``path``, atomically.

    Parameters
    ----------
    path : str or Path
        Destination file (conventionally ``*.h5``). Its directory must exist. An existing
        file is replaced only after the new one is completely written and synced.
    arrays : mapping of str to array
        Arrays to store, any shape and dtype (numpy; cupy/torch arrays are copied to the host).
        Names must be non-empty and must not contain ``"/"``.
    meta : mapping, optional
        JSON-serialisable metadata (numpy scalars and arrays are converted to Python values).

    Returns
    -------
    Path
        The checkpoint path.

    Raises
    ------
    CheckpointError
        For a bad array name, non-serialisable meta, or a missing directory.
    """
    import h5py

    from .. import __version__
    from ..backend import to_host
    from ..io._atomic import atomic_write

    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {path}: directory {directory} does not exist")
    try:
        meta_json = json.dumps(dict(meta or {}), default=_json_default)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: meta is not JSON-serialisable ({e})") from None
    host: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise CheckpointError(
                f"checkpoint {path}: array name {name!r} must be a non-empty str without '/'"
            )
        host[name] = np.asarray(to_host(arr))

    def write(tmp: Path):
        with h5py.File(tmp, "w") as f:
            f.attrs[_VERSION_ATTR] = CHECKPOINT_VERSION
            f.attrs["ptynb_version"] = __version__
            f.attrs["meta"] = meta_json
            g = f.create_group("arrays")
            for name, a in host.items():
                g.create_dataset(name, data=a)

    atomic_write(path, write)  # temp sibling + fsync + os.replace; temp removed on failure
    return path


def load_checkpoint(path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    arrays : dict of str to numpy.ndarray
        The stored arrays, bit-identical to those saved (same dtype and shape).
    meta : dict
        The stored metadata, with ``meta["checkpoint_version"]`` and ``meta["ptynb_version"]``
        added.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is truncated, not HDF5, not a ptynb checkpoint, or of a newer version.
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            if _VERSION_ATTR not in f.attrs or "arrays" not in f:
                raise CheckpointError(
                    f"checkpoint {path}: not a ptynb checkpoint (no '{_VERSION_ATTR}' attribute "
                    "or 'arrays' group)"
                )
            version = int(f.attrs[_VERSION_ATTR])
            if version > CHECKPOINT_VERSION:
                raise CheckpointError(
                    f"checkpoint {path}: format version {version} is newer than this ptynb "
                    f"supports ({CHECKPOINT_VERSION}); upgrade ptynb"
                )
            meta_raw = f.attrs.get("meta", "{}")
            if isinstance(meta_raw, bytes):
                meta_raw = meta_raw.decode()
            meta = json.loads(str(meta_raw))
            arrays = {}
            for name, ds in f["arrays"].items():
                v = ds[()]
                arrays[name] = v if isinstance(v, np.ndarray) else np.asarray(v, dtype=ds.dtype)
            pv = f.attrs.get("ptynb_version", "")
            meta["checkpoint_version"] = version
            meta["ptynb_version"] = pv.decode() if isinstance(pv, bytes) else str(pv)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated or not an HDF5 checkpoint): {e}"
        ) from None
    return arrays, meta
