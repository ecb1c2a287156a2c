"""Memory forecasts before large allocations: the one helper every layer uses.

A step that is about to allocate (or read) large arrays first adds up their sizes from the
shapes alone (:func:`forecast_bytes`, :func:`forecast`) and calls :func:`check_available`, which
compares the forecast with the memory available now (``psutil.virtual_memory().available``,
``MemAvailable`` of ``/proc/meminfo`` without psutil) and raises :class:`MemoryForecastError`
naming what was forecast, what is available and which settings to change, *before* numpy is
asked for the memory. With ``allow_exceeding=True`` (or the environment variable
``PTYNB_ALLOW_EXCEEDING_MEMORY=1``, for the CLI and the apps) it warns with
:class:`MemoryForecastWarning` instead and the work goes ahead.

Example (the stereo simulation: every beam's patterns, then their stack)::

    from ptynb._memory import check_available, forecast

    need = forecast({"intensity per beam": ((n_beams, n_pos, n, n), "float32"),
                     "stacked intensity": ((n_beams, n_pos, n, n), "float32")})
    check_available(need, "the stereo simulation",
                    {"detector": s.detector, "scan_grid": s.scan_grid, "n_beams": s.n_beams})

:class:`MemoryForecastError` is both a :class:`ptynb.data.ValidationError` (so the CLI prints
it as one line and the apps show it in their error alert) and a :class:`MemoryError` (so code
catching ``MemoryError`` still catches it). :class:`ptynb.ptycho.memory.InsufficientMemoryError`
(the reconstruction's detailed forecast) has the same meaning.

Only numpy and the standard library are imported here (psutil lazily).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .data import ValidationError

__all__ = ["ALLOW_ENV", "MemoryForecastError", "MemoryForecastWarning", "available_memory",
           "check_available", "forecast", "forecast_bytes", "format_bytes"]

#: environment variable that turns every refusal into a warning (``1``/``true``/``yes``)
ALLOW_ENV = "PTYNB_ALLOW_EXCEEDING_MEMORY"


class MemoryForecastError(ValidationError, MemoryError):
    """The forecast memory of a step exceeds the memory available; raised before allocating.

    Attributes
    ----------
    needed, available : int or None
        Forecast and available bytes.
    breakdown : dict
        ``{array name: bytes}`` of the forecast (may be empty).
    """

    def __init__(self, problem: str, *, needed: int | None = None, available: int | None = None,
                 breakdown: Mapping[str, int] | None = None, variable: str = "memory"):
        problem = str(problem)
        prefix = f"{variable}: "
        while problem.startswith(prefix):  # re-raised with more context: one prefix only
            problem = problem[len(prefix):]
        self.needed = needed
        self.available = available
        self.breakdown = dict(breakdown or {})
        super().__init__(variable, problem)


class MemoryForecastWarning(UserWarning):
    """A forecast exceeds the available memory but the caller asked to proceed."""


def format_bytes(n: float) -> str:
    """Human-readable size with binary prefixes, e.g. ``format_bytes(3 * 2**30) == '3.00 GiB'``."""
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.2f} {unit}"
        n /= 1024
    return f"{sign}{n:.2f} PiB"


def forecast_bytes(shape: Sequence[int] | int, dtype: Any = np.float32) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (computed exactly, nothing allocated).

    Raises
    ------
    ValidationError
        A negative or non-integer size (named ``shape``) or an unknown dtype (``dtype``).
    """
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    total = 1
    for d in dims:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)) or d < 0:
            raise ValidationError("shape", f"must be non-negative integers, got {tuple(shape)!r}"
                                  if not isinstance(shape, (int, np.integer)) else
                                  f"must be a non-negative integer, got {shape!r}")
        total *= int(d)  # Python ints: no overflow
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:
        raise ValidationError("dtype", f"not a numpy dtype: {dtype!r}") from None
    return total * itemsize


def forecast(arrays: Mapping[str, Any]) -> dict[str, int]:
    """``{name: bytes}`` for ``{name: (shape, dtype)}`` (or ``{name: bytes}``) entries.

    Pass the result to :func:`check_available`; its values add up to the forecast.
    """
    out: dict[str, int] = {}
    for name, spec in arrays.items():
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
            out[str(name)] = int(spec)
        else:
            try:
                shape, dtype = spec
            except (TypeError, ValueError):
                raise ValidationError(str(name), f"expected (shape, dtype) or a number of bytes, "
                                                 f"got {spec!r}") from None
            out[str(name)] = forecast_bytes(shape, dtype)
    return out


def available_memory() -> int | None:
    """Host memory available now (bytes): psutil's ``available``, else ``MemAvailable``, else None."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or failing: fall back to /proc
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return None


def _env_allows() -> bool:
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _hint_text(settings_hint) -> str:
    if not settings_hint:
        return ""
    if isinstance(settings_hint, str):
        return settings_hint
    if isinstance(settings_hint, Mapping):
        return ", ".join(f"{k} (now {v})" for k, v in settings_hint.items())
    return ", ".join(map(str, settings_hint))


def check_available(nbytes, what: str, settings_hint=None, *, allow_exceeding: bool = False,
                    available: int | None = None, headroom: float = 0.9) -> int:
    """Refuse work whose forecast memory exceeds what is available, before allocating it.

    Parameters
    ----------
    nbytes : int or mapping
        The forecast in bytes, or ``{array name: bytes}`` (see :func:`forecast`); the largest
        entries are named in the message.
    what : str
        What would run, for the message ("the stereo simulation").
    settings_hint : mapping, sequence or str, optional
        The settings that drive the size, e.g. ``{"detector": 1024, "scan_grid": 200}``:
        the message says to reduce them.
    allow_exceeding : bool
        Warn (:class:`MemoryForecastWarning`) and return instead of raising. The environment
        variable ``PTYNB_ALLOW_EXCEEDING_MEMORY=1`` does the same.
    available : int, optional
        Bytes to compare with (default: :func:`available_memory`; tests and planning).
    headroom : float
        Fraction of the available memory the work may use (default 0.9: the rest is left to
        the system and to temporaries the forecast does not list).

    Returns
    -------
    int
        The forecast in bytes (when it fits, or when exceeding is allowed).

    Raises
    ------
    MemoryForecastError
        Forecast > ``headroom * available``: the message gives the forecast, the available
        memory, the largest arrays and the settings to change.
    """
    breakdown = forecast(nbytes) if isinstance(nbytes, Mapping) else {}
    need = sum(breakdown.values()) if breakdown else int(nbytes)
    if need < 0:
        raise ValidationError("nbytes", f"must be >= 0, got {need}")
    avail = available_memory() if available is None else int(available)
    if avail is None or need <= headroom * avail:
        return need
    parts = [f"{what} needs about {format_bytes(need)} but {format_bytes(avail)} of memory is available"]
    if breakdown:
        big = sorted(breakdown.items(), key=lambda kv: -kv[1])[:3]
        parts.append("largest: " + ", ".join(f"{k} {format_bytes(v)}" for k, v in big))
    hint = _hint_text(settings_hint)
    msg = "; ".join(parts) + ". Reduce " + (hint + ", " if hint else "the problem size, ") + \
        f"or pass allow_exceeding=True (environment: {ALLOW_ENV}=1) to try anyway"
    if allow_exceeding or _env_allows():
        warnings.warn(f"allowed to exceed memory: {msg}", MemoryForecastWarning, stacklevel=2)
        return need
    raise MemoryForecastError(msg, needed=need, available=avail, breakdown=breakdown)

