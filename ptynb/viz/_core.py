"""Shared helpers of the views: the HoloViews import, colour maps, sizes, units and axes.

Nothing here imports panel; the views are plain HoloViews objects (bokeh backend), shown by a
notebook as they are and by the apps through ``pn.pane.HoloViews``.
"""
from __future__ import annotations

import os

import numpy as np
import xarray as xr

from ..backend import to_host

PHASE_CMAP = "colorwheel"  #: cyclic colour map (colorcet) for phase images that wrap
SMALL_PHASE_CMAP = "coolwarm"  #: diverging colour map for phases that do not wrap (centred on 0)
AMPLITUDE_CMAP = "gray"
PATTERN_CMAP = "fire"
DIFF_CMAP = "RdBu"
#: images larger than this along an axis are shown strided (every k-th pixel) to stay responsive
MAX_DISPLAY_PIXELS = 1024
#: plot-area width (px) of one image in a row of two: two of them with colour bars fit a
#: ~900 px notebook column
FRAME_WIDTH = 300
#: plot-area width (px) of a single curve plot
CURVE_WIDTH = 560

#: display unit -> factor from SI metres (or 1/m for frequencies)
_FACTORS = {"nm": 1e9, "um": 1e6, "pm": 1e12, "mm": 1e3, "m": 1.0, "1/nm": 1e-9, "1/um": 1e-6, "px": None}


def _hv():
    import holoviews as hv

    if not hv.Store.renderers:
        # BokehJS from the installed package, not a CDN (offline PCs); see ptynb.apps._resources
        hv.extension("bokeh", logo=False, inline=os.environ.get("PTYNB_RESOURCES", "inline").lower() != "cdn")
    elif hv.Store.current_backend != "bokeh" and "bokeh" in hv.Store.renderers:
        hv.Store.set_current_backend("bokeh")
    return hv


def dim(name: str, unit: str | None = None, label: str | None = None):
    """An ``hv.Dimension`` whose axis label reads ``label (unit)``, e.g. ``x (nm)``."""
    hv = _hv()
    return hv.Dimension(name, label=label or name, unit=unit or None)


def complex_to_rgb(z, *, amplitude_range=None) -> np.ndarray:
    """HSV composite of a complex 2D array: hue = phase, value = normalised amplitude.

    Parameters
    ----------
    z : complex array (y, x)
    amplitude_range : (lo, hi), optional
        Amplitude mapped to value 0 and 1 (default: 0 and the 99.5th percentile).

    Returns
    -------
    float32 array (y, x, 3) of RGB in [0, 1].
    """
    z = to_host(z)
    if z.ndim != 2:
        raise ValueError(f"complex_to_rgb needs a 2-D array, got shape {z.shape}")
    amp = np.abs(z)
    lo, hi = amplitude_range if amplitude_range else (0.0, float(np.percentile(amp, 99.5)) or 1.0)
    v = np.clip((amp - lo) / max(hi - lo, 1e-30), 0, 1)
    h = (np.angle(z) + np.pi) / (2 * np.pi)
    return _hsv_to_rgb(h, np.ones_like(h), v)


def _hsv_to_rgb(h, s, v) -> np.ndarray:
    """Vectorised HSV -> RGB (all inputs in [0, 1]); returns float32 (..., 3)."""
    i = np.floor(h * 6.0).astype(int) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1).astype(np.float32)


def phase_colors(phase, weights=None) -> tuple[str, tuple[float, float]]:
    """Colour map and range of a phase image: ``(PHASE_CMAP, (-pi, pi))`` where the phase wraps
    (values near both +pi and -pi), else ``(SMALL_PHASE_CMAP, (-r, r))`` with ``r`` the 99.5th
    percentile of ``|phase|`` (where ``weights``, e.g. the amplitude, is above 5 % of its
    maximum), so that small phases (tenths of a radian) get the whole colour range."""
    p = np.asarray(phase, dtype=float)
    keep = np.isfinite(p)
    if weights is not None:
        w = np.asarray(weights, dtype=float)
        if np.any(w > 0):
            keep &= w > 0.05 * np.nanmax(w)
    v = p[keep]
    if v.size == 0:
        return PHASE_CMAP, (-np.pi, np.pi)
    near = np.abs(v) > 0.9 * np.pi
    wraps = np.mean(near & (v > 0)) > 0.002 and np.mean(near & (v < 0)) > 0.002
    if wraps:
        return PHASE_CMAP, (-np.pi, np.pi)
    r = float(np.percentile(np.abs(v), 99.5)) or 1e-3
    return SMALL_PHASE_CMAP, (-r, r)


