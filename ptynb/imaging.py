"""2D image tools shared by tomography and stereo: sub-pixel shifts, registration, phase.

All functions take numpy or cupy arrays (or DataArrays) of images ``(..., y, x)``; leading
dims are a batch. Shifts are in pixels (``(sy, sx)``), phases in radians.

Shifts and registration
-----------------------
* :func:`shift_image` shifts by sub-pixel amounts with the Fourier shift theorem
  (periodic): ``shift_image(img, s)(r) = img(r - s)``, the content moves by ``+s``.
* :func:`phase_cross_correlation` returns the shift to apply to ``moving`` so that it
  matches ``reference`` (the scikit-image convention), to ``1 / upsample`` pixel by a local
  upsampled DFT of the cross-power spectrum (Guizar-Sicairos et al. 2008).

Phase
-----
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

import math

import numpy as np
import xarray as xr

from . import backend
from .backend import to_host, xp_of
from .data import ValidationError

__all__ = ["phase_cross_correlation", "remove_phase_ramp", "shift_image", "unwrap_phase",
           "wrap_phase"]


def _image_array(x, name, min_ndim=2):
    """The array of ``x`` (DataArray or array, numpy or cupy) checked to be numeric, finite
    and at least ``min_ndim``-dimensional (``(..., y, x)``); ValidationError naming ``name``."""
    a = x.data if isinstance(x, xr.DataArray) else x
    if not hasattr(a, "ndim"):
        a = np.asarray(a)
    if a.ndim < min_ndim:
        raise ValidationError(name, f"must have at least {min_ndim} dims (..., y, x), got shape {tuple(a.shape)}")
    if a.dtype == object or a.dtype.kind not in "biufc":
        raise ValidationError(name, f"has non-numeric dtype {a.dtype}")
    xp = xp_of(a)
    if a.dtype.kind in "fc" and not bool(xp.all(xp.isfinite(a))):
        bad = int(a.size - int(xp.count_nonzero(xp.isfinite(a))))
        raise ValidationError(name, f"contains {bad} NaN or inf value(s)")
    return a


# ----------------------------------------------------------------------------- shifts
def _freqs(n, xp):
    return xp.fft.fftfreq(n).astype(xp.float64)  # cycles / pixel


def _cdtype(dtype, xp):
    return xp.complex64 if dtype in (np.float32, np.complex64) else xp.complex128


# ----------------------------------------------------------------------------- shifts
def shift_image(img, shift):
    """Shift images by sub-pixel amounts with the Fourier shift theorem (periodic).

    Parameters
    ----------
    img : array (..., y, x), real or complex (numpy or cupy), or DataArray
        Images; leading dims are a batch.
    shift : array (2,) or (..., 2)
        ``(sy, sx)`` in pixels, broadcast against the batch; content moves by ``+shift``.

    Returns
    -------
    Array of the same shape and dtype (real input -> real output: the real part of the
    shifted signal), on the same device; a DataArray for DataArray input.
    """
    a = _image_array(img, "img")
    xp = xp_of(a)
    s = xp.asarray(shift if xp is not np else to_host(shift), dtype=xp.float64)
    if s.shape[-1:] != (2,):
        raise ValidationError("shift", f"must end in a length-2 axis (sy, sx), got shape {tuple(s.shape)}")
    if not bool(xp.all(xp.isfinite(s))):
        raise ValidationError("shift", "contains NaN or inf")
    ny, nx = a.shape[-2:]
    fy = _freqs(ny, xp)[:, None]
    fx = _freqs(nx, xp)[None, :]
    cdt = _cdtype(a.dtype, xp)
    ramp = xp.exp(-2j * np.pi * (s[..., 0, None, None] * fy + s[..., 1, None, None] * fx))
    out = backend.ifft2(backend.fft2(a.astype(cdt)) * ramp.astype(cdt))
    if a.dtype.kind != "c":
        out = out.real.astype(a.dtype if a.dtype.kind == "f" else xp.float64)
    else:
        out = out.astype(a.dtype)
    if isinstance(img, xr.DataArray):
        return img.copy(data=out)
    return out


def _upsampled_cc(R, centre, up, region, xp):
    """Cross-correlation ``sum_k R(k) exp(2 pi i f.r)`` on a grid of ``region`` points per
    axis spaced ``1/up`` pixels around ``centre`` (batched matrix-multiply DFT)."""
    ny, nx = R.shape[-2:]
    fy = _freqs(ny, xp)
    fx = _freqs(nx, xp)
    steps = (xp.arange(region, dtype=xp.float64) - region // 2) / up
    ry = centre[..., 0, None] + steps  # (B, region)
    rx = centre[..., 1, None] + steps
    Ey = xp.exp(2j * np.pi * ry[..., :, None] * fy)  # (B, region, ny)
    Ex = xp.exp(2j * np.pi * rx[..., :, None] * fx)  # (B, region, nx)
    cc = xp.matmul(xp.matmul(Ey, R), xp.swapaxes(Ex, -1, -2))  # (B, region, region)
    return cc, steps


def phase_cross_correlation(reference, moving, *, upsample: int = 20, mask=None,
                            normalization: str | None = "phase", return_error: bool = False):
    """Sub-pixel translation between images (cross-power spectrum + local upsampled DFT).

    1. ``R = F(ref) conj(F(moving))``, optionally normalised to unit modulus ("phase
       correlation"); its inverse FFT peaks at the integer shift.
    2. The correlation is re-evaluated by a matrix-multiplied DFT on a ``1.5 * upsample``
       wide grid of spacing ``1 / upsample`` pixel around that peak (Guizar-Sicairos et al.
       2008), giving the shift to ``1 / upsample`` pixel.

    Parameters
    ----------
    reference, moving : array (..., y, x), numpy or cupy (or DataArray)
        Broadcastable image stacks of equal image shape; real or complex.
    upsample : int
        Upsampling factor (1 = integer-pixel registration).
    mask : array (y, x) or (..., y, x), bool or float, optional
        Weights applied to both images (after subtracting their weighted means) before the
        transform: a smooth taper around the region holding the object, which removes edge
        effects and unshifted clutter outside it. Content that straddles the taper biases
        the estimate towards zero, so keep the object where the weight is 1.
    normalization : {"phase", None}
        ``"phase"``: phase correlation (robust to intensity differences, default); ``None``:
        plain cross-correlation (more robust with strong noise or low-pass content).
    return_error : bool
        Also return the peak height: for ``normalization=None`` the normalised correlation
        ``|cc_max| / sqrt(E_ref E_moving)`` (1 for identical shifted images); for "phase" the
        phase-correlation peak (1 for a pure shift).

    Returns
    -------
    shift : numpy array (..., 2)
        ``(sy, sx)`` in pixels to apply to ``moving`` (``shift_image(moving, shift)``) so
        it matches ``reference``, in ``[-n/2, n/2)``; (and the peak height (...,)).
    """
    ref = _image_array(reference, "reference")
    mov = _image_array(moving, "moving")
    if tuple(ref.shape[-2:]) != tuple(mov.shape[-2:]):
        raise ValidationError("moving", f"has image shape {tuple(mov.shape[-2:])} but reference has {tuple(ref.shape[-2:])}")
    xp = xp_of(ref, mov)
    ref, mov = xp.asarray(ref), xp.asarray(mov)
    try:
        bshape = tuple(np.broadcast_shapes(ref.shape[:-2], mov.shape[:-2]))
    except ValueError:
        raise ValidationError("moving", f"batch shape {mov.shape[:-2]} does not broadcast with reference {ref.shape[:-2]}") from None
    up = int(upsample)
    if up < 1:
        raise ValidationError("upsample", f"must be an integer >= 1, got {upsample!r}")
    if normalization not in ("phase", None):
        raise ValidationError("normalization", f"must be 'phase' or None, got {normalization!r}")
    ny, nx = ref.shape[-2:]
    r = ref.astype(xp.complex128)
    m_ = mov.astype(xp.complex128)
    if mask is not None:
        w = mask.data if isinstance(mask, xr.DataArray) else mask
        w = xp.asarray(w).astype(xp.float64)
        try:
            xp.broadcast_to(w, bshape + (ny, nx))
        except ValueError:
            raise ValidationError("mask", f"has shape {tuple(w.shape)}, not broadcastable to images {(ny, nx)}") from None
        if bool(xp.any(w < 0)) or not bool(xp.all(xp.isfinite(w))):
            raise ValidationError("mask", "weights must be finite and >= 0")
        ws = w.sum(axis=(-2, -1), keepdims=True)
        if bool(xp.any(ws == 0)):
            raise ValidationError("mask", "selects no pixels (all zero)")
        r = (r - (r * w).sum(axis=(-2, -1), keepdims=True) / ws) * w
        m_ = (m_ - (m_ * w).sum(axis=(-2, -1), keepdims=True) / ws) * w
    r = xp.ascontiguousarray(xp.broadcast_to(r, bshape + (ny, nx)).reshape(-1, ny, nx))
    m_ = xp.ascontiguousarray(xp.broadcast_to(m_, bshape + (ny, nx)).reshape(-1, ny, nx))
    R = backend.fft2(r, norm="backward") * xp.conj(backend.fft2(m_, norm="backward"))
    if normalization == "phase":
        amp = xp.abs(R)
        R = R / xp.maximum(amp, 1e-30 * float(amp.max()) + 1e-300)
    cc = xp.abs(backend.ifft2(R, norm="backward"))
    B = R.shape[0]
    flat = cc.reshape(B, -1).argmax(axis=1)
    shift = xp.stack([flat // nx, flat % nx], axis=-1).astype(xp.float64)
    nvec = xp.asarray([ny, nx], dtype=xp.float64)
    shift = xp.where(shift > nvec // 2, shift - nvec, shift)
    peak = cc.reshape(B, -1).max(axis=1)
    if up > 1:
        region = int(math.ceil(1.5 * up))
        region += 1 - region % 2  # odd, centred on the coarse peak
        centre = xp.round(shift * up) / up
        ccu, steps = _upsampled_cc(R, centre, up, region, xp)
        ccu = xp.abs(ccu)
        # a length-1 axis carries no shift information: stay at its centre
        if ny == 1:
            ccu = ccu[:, region // 2:region // 2 + 1, :]
        if nx == 1:
            ccu = ccu[:, :, region // 2:region // 2 + 1]
        wx = ccu.shape[-1]
        k = ccu.reshape(B, -1).argmax(axis=1)
        jy = k // wx if ny > 1 else k * 0 + region // 2
        jx = k % wx if nx > 1 else k * 0 + region // 2
        shift = centre + xp.stack([steps[jy], steps[jx]], axis=-1)
        peak = ccu.reshape(B, -1).max(axis=1) / (ny * nx)  # same scale as the coarse cc
    shift = np.asarray(to_host(shift)).reshape(bshape + (2,))
    if not return_error:
        return shift
    peak = np.asarray(to_host(peak), dtype=np.float64)
    if normalization is None:
        e1 = to_host(xp.sqrt((xp.abs(r) ** 2).sum(axis=(-2, -1))))
        e2 = to_host(xp.sqrt((xp.abs(m_) ** 2).sum(axis=(-2, -1))))
        peak = peak / np.maximum(e1 * e2, 1e-300)
    return shift, peak.reshape(bshape)


# ----------------------------------------------------------------------------- phase
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
    a = _image_array(phase_or_complex, "phase_or_complex")
    xp = xp_of(a)
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
    a = _image_array(phase, "phase")
    xp = xp_of(a)
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
