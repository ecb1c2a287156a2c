"""Alignment of projection series: sub-pixel registration, projection matching, joint pose refinement.

Conventions
-----------
* A shift ``s = (sy, sx)`` in pixels applied to an image moves its content by ``+s``:
  ``shift_image(img, s)(r) = img(r - s)`` (periodic Fourier shift).
* :func:`phase_cross_correlation` returns the shift to apply to ``moving`` so that it
  matches ``reference`` (the scikit-image convention).
* :func:`align` returns the projections with the correction applied and the correction
  itself in pixels as coords ``shift_y``, ``shift_x`` along ``angle``: the aligned
  projection ``k`` is ``shift_image(measured[k], (shift_y[k], shift_x[k]))``.

Null space
----------
A rigid translation of the volume moves every projection in a way that fits the data
equally well, so alignment determines the shifts only up to such motions. For tomography
(rotation about ``y``) these are a constant ``shift_y`` and ``shift_x = a cos(theta) +
b sin(theta)``; :func:`rigid_null_space` gives the basis for any geometry and
:func:`remove_null_space` projects it out (used to compare estimates with ground truth and,
by default, to keep the reconstruction centred).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import xarray as xr

from .. import backend
from ..backend import to_host, xp_of
from ..data import ValidationError

__all__ = [
    "phase_cross_correlation",
    "shift_image",
    "rigid_null_space",
    "remove_null_space",
    "rotation_gauge",
    "align",
    "joint_refinement",
    "MSPT_SCHEDULE",
]


# ----------------------------------------------------------------------------- helpers
def _arr(x, name, min_ndim=2):
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
    a = _arr(img, "img")
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
    ref = _arr(reference, "reference")
    mov = _arr(moving, "moving")
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
        wy, wx = ccu.shape[-2:]
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


# ----------------------------------------------------------------------------- geometry helpers
def _default_tilt(geometry, tilt):
    """``tilt`` in degrees, or the default of :func:`ptynb.tomo.project` when None
    (61.108 deg, ADePt, for laminography; 90 otherwise)."""
    if tilt is not None:
        return float(tilt)
    from .geometry import ADEPT_TILT_DEG

    return ADEPT_TILT_DEG if str(geometry).strip().lower().startswith("lamino") else 90.0


def _geometry_of(projections, geometry=None, tilt=None):
    attrs = projections.attrs if isinstance(projections, xr.DataArray) else {}
    g = geometry if geometry is not None else attrs.get("geometry", "tomography")
    t = tilt if tilt is not None else attrs.get("tilt", None)
    return str(g), _default_tilt(g, t)


def _translation_response(ang_deg, geometry, tilt):
    """(3, angle, 2): detector (dy, dx) per unit volume translation along (z, y, x).

    With the convention of :mod:`ptynb.tomo.geometry` (``r_lab = R s``, detector = lab
    (y, x)) a translation ``t`` of the sample moves projection ``k`` by ``(R_k t)[y, x]``;
    in pixels when voxel and detector pixel sizes are equal (the null space only needs the
    span).
    """
    from .geometry import Geometry

    g = str(geometry).strip().lower()
    if g.startswith("tomo"):
        geo = Geometry("tomography", ang_deg, 90.0)
    elif g.startswith("lamino"):
        geo = Geometry("laminography", ang_deg, float(tilt))
    elif g == "posed":
        geo = Geometry("laminography" if float(tilt) != 90.0 else "tomography", ang_deg, float(tilt))
    else:
        raise ValidationError("geometry", f"unknown geometry {geometry!r} for the null space")
    R = geo.rotations()  # (angle, 3, 3), (z, y, x) components
    return np.transpose(R[:, 1:3, :], (2, 0, 1)).copy()


def rigid_null_space(angles, *, geometry: str = "tomography", tilt: float | None = None) -> np.ndarray:
    """Orthonormal basis of the per-angle shift patterns produced by rigid volume translations.

    Parameters
    ----------
    angles : array (angle,), degrees
    geometry : {"tomography", "laminography"}
    tilt : float, optional
        Laminography angle between rotation axis and beam (degrees; 90 = tomography);
        default 61.108 (ADePt) for laminography, as in :func:`ptynb.tomo.project`.

    Returns
    -------
    ndarray (k, angle, 2)
        Orthonormal (over angles and both components) patterns ``(dy, dx)``; ``k <= 3``
        (3 for laminography and for tomography over more than one angle).
    """
    ang = np.asarray(angles, dtype=np.float64).reshape(-1)
    vecs = _translation_response(ang, geometry, _default_tilt(geometry, tilt))
    Bm = vecs.reshape(vecs.shape[0], -1)
    _, s, vt = np.linalg.svd(Bm, full_matrices=False)
    keep = s > 1e-8 * max(float(s.max()), 1e-300)
    return vt[keep].reshape(-1, ang.size, 2)


def remove_null_space(shifts, angles=None, *, geometry: str = "tomography",
                      tilt: float | None = None, basis=None) -> np.ndarray:
    """Remove from per-angle shifts ``(angle, 2)`` their rigid-translation component.

    Returns ``shifts - B^T (B shifts)`` (pixels) with ``B`` from :func:`rigid_null_space`
    (or the given ``basis``).
    """
    s = np.asarray(shifts, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != 2:
        raise ValidationError("shifts", f"must have shape (angle, 2), got {s.shape}")
    if basis is None:
        if angles is None:
            raise ValidationError("angles", "are required when no basis is given")
        basis = rigid_null_space(angles, geometry=geometry, tilt=tilt)
    Bm = np.asarray(basis).reshape(len(basis), -1)
    if Bm.shape[1] != s.size:
        raise ValidationError("shifts", f"has {s.shape[0]} angles but the basis has {Bm.shape[1] // 2}")
    v = s.reshape(-1)
    return (v - Bm.T @ (Bm @ v)).reshape(s.shape)


# ----------------------------------------------------------------------------- align
def _progress(iterable, progress, desc):
    if not progress:
        return iterable
    try:
        from tqdm.auto import tqdm
    except Exception:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=desc, leave=False)


def _check_projections(projections):
    if not isinstance(projections, xr.DataArray):
        raise ValidationError("projections", f"must be a DataArray (angle, y, x), got {type(projections).__name__}")
    if tuple(projections.dims) != ("angle", "y", "x"):
        raise ValidationError("projections", f"has dims {projections.dims}; expected ('angle', 'y', 'x')")
    if "angle" not in projections.coords:
        raise ValidationError("angle", "coordinate missing on projections (degrees)")
    a = _arr(projections, "projections", min_ndim=3)
    if a.dtype.kind == "c":
        raise ValidationError("projections", "are complex; align a real quantity (the unwrapped phase)")
    ang = np.asarray(projections["angle"].values, dtype=np.float64)
    if not np.all(np.isfinite(ang)):
        raise ValidationError("angle", "contains NaN or inf")
    if projections.sizes["angle"] < 2:
        raise ValidationError("projections", "alignment needs at least 2 angles")
    return a, ang


def _output(projections, aligned, shifts, method, poses=None):
    out = projections.copy(data=aligned)
    out = out.assign_coords(
        shift_y=("angle", np.asarray(shifts[:, 0], dtype=np.float64), {"units": "pixel"}),
        shift_x=("angle", np.asarray(shifts[:, 1], dtype=np.float64), {"units": "pixel"}),
    )
    if poses is not None:
        for k, name in enumerate(("pose_rx", "pose_ry", "pose_rz")):
            out = out.assign_coords({name: ("angle", np.asarray(poses[:, k], dtype=np.float64),
                                            {"units": "degree"})})
    out.attrs = dict(projections.attrs, aligned=1, alignment_method=method)
    return out


def _to_xp(a, xp):
    return a if xp is np else xp.asarray(a)


def _align_cross_correlation(P, ang, geometry, tilt, iterations, upsample, progress, callback):
    """Vertical profile registration + centre-of-mass sinusoid fit (see :func:`align`)."""
    xp = xp_of(P)
    Ph = np.asarray(to_host(P), dtype=np.float64)
    n = Ph.shape[0]
    tomo = str(geometry).lower().startswith("tomo") or abs(tilt - 90.0) < 1e-9
    mass = Ph.sum(axis=(1, 2))
    if np.any(mass == 0) or np.any(np.sign(mass) != np.sign(mass[0])):
        raise ValidationError("projections", "centre-of-mass alignment needs a non-zero total "
                                             "of the same sign in every projection")
    yy = np.arange(Ph.shape[1]) - Ph.shape[1] // 2
    xx = np.arange(Ph.shape[2]) - Ph.shape[2] // 2
    com = np.stack([(Ph.sum(axis=2) * yy).sum(axis=1) / mass,
                    (Ph.sum(axis=1) * xx).sum(axis=1) / mass], axis=1)
    # the centre of mass of each projection is the projection of the volume's centre of
    # mass: a pattern in the rigid null space. Whatever is left is the misalignment.
    shifts = -remove_null_space(com, ang, geometry=geometry, tilt=tilt)
    history = []
    if tomo:
        # vertical mass profiles are invariant to rotation about y: registering them is
        # more robust than the vertical centre of mass (insensitive to mass leaving the
        # field of view at the top or bottom)
        prof = Ph.sum(axis=2)[:, None, :]  # (angle, 1, y)
        sy = np.zeros(n)
        for it in _progress(range(iterations), progress, "align (cross-correlation)"):
            cur = shift_image(prof, np.stack([np.zeros(n), sy], axis=1))
            ref = cur.mean(axis=0, keepdims=True)
            d = phase_cross_correlation(ref, cur, upsample=upsample, normalization=None)[:, 1]
            sy = sy + d
            sy -= sy.mean()
            history.append(float(np.sqrt(np.mean(d ** 2))))
            if callback is not None:
                callback(it, {"shift_update_rms": history[-1], "shifts": None})
            if history[-1] < 0.5 / upsample:
                break
        shifts[:, 0] = sy
    aligned = shift_image(P, _to_xp(shifts, xp))
    return aligned, shifts, {"history": np.asarray(history)}


def _gauss_lowpass(a, sigma, xp):
    if not sigma:
        return a
    ny, nx = a.shape[-2:]
    fy = _freqs(ny, xp)[:, None]
    fx = _freqs(nx, xp)[None, :]
    g = xp.exp(-2 * (np.pi * sigma) ** 2 * (fy ** 2 + fx ** 2))
    return backend.ifft2(backend.fft2(a.astype(xp.complex128)) * g).real


def _projection_matching(projections, P, ang, geom, tlt, iterations, reconstruct,
                         recon_iterations, upsample, initial_shifts, lowpass, remove_null,
                         tol, max_step, progress, callback, options):
    from .. import tomo  # lazy: ptynb.tomo imports this module

    if reconstruct not in ("sirt", "fbp"):
        raise ValidationError("reconstruct", f"must be 'sirt' or 'fbp', got {reconstruct!r}")
    xp = xp_of(P)
    n = P.shape[0]
    shifts = np.zeros((n, 2))
    if initial_shifts is not None:
        s0 = np.asarray(initial_shifts, dtype=np.float64)
        if s0.shape != (n, 2) or not np.all(np.isfinite(s0)):
            raise ValidationError("initial_shifts", f"must be finite with shape ({n}, 2), got {s0.shape}")
        shifts[:] = s0
    basis = rigid_null_space(ang, geometry=geom, tilt=tlt) if remove_null else None
    recon_kw = dict(options.pop("recon_options", None) or {})
    project_kw = dict(options.pop("project_options", None) or {})
    if options:
        raise ValidationError("options", f"unknown keyword(s) for projection matching: {sorted(options)}")
    history, residuals = [], []
    vol = None
    for it in _progress(range(iterations), progress, "projection matching"):
        cur = shift_image(P, _to_xp(shifts, xp))
        cur_da = projections.copy(data=cur)
        if reconstruct == "sirt":
            # warm start from the previous round's volume (the shifts change little)
            kw = dict(iterations=recon_iterations, progress=False,
                      x0=None if vol is None else vol.data)
        else:
            kw = {}
        kw.update(recon_kw)
        vol = getattr(tomo, reconstruct)(cur_da, **kw)
        rep = tomo.project(vol, ang, **_project_geometry_kwargs(projections, geom, tlt), **project_kw)
        R = xp.asarray(rep.data) if xp is not np else np.asarray(to_host(rep.data))
        if tuple(R.shape) != tuple(cur.shape):
            raise ValidationError("projections", f"reprojection has shape {tuple(R.shape)}, the data {tuple(cur.shape)}; "
                                                 "pass recon_options giving a matching volume")
        resid = float(xp.sqrt(xp.mean((R - cur) ** 2)))
        d = phase_cross_correlation(_gauss_lowpass(R, lowpass, xp), _gauss_lowpass(cur, lowpass, xp),
                                    upsample=upsample, normalization=None)
        if max_step is not None:
            d = np.clip(d, -max_step, max_step)
        shifts = shifts + d
        if basis is not None:
            shifts = remove_null_space(shifts, basis=basis)
        upd = float(np.sqrt(np.mean(d ** 2)))
        history.append(upd)
        residuals.append(resid)
        if callback is not None:
            callback(it, {"shift_update_rms": upd, "residual": resid, "shifts": shifts.copy()})
        if upd < tol:
            break
    aligned = shift_image(P, _to_xp(shifts, xp))
    return aligned, shifts, {"history": np.asarray(history), "residual": np.asarray(residuals),
                             "volume": vol}


def _project_geometry_kwargs(projections, geom, tlt):
    kw = {"geometry": geom}
    if str(geom).lower().startswith("lamino"):
        kw["tilt"] = tlt
    return kw


def align(projections, *, method: str = "projection_matching", iterations: int = 10,
          reconstruct: str = "sirt", recon_iterations: int = 20, upsample: int = 20,
          initial_shifts=None, lowpass: float = 1.0, remove_null: bool = True,
          tol: float = 0.01, max_step: float | None = None, geometry: str | None = None,
          tilt: float | None = None, progress: bool = True,
          callback: Callable[[int, dict], Any] | None = None, **options):
    """Align a projection series (tomography or laminography).

    Methods
    -------
    ``"cross_correlation"``
        Model-free pre-alignment from the centres of mass: the centre of mass of every
        projection is the projection of the volume's centre of mass, so the per-angle
        centres are fitted by the rigid-translation patterns (:func:`rigid_null_space`;
        for tomography ``shift_x = a cos(theta) + b sin(theta)``) and the residual is the
        correction. Tomography refines ``shift_y`` by registering each projection's
        vertical mass profile (sum over x, invariant to rotation about y) to the mean profile
        (up to ``iterations`` rounds). Needs the whole object inside every projection and
        zero background (remove ramps/offsets first).
    ``"projection_matching"``
        Repeat up to ``iterations`` times: reconstruct the volume from the currently aligned
        projections (``reconstruct="sirt"`` with ``recon_iterations``, or ``"fbp"``, from
        ``ptynb.tomo``), reproject it with the same geometry (``ptynb.tomo.project``),
        register each projection to its reprojection (:func:`phase_cross_correlation`, plain
        correlation of both Gaussian low-passed by ``lowpass`` pixels) and add the measured
        shifts. Stops when the rms update falls below ``tol`` pixels.
    ``"joint"``
        Volume and per-projection pose (3 Euler angles + 2 shifts) refined together through
        the differentiable projector on the MSPT multi-scale schedule: CGLS volume steps,
        per-view Gauss-Newton pose steps and a coupled volume-pose Gauss-Newton step per
        round (torch Adam poses on request); see :func:`joint_refinement` for its options
        (passed through).

    Parameters
    ----------
    projections : DataArray (angle, y, x)
        Real projections (e.g. unwrapped phase), angles in degrees, geometry in attrs
        (``geometry``, ``tilt``); the ``geometry``/``tilt`` arguments override the attrs.
    iterations : int
        Outer iterations (alignment rounds).
    initial_shifts : array (angle, 2), optional
        Starting correction in pixels (e.g. from ``"cross_correlation"``).
    remove_null : bool
        Project the rigid-translation null space (:func:`rigid_null_space`) out of the
        shifts after every round (the data do not determine it; keeps the volume centred).
    max_step : float, optional
        Clip each round's update to this many pixels.
    progress, callback
        tqdm progress bar; ``callback(iteration, info)`` with ``shift_update_rms`` (pixels),
        ``shifts`` and, for projection matching, ``residual`` (rms reprojection error).
    **options
        ``recon_options`` / ``project_options`` (dicts passed to the reconstruction /
        projector) for projection matching; joint-refinement options for ``"joint"``.

    Returns
    -------
    aligned : DataArray (angle, y, x)
        Corrected projections with coords ``shift_y``, ``shift_x`` (pixels) along ``angle``
        (and ``pose_rx``, ``pose_ry``, ``pose_rz``: extrinsic x-y-z Euler angles in degrees,
        the ``ptynb.tomo.geometry`` convention, for ``"joint"``).
    info : dict
        ``shifts`` (angle, 2) pixels, ``history`` (rms update per round), ``volume`` (last
        reconstruction, where one is made), ``time`` (s), ``method``.
    """
    P, ang = _check_projections(projections)
    if method not in ("projection_matching", "cross_correlation", "joint"):
        raise ValidationError("method", f"must be 'projection_matching', 'cross_correlation' or 'joint', got {method!r}")
    it = int(iterations)
    if it < 1:
        raise ValidationError("iterations", f"must be >= 1, got {iterations!r}")
    geom, tlt = _geometry_of(projections, geometry, tilt)
    t0 = time.perf_counter()
    if method == "cross_correlation":
        if options:
            raise ValidationError("options", f"unknown keyword(s) for cross-correlation: {sorted(options)}")
        aligned, shifts, info = _align_cross_correlation(P, ang, geom, tlt, it, upsample,
                                                         progress, callback)
        poses = None
    elif method == "projection_matching":
        aligned, shifts, info = _projection_matching(
            projections, P, ang, geom, tlt, it, reconstruct, recon_iterations, upsample,
            initial_shifts, lowpass, remove_null, tol, max_step, progress, callback, options)
        poses = None
    else:
        aligned, shifts, poses, info = joint_refinement(
            projections, iterations=it, initial_shifts=initial_shifts, progress=progress,
            callback=callback, geometry=geometry, tilt=tilt, **options)
    info.update(shifts=shifts, method=method, time=time.perf_counter() - t0)
    return _output(projections, aligned, shifts, method, poses=poses), info


# ----------------------------------------------------------------------------- joint refinement
#: MSPT multi-scale schedule: (parameters refined with the volume, fraction of full resolution)
MSPT_SCHEDULE = (("shifts", 0.1), ("rotations", 0.2), ("all", 1.0))


def rotation_gauge(angles, *, geometry: str = "tomography", tilt: float | None = None) -> np.ndarray:
    """Orthonormal basis (k, angle, 3) of per-view Euler-angle patterns equivalent to a small
    global rotation of the volume (to first order): a rotation ``w`` of the sample changes
    view ``k``'s pose by the lab rotation vector ``R_k w``, i.e. Euler (rx, ry, rz) = (x, y,
    z) components of ``R_k w`` for small angles.

    Parameters
    ----------
    angles : array (angle,), degrees
    geometry : {"tomography", "laminography"}
    tilt : float, optional
        Rotation-axis-to-beam angle, degrees (default 61.108 for laminography, 90 else).

    Returns
    -------
    ndarray (k, angle, 3), k <= 3
        Orthonormal patterns of (rx, ry, rz) (unitless: any scale of degrees). For tomography
        a rotation about the rotation axis is a constant ``ry``; for laminography it is the
        constant ``(0, sin tilt, cos tilt)``, and rotations about the two other sample axes
        are patterns varying as ``cos``/``sin`` of the angle.
    """
    from .geometry import Geometry

    ang = np.asarray(angles, dtype=np.float64).reshape(-1)
    g = str(geometry).strip().lower()
    t = 90.0 if g.startswith("tomo") else _default_tilt(g, tilt)
    Rm = Geometry("tomography" if t == 90.0 else "laminography", ang, t).rotations()
    # (z, y, x) component order -> (x, y, z); column j = image of sample axis j
    perm = [2, 1, 0]
    Rxyz = Rm[:, perm][:, :, perm]
    pats = np.transpose(Rxyz, (2, 0, 1))  # (3 sample axes, angle, 3 lab components)
    Bm = pats.reshape(3, -1)
    _, sv, vt = np.linalg.svd(Bm, full_matrices=False)
    keep = sv > 1e-8 * sv.max()
    return vt[keep].reshape(-1, Rm.shape[0], 3)


def _remove_basis(x, basis):
    Bm = basis.reshape(basis.shape[0], -1)
    v = x.reshape(-1)
    return (v - Bm.T @ (Bm @ v)).reshape(x.shape)


def _bin2d(a, b):
    """Area-average ``b x b`` binning of the last two axes (cropped to multiples of b)."""
    if b == 1:
        return a
    ny, nx = a.shape[-2] // b * b, a.shape[-1] // b * b
    a = a[..., :ny, :nx]
    return a.reshape(a.shape[:-2] + (ny // b, b, nx // b, b)).mean(axis=(-3, -1))


def _gauss_kernel1d(sigma, torch, dtype, device):
    r = max(1, int(math.ceil(4 * sigma)))
    x = torch.arange(-r, r + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur3d(v, sigma, torch):
    """Separable Gaussian blur (sigma in voxels, zero padding) of a (nz, ny, nx) tensor."""
    if not sigma:
        return v
    import torch.nn.functional as F

    k = _gauss_kernel1d(sigma, torch, v.dtype, v.device)
    r = (k.numel() - 1) // 2
    x = v[None, None]
    x = F.conv3d(x, k.view(1, 1, -1, 1, 1), padding=(r, 0, 0))
    x = F.conv3d(x, k.view(1, 1, 1, -1, 1), padding=(0, r, 0))
    x = F.conv3d(x, k.view(1, 1, 1, 1, -1), padding=(0, 0, r))
    return x[0, 0]


def _ramp_preconditioner(shape, torch, dtype, device, axis=1):
    """Right preconditioner ``C`` for tomographic least squares: ``C v = F^-1[(|k_perp| +
    1/n)^(1/2) F v]`` (normalised to a maximum gain of 1), ``k_perp`` the spatial frequency
    perpendicular to the rotation axis (volume ``axis``, ``y``) in cycles/voxel.

    For parallel projections over 180 degrees the normal operator ``A^T A`` is close to a
    convolution with ``1 / |k_perp|``; ``C A^T A C`` is then close to the identity and CGLS
    on ``A C`` converges in a few iterations instead of tens (the low frequencies no longer
    dominate). Any such ``C`` (symmetric positive definite) leaves the solution unchanged.
    """
    ks = [torch.fft.fftfreq(int(m), dtype=dtype, device=device) for m in shape]
    k2 = 0
    for i, k in enumerate(ks):
        if i == axis:
            continue
        sh = [1, 1, 1]
        sh[i] = -1
        k2 = k2 + k.reshape(sh) ** 2
    gain = (torch.sqrt(k2) + 1.0 / max(shape)) ** 0.5
    gain = (gain / gain.max()).expand(*[int(m) for m in shape]).contiguous()

    def C(v):
        return torch.fft.ifftn(torch.fft.fftn(v) * gain).real.to(v.dtype)

    return C


def _cgls(A, b, x0, iterations, torch, precond=None):
    """``iterations`` of CGLS for ``min ||A x - b||^2`` from ``x0``; ``A`` linear (torch), its
    adjoint taken by autograd on one retained graph (valid for any point, A being linear).
    With ``precond`` (a symmetric positive definite linear map ``C`` on volumes, e.g.
    :func:`_ramp_preconditioner`) it runs on ``A C`` for the update: ``x = x0 + C y``.

    The residual is recomputed from ``x`` every iteration (not updated recursively), and a step
    that would raise it is undone and ends the run: in float32 the recursive residual of CG
    drifts near convergence, and without this guard a warm-started solve could leave the
    volume worse than it found it. The result is never worse than ``x0``.

    The problem is solved in rescaled units (``A' = A / |A 1|_max``, ``b' = b / rms(b)``):
    with SI units (line integrals of ~1e-8 m voxels) the squared norms of ``A^T r`` fall into
    float32's subnormal range, where they lose their precision and CGLS stalls."""
    with torch.no_grad():
        ca = float(A(torch.ones_like(x0)).abs().max())
        cb = float(torch.sqrt(torch.mean(b.double() ** 2)))
    if not (ca > 0 and cb > 0 and math.isfinite(ca) and math.isfinite(cb)):
        return x0.detach().clone()
    xs = cb / ca  # x = xs * x'
    A0 = A

    def A(v):  # the rescaled operator
        return A0(v) / ca

    C = precond if precond is not None else (lambda v: v)
    b = b / cb
    x0 = x0 / xs
    z = torch.zeros_like(x0, requires_grad=True)
    graph = A(z)

    def AT(y):
        return torch.autograd.grad(graph, z, y, retain_graph=True)[0]

    x = x0.detach().clone()
    with torch.no_grad():
        r = b - A(x)
        rr = float(torch.sum(r * r))
    s_ = C(AT(r))
    p = s_.clone()
    gamma = float(torch.sum(s_ * s_))
    for _ in range(int(iterations)):
        if gamma == 0:
            break
        with torch.no_grad():
            cp = C(p)
            q = A(cp)
            qq = float(torch.sum(q * q))
            if qq == 0:
                break
            alpha = gamma / qq
            x += alpha * cp
            r_new = b - A(x)
            rr_new = float(torch.sum(r_new * r_new))
            if not rr_new < rr:
                x -= alpha * cp
                break
            r, rr = r_new, rr_new
        s_ = C(AT(r))
        gnew = float(torch.sum(s_ * s_))
        p = s_ + (gnew / gamma) * p
        gamma = gnew
    return (x * xs).detach()