def _stride(da: xr.DataArray) -> xr.DataArray:
    steps = {d: max(1, int(np.ceil(da.sizes[d] / MAX_DISPLAY_PIXELS))) for d in da.dims[-2:]}
    if any(s > 1 for s in steps.values()):
        da = da.isel({d: slice(None, None, s) for d, s in steps.items()})
    return da


def _host_da(da: xr.DataArray) -> xr.DataArray:
    if not isinstance(da.data, np.ndarray):
        da = da.copy(data=to_host(da.data))
    return da


def _as_2d(da, name="image") -> xr.DataArray:
    if not isinstance(da, xr.DataArray):
        arr = to_host(da)
        if arr.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D array, got shape {arr.shape}")
        da = xr.DataArray(arr, dims=("y", "x"), name=name)
    if da.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D DataArray, got dims {da.dims}; select one slice first")
    return _stride(_host_da(da))


def _axis_name(d: str) -> str:
    """Axis name of a dim: probe/detector pixel dims read as x/y/qx/qy."""
    return {"px": "x", "py": "y"}.get(d, d)


def _scaled_coords(da: xr.DataArray, unit: str):
    """Coordinates of a 2D DataArray in display units; returns (xs, ys, (xdim, ydim)).

    The returned dimensions are ``hv.Dimension`` objects labelled ``x (nm)`` etc.
    """
    ydim, xdim = da.dims
    f = _FACTORS[unit]
    if f is None or ydim not in da.coords or xdim not in da.coords:
        return (np.arange(da.sizes[xdim]), np.arange(da.sizes[ydim]),
                (dim(_axis_name(xdim), "px"), dim(_axis_name(ydim), "px")))
    return (da[xdim].values * f, da[ydim].values * f,
            (dim(_axis_name(xdim), unit), dim(_axis_name(ydim), unit)))


def _bounds(xs, ys):
    dx = (xs[1] - xs[0]) if len(xs) > 1 else 1.0
    dy = (ys[1] - ys[0]) if len(ys) > 1 else 1.0
    return (xs[0] - dx / 2, ys[0] - dy / 2, xs[-1] + dx / 2, ys[-1] + dy / 2)


def _unit_for(da: xr.DataArray) -> str:
    d = da.dims[-1]
    if d in ("qx", "qy"):
        return "1/nm" if d in da.coords else "px"
    if d not in da.coords:
        return "px"
    units = str(da[d].attrs.get("units", "m"))
    if units not in ("m", ""):
        return "px"
    span = float(np.ptp(da[d].values)) if da.sizes[d] > 1 else 0.0
    return "um" if span > 5e-6 else ("pm" if 0 < span < 2e-10 else "nm")


def value_label(da, default="value") -> tuple[str, str | None]:
    """(quantity, unit) of a DataArray for a colour bar: ``long_name``/name and ``units``."""
    if not isinstance(da, xr.DataArray):
        return default, None
    name = str(da.attrs.get("long_name") or da.name or default)
    unit = da.attrs.get("units")
    unit = None if unit in (None, "", "1") else str(unit)
    if unit and name.endswith(f"({unit})"):
        unit = None
    return name, unit


def crop_to(mask) -> tuple[slice, slice]:
    """The bounding box of a 2D boolean mask as two slices (the whole array if it is empty)."""
    m = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        return slice(None), slice(None)
    return slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)


def markdown_table(rows, header=("quantity", "value")) -> str:
    """A markdown table from ``(name, value)`` rows."""
    head = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    return head + "\n".join("| " + " | ".join(str(c) for c in r) + " |" for r in rows)


def tree_volumes(tree, order, truth_variable: str = "volume") -> dict:
    """The (z, y, x) volumes of a workflow result tree, in ``order``: ``{node: DataArray}`` for
    every node of ``order`` present in ``tree`` (``None``: empty) whose dataset holds a variable
    named like the node (``truth_variable`` for the ``truth`` node)."""
    out = {}
    if tree is None:
        return out
    for k in order:
        if k not in tree.children:
            continue
        ds = tree[k].to_dataset()
        name = truth_variable if k == "truth" else k
        if name in ds:
            out[k] = ds[name]
    return out
