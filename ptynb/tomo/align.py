"""Alignment of projection series: registration, projection matching, null space and gauges.

The 2D tools (:func:`~ptynb.imaging.shift_image`, :func:`~ptynb.imaging.phase_cross_correlation`)
live in :mod:`ptynb.imaging` (re-exported here for old imports); joint volume-pose refinement
is :mod:`ptynb.tomo.joint`.

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

import time
from typing import Any, Callable

import numpy as np
import xarray as xr

from .. import backend
from ..backend import to_host, xp_of
from ..control import STATUS_CANCELLED, STATUS_COMPLETE, check_event, is_cancelled
from ..data import ValidationError
from ..imaging import _freqs, phase_cross_correlation, shift_image
from ..imaging import _image_array as _arr
from ..physics.rotations import resolve_tilt

__all__ = [
    "phase_cross_correlation",  # re-exported from ptynb.imaging (old import path)
    "shift_image",  # re-exported from ptynb.imaging (old import path)
    "rigid_null_space",
    "remove_null_space",
    "rotation_gauge",
    "align",
]


# ----------------------------------------------------------------------------- geometry helpers
def _geometry_of(projections, geometry=None, tilt=None):
    attrs = projections.attrs if isinstance(projections, xr.DataArray) else {}
    g = geometry if geometry is not None else attrs.get("geometry", "tomography")
    t = tilt if tilt is not None else attrs.get("tilt", None)
    return str(g), resolve_tilt(g, t)


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
        None: :func:`ptynb.physics.rotations.resolve_tilt` (61.108 for laminography).

    Returns
    -------
    ndarray (k, angle, 2)
        Orthonormal (over angles and both components) patterns ``(dy, dx)``; ``k <= 3``
        (3 for laminography and for tomography over more than one angle).
    """
    ang = np.asarray(angles, dtype=np.float64).reshape(-1)
    vecs = _translation_response(ang, geometry, resolve_tilt(geometry, tilt))
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
        from ..control import tqdm_class
        tqdm = tqdm_class()
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


def _align_cross_correlation(P, ang, geometry, tilt, iterations, upsample, progress, callback,
                             cancel=None):
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
    cancelled = False
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
            if is_cancelled(cancel):
                cancelled = True
                break
            if history[-1] < 0.5 / upsample:
                break
        shifts[:, 0] = sy
    aligned = shift_image(P, _to_xp(shifts, xp))
    return aligned, shifts, {"history": np.asarray(history),
                             "status": STATUS_CANCELLED if cancelled else STATUS_COMPLETE}


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
                         tol, max_step, progress, callback, options, cancel=None):
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
    cancelled = False
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
        rep = tomo.project(vol, ang, **_project_geometry_kwargs(projections, geom, tlt), **project_kw,
                           warn_outside=False)  # a reconstruction's corners leave the detector
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
        if is_cancelled(cancel):
            cancelled = True
            break
        if upd < tol:
            break
    aligned = shift_image(P, _to_xp(shifts, xp))
    return aligned, shifts, {"history": np.asarray(history), "residual": np.asarray(residuals),
                             "volume": vol,
                             "status": STATUS_CANCELLED if cancelled else STATUS_COMPLETE}


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
          callback: Callable[[int, dict], Any] | None = None, cancel=None, **options):
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
        ``shifts`` and, for projection matching, ``residual`` (rms reprojection error); for
        observing only (the return value is ignored).
    cancel : threading.Event, optional
        Polled after every round (after ``callback``): once set, the alignment stops and
        returns what it has, with ``info["status"]`` and the output's ``attrs["status"]``
        ``"cancelled"`` (see :mod:`ptynb.control`).
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
        reconstruction, where one is made), ``time`` (s), ``method``, ``status``
        (``"complete"`` or ``"cancelled"``).
    """
    P, ang = _check_projections(projections)
    check_event(cancel)
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
                                                         progress, callback, cancel)
        poses = None
    elif method == "projection_matching":
        aligned, shifts, info = _projection_matching(
            projections, P, ang, geom, tlt, it, reconstruct, recon_iterations, upsample,
            initial_shifts, lowpass, remove_null, tol, max_step, progress, callback, options,
            cancel)
        poses = None
    else:
        from .joint import joint_refinement

        aligned, shifts, poses, info = joint_refinement(
            projections, iterations=it, initial_shifts=initial_shifts, progress=progress,
            callback=callback, geometry=geometry, tilt=tilt, cancel=cancel, **options)
    info.update(shifts=shifts, method=method, time=time.perf_counter() - t0)
    out = _output(projections, aligned, shifts, method, poses=poses)
    out.attrs["status"] = info["status"]
    return out, info


# ----------------------------------------------------------------------------- gauges
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
        Rotation-axis-to-beam angle, degrees (None: :func:`ptynb.physics.rotations.resolve_tilt`,
        61.108 for laminography, 90 else).

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
    t = 90.0 if g.startswith("tomo") else resolve_tilt(g, tilt)
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
