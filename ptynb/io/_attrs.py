"""Attrs codec: JSON-friendly, type-tagged encoding of xarray attrs for netCDF/Zarr.

netCDF (HDF5) attrs hold strings, ints, floats and 1-D numeric arrays; Zarr attrs hold JSON.
Everything else (bool, None, dicts, lists, tuples, complex numbers, multi-dimensional or
string arrays, numpy scalars in Zarr, strings that begin with :data:`JSON_PREFIX`) is stored
as the string ``"ptynb-json:" + json`` with type tags (``__tuple__``, ``__ndarray__``,
``__npscalar__``, ``__complex__``, ``__dict__``) and decoded back to the same types on load.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np

from ..data import ValidationError

_JSON_PREFIX = "ptynb-json:"
JSON_PREFIX = _JSON_PREFIX  #: marker that starts an encoded attr value

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