#: forward-difference steps of the pose Jacobian (pixels of the working binning; degrees)
#: and the per-view step below which the Gauss-Newton pose update counts as converged
_FD_SHIFT = 0.05
_FD_ROTATION = 0.05
_POSE_TOL = 1e-3


def _pose_gauss_newton(fwd, data, p, cols, steps, fd_step, torch, tol=1e-3):
    """Per-view damped Gauss-Newton (Levenberg-Marquardt) on the pose columns ``cols`` of
    ``p`` (angle, 5) = (S_y, S_x [px], rx, ry, rz [deg]) for ``min sum_k ||fwd(p)_k -
    data_k||^2`` with ``fwd`` fixed (the volume does not change here).

    Projection ``k`` depends on pose ``k`` only, so the normal matrix is block diagonal: one
    ``len(cols) x len(cols)`` system per view. Jacobian columns by forward differences of
    ``fwd_step[j]`` (all views perturbed at once: one projection per column). Each view
    keeps its own Marquardt damping ``lam`` (``(H + lam diag H) d = -g``), takes a step only
    where it lowers that view's misfit, and stops when its step is below ``tol`` (px and deg)
    or it cannot improve. ``steps`` Gauss-Newton iterations at most.

    Returns the new ``p`` (angle, 5) float64 numpy and the number of projections made.
    """
    n = p.shape[0]
    a = len(cols)
    cols = list(cols)
    h = np.array([fd_step[j] for j in cols])

    def proj(q):
        with torch.no_grad():
            return fwd(q)

    p = p.copy()
    pred = proj(p)
    r = (pred - data).reshape(n, -1).double()
    f0 = (r * r).sum(1)  # (n,) per-view misfit
    lam = torch.full((n,), 1e-3, dtype=torch.float64, device=r.device)
    active = torch.ones(n, dtype=torch.bool, device=r.device)
    nproj = 1
    for _ in range(int(steps)):
        J = torch.empty((n, a, r.shape[1]), dtype=torch.float64, device=r.device)
        for i, j in enumerate(cols):
            q = p.copy()
            q[:, j] += h[i]
            J[:, i] = (proj(q) - pred).reshape(n, -1).double() / float(h[i])
        nproj += a
        H = J @ J.transpose(1, 2)  # (n, a, a)
        g = J @ r[:, :, None]  # (n, a, 1)
        dH = torch.diagonal(H, dim1=1, dim2=2)
        floor = 1e-12 * dH.amax(1, keepdim=True).clamp(min=1e-300)
        # damping is increased, view by view, until the step lowers that view's misfit
        for _try in range(4):
            Hd = H + torch.diag_embed(lam[:, None] * dH + floor)
            d = -torch.linalg.solve(Hd, g)[..., 0]  # (n, a)
            d = torch.where(active[:, None], d, torch.zeros_like(d))
            q = p.copy()
            q[:, cols] += d.cpu().numpy()
            pt = proj(q)
            nproj += 1
            rt = (pt - data).reshape(n, -1).double()
            ft = (rt * rt).sum(1)
            ok = (ft < f0) & active
            okn = ok.cpu().numpy()
            p[okn] = q[okn]
            pred = torch.where(ok[:, None, None], pt, pred)
            r = torch.where(ok[:, None], rt, r)
            small = d.abs().amax(1) < tol
            # converged views: a tiny step (or one that no longer helps at high damping)
            active = active & ~(ok & small) & ~(~ok & (lam > 1e6))
            f0 = torch.where(ok, ft, f0)
            lam = torch.where(ok, (lam * 0.3).clamp(min=1e-6), lam * 10.0)
            if bool(ok.any()) or not bool(active.any()):
                break
        if not bool(active.any()):
            break
    return p, nproj


