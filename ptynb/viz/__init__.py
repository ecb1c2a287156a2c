"""HoloViews views of ptynb datasets (bokeh backend).

Complex arrays are never handed to a plot: they are shown as amplitude and phase (phase on
a cyclic colour map) or as an HSV composite (hue = phase, value = amplitude). Device arrays
are copied to the host first. Importing this module imports holoviews; ``import ptynb``
does not.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from ..backend import to_host

__all__ = [
    "complex_to_rgb",
    "complex_image",
    "amplitude_phase",
    "image",
    "scan_points",
    "scan_explorer",
    "probe_view",
    "object_view",
    "cost_curve",
    "show",
    "PHASE_CMAP",
    "MAX_DISPLAY_PIXELS",
]

PHASE_CMAP = "colorwheel"  #: cyclic colour map (colorcet) for phase images
AMPLITUDE_CMAP = "gray"
PATTERN_CMAP = "fire"
#: images larger than this along an axis are shown strided (every k-th pixel) to stay responsive
MAX_DISPLAY_PIXELS = 1024


def _hv():
    import holoviews as hv

    if not hv.Store.renderers:
        hv.extension("bokeh", logo=False)
    elif hv.Store.current_backend != "bokeh" and "bokeh" in hv.Store.renderers:
        hv.Store.set_current_backend("bokeh")
    return hv


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


def _stride(da: xr.DataArray) -> xr.DataArray:
    steps = {d: max(1, int(np.ceil(da.sizes[d] / MAX_DISPLAY_PIXELS))) for d in da.dims[-2:]}
    if any(s > 1 for s in steps.values()):
        da = da.isel({d: slice(None, None, s) for d, s in steps.items()})
    return da


def _as_2d(da, name="image") -> xr.DataArray:
    if not isinstance(da, xr.DataArray):
        arr = to_host(da)
        if arr.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D array, got shape {arr.shape}")
        da = xr.DataArray(arr, dims=("y", "x"), name=name)
    if da.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D DataArray, got dims {da.dims}; select one slice first")
    if not isinstance(da.data, np.ndarray):
        da = da.copy(data=to_host(da.data))
    return _stride(da)


def _scaled_coords(da: xr.DataArray, unit: str):
    """Coordinates of a 2D DataArray in display units (nm/um or 1/nm); returns (xs, ys, labels)."""
    ydim, xdim = da.dims
    factors = {"nm": 1e9, "um": 1e6, "pm": 1e12, "1/nm": 1e-9, "px": None}
    f = factors[unit]
    if f is None or ydim not in da.coords or xdim not in da.coords:
        return np.arange(da.sizes[xdim]), np.arange(da.sizes[ydim]), ("x (px)", "y (px)")
    return (da[xdim].values * f, da[ydim].values * f, (f"{xdim} ({unit})", f"{ydim} ({unit})"))


def _bounds(xs, ys):
    dx = (xs[1] - xs[0]) if len(xs) > 1 else 1.0
    dy = (ys[1] - ys[0]) if len(ys) > 1 else 1.0
    return (xs[0] - dx / 2, ys[0] - dy / 2, xs[-1] + dx / 2, ys[-1] + dy / 2)


def _unit_for(da: xr.DataArray) -> str:
    dim = da.dims[-1]
    if dim in ("qx", "qy"):
        return "1/nm"
    if dim not in da.coords:
        return "px"
    span = float(np.ptp(da[dim].values)) if da.sizes[dim] > 1 else 0.0
    return "um" if span > 5e-6 else ("pm" if 0 < span < 2e-10 else "nm")


def image(da, *, title="", cmap="viridis", unit=None, colorbar=True, logz=False, clim=None, **opts):
    """A real 2D image as ``hv.Image`` with axes in display units (nm, um, or 1/nm).

    ``da`` is a real (y, x) DataArray or array. Complex input is refused: use
    :func:`complex_image` (amplitude/phase or HSV).
    """
    hv = _hv()
    da = _as_2d(da, title or "image")
    if np.iscomplexobj(da.values):
        raise TypeError("image() got complex data; use complex_image() (amplitude + phase or HSV)")
    unit = unit or _unit_for(da)
    xs, ys, (xl, yl) = _scaled_coords(da, unit)
    vals = np.asarray(da.values, dtype=np.float32)
    if logz:
        vals = np.log10(np.maximum(vals, 0) + 1.0)
    img = hv.Image(vals[::-1], bounds=_bounds(xs, ys), kdims=[xl, yl],
                   vdims=[da.name or "value"] if not logz else ["log10(1+counts)"])
    o = dict(cmap=cmap, colorbar=colorbar, title=title, aspect="equal", responsive=False,
             frame_width=300, tools=["hover"], active_tools=["wheel_zoom"])
    if clim is not None:
        o["clim"] = clim
    o.update(opts)
    return img.opts(**o)


def amplitude_phase(da, *, title="", unit=None, **opts):
    """Side-by-side amplitude (grey) and phase (cyclic colour map, -pi..pi) of a complex 2D array."""
    hv = _hv()
    da = _as_2d(da, title or "complex")
    amp = da.copy(data=np.abs(da.values).astype(np.float32)).rename("amplitude")
    ph = da.copy(data=np.angle(da.values).astype(np.float32)).rename("phase (rad)")
    left = image(amp, title=f"{title} amplitude".strip(), cmap=AMPLITUDE_CMAP, unit=unit, **opts)
    right = image(ph, title=f"{title} phase".strip(), cmap=PHASE_CMAP, unit=unit,
                  clim=(-np.pi, np.pi), **opts)
    return hv.Layout([left, right]).cols(2)


def complex_image(da, *, mode="hsv", title="", unit=None, **opts):
    """A complex 2D array as an HSV composite (``mode="hsv"``), or amplitude/phase/both.

    ``mode`` is one of ``"hsv"``, ``"amplitude"``, ``"phase"``, ``"both"``.
    """
    hv = _hv()
    da = _as_2d(da, title or "complex")
    if mode == "both":
        return amplitude_phase(da, title=title, unit=unit, **opts)
    if mode == "amplitude":
        return image(da.copy(data=np.abs(da.values)), title=title, cmap=AMPLITUDE_CMAP, unit=unit, **opts)
    if mode == "phase":
        return image(da.copy(data=np.angle(da.values)), title=title, cmap=PHASE_CMAP, unit=unit,
                     clim=(-np.pi, np.pi), **opts)
    if mode != "hsv":
        raise ValueError(f"mode must be 'hsv', 'amplitude', 'phase' or 'both', not {mode!r}")
    unit = unit or _unit_for(da)
    xs, ys, (xl, yl) = _scaled_coords(da, unit)
    rgb = complex_to_rgb(da.values)[::-1]
    o = dict(title=title, aspect="equal", frame_width=300)
    o.update(opts)
    return hv.RGB(rgb, bounds=_bounds(xs, ys), kdims=[xl, yl]).opts(**o)


def _positions_nm(ds: xr.Dataset):
    sy = np.asarray(ds["scan_y"].values, dtype=float)
    sx = np.asarray(ds["scan_x"].values, dtype=float)
    if sy.ndim > 1:
        raise ValueError("scan positions vary along a leading dim; select one angle/beam first")
    return sy * 1e9, sx * 1e9


def scan_points(ds: xr.Dataset, *, size=6, **opts):
    """Scan positions as points (nm), index in the hover; tap one to select it."""
    hv = _hv()
    sy, sx = _positions_nm(ds)
    pts = hv.Points((sx, sy, np.arange(sy.size)), kdims=["x (nm)", "y (nm)"], vdims=["scan"])
    o = dict(size=size, tools=["tap", "hover"], nonselection_alpha=0.35, color="#1f77b4",
             selection_color="#d62728", aspect="equal", frame_width=300, title="scan positions",
             invert_yaxis=True)
    o.update(opts)
    return pts.opts(**o)


def scan_explorer(ds: xr.Dataset, *, log=True):
    """Scan positions as points; clicking one shows its diffraction pattern (Tap/Selection1D).

    Parameters
    ----------
    ds : measurement Dataset with ``intensity`` (scan, qy, qx) (select any angle/beam first)
    log : bool
        Show patterns as log10(1 + counts).

    Returns
    -------
    holoviews.Layout of the points and a DynamicMap of the selected pattern.
    """
    hv = _hv()
    from holoviews import streams

    if tuple(ds["intensity"].dims) != ("scan", "qy", "qx"):
        raise ValueError(
            f"scan_explorer needs intensity (scan, qy, qx), got {ds['intensity'].dims}; "
            "select one angle/beam first, e.g. ds.isel(angle=0)")
    pts = scan_points(ds)
    sel = streams.Selection1D(source=pts, index=[0])

    def pattern(index):
        i = int(index[0]) if index else 0
        da = ds["intensity"].isel(scan=i)
        if not isinstance(da.data, np.ndarray):
            da = da.compute()
        return image(da.rename("counts"), title=f"pattern {i} (log10(1+counts))" if log else f"pattern {i}",
                     cmap=PATTERN_CMAP, logz=log)

    return (pts + hv.DynamicMap(pattern, streams=[sel])).cols(2)


def probe_view(probe, *, mode=0, title="probe"):
    """Amplitude and phase of one probe mode (``probe`` (mode, py, px) or (py, px))."""
    da = probe if isinstance(probe, xr.DataArray) else xr.DataArray(to_host(probe))
    if da.ndim == 3:
        power = (np.abs(to_host(da.values)) ** 2).sum(axis=(1, 2))
        frac = power[mode] / power.sum() if power.sum() > 0 else 0.0
        da = da.isel({da.dims[0]: mode})
        title = f"{title} mode {mode} ({100 * frac:.0f}% power)"
    if da.dims == ("dim_0", "dim_1"):
        da = da.rename(dim_0="py", dim_1="px")
    return amplitude_phase(da, title=title)


def object_view(obj, *, slice_index=0, mode="both", title="object"):
    """Object transmission of one slice: amplitude + phase (default) or HSV."""
    da = obj if isinstance(obj, xr.DataArray) else xr.DataArray(to_host(obj))
    if da.ndim == 3:
        da = da.isel({da.dims[0]: slice_index})
        title = f"{title} slice {slice_index}"
    if da.dims == ("dim_0", "dim_1"):
        da = da.rename(dim_0="y", dim_1="x")
    return complex_image(da, mode=mode, title=title)


def cost_curve(cost, *, title="cost", logy=True):
    """Convergence history (iteration vs cost) as a curve."""
    hv = _hv()
    c = to_host(cost.values if isinstance(cost, xr.DataArray) else cost).astype(float)
    return hv.Curve((np.arange(c.size), c), "iteration", "cost").opts(
        title=title, logy=logy and bool(np.all(c > 0)), frame_width=300, tools=["hover"])


def show(obj, **kwargs):
    """A view suited to a ptynb object: measurement -> scan explorer, reconstruction -> object
    + probe + cost, 2D complex -> amplitude/phase, real 2D -> image."""
    if isinstance(obj, xr.Dataset):
        kind = obj.attrs.get("kind")
        if kind == "measurement" or "intensity" in obj:
            ds = obj
            for d in ("beam", "angle"):
                if d in ds["intensity"].dims:
                    ds = ds.isel({d: 0})
            return scan_explorer(ds, **kwargs)
        if kind == "reconstruction" or "object" in obj:
            parts = [object_view(obj["object"].isel({d: 0 for d in obj["object"].dims[:-3]}))]
            parts.append(probe_view(obj["probe"].isel({d: 0 for d in obj["probe"].dims[:-3]})))
            layout = parts[0] + parts[1]
            if "cost" in obj and obj["cost"].ndim == 1:
                layout = layout + cost_curve(obj["cost"])
            return layout.cols(2)
    if isinstance(obj, xr.DataArray) and obj.ndim == 2:
        if np.iscomplexobj(obj.values):
            return amplitude_phase(obj, **kwargs)
        return image(obj, **kwargs)
    raise TypeError(f"no default view for {type(obj).__name__} with dims {getattr(obj, 'dims', None)}")
