"""Phase-ramp removal and phase unwrapping for ptychographic projections.

Ptychographic projections carry an arbitrary constant phase and, often, a linear phase ramp
(a sub-pixel shift of the diffraction centre or of the probe); thick samples wrap the phase.
Before tomography each projection is de-ramped over a region of known background (air,
substrate) and unwrapped.

* :func:`remove_phase_ramp` fits ``phi(y, x) = c0 + cy * y + cx * x`` (``y, x`` in pixels
  from the image centre ``n // 2``) over a mask by least squares and removes it. Real input is
  an (unwrapped) phase and the plane is subtracted; complex input is multiplied by the
  conjugate ramp ``exp(-i (c0 + cy y + cx x))``. For complex input the slopes are first
  estimated from the mean phase difference of neighbouring pixels (robust to wrapping of
  the ramp itself) and then refined by a least-squares fit to the remaining (small) phase.
* :func:`unwrap_phase` unwraps 2D phase maps with scikit-image's reliability-sorting
  path-following unwrapper (Herraez et al. 2002). It was chosen over a Fourier/DCT
  least-squares unwrapper because its result is *congruent* with the data (it differs from
  the wrapped input by exact multiples of 2 pi, so re-wrapping returns the input) and is exact
  wherever neighbouring pixels differ by less than pi; least-squares unwrappers smooth the
  phase globally and bias slopes around residues, which would change projection values.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from ..backend import to_host, xp_of
from ..data import ValidationError

__all__ = ["remove_phase_ramp", "unwrap_phase", "wrap_phase"]


def _data(x, name):
    if isinstance(x, xr.DataArray):
        a = x.data
    else:
        a = x
    if not hasattr(a, "ndim"):
        a = np.asarray(a)
    if a.ndim < 2:
        raise ValidationError(name, f"must have at least 2 dims (..., y, x), got shape {a.shape}")
    if a.dtype == object or not np.issubdtype(np.dtype(a.dtype.str if hasattr(a.dtype, "str") else a.dtype), np.number):
        raise ValidationError(name, f"has non-numeric dtype {a.dtype}")
    xp = xp_of(a)
    if not bool(xp.all(xp.isfinite(a))):
        bad = int(a.size - int(xp.count_nonzero(xp.isfinite(a))))
        raise ValidationError(name, f"contains {bad} NaN or inf value(s)")
    return a, xp


def _as_mask(mask, shape, xp):
    if mask is None:
        return None
    if isinstance(mask, xr.DataArray):
        mask = mask.data
    m = xp.asarray(mask)
    if m.dtype != bool:
        raise ValidationError("mask", f"must be boolean (True = background used for the fit), got {m.dtype}")
    try:
        m = xp.broadcast_to(m, shape)
    except ValueError:
        raise ValidationError("mask", f"has shape {tuple(m.shape)}, not broadcastable to the data {tuple(shape)}") from None
    counts = m.reshape(-1, shape[-2] * shape[-1]).sum(axis=1)
    if int(counts.min()) < 3:
        raise ValidationError("mask", "selects fewer than 3 pixels in at least one image; a plane needs 3")
    return m


def _grids(ny, nx, xp, dtype):
    y = (xp.arange(ny, dtype=dtype) - ny // 2)[:, None]
    x = (xp.arange(nx, dtype=dtype) - nx // 2)[None, :]
    return y, x


def _plane_fit(phase, w, xp):
    """Weighted LSQ plane per image: returns (..., 3) = (c0, cy, cx)."""
    ny, nx = phase.shape[-2:]
    y, x = _grids(ny, nx, xp, xp.float64)
    ones = xp.ones((ny, nx))
    basis = [ones, xp.broadcast_to(y, (ny, nx)), xp.broadcast_to(x, (ny, nx))]
    A = xp.empty(phase.shape[:-2] + (3, 3))
    b = xp.empty(phase.shape[:-2] + (3,))
    for i in range(3):
        b[..., i] = (w * basis[i] * phase).sum(axis=(-2, -1))
        for j in range(3):
            A[..., i, j] = (w * basis[i] * basis[j]).sum(axis=(-2, -1))
    try:
        return xp.linalg.solve(A, b[..., None])[..., 0]
    except Exception:
        raise ValidationError("mask", "pixels are collinear; cannot fit a plane") from None


def remove_phase_ramp(phase_or_complex, mask=None, *, return_params: bool = False):
    """Fit and remove a phase plane ``c0 + cy * y + cx * x`` from each image.

    Parameters
    ----------
    phase_or_complex : array or DataArray (..., y, x)
        Real: unwrapped phase (rad), the plane is subtracted. Complex: transmission, multiplied
        by ``exp(-i * plane)`` (amplitudes unchanged). numpy or cupy.
    mask : bool array (y, x) or (..., y, x), optional
        Pixels used for the fit (True = background of known constant phase). Default: all.
    return_params : bool
        Also return the fitted ``(..., 3)`` array ``(c0 [rad], cy [rad/pixel], cx [rad/pixel])``
        with ``y, x`` in pixels counted from index ``n // 2``.

    Returns
    -------
    Same type, shape and dtype as the input (DataArray coords/attrs kept), or
    ``(result, params)``.
    """
    a, xp = _data(phase_or_complex, "phase_or_complex")
    shape = a.shape
    m = _as_mask(mask, shape, xp)
    w = xp.ones(shape) if m is None else m.astype(xp.float64)
    ny, nx = shape[-2:]
    y, x = _grids(ny, nx, xp, xp.float64)
    if xp.iscomplexobj(a):
        z = a.astype(xp.complex128)
        zy = (z[..., 1:, :] * xp.conj(z[..., :-1, :]) * (w[..., 1:, :] * w[..., :-1, :]))
        zx = (z[..., :, 1:] * xp.conj(z[..., :, :-1]) * (w[..., :, 1:] * w[..., :, :-1]))
        cy = xp.angle(zy.sum(axis=(-2, -1)))
        cx = xp.angle(zx.sum(axis=(-2, -1)))
        ramp = cy[..., None, None] * y + cx[..., None, None] * x
        z1 = z * xp.exp(-1j * ramp)
        c0 = xp.angle((z1 * w).sum(axis=(-2, -1)))
        z1 = z1 * xp.exp(-1j * c0)[..., None, None]
        # refine: least-squares plane of the residual phase (small, no wraps over the mask)
        p = _plane_fit(xp.angle(z1), w, xp)
        params = xp.stack([c0, cy, cx], axis=-1) + p
        plane = (params[..., 0, None, None] + params[..., 1, None, None] * y
                 + params[..., 2, None, None] * x)
        out = (a * xp.exp(-1j * plane)).astype(a.dtype)
    else:
        ph = a.astype(xp.float64)
        params = _plane_fit(ph, w, xp)
        plane = (params[..., 0, None, None] + params[..., 1, None, None] * y
                 + params[..., 2, None, None] * x)
        out = (ph - plane).astype(a.dtype if a.dtype.kind == "f" else xp.float64)
    if isinstance(phase_or_complex, xr.DataArray):
        out = phase_or_complex.copy(data=out)
        out.attrs = dict(phase_or_complex.attrs, phase_ramp_removed=1)
    return (out, params) if return_params else out


def wrap_phase(phase):
    """Wrap phase values (rad) into ``[-pi, pi)`` (numpy or cupy arrays)."""
    return (phase + np.pi) % (2 * np.pi) - np.pi


def unwrap_phase(phase, mask=None, *, wrap_around: bool = False, seed: int | None = 0):
    """Unwrap 2D phase maps (each image of a stack separately).

    Uses :func:`skimage.restoration.unwrap_phase` (reliability-sorting path following), on
    the host; cupy input is copied there and back.

    Parameters
    ----------
    phase : real array or DataArray (..., y, x)
        Wrapped phase (rad). Complex input is refused (pass ``np.angle(z)``).
    mask : bool array (y, x) or (..., y, x), optional
        True where the phase is **valid**; invalid pixels are left out of the unwrapping
        paths and returned unchanged.
    wrap_around : bool
        Treat the image as periodic along both axes.
    seed : int, optional
        Tie-breaking seed of the skimage algorithm (deterministic by default).

    Returns
    -------
    Same type and shape: ``phase + 2 pi k`` with integer ``k`` per pixel; the additive
    constant (a multiple of 2 pi) is arbitrary.
    """
    a, xp = _data(phase, "phase")
    if xp.iscomplexobj(a):
        raise ValidationError("phase", "is complex; pass the phase angle (np.angle) to unwrap")
    from skimage.restoration import unwrap_phase as _sk_unwrap

    h = to_host(a).astype(np.float64)
    m = None
    if mask is not None:
        mm = mask.data if isinstance(mask, xr.DataArray) else mask
        mm = np.asarray(to_host(mm))
        if mm.dtype != bool:
            raise ValidationError("mask", f"must be boolean (True = valid), got {mm.dtype}")
        try:
            m = np.broadcast_to(mm, h.shape)
        except ValueError:
            raise ValidationError("mask", f"has shape {mm.shape}, not broadcastable to {h.shape}") from None
        if not m.reshape(-1, h.shape[-2] * h.shape[-1]).any(axis=1).all():
            raise ValidationError("mask", "marks every pixel of at least one image invalid")
    flat = h.reshape(-1, *h.shape[-2:])
    out = np.empty_like(flat)
    for i in range(flat.shape[0]):
        img = flat[i]
        if m is not None:
            mi = m.reshape(-1, *h.shape[-2:])[i]
            img = np.ma.masked_array(img, mask=~mi)
            res = _sk_unwrap(img, wrap_around=wrap_around, rng=seed)
            out[i] = np.where(mi, np.ma.getdata(res), flat[i])
        else:
            out[i] = _sk_unwrap(img, wrap_around=wrap_around, rng=seed)
    out = out.reshape(h.shape).astype(a.dtype if a.dtype.kind == "f" else np.float64)
    if xp is not np:
        out = xp.asarray(out)
    if isinstance(phase, xr.DataArray):
        res = phase.copy(data=out)
        res.attrs = dict(phase.attrs, phase_unwrapped=1)
        return res
    return out