def _coupled_gauss_newton(fwd, data, V, p, cols, fd_step, torch, *, cg_iterations=40,
                          damping=1e-3, gauge=None, precond=None):
    """One Gauss-Newton step on volume and poses together (not alternating).

    Linearises the model ``fwd(V, p)`` (linear in the volume ``V``; poses ``p`` (angle, 5) =
    (S_y, S_x [px], rx, ry, rz [deg])) and solves

        ``min |A dV + J G dp - r|^2 + damping |dp|^2``

    by ``cg_iterations`` of CGLS from zero: ``A`` the projector at the current poses (adjoint
    by autograd), ``J`` the block-diagonal pose Jacobian of the columns ``cols`` (forward
    differences of ``fd_step``, one projection per column) and ``G`` the projection onto pose
    patterns free of gauge motions (``gauge(q)`` removes them from an (angle, 5) array; the
    volume then absorbs no global rotation or translation). The volume variable runs
    through the right preconditioner ``precond`` (see :func:`_ramp_preconditioner`), and
    volume and pose columns are scaled to unit norm (Jacobi; ``damping`` is relative to it).

    Why: a pose pattern that the volume can almost compensate (rotations about the
    tomographic axis varying slowly with the angle go with a slight in-plane distortion of
    the volume) raises the misfit some 40 times less than a random pose error of the same
    size (32^3 voxels, 60 views). Alternating volume and pose updates shrink such a mode by
    a few percent per round; in the joint problem it lies in the Krylov space, and a step
    of 40 iterations removes about half of it.

    Returns ``(V, p, loss_before, loss_after)`` with the losses as ``sum (fwd - data)^2 /
    mean(data^2)``; the step is halved until the loss drops (no step if it never does).
    """
    n = p.shape[0]
    a = len(cols)
    Cm = precond if precond is not None else (lambda v: v)
    with torch.no_grad():
        f0 = fwd(V, p)
        cb = float(torch.sqrt(torch.mean(data.double() ** 2))) or 1.0
        r = (data - f0) / cb
        loss0 = float(torch.sum(r.double() ** 2))
        J = torch.empty((n, a) + tuple(data.shape[1:]), dtype=data.dtype, device=data.device)
        for i, j in enumerate(cols):
            q = p.copy()
            q[:, j] += fd_step[j]
            J[:, i] = (fwd(V, q) - f0) / (cb * float(fd_step[j]))
        dp_scale = (1.0 / torch.sqrt((J.double() ** 2).sum((2, 3))).clamp(min=1e-30)).to(data.dtype)
        # volume operator in units where |A 1|_max = 1 (no float32 underflow), its columns
        # (after the preconditioner) scaled to unit mean norm (Hutchinson estimate)
        ca = float(fwd(torch.ones_like(V), p).abs().max()) or 1.0
        gen = torch.Generator(device=V.device).manual_seed(0)
        zz = torch.randint(0, 2, V.shape, generator=gen, device=V.device).to(V.dtype) * 2 - 1
        cv = float(torch.sqrt(torch.sum((fwd(Cm(zz), p) / ca) ** 2) / V.numel()))
        dv_scale = 1.0 / max(cv, 1e-30)
    z = torch.zeros_like(V, requires_grad=True)
    graph = fwd(z, p)

    def Gp(dp):  # (n, a) -> gauge-free (n, a)
        if gauge is None:
            return dp
        full = np.zeros((n, 5))
        full[:, cols] = dp.double().cpu().numpy()
        return torch.as_tensor(gauge(full)[:, cols], dtype=dp.dtype, device=dp.device)

    def K(yv, yp):
        with torch.no_grad():
            return fwd(Cm(yv) * dv_scale, p) / ca + torch.einsum("ka,kayx->kyx", Gp(yp * dp_scale), J)

    def KT(rr):
        gv = Cm(torch.autograd.grad(graph, z, rr, retain_graph=True)[0]) * (dv_scale / ca)
        with torch.no_grad():
            gp = Gp(torch.einsum("kayx,kyx->ka", J, rr)) * dp_scale
        return gv.detach(), gp

    def dot(u, v):
        return float(torch.sum(u.double() * v.double()))

    lam = float(damping)
    yv = torch.zeros_like(V)
    yp = torch.zeros((n, a), dtype=V.dtype, device=V.device)
    res = r.clone()
    sv, sp = KT(res)
    pv, pp = sv.clone(), sp.clone()
    gamma = dot(sv, sv) + dot(sp, sp)
    for _ in range(int(cg_iterations)):
        if not gamma > 0:
            break
        q = K(pv, pp)
        qq = dot(q, q) + lam * dot(pp, pp)
        if not qq > 0:
            break
        alpha = gamma / qq
        yv = yv + alpha * pv
        yp = yp + alpha * pp
        res = res - alpha * q
        sv, sp = KT(res)
        sp = sp - lam * yp  # the damping rows
        gnew = dot(sv, sv) + dot(sp, sp)
        pv = sv + (gnew / gamma) * pv
        pp = sp + (gnew / gamma) * pp
        gamma = gnew
    with torch.no_grad():
        dV = Cm(yv) * (dv_scale * cb / ca)
        dP = np.zeros((n, 5))
        dP[:, cols] = Gp(yp * dp_scale).double().cpu().numpy()
        t = 1.0
        for _ in range(5):
            V1 = V + t * dV
            p1 = p + t * dP
            loss1 = float(torch.sum(((data - fwd(V1, p1)) / cb).double() ** 2))
            if loss1 < loss0:
                return V1, p1, loss0, loss1
            t *= 0.5
    return V, p, loss0, loss0


