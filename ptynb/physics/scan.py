"""Scan patterns: probe-centre positions in metres (float64 arrays along ``scan``)."""
from __future__ import annotations

import math

import numpy as np

from ..data import ValidationError, check_positive

__all__ = [
    "GOLDEN_ANGLE",
    "fermat_spiral",
    "overlap_fraction",
    "raster_scan",
    "step_for_overlap",
]

#: The golden angle pi (3 - sqrt 5) (rad) between consecutive Fermat-spiral points.
GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


_pos = check_positive  # (name, value, *, allow_zero=False)

def _count(name, v):
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise ValidationError(name, f"must be an integer, got {v!r}") from None
    if n != v or n < 1:
        raise ValidationError(name, f"must be a positive integer, got {v!r}")
    return n


def raster_scan(n_y, n_x, step, *, jitter=0.0, seed=None, origin=(0.0, 0.0), snake=False):
    """Rectangular raster of ``n_y * n_x`` positions, optionally with random jitter.

    Nominal position ``(i, j)`` is ``(origin[0] + i * step_y, origin[1] + j * step_x)``; row
    ``i`` is the slow axis (y), column ``j`` the fast axis (x). With ``jitter = j`` each coordinate
    of each position is displaced independently by a uniform random offset in
    ``[-j * step, +j * step]`` ("a random jitter of up to 30 % of the step": ``jitter=0.3``).

    Parameters
    ----------
    n_y, n_x : int
        Number of rows and columns.
    step : float or (step_y, step_x)
        Nominal step (m).
    jitter : float
        Maximum displacement as a fraction of the step (0 <= jitter < 0.5 recommended).
    seed : int or numpy.random.Generator, optional
    origin : (y0, x0)
        Nominal position of the first point (m).
    snake : bool
        Reverse every other row (serpentine order).

    Returns
    -------
    scan_y, scan_x : float64 arrays (n_y * n_x,) in metres.
    """
    ny, nx = _count("n_y", n_y), _count("n_x", n_x)
    st = np.broadcast_to(np.asarray(step, dtype=float), (2,))
    sy, sx = _pos("step", st[0]), _pos("step", st[1])
    jit = _pos("jitter", jitter, allow_zero=True)
    oy, ox = (float(v) for v in np.broadcast_to(np.asarray(origin, dtype=float), (2,)))
    ii, jj = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    if snake:
        jj[1::2] = jj[1::2, ::-1]
    y = oy + ii.ravel() * sy
    x = ox + jj.ravel() * sx
    if jit > 0:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        y = y + rng.uniform(-jit * sy, jit * sy, size=y.shape)
        x = x + rng.uniform(-jit * sx, jit * sx, size=x.shape)
    return y.astype(np.float64), x.astype(np.float64)


def fermat_spiral(n, step, *, origin=(0.0, 0.0)):
    """Fermat-spiral scan of ``n`` points with the density of a square raster of ``step``.

    Point ``k`` (k = 0 .. n-1) lies at radius ``r_k = step * sqrt(k / pi)`` and azimuth
    ``k * GOLDEN_ANGLE`` around ``origin``: the disk of radius ``r_k`` holds ``k`` points, one
    per ``step**2`` of area. The nearest-neighbour distance is close to ``step``.

    Returns
    -------
    scan_y, scan_x : float64 arrays (n,) in metres.
    """
    n = _count("n", n)
    s = _pos("step", step)
    oy, ox = (float(v) for v in np.broadcast_to(np.asarray(origin, dtype=float), (2,)))
    k = np.arange(n, dtype=float)
    r = s * np.sqrt(k / math.pi)
    th = k * GOLDEN_ANGLE
    return oy + r * np.sin(th), ox + r * np.cos(th)


def overlap_fraction(step, probe_diameter):
    """Linear overlap ``1 - step / probe_diameter`` of neighbouring probe positions
    (negative when the probes do not touch)."""
    return 1.0 - _pos("step", step) / _pos("probe_diameter", probe_diameter)


def step_for_overlap(overlap, probe_diameter):
    """Step (m) giving a linear ``overlap`` (fraction < 1): ``probe_diameter * (1 - overlap)``."""
    o = float(overlap)
    if not math.isfinite(o) or o >= 1:
        raise ValidationError("overlap", f"must be a fraction below 1, got {overlap!r}")
    return _pos("probe_diameter", probe_diameter) * (1.0 - o)
