"""Images with physical axes: real images, complex images (amplitude/phase or HSV), probes, objects.

Complex arrays are never handed to a plot: they are shown as amplitude and phase or as an HSV
composite (hue = phase, value = amplitude). Phases that wrap are drawn on a cyclic colour map over
-pi..pi; small phases on a diverging map over their own symmetric range (:func:`phase_colors`).
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from ..backend import to_host
from ._core import (AMPLITUDE_CMAP, FRAME_WIDTH, _as_2d, _bounds, _hv, _scaled_coords,
                    _unit_for, complex_to_rgb, dim, phase_colors, value_label)

__all__ = ["image", "amplitude_phase", "complex_image", "probe_view", "object_view"]


def image(da, *, title="", cmap="viridis", unit=None, colorbar=True, logz=False, clim=None,
          label=None, value_unit=None, **opts):
    """A real 2D image as ``hv.Image`` with axes in display units (nm, um, 1/nm or px).

    Parameters
    ----------
    da : real (y, x) DataArray or array
        Complex input is refused: use :func:`complex_image` (amplitude/phase or HSV).
    unit : {"nm", "um", "pm", "1/nm", "px"}, optional
        Axis unit (default: chosen from the coordinate span).
    label, value_unit : str, optional
        Quantity and unit of the colour bar (default: the DataArray's ``long_name``/name and
        ``units`` attrs), e.g. ``label="phase", value_unit="rad"`` -> "phase (rad)".
    **opts
        HoloViews options, e.g. ``frame_width``.
    """
    hv = _hv()
    da = _as_2d(da, title or "image")
    if np.iscomplexobj(da.values):
        raise TypeError("image() got complex data; use complex_image() (amplitude + phase or HSV)")
    unit = unit or _unit_for(da)
    xs, ys, (xd, yd) = _scaled_coords(da, unit)
    vals = np.asarray(da.values, dtype=np.float32)
    name, vunit = value_label(da)
    if label is not None:
        name, vunit = label, value_unit
    elif value_unit is not None:
        vunit = value_unit
    if logz:
        vals = np.log10(np.maximum(vals, 0) + 1.0)
        name, vunit = f"log10(1 + {name})", None
    vd = dim("value", vunit, name)
    img = hv.Image(vals[::-1], bounds=_bounds(xs, ys), kdims=[xd, yd], vdims=[vd])
    o = dict(cmap=cmap, colorbar=colorbar, title=title, aspect="equal", responsive=False,
             frame_width=FRAME_WIDTH, tools=["hover"], active_tools=["wheel_zoom"], fontsize={"title": 10})
    if clim is not None:
        o["clim"] = clim
    o.update(opts)
    return img.opts(**o)


def amplitude_phase(da, *, title="", unit=None, **opts):
    """Side-by-side amplitude (grey) and phase of a complex 2D array (phase colours from
    :func:`phase_colors`: cyclic over -pi..pi where it wraps, else diverging over its range)."""
    hv = _hv()
    da = _as_2d(da, title or "complex")
    amp = da.copy(data=np.abs(da.values).astype(np.float32))
    ph = da.copy(data=np.angle(da.values).astype(np.float32))
    cmap, clim = phase_colors(ph.values, amp.values)
    left = image(amp, title=f"{title} amplitude".strip(), cmap=AMPLITUDE_CMAP, unit=unit,
                 label="amplitude", **opts)
    right = image(ph, title=f"{title} phase".strip(), cmap=cmap, unit=unit,
                  clim=clim, label="phase", value_unit="rad", **opts)
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
        return image(da.copy(data=np.abs(da.values)), title=title, cmap=AMPLITUDE_CMAP, unit=unit,
                     label="amplitude", **opts)
    if mode == "phase":
        cmap, clim = phase_colors(np.angle(da.values), np.abs(da.values))
        return image(da.copy(data=np.angle(da.values)), title=title, cmap=cmap, unit=unit,
                     clim=clim, label="phase", value_unit="rad", **opts)
    if mode != "hsv":
        raise ValueError(f"mode must be 'hsv', 'amplitude', 'phase' or 'both', not {mode!r}")
    unit = unit or _unit_for(da)
    xs, ys, (xd, yd) = _scaled_coords(da, unit)
    rgb = complex_to_rgb(da.values)[::-1]
    o = dict(title=f"{title} (hue: phase, brightness: amplitude)".strip() if title else
             "hue: phase, brightness: amplitude", aspect="equal", frame_width=FRAME_WIDTH,
             fontsize={"title": 10})
    o.update(opts)
    return hv.RGB(rgb, bounds=_bounds(xs, ys), kdims=[xd, yd]).opts(**o)


def probe_view(probe, *, mode=0, title="probe", **opts):
    """Amplitude and phase of one probe mode (``probe`` (mode, py, px) or (py, px))."""
    da = probe if isinstance(probe, xr.DataArray) else xr.DataArray(to_host(probe))
    if da.ndim == 3:
        power = (np.abs(to_host(da.values)) ** 2).sum(axis=(1, 2))
        frac = power[mode] / power.sum() if power.sum() > 0 else 0.0
        da = da.isel({da.dims[0]: mode})
        title = f"{title} mode {mode} ({100 * frac:.0f}% power)"
    if da.dims == ("dim_0", "dim_1"):
        da = da.rename(dim_0="py", dim_1="px")
    return amplitude_phase(da, title=title, **opts)


def object_view(obj, *, slice_index=0, mode="both", title="object", **opts):
    """Object transmission of one slice: amplitude + phase (default) or HSV."""
    da = obj if isinstance(obj, xr.DataArray) else xr.DataArray(to_host(obj))
    if da.ndim == 3:
        da = da.isel({da.dims[0]: slice_index})
        title = f"{title} slice {slice_index}"
    if da.dims == ("dim_0", "dim_1"):
        da = da.rename(dim_0="y", dim_1="x")
    return complex_image(da, mode=mode, title=title, **opts)
