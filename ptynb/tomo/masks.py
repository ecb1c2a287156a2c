"""Fourier-space masks of the unmeasured regions: missing wedge (tomography) and missing cone
(laminography).

Frequencies are laid out like ``numpy.fft.fftshift(numpy.fft.fftn(volume))``: axis order
(kz, ky, kx), zero frequency at index ``n // 2``. With the convention of
:mod:`ptynb.tomo.geometry` the view at angle ``theta`` measures (Fourier slice theorem) the
plane perpendicular to its beam direction ``d = (cos theta, 0, -sin theta)`` (tomography), so
a frequency with in-plane polar angle ``atan2(kz, kx) = theta (mod 180)`` is measured. For
laminography the union of measured planes is everything except the double cone around the
rotation axis (volume y) with ``|ky| cos(tilt) > sqrt(kz^2 + kx^2) sin(tilt)``.
Masks are ``True`` where data are **missing**.
"""
from __future__ import annotations

import numpy as np

from ..data import ValidationError

__all__ = ["fourier_grid", "missing_cone_mask", "missing_wedge_mask"]


def _shape3(shape):
    try:
        s = tuple(int(n) for n in shape)
    except TypeError:
        raise ValidationError("shape", f"must be (nz, ny, nx), got {shape!r}") from None
    if len(s) != 3 or min(s) < 1:
        raise ValidationError("shape", f"must be three positive sizes (nz, ny, nx), got {shape!r}")
    return s


def fourier_grid(shape, voxel_size=1.0):
    """Centred frequency grids (kz, ky, kx) (broadcastable, cycles per metre or per voxel)."""
    s = _shape3(shape)
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    ks = [np.fft.fftshift(np.fft.fftfreq(n, d)) for n, d in zip(s, vs)]
    return (ks[0][:, None, None], ks[1][None, :, None], ks[2][None, None, :])


def missing_wedge_mask(shape, angles, voxel_size=1.0) -> np.ndarray:
    """Boolean (nz, ny, nx) mask, True where tomography about y with ``angles`` measures nothing.

    Parameters
    ----------
    shape : (nz, ny, nx)
    angles : array of degrees
        The covered range is taken as the smallest arc (modulo 180 deg) containing all views
        (sampling gaps between neighbouring views are not counted as missing; a largest gap
        below 18 deg and 2.5 median steps counts as full coverage).
    voxel_size : float or (dz, dy, dx)

    Returns
    -------
    ndarray of bool, fftshift layout (zero frequency at n // 2).
    """
    a = np.asarray(angles, dtype=np.float64).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise ValidationError("angles", "must be a non-empty array of finite degrees")
    kz, _, kx = fourier_grid(shape, voxel_size)
    m = np.sort(np.mod(a, 180.0))
    gaps = np.diff(np.concatenate([m, [m[0] + 180.0]]))
    big = int(np.argmax(gaps))
    start = m[(big + 1) % m.size]  # the covered arc starts after the largest gap
    span = 180.0 - gaps[big]
    if a.size > 1:
        step = np.median(np.diff(m)) if m.size > 1 else 0.0
        if gaps[big] <= max(2.5 * step, 18.0):
            return np.zeros(_shape3(shape), dtype=bool)  # full coverage
    phi = np.rad2deg(np.arctan2(kz, kx))  # (nz, 1, nx)
    rel = np.mod(phi - start, 180.0)
    tol = 1e-9
    missing_plane = rel > span + tol
    r0 = (kz == 0) & (kx == 0)
    out = np.broadcast_to(missing_plane & ~r0, _shape3(shape))
    return np.array(out)


def missing_cone_mask(shape, tilt, voxel_size=1.0) -> np.ndarray:
    """Boolean (nz, ny, nx) mask, True inside the laminography missing cone.

    The cone is around the rotation axis (volume y): ``|ky| cos(tilt) > sqrt(kz^2 + kx^2)
    sin(tilt)``, i.e. frequencies within ``90 - tilt`` degrees of the axis. ``tilt`` is the
    angle between rotation axis and beam in degrees (90: no cone). Assumes a full 360 deg
    rotation.
    """
    t = float(tilt)
    if not np.isfinite(t) or not (0 < t <= 90):
        raise ValidationError("tilt", f"must lie in (0, 90] degrees, got {tilt!r}")
    if t == 90.0:
        return np.zeros(_shape3(shape), dtype=bool)
    kz, ky, kx = fourier_grid(shape, voxel_size)
    kr = np.sqrt(kz ** 2 + kx ** 2)
    c, s = np.cos(np.deg2rad(t)), np.sin(np.deg2rad(t))
    return np.array(np.broadcast_to(np.abs(ky) * c > kr * s * (1 + 1e-12), _shape3(shape)))
