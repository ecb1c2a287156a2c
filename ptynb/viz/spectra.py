"""Spectra and resolution: radially averaged power spectra and FRC/FSC curves with the
half-bit threshold curve and the resolution marked (a vertical line and its label)."""
from __future__ import annotations

import numpy as np
import xarray as xr

from ..backend import to_host
from ._core import CURVE_WIDTH, _hv, dim

__all__ = ["radial_power_spectrum", "power_spectrum_view", "frc_view", "half_bit_curve"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def radial_power_spectrum(img, *, pixel_size=None) -> xr.DataArray:
    """Radially (spherically) averaged power spectrum of a 2D image or 3D volume.

    Parameters
    ----------
    img : array or DataArray (y, x) or (z, y, x); complex allowed
    pixel_size : float, optional
        Metres (default: from the DataArray's last coordinate, else 1 -> q in 1/pixel).

    Returns
    -------
    DataArray ``power`` over ``q`` (1/m or 1/pixel), mean removed, zero shell dropped.
    """
    a = np.asarray(to_host(img.values if isinstance(img, xr.DataArray) else img))
    if a.ndim not in (2, 3):
        raise ValueError(f"radial_power_spectrum: expected 2-D or 3-D data, got shape {a.shape}")
    if pixel_size is None and isinstance(img, xr.DataArray) and img.dims[-1] in img.coords \
            and img.sizes[img.dims[-1]] > 1:
        c = img[img.dims[-1]].values
        pixel_size = float(abs(c[1] - c[0]))
    physical = pixel_size is not None
    d = float(pixel_size) if physical else 1.0
    a = np.nan_to_num(a.astype(np.complex128 if np.iscomplexobj(a) else np.float64))
    F = np.fft.fftn(a - a.mean())
    grids = np.meshgrid(*[np.fft.fftfreq(n, d) for n in a.shape], indexing="ij")
    q = np.sqrt(sum(g ** 2 for g in grids))
    dq = 1.0 / (max(a.shape) * d)
    nshell = int(0.5 / d / dq) + 1
    idx = np.rint(q / dq).astype(int)
    keep = idx < nshell
    p = np.bincount(idx[keep], weights=(np.abs(F) ** 2)[keep], minlength=nshell)
    n = np.bincount(idx[keep], minlength=nshell)
    with np.errstate(invalid="ignore", divide="ignore"):
        power = p / n / a.size
    qq = np.arange(nshell) * dq
    return xr.DataArray(power[1:], dims=("q",), coords={"q": ("q", qq[1:], {"units": "1/m" if physical else "1/pixel"})},
                        name="power", attrs={"long_name": "power"})


def _q_axis(q_units):
    return (1e-9, dim("q", "1/nm", "spatial frequency q")) if q_units == "1/m" else \
        (1.0, dim("q", "1/px", "spatial frequency q"))


def power_spectrum_view(img, *, pixel_size=None, title="radially averaged power spectrum", label="", **opts):
    """Log-log curve of :func:`radial_power_spectrum` (q in 1/nm when the pixel size is known)."""
    hv = _hv()
    ps = img if isinstance(img, xr.DataArray) and img.name == "power" and "q" in img.dims else \
        radial_power_spectrum(img, pixel_size=pixel_size)
    f, qd = _q_axis(ps["q"].attrs.get("units", "1/pixel"))
    vals = ps.values
    ok = np.isfinite(vals) & (vals > 0)
    o = dict(title=title, logx=True, logy=True, frame_width=CURVE_WIDTH, frame_height=240, show_grid=True,
             tools=["hover"])
    o.update(opts)
    return hv.Curve((ps["q"].values[ok] * f, vals[ok]), qd, dim("power", "a.u."), label=label).opts(**o)


def half_bit_curve(n_voxels):
    """The half-bit threshold (van Heel & Schatz 2005) for shells of ``n_voxels`` voxels."""
    from ..metrics import half_bit_threshold

    return half_bit_threshold(np.maximum(np.asarray(n_voxels, dtype=float), 1.0))


def _threshold(curve: xr.DataArray, q_index_ndim=2):
    """The half-bit threshold of a correlation curve and where it came from."""
    if "threshold_half_bit" in curve.coords:
        return np.asarray(curve["threshold_half_bit"].values, float), "half-bit threshold"
    if "n_voxels" in curve.coords:
        return half_bit_curve(curve["n_voxels"].values), "half-bit threshold"
    # no shell counts stored: rings (2-D) or shells (3-D) of a square/cubic grid
    k = np.arange(curve.sizes["q"], dtype=float)
    n = 2 * np.pi * k if q_index_ndim == 2 else 4 * np.pi * k ** 2
    return half_bit_curve(n), "half-bit threshold (square-grid shells)"


def frc_view(curves, *, resolution=None, title=None, kind=None, **opts):
    """FRC/FSC curve(s) with the half-bit threshold curve and the resolution marked.

    Parameters
    ----------
    curves : DataArray over ``q`` (from :func:`ptynb.metrics.frc`/``fsc``: its
        ``threshold_half_bit`` coord and ``resolution_half_bit`` attr are used), or a dict
        label -> such a DataArray, or a DataArray (label, q) (e.g. the stereo ``frc`` per beam).
    resolution : float or dict label -> float, optional
        Resolution (m, or px for curves over 1/pixel) at the half-bit crossing; default from
        the curves' attrs.
    kind : {"FRC", "FSC"}, optional
        Default from the curve's ``kind`` attr.

    Returns
    -------
    holoviews.Overlay: curves, dashed threshold, a vertical line at each resolution with a
    label "12.3 nm".
    """
    hv = _hv()
    if isinstance(curves, xr.DataArray) and curves.ndim == 2:
        other = next(d for d in curves.dims if d != "q")
        items = {str(v): curves.isel({other: i}) for i, v in enumerate(curves[other].values)} \
            if other in curves.coords else {f"{other} {i}": curves.isel({other: i}) for i in range(curves.sizes[other])}
    elif isinstance(curves, xr.DataArray):
        items = {str(curves.attrs.get("label", "")): curves}
    else:
        items = {str(k): v for k, v in curves.items()}
    if not isinstance(resolution, dict):
        resolution = {k: resolution for k in items} if resolution is not None else {}
    first = next(iter(items.values()))
    kind = kind or str(first.attrs.get("kind", "frc")).upper()
    q_units = first["q"].attrs.get("units", "1/m" if np.nanmax(first["q"].values) > 10 else "1/pixel")
    f, qd = _q_axis(q_units)
    cd = dim("correlation", None, kind)
    elements = []
    thr, thr_label = _threshold(first, 3 if kind == "FSC" else 2)
    q0 = first["q"].values * f
    top = 1.05
    for i, (lab, c) in enumerate(items.items()):
        color = _COLORS[i % len(_COLORS)]
        q = c["q"].values * f
        elements.append(hv.Curve((q[1:], c.values[1:]), qd, cd, label=lab or kind).opts(color=color, line_width=2))
        r = resolution.get(lab, c.attrs.get("resolution_half_bit"))
        if r is not None and np.isfinite(r) and r > 0:
            qr = 1.0 / (r * (1e9 if q_units == "1/m" else 1.0)) if q_units == "1/m" else 1.0 / r
            text = f"{r * 1e9:.1f} nm" if q_units == "1/m" else f"{r:.1f} px"
            elements.append(hv.VLine(qr).opts(color=color, line_dash="dotted", line_width=1.5))
            elements.append(hv.Text(qr, top - 0.08 * (i + 1), f" {lab}: {text}".rstrip() if lab else f" {text}",
                                    halign="left", fontsize=9).opts(color=color))
    elements.insert(0, hv.Curve((q0[1:], thr[1:]), qd, cd, label=thr_label).opts(
        color="black", line_dash="dashed", line_width=1))
    o = dict(title=title or f"{kind} with the half-bit threshold", frame_width=CURVE_WIDTH, frame_height=260,
             ylim=(-0.1, top), legend_position="right", show_grid=True, tools=["hover"])
    o.update(opts)
    return hv.Overlay(elements).opts(**o)