def _auto_support(v, b, vshape, threshold, margin):
    """Support mask (bool, ``vshape``) from a volume ``v`` reconstructed at binning ``b``.

    ``|v|`` is smoothed by a Gaussian of 0.5 binned voxel (against speckle and streaks),
    interpolated (trilinearly) to the full grid, thresholded at ``threshold`` times its
    maximum and dilated by ``margin`` full-resolution voxels (all voxels within that
    Euclidean distance of the thresholded core).

    The mask multiplies the volume in the model, so whatever part of the object it cuts off
    is a misfit that no pose can remove: the poses then absorb it, the weakest pose direction
    (rotation about the rotation axis, varying slowly with the angle) most. The magnitude is
    used so that a negative object (a phase of ``-k delta t``) is not thresholded away, and
    the margin is in full-resolution voxels so the mask is as tight at any binning.
    """
    import torch
    from scipy import ndimage as ndi

    a = ndi.gaussian_filter(np.abs(np.asarray(v, dtype=np.float32)), 0.5, mode="constant")
    vs_b = tuple(int(m) for m in a.shape)
    full = tuple(m * b for m in vs_b)
    if b > 1:
        # binned voxel i covers full voxels [i b, (i + 1) b): align_corners=False maps centres
        a = torch.nn.functional.interpolate(torch.as_tensor(a)[None, None], size=full,
                                            mode="trilinear", align_corners=False)[0, 0].numpy()
    pad = [(0, int(vshape[i]) - full[i]) for i in range(3)]
    a = np.pad(a, pad, mode="edge")
    amax = float(a.max())
    if not amax > 0:  # an empty volume says nothing about the support
        return np.ones(tuple(vshape), dtype=bool)
    m = a > threshold * amax
    if margin > 0:
        m = ndi.distance_transform_edt(~m) <= margin
    return m


