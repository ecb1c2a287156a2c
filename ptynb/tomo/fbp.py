"""Filtered backprojection for tomography and laminography.

What is implemented
-------------------
For a parallel beam whose rotation axis makes the angle ``tilt`` with the beam, the
backprojection of all views has, in 3D Fourier space, the density (per unit rotation angle)

    rho(k) = (number of turns covered) * 2 / (|k_u| sin(tilt))      (360 deg rotation)

where ``k_u`` is the frequency along the detector direction perpendicular to the projected
rotation axis - the detector x axis in this package's convention - and ``rho = 0`` inside
the missing cone ``|k_axis| cos(tilt) > |k_perp| sin(tilt)``. So the exact filter is a 1D
ramp ``|k_u|`` along detector rows, times ``sin(tilt)``, with every view weighted by the
angular interval it represents:

    f = sin(tilt) * (pi / period) * sum_i  w_i  BP_i( ramp_u * p_i )

``period`` is 180 deg for tomography (views 180 deg apart are mirror images) and 360 deg
for laminography, and ``w_i`` (radians) is half the distance to the neighbouring views on
that circle (uneven spacing), or, for a limited angular range (a gap larger than 2.5 times
the median step and than a tenth of the period), the one-sided step at the two ends. ``tilt = 90`` is the textbook
tomographic FBP (Kak & Slaney), ``tilt < 90`` the laminographic FBP; the missing cone is
simply left empty. The ramp is the band-limited spatial-domain ramp (``h[0] = 1/4``,
``h[n odd] = -1/(pi n)^2``) transformed on a zero-padded grid, times an optional window.

The backprojection ``BP_i`` is the exact adjoint of the projector rescaled by
``(pixel area) / (voxel volume)`` (the adjoint of a line-integral operator weights each
voxel by the ray length through it); the result therefore recovers the volume's values.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from ..backend import cpu_workers, xp_of
from ..data import ValidationError
from .projector import _on_device, _wrap_volume, projector_for

__all__ = ["FILTERS", "angle_weights", "fbp", "ramp_filter"]

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hann", "hamming", "none")


def angle_weights(angles, period_deg: float = 180.0) -> np.ndarray:
    """Angular interval (radians) represented by each view, on a circle of ``period_deg``.

    Interior views get half the distance to their two neighbours; with a limited angular
    range (the largest gap on the circle exceeds both 2.5 times the median step and a tenth of
    the period) the end views get their one-sided step. Views that coincide modulo the period share their interval.
    """
    a = np.asarray(angles, dtype=np.float64).reshape(-1)
    m = np.mod(a, period_deg)
    uniq, inv, counts = np.unique(np.round(m, 9), return_inverse=True, return_counts=True)
    nu = uniq.size
    if nu == 1:
        wu = np.array([float(period_deg)])
    else:
        gaps = np.diff(uniq)
        wrap = period_deg - (uniq[-1] - uniq[0])
        allg = np.concatenate([gaps, [wrap]])
        if allg.max() <= max(2.5 * np.median(allg), 0.1 * period_deg):  # all round the circle
            wu = 0.5 * (np.concatenate([[wrap], gaps]) + np.concatenate([gaps, [wrap]]))
        else:  # limited range: open the circle at its largest gap
            big = int(np.argmax(allg))
            order = np.concatenate([np.arange(big + 1, nu), np.arange(0, big + 1)])
            rot = np.concatenate([uniq[big + 1:], uniq[:big + 1] + period_deg]) \
                if big < nu - 1 else uniq
            if big == nu - 1:
                order = np.arange(nu)
            g = np.diff(rot)
            wu = np.empty(nu)
            wu[order] = 0.5 * (np.concatenate([[g[0]], g]) + np.concatenate([g, [g[-1]]]))
    return np.deg2rad(wu[inv] / counts[inv])


def ramp_filter(n_pad: int, filter: str = "ram-lak", dtype=np.float32) -> np.ndarray:
    """Frequency response (n_pad // 2 + 1 rfft bins) of the band-limited ramp times a window.

    The ramp is the transform of the discrete kernel ``h[0] = 1/4``, ``h[n odd] =
    -1/(pi n)^2`` (unit pixel), so it has no DC offset. Windows (``f`` in cycles/pixel, in
    [0, 1/2]): ``shepp-logan`` sinc(f), ``cosine`` cos(pi f), ``hann`` (1 + cos 2 pi f) / 2,
    ``hamming`` 0.54 + 0.46 cos(2 pi f), ``ram-lak`` 1.
    """
    key = str(filter).strip().lower().replace("_", "-")
    if key not in FILTERS:
        raise ValidationError("filter", f"unknown filter {filter!r}; use one of {FILTERS}")
    n = np.concatenate([np.arange(0, n_pad // 2 + 1), np.arange(-(n_pad - n_pad // 2 - 1), 0)])
    h = np.zeros(n_pad)
    h[0] = 0.25
    odd = (n % 2) != 0
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    H = np.real(np.fft.rfft(h))
    f = np.fft.rfftfreq(n_pad)
    if key == "shepp-logan":
        H *= np.sinc(f)
    elif key == "cosine":
        H *= np.cos(np.pi * f)
    elif key == "hann":
        H *= 0.5 * (1.0 + np.cos(2 * np.pi * f))
    elif key == "hamming":
        H *= 0.54 + 0.46 * np.cos(2 * np.pi * f)
    elif key == "none":
        H = np.ones_like(H)
    return H.astype(dtype)


def _filter_rows(p, H, n_pad, xp):
    """Apply the filter H (rfft bins) along the last axis of p with zero padding to n_pad."""
    nu = p.shape[-1]
    if xp is np:
        import scipy.fft as sfft

        if np.iscomplexobj(p):
            F = sfft.fft(p, n=n_pad, axis=-1, workers=cpu_workers())
            Hf = np.concatenate([H, H[1:(n_pad + 1) // 2][::-1]]) if n_pad > 1 else H
            return sfft.ifft(F * Hf, axis=-1, workers=cpu_workers())[..., :nu].astype(p.dtype)
        F = sfft.rfft(p, n=n_pad, axis=-1, workers=cpu_workers())
        F *= H
        return sfft.irfft(F, n=n_pad, axis=-1, workers=cpu_workers())[..., :nu].astype(p.dtype)
    Hd = xp.asarray(H)
    if xp.iscomplexobj(p):
        Hf = xp.concatenate([Hd, Hd[1:(n_pad + 1) // 2][::-1]])
        return xp.fft.ifft(xp.fft.fft(p, n=n_pad, axis=-1) * Hf, axis=-1)[..., :nu].astype(p.dtype)
    return xp.fft.irfft(xp.fft.rfft(p, n=n_pad, axis=-1) * Hd, n=n_pad, axis=-1)[..., :nu].astype(p.dtype)


def fbp(projections: xr.DataArray, filter: str = "ram-lak", padding: bool = True, *,
        volume_shape=None, voxel_size=None, device=None, dtype=np.float32) -> xr.DataArray:
    """Filtered backprojection (tomography or laminography) of a projections DataArray.

    Parameters
    ----------
    projections : DataArray (angle, y, x)
        Line integrals (m x value), e.g. from :func:`ptynb.tomo.project`; the geometry
        (``geometry``, ``tilt``, poses) and the volume grid come from its attrs/coords.
    filter : {"ram-lak", "shepp-logan", "cosine", "hann", "hamming"}
        Window applied to the ramp (see :func:`ramp_filter`).
    padding : bool
        Zero-pad detector rows to the next power of two >= 2 nu before filtering (avoids
        wrap-around); otherwise filter circularly on nu points.
    volume_shape, voxel_size : optional
        Override the recorded volume grid.
    device : {"cpu", "gpu", None}
    dtype : float32 or float64

    Returns
    -------
    DataArray (z, y, x)
        The reconstructed volume in the units of the projected quantity (line integral
        divided by metres); attrs record the method, filter and geometry. See the module
        docstring for the formula, the angular weights and the laminographic tilt factor.
    """
    op = projector_for(projections, volume_shape=volume_shape, voxel_size=voxel_size, dtype=dtype)
    g = op.geometry
    ramp_key = str(filter).strip().lower().replace("_", "-")
    if ramp_key not in FILTERS:
        raise ValidationError("filter", f"unknown filter {filter!r}; use one of {FILTERS}")
    p = _on_device(projections.data, device)
    xp = xp_of(p)
    rdt = np.float64 if (np.dtype(dtype) == np.float64 or p.dtype in (np.float64, np.complex128)) \
        else np.float32
    if p.dtype.kind in "iub":
        p = p.astype(rdt)
    nu = p.shape[-1]
    n_pad = int(2 ** int(np.ceil(np.log2(max(2 * nu, 2))))) if padding else nu
    H = ramp_filter(n_pad, ramp_key, rdt)
    q = _filter_rows(p, H, n_pad, xp) / rdt(op.pixel_size[1])
    period = 180.0 if g.tilt == 90.0 else 360.0
    w = angle_weights(g.angles, period)
    scale = np.sin(np.deg2rad(g.tilt)) * (180.0 / period)
    scale *= op.pixel_size[0] * op.pixel_size[1] / float(np.prod(op.voxel_size))
    q = q * xp.asarray((w * scale).astype(rdt))[:, None, None]
    vol = op.adjoint(q)
    return _wrap_volume(vol, op, name="fbp", method="fbp", filter=ramp_key, padding=bool(padding),
                        geometry=g.kind, tilt=g.tilt)