def joint_refinement(projections, *, iterations: int = 4, schedule=MSPT_SCHEDULE,
                     lr_volume: float = 0.02, lr_shift: float = 0.3, lr_rotation: float = 0.3,
                     lr_decay: float = 0.05,
                     blur_sigma: float = 0.5, mask=None, mask_threshold: float = 0.1,
                     mask_margin: float = 3.0,
                     min_size: int = 16, ray_step: float = 1.0, initial_shifts=None,
                     initial_poses=None, volume_shape=None, geometry: str | None = None,
                     tilt: float | None = None, fix_gauge: bool = True,
                     prealign: str | None = "projection_matching", prealign_iterations: int = 5,
                     volume_solver: str = "cgls", volume_steps: int = 5, pose_steps: int = 5,
                     pose_solver: str = "gauss-newton", coupled_iterations: int = 40,
                     precondition: bool = True, device=None, progress: bool = True,
                     callback: Callable[[int, dict], Any] | None = None):
    """Joint refinement of volume and per-view rigid pose (MSPT paper), by Gauss-Newton.

    Model: ``P_k = posed_project(mask * blur(V), R_k(E_k), S_k)`` through
    :func:`ptynb.tomo.torch_ops.posed_project` (the ``ptynb.tomo.geometry`` convention:
    Euler angles ``E_k = (rx, ry, rz)``, extrinsic about the lab x-y-z axes after the
    nominal rotation, degrees; detector shifts ``S_k`` in pixels, the projection moves by
    ``+S``). Loss: mean squared error to the measured projections divided by their mean
    square (so step sizes do not depend on units).

    As in the MSPT paper, every round alternates an inner volume reconstruction with the
    alignment fixed and an outer alignment update with the volume fixed:

    * volume: ``volume_steps`` iterations of CGLS (conjugate gradients on the least-squares
      problem; ``volume_solver="cgls"``, default, the adjoint taken by autograd) or of torch
      Adam (``volume_solver="adam"``, step ``lr_volume`` times the volume maximum). With
      ``precondition`` (default) CGLS runs on ``A C``, ``C`` a ramp filter about the
      rotation axis (``A^T A`` of parallel projections is close to ``1/|k|``): a few
      iterations then do what takes tens without;
    * pose (``pose_solver="gauss-newton"``, default): up to ``pose_steps`` damped
      Gauss-Newton (Levenberg-Marquardt) iterations on the parameters active in the stage.
      With the volume fixed every view is its own 5-parameter least-squares problem:
      Jacobian by forward differences (one projection per parameter for all views at once,
      steps of 0.05 pixel of the working binning and 0.05 degree), one damped 5 x 5 solve per
      view, a step kept only where it lowers that view's misfit. Then one *coupled*
      Gauss-Newton step on volume and poses together: ``coupled_iterations`` (40) CGLS
      iterations on the linearised joint problem (``0`` skips it). Alternation alone shrinks
      the pose patterns that the volume can nearly compensate (slowly varying rotations
      about the tomographic axis) by only a few percent per round; the coupled step
      removes them within a few rounds;
    * pose (``pose_solver="adam"``): ``pose_steps`` torch Adam steps, step sizes
      ``lr_shift`` (pixels) and ``lr_rotation`` (degrees), decaying geometrically over all
      rounds of all stages to ``lr_decay`` of their start (coarse to fine).

    Multi-scale schedule (``schedule``, default :data:`MSPT_SCHEDULE`): stages
    ``(params, fraction[, rounds])`` run in order (``rounds`` defaults to ``iterations``) on
    projections binned to ``fraction`` of full resolution (integer bin ``round(1/fraction)``,
    limited so that at least ``min_size`` pixels remain): the shifts at 10%, then the
    rotations at 20%, then everything (``"all"``) at full scale; ``"volume"`` refines the
    volume only. The first stage starts from an FBP of the pre-aligned data; later stages
    from the previous volume, trilinearly upsampled. At full scale the volume is blurred by
    a Gaussian of ``blur_sigma`` voxels (0.5) in the model, against frequencies beyond
    Nyquist. ``mask="auto"`` makes a support from the first stage's volume, used in later
    stages (and on the returned volume): ``|V|`` smoothed by half a binned voxel, above
    ``mask_threshold`` times its maximum, dilated by ``mask_margin`` full-resolution voxels
    (so the schedule needs at least two stages for it to act); a boolean (z, y, x) array is
    used as given. The mask multiplies the volume in the model, so any part of the object
    it cuts off is a misfit that only the poses can reduce - keep it generous. (An earlier
    rule - the signed volume above 0.2 of its maximum, dilated by one *binned* voxel - cut
    6-9 % of the mass of a blob phantom, raised the loss floor a hundredfold and biased the
    weakest pose direction, rotation about the tomographic axis, to 0.34 deg rms on 32^3
    voxels / 60 views, where this one reaches 0.03 deg and no mask 0.05 deg.)

    A global rotation or translation of the volume is invisible in the data; with
    ``fix_gauge`` those patterns (:func:`rotation_gauge`, :func:`rigid_null_space`) are
    projected out of the poses and shifts after every pose update (every Adam step; every
    per-view Gauss-Newton update; the coupled step only moves the poses along patterns free
    of them).

    Parameters
    ----------
    projections : DataArray (angle, y, x)
        Real projections (line integrals); nominal geometry (``tomography`` or
        ``laminography``) in attrs; angles in degrees.
    iterations : int
        Rounds per stage when the schedule does not give them.
    initial_shifts : array (angle, 2), optional
        Starting correction in the :func:`align` convention (pixels, ``= -S``). If omitted,
        ``prealign`` (``"projection_matching"`` with FBP, the default, or
        ``"cross_correlation"``; ``None`` to start from zero) runs ``prealign_iterations``
        rounds first (the MSPT workflow starts from an initially aligned series).
    initial_poses : array (angle, 3), optional
        Starting Euler angles (degrees).
    volume_shape : (nz, ny, nx), optional
        Default: the grid recorded by :func:`ptynb.tomo.project`, else (nx, ny, nx).
    ray_step : float
        Ray-marching step of the torch projector, in voxels.
    volume_steps, pose_steps : int
        Volume iterations and pose iterations (Gauss-Newton; Adam steps for
        ``pose_solver="adam"``) per round.
    pose_solver : {"gauss-newton", "adam"}
    coupled_iterations : int
        CGLS iterations of the coupled volume-pose Gauss-Newton step ending every round of
        the Gauss-Newton solver (0: alternate only).
    mask : None, "auto" or bool array (z, y, x)
        Support of the volume (see above).
    mask_threshold : float
        ``mask="auto"``: level, as a fraction in [0, 1) of the maximum of the smoothed
        ``|V|``, above which a voxel belongs to the object core (default 0.1).
    mask_margin : float
        ``mask="auto"``: dilation of that core, in full-resolution voxels (default 3; >= 0).
    precondition : bool
        Ramp-filter preconditioning of the volume in CGLS and in the coupled step.
    device : {"cpu", "gpu", None}
        Torch device.
    progress, callback
        tqdm bar over rounds; ``callback(round, info)`` with ``loss`` (at the end of the
        round), ``loss_volume`` (after its volume step), ``stage``, ``bin``, ``shifts``
        (pixels, correction convention) and ``poses`` (degrees).

    Returns
    -------
    aligned : array (angle, y, x)
        Measured projections shifted by the correction ``-S`` (rotations cannot be undone
        in 2D; they are reported in ``poses``).
    shifts : ndarray (angle, 2)
        Correction in pixels (``-S``).
    poses : ndarray (angle, 3)
        Euler angles (rx, ry, rz), degrees: projecting the volume with ``geometry="posed",
        poses=poses, shifts=-shifts`` reproduces the data.
    info : dict
        ``volume`` (DataArray, full resolution, masked and blurred as in the model),
        ``loss`` (per round), ``stages`` (list of (params, bin, rounds)), ``model_shifts``.
    """
    import torch

    from .. import tomo
    from .projector import volume_grid_from_attrs
    from .torch_ops import posed_project

    P, ang = _check_projections(projections)
    geom, tlt = _geometry_of(projections, geometry, tilt)
    if geom == "posed":
        raise ValidationError("geometry", "joint refinement needs the nominal geometry "
                                          "('tomography' or 'laminography'), not 'posed'")
    n = ang.size
    Ph = np.asarray(to_host(P), dtype=np.float64)
    try:
        stages = [(str(st[0]), float(st[1]), int(st[2]) if len(st) > 2 else int(iterations))
                  for st in schedule]
    except (TypeError, ValueError, IndexError):
        raise ValidationError("schedule", f"must be a sequence of (params, fraction[, rounds]), got {schedule!r}") from None
    if pose_solver not in ("gauss-newton", "adam"):
        raise ValidationError("pose_solver", f"must be 'gauss-newton' or 'adam', got {pose_solver!r}")
    if volume_solver not in ("cgls", "adam"):
        raise ValidationError("volume_solver", f"must be 'cgls' or 'adam', got {volume_solver!r}")
    for p_, f_, r_ in stages:
        if r_ < 1:
            raise ValidationError("schedule", f"rounds per stage must be >= 1, got {r_}")
        if p_ not in ("shifts", "rotations", "all", "volume"):
            raise ValidationError("schedule", f"unknown stage parameters {p_!r}: use 'shifts', 'rotations', 'all' or 'volume'")
        if not 0 < f_ <= 1:
            raise ValidationError("schedule", f"resolution fraction must be in (0, 1], got {f_}")
    if int(iterations) < 1:
        raise ValidationError("iterations", f"must be >= 1, got {iterations!r}")
    dev = torch.device("cuda" if backend.resolve_device(device) == "gpu" else "cpu")
    tdt = torch.float32
    # grids (metres)
    vshape, vsize, vorigin = volume_grid_from_attrs(projections)
    if volume_shape is not None:
        vshape = tuple(int(v) for v in volume_shape)
        vorigin = np.array([-(m // 2) * d for m, d in zip(vshape, vsize)])
    yc = np.asarray(projections["y"].values, dtype=np.float64) if "y" in projections.coords else None
    xc = np.asarray(projections["x"].values, dtype=np.float64) if "x" in projections.coords else None
    py = float(np.diff(yc[:2])[0]) if yc is not None and yc.size > 1 else float(vsize[1])
    px = float(np.diff(xc[:2])[0]) if xc is not None and xc.size > 1 else float(vsize[2])
    if yc is None:
        yc = (np.arange(Ph.shape[1]) - Ph.shape[1] // 2) * py
    if xc is None:
        xc = (np.arange(Ph.shape[2]) - Ph.shape[2] // 2) * px
    # parameters (model convention: S = detector shift of the data, E = Euler degrees)
    S0 = np.zeros((n, 2))
    if initial_shifts is None and prealign is not None:
        if prealign not in ("projection_matching", "cross_correlation"):
            raise ValidationError("prealign", f"must be 'projection_matching', 'cross_correlation' or None, got {prealign!r}")
        _, pre = align(projections, method=prealign, iterations=prealign_iterations,
                       reconstruct="fbp", geometry=geom, tilt=tlt, progress=False)
        initial_shifts = pre["shifts"]
    if initial_shifts is not None:
        s0 = np.asarray(initial_shifts, dtype=np.float64)
        if s0.shape != (n, 2) or not np.all(np.isfinite(s0)):
            raise ValidationError("initial_shifts", f"must be finite with shape ({n}, 2)")
        S0 = -s0
    E0 = np.zeros((n, 3))
    if initial_poses is not None:
        e0 = np.asarray(initial_poses, dtype=np.float64)
        if e0.shape != (n, 3) or not np.all(np.isfinite(e0)):
            raise ValidationError("initial_poses", f"must be finite with shape ({n}, 3)")
        E0 = e0
    S = torch.tensor(S0, dtype=tdt, device=dev, requires_grad=True)
    E = torch.tensor(E0, dtype=tdt, device=dev, requires_grad=True)
    tb = rigid_null_space(ang, geometry=geom, tilt=tlt) if fix_gauge else None
    rb = rotation_gauge(ang, geometry=geom, tilt=tlt) if fix_gauge else None
    if isinstance(mask, str) and mask == "auto":
        try:
            mask_threshold, mask_margin = float(mask_threshold), float(mask_margin)
        except (TypeError, ValueError):
            raise ValidationError("mask_threshold", "mask_threshold and mask_margin must be numbers") from None
        if not 0.0 <= mask_threshold < 1.0:
            raise ValidationError("mask_threshold", f"must lie in [0, 1) (fraction of the volume maximum), got {mask_threshold!r}")
        if not (math.isfinite(mask_margin) and mask_margin >= 0):
            raise ValidationError("mask_margin", f"must be >= 0 voxels, got {mask_margin!r}")
    user_mask = None
    if mask is not None and not (isinstance(mask, str) and mask == "auto"):
        m = np.asarray(to_host(mask.data if isinstance(mask, xr.DataArray) else mask))
        if m.dtype != bool or m.shape != tuple(vshape):
            raise ValidationError("mask", f"must be 'auto' or a boolean array of the volume shape {tuple(vshape)}")
        if not m.any():
            raise ValidationError("mask", "is empty (all False)")
        user_mask = m
    losses: list[float] = []
    stage_log = []
    V = None
    auto_mask = None
    step_no = 0
    total = sum(st[2] for st in stages)
    bar = _progress(range(total), progress, "joint refinement")
    bar_it = iter(bar) if progress else None
    for si, (params, frac, rounds) in enumerate(stages):
        nmin = min(Ph.shape[1], Ph.shape[2], *vshape)
        b = max(1, min(int(round(1.0 / frac)), max(1, nmin // int(min_size))))
        data = torch.tensor(_bin2d(Ph, b), dtype=tdt, device=dev)
        scale2 = float(torch.mean(data ** 2)) or 1.0  # loss relative to the data power
        det_shape = tuple(data.shape[-2:])
        det_origin = (float(yc[: det_shape[0] * b].reshape(-1, b).mean(axis=1)[0]),
                      float(xc[: det_shape[1] * b].reshape(-1, b).mean(axis=1)[0]))
        vs_b = tuple(m // b for m in vshape)
        vox_b = vsize * b
        vorig_b = vorigin + (b - 1) / 2 * vsize
        full = b == 1 and frac >= 1.0
        # initial volume of this stage
        if V is None:
            corr = shift_image(Ph, -S.detach().cpu().numpy().astype(np.float64))
            da = projections.copy(data=corr)
            da = da.isel(y=slice(0, det_shape[0] * b), x=slice(0, det_shape[1] * b))
            da = da.coarsen(y=b, x=b).mean() if b > 1 else da
            da.attrs.update({"volume_shape": np.asarray(vs_b), "voxel_size": vox_b,
                             "volume_origin": vorig_b})
            v0 = np.asarray(to_host(tomo.fbp(da).data), dtype=np.float64)
            Vt = torch.tensor(v0, dtype=tdt, device=dev)
        else:
            Vt = torch.nn.functional.interpolate(V.detach()[None, None], size=vs_b, mode="trilinear",
                                                 align_corners=False)[0, 0]
        V = Vt.clone()
        mt = None
        msk = user_mask if user_mask is not None else auto_mask
        if msk is not None:
            mt = torch.tensor(msk.astype(np.float32), device=dev)[None, None]
            mt = (torch.nn.functional.interpolate(mt, size=vs_b, mode="trilinear",
                                                  align_corners=False)[0, 0] > 0.25).to(tdt)
        sigma = blur_sigma if full else 0.0

        def forward(vol, e, sh):
            veff = _blur3d(vol, sigma, torch)
            if mt is not None:
                veff = veff * mt
            return posed_project(veff, ang, tilt_deg=tlt, euler_deg=e, shifts_px=sh / b,
                                 det_shape=det_shape, voxel_size=tuple(vox_b),
                                 pixel_size=(py * b, px * b), step=ray_step,
                                 vol_origin=tuple(vorig_b), det_origin=det_origin)

        pose_params = []
        if params in ("shifts", "all"):
            pose_params.append((S, lr_shift))
        if params in ("rotations", "all"):
            pose_params.append((E, lr_rotation))
        # pose columns of the Gauss-Newton solver: (S_y, S_x, rx, ry, rz)
        cols = ([0, 1] if params in ("shifts", "all") else []) + \
               ([2, 3, 4] if params in ("rotations", "all") else [])
        fd = (_FD_SHIFT * b, _FD_SHIFT * b, _FD_ROTATION, _FD_ROTATION, _FD_ROTATION)
        precond = _ramp_preconditioner(V.shape, torch, V.dtype, V.device) if precondition else None

        def forward_q(vol, q):
            """The model at poses ``q``: numpy (angle, 5) = (S_y, S_x, rx, ry, rz)."""
            return forward(vol, torch.as_tensor(q[:, 2:], dtype=tdt, device=dev),
                           torch.as_tensor(q[:, :2], dtype=tdt, device=dev))

        def gauge_free(q):
            q = q.copy()
            if tb is not None:
                q[:, :2] = _remove_basis(q[:, :2], tb)
            if rb is not None:
                q[:, 2:] = _remove_basis(q[:, 2:], rb)
            return q

        vmax = float(V.abs().max()) or 1.0
        for r in range(rounds):
            # coarse to fine: step sizes decay geometrically over all rounds of all stages
            decay = float(lr_decay) ** (step_no / max(1, total - 1))
            # inner loop: the volume for the current poses
            e_fix, s_fix = E.detach(), S.detach()
            if volume_solver == "cgls":
                V = _cgls(lambda v: forward(v, e_fix, s_fix), data, V, int(volume_steps), torch,
                          precond=precond)
            else:
                V = V.detach().requires_grad_(True)
                vopt = torch.optim.Adam([V], lr=lr_volume * vmax * decay)
                for _ in range(int(volume_steps)):
                    vopt.zero_grad()
                    lv = torch.mean((forward(V, e_fix, s_fix) - data) ** 2) / scale2
                    lv.backward()
                    vopt.step()
                V = V.detach()
            with torch.no_grad():
                loss_v = float(torch.mean((forward(V, e_fix, s_fix) - data) ** 2) / scale2)
            # outer loop: the active pose parameters for the fixed volume
            loss = None
            if cols and pose_solver == "gauss-newton":
                q = torch.cat([s_fix, e_fix], 1).cpu().numpy().astype(np.float64)
                q, _ = _pose_gauss_newton(lambda q_, V=V: forward_q(V, q_), data, q, cols,
                                          pose_steps, fd, torch, tol=_POSE_TOL)
                q = gauge_free(q) if fix_gauge else q
                if int(coupled_iterations) > 0:
                    V, q, _, l1 = _coupled_gauss_newton(
                        forward_q, data, V, q, cols, fd, torch, cg_iterations=int(coupled_iterations),
                        gauge=gauge_free if fix_gauge else None, precond=precond)
                    loss = torch.tensor(l1 / data.numel())
                with torch.no_grad():
                    S.copy_(torch.as_tensor(q[:, :2], dtype=tdt, device=dev))
                    E.copy_(torch.as_tensor(q[:, 2:], dtype=tdt, device=dev))
            elif pose_params:
                # a fresh Adam per round: the volume changed under the poses
                opt = torch.optim.Adam([{"params": [t_], "lr": lr_ * decay} for t_, lr_ in pose_params])
                for _ in range(int(pose_steps)):
                    opt.zero_grad()
                    loss = torch.mean((forward(V, E, S) - data) ** 2) / scale2
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        if tb is not None:
                            S.copy_(torch.as_tensor(_remove_basis(S.detach().cpu().numpy().astype(np.float64), tb),
                                                    dtype=tdt, device=dev))
                        if rb is not None:
                            E.copy_(torch.as_tensor(_remove_basis(E.detach().cpu().numpy().astype(np.float64), rb),
                                                    dtype=tdt, device=dev))
            if loss is None:
                with torch.no_grad():
                    loss = torch.mean((forward(V, E, S) - data) ** 2) / scale2
            losses.append(float(loss.detach()))
            if bar_it is not None:
                next(bar_it, None)
            if callback is not None:
                callback(step_no, {"loss": losses[-1], "loss_volume": loss_v, "stage": si, "bin": b,
                                   "shifts": -S.detach().cpu().numpy().astype(np.float64),
                                   "poses": E.detach().cpu().numpy().astype(np.float64)})
            step_no += 1
        stage_log.append((params, b, rounds))
        if si == 0 and isinstance(mask, str) and mask == "auto":
            auto_mask = _auto_support(V.detach().cpu().numpy(), b, vshape, mask_threshold, mask_margin)
    with torch.no_grad():
        if V.shape != tuple(vshape):
            V = torch.nn.functional.interpolate(V[None, None], size=tuple(vshape), mode="trilinear",
                                                align_corners=False)[0, 0]
        Vf = _blur3d(V, blur_sigma, torch)
        msk = user_mask if user_mask is not None else auto_mask
        if msk is not None:
            Vf = Vf * torch.as_tensor(msk, dtype=tdt, device=dev)
    from ..data import volume as _volume

    vol_np = Vf.detach().cpu().numpy()
    vol_da = _volume(vol_np, voxel_size=vsize, origin=tuple(vorigin), method="joint_refinement")
    S_np = S.detach().cpu().numpy().astype(np.float64)
    E_np = E.detach().cpu().numpy().astype(np.float64)
    xp = xp_of(P)
    aligned = shift_image(P, _to_xp(-S_np, xp))
    info = {"volume": vol_da, "loss": np.asarray(losses), "stages": stage_log,
            "model_shifts": S_np, "history": np.asarray(losses),
            "mask": None if (user_mask is None and auto_mask is None) else
            (user_mask if user_mask is not None else auto_mask)}
    return aligned, -S_np, E_np, info
