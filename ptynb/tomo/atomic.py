"""Pose refinement against an atomic model of the volume (atomic-resolution tomography).

:func:`joint_refinement` describes the sample by voxels. At atomic resolution with few tilts
that model has about as many unknowns as there are data (24 projections of 32^2 pixels
against 32^3 voxels), so the volume can take up most of each view's pose error, and the
refined Euler angles stay close to where they started. A crystal, or any sample resolved
into atoms, has far fewer unknowns: a position, an amplitude and a shape class per atom.
:func:`atomic_refinement` fits such a model, a sum of isotropic atoms, to the projections
together with every view's pose. Each atom's projection is a 2D profile at the atom's
rotated position, and that profile does not depend on the view. So the model's own error is
the same in every view and does not pull the poses the way the voxel model's does.

The model
---------
Atom ``j`` at sample position ``r_j`` (metres) and view ``k`` with lab rotation ``R_k``
(nominal angle and tilt, then the extrinsic x-y-z Euler corrections, as in
:func:`ptynb.tomo.torch_ops.posed_project`) and object displacement ``d_k`` adds

    p_k(v, u) += s_j * sum_i W[c_j, i] * G(v - (R_k r_j)_v - d_k,v, u - (R_k r_j)_u - d_k,u; w_i)

where ``G(.; w)`` is the unit-integral 2D Gaussian of width ``w`` (the fixed ``widths``),
``c_j`` in {0, 1} is the atom's class (weak / strong scatterer, from 1D k-means of the fitted
amplitudes), ``W`` the two classes' shared radial profiles (free weights, fitted) and
``s_j >= 0`` the atom's scale. A constant offset per view takes up the arbitrary phase
origin of each reconstructed projection. Everything is fitted by L-BFGS on the sum of
squared residuals (white noise); the gauge (the global rotation and translation that the
data cannot see, :func:`rotation_gauge` and :func:`rigid_null_space`) is held at its
starting value by a quadratic penalty.

Atoms come from the local maxima of the starting volume above ``seed_threshold`` of its
maximum. Each later cycle drops the atoms the data do not support (amplitude below ``min_snr``
times its noise error at the current residual, or below ``prune_fraction`` of the weak class's
mean), and adds the local maxima of a volume reconstructed from the residual
(``residual_steps`` CGLS steps with the voxel projector at the current poses) that lie
above ``add_threshold`` of the maximum of the same reconstruction of the data and further
than ``min_separation`` from every atom.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import param
import xarray as xr

from ..backend import to_host
from ..control import STATUS_CANCELLED, STATUS_COMPLETE, is_cancelled
from ..data import ValidationError
from ..options import Options
from .align import _check_projections, _geometry_of, _progress, rigid_null_space, rotation_gauge

__all__ = ["STATUS_REJECTED", "AtomicRefinementOptions", "atomic_refinement", "render_atoms"]

#: status of a fit whose model does not describe the data (the input poses are returned)
STATUS_REJECTED = "rejected"


class AtomicRefinementOptions(Options):
    """Settings of :func:`atomic_refinement` (defaults stated here and nowhere else)."""

    cycles = param.Integer(default=3, bounds=(0, None),
                           doc="prune / add cycles after the first fit (each ends in a full fit)")
    iterations = param.Integer(default=100, bounds=(1, None),
                               doc="L-BFGS iterations per fit (two fits per cycle: the atoms at "
                                   "fixed poses, then everything)")
    seed_threshold = param.Number(default=0.2, bounds=(0, 1), inclusive_bounds=(False, False),
                                  doc="first atoms: local maxima of the volume above this "
                                      "fraction of its maximum")
    add_threshold = param.Number(default=0.15, bounds=(0, 1), inclusive_bounds=(False, False),
                                 doc="added atoms: maxima of the residual's reconstruction "
                                     "above this fraction of the data's reconstruction maximum")
    min_snr = param.Number(default=5.0, bounds=(0, None),
                           doc="atoms whose amplitude is below this many times its noise error "
                               "(white noise at the residual rms, all views) are dropped")
    prune_fraction = param.Number(default=0.3, bounds=(0, 1),
                                  doc="atoms below this fraction of the weak class's mean "
                                      "amplitude (among the significant ones) are dropped")
    min_separation = param.Number(default=1.0e-10, bounds=(0, None), inclusive_bounds=(False, True),
                                  doc="an added atom lies at least this far from every atom (m)")
    widths = param.Parameter(default=(0.25, 0.45, 0.75, 1.25),
                             doc="widths (standard deviations) of the Gaussians that make up "
                                 "the two radial profiles (pixels)")
    residual_steps = param.Integer(default=10, bounds=(1, None),
                                   doc="CGLS steps of the residual's and the data's "
                                       "reconstruction that find missing atoms")
    max_misfit = param.Number(default=0.25, bounds=(0, None), inclusive_bounds=(False, True),
                              doc="relative misfit |model - data| / |data| above which the fit "
                                  "is rejected and the input poses returned (the atoms do not "
                                  "describe the data well enough to set the poses). Measured: 0.12 "
                                  "on exact atomic projections of a Co3O4 cube with 0.02 rad noise "
                                  "(angles 0.26 -> 0.07-0.10 deg rms); 0.30-0.42 on the MSPT "
                                  "chain's ePIE projections of it, where the O atoms are not "
                                  "resolved and the angles ended at 0.18-0.37 deg against the voxel "
                                  "model's 0.26")
    gauge_weight = param.Number(default=0.1, bounds=(0, None),
                                doc="penalty holding the gauge patterns at their start, as a "
                                    "fraction of the data power per degree^2 / pixel^2")

    _owner = "atomic_refinement"

    def _check(self):
        w = np.asarray(self.widths, dtype=np.float64).reshape(-1)
        if w.size < 1 or not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValidationError("widths", f"must be positive pixel widths, got {self.widths!r}")


def render_atoms(positions, scales, profiles, classes, widths, angles, *, tilt=None, poses=None,
                 displacements=None, offsets=None, v=None, u=None):
    """Projections of a sum of isotropic atoms (torch, differentiable in every argument).

    Lengths in one unit (pixels in :func:`atomic_refinement`); the convention is that of
    :func:`ptynb.tomo.torch_ops.posed_project`: sample vectors in (z, y, x) order, lab
    ``(t, v, u) = R_k r`` with ``t`` along the beam, and an object displaced by ``+d_k`` on
    the detector.

    Parameters
    ----------
    positions : tensor (atom, 3)
        Sample positions (z, y, x).
    scales : tensor (atom,)
        Non-negative scale of each atom.
    profiles : tensor (class, K)
        Weights of the K Gaussians of each class's radial profile.
    classes : long tensor (atom,)
        Class of each atom.
    widths : sequence of K floats
        Standard deviations of the Gaussians (same unit).
    angles : array (angle,)
        Nominal angles (degrees).
    tilt : float, optional
        Rotation-axis-to-beam angle (degrees; None: 90, tomography).
    poses : tensor (angle, 3), optional
        Extrinsic x-y-z Euler corrections (degrees).
    displacements : tensor (angle, 2), optional
        Object displacement (d_v, d_u) on the detector.
    offsets : tensor (angle,), optional
        Constant added to each projection.
    v, u : tensor (nv,), (nu,)
        Detector pixel coordinates.

    Returns
    -------
    tensor (angle, nv, nu)
        The projections (unit-integral Gaussians sampled at the pixel centres, times the
        amplitudes). Dense: the cost grows as angle x atom x (nv + nu) x K for the profiles and
        angle x atom x K x nv x nu for their product (a few ms per evaluation for 500 atoms on
        24 views of 32^2 pixels).
    """
    import torch

    from ..physics.rotations import resolve_tilt
    from .torch_ops import rotation_matrices_torch

    dt = positions.dtype
    ang = torch.as_tensor(np.array(angles, dtype=np.float64), dtype=dt, device=positions.device)
    R = rotation_matrices_torch(ang, resolve_tilt("posed", tilt), poses)  # (angle, 3, 3)
    lab = torch.einsum("kij,aj->kai", R, positions)  # (angle, atom, 3)
    cv, cu = lab[..., 1], lab[..., 2]
    if displacements is not None:
        cv = cv + displacements[:, None, 0]
        cu = cu + displacements[:, None, 1]
    dv2 = (v[None, None, :] - cv[..., None]) ** 2  # (angle, atom, nv)
    du2 = (u[None, None, :] - cu[..., None]) ** 2
    amp = scales[:, None] * profiles[classes]  # (atom, K)
    w2 = torch.as_tensor([2.0 * float(w) ** 2 for w in widths], dtype=dt, device=positions.device)
    # all K Gaussians in one batched product: (angle, nv, atom*K) x (angle, atom*K, nu)
    gv = torch.exp(-dv2[:, :, None, :] / w2[:, None]).flatten(1, 2)
    gu = torch.exp(-du2[:, :, None, :] / w2[:, None]).flatten(1, 2)
    a = (amp / (math.pi * w2)).reshape(-1)
    out = torch.bmm(gv.transpose(1, 2), gu * a[None, :, None])
    if offsets is not None:
        out = out + offsets[:, None, None]
    return out


def _local_maxima(v, threshold):
    from scipy.ndimage import maximum_filter

    m = (v == maximum_filter(v, size=3, mode="constant", cval=-np.inf)) & (v > threshold)
    return np.argwhere(m), v[m]


def _two_classes(amplitude):
    """1D k-means (two clusters) of log amplitudes: (strong mask, weak mean, strong mean)."""
    la = np.log(np.maximum(amplitude, 1e-30))
    c0, c1 = np.percentile(la, 20), np.percentile(la, 90)
    strong = la > 0.5 * (c0 + c1)
    for _ in range(50):
        if strong.all() or not strong.any():
            break
        c0, c1 = la[~strong].mean(), la[strong].mean()
        new = np.abs(la - c1) < np.abs(la - c0)
        if np.array_equal(new, strong):
            break
        strong = new
    return strong, float(np.exp(c0)), float(np.exp(c1))


def atomic_refinement(projections: xr.DataArray, volume: xr.DataArray, *, shifts=None, poses=None,
                      options: AtomicRefinementOptions | None = None, progress: bool = False,
                      cancel=None, **overrides):
    """Refine every view's rigid pose against an atomic model of the sample.

    Parameters
    ----------
    projections : DataArray (angle, y, x)
        Projections (e.g. phase, rad); ``angle`` in degrees, ``y``/``x`` coords in metres
        (square pixels); ``geometry``/``tilt`` attrs as for :func:`joint_refinement`. Use the
        projections as measured (not denoised): the model is the denoiser.
    volume : DataArray (z, y, x)
        A reconstruction at the starting poses (coords in metres, any value units): the first
        atoms are its local maxima.
    shifts : array (angle, 2), optional
        Starting shift corrections in pixels, in the convention of :func:`joint_refinement`'s
        return value (the correction; the object is displaced by ``-shifts``). Default zeros.
    poses : array (angle, 3), optional
        Starting Euler corrections (rx, ry, rz), degrees. Default zeros.
    options : AtomicRefinementOptions, optional
        {options}
    progress : bool
        A progress bar over the cycles.
    cancel : threading.Event, optional
        Checked between fits; when set, the last completed fit is returned with status
        ``"cancelled"``.
    **overrides
        Fields of ``options`` by keyword.

    Returns
    -------
    shifts : ndarray (angle, 2)
        Refined shift corrections (pixels, as the input).
    poses : ndarray (angle, 3)
        Refined Euler corrections (degrees).
    info : dict
        ``atoms`` (Dataset over ``atom``: ``position`` (atom, xyz) m in the volume's frame,
        ``amplitude`` (integrated, in the projections' unit times m^2), ``snr`` (amplitude over
        its noise error), ``strong`` (bool: the stronger of two k-means classes of the
        amplitudes)),
        ``misfit`` (relative misfit |model - data| / |data| after each fit), ``rms`` (the rms
        residual after each fit, in the projections' unit), ``offsets`` (angle,),
        ``n_atoms`` (the atoms above ``min_snr``), ``status`` ("complete", "cancelled", or "rejected" when the relative
        misfit stays above ``max_misfit``: the input poses are then returned, with a warning).
    """
    import torch

    o = AtomicRefinementOptions.resolve(options, overrides)
    P, ang = _check_projections(projections)
    geom, tlt = _geometry_of(projections, None, None)
    n = ang.size
    if not isinstance(volume, xr.DataArray) or tuple(volume.dims) != ("z", "y", "x"):
        raise ValidationError("volume", "must be a DataArray with dims ('z', 'y', 'x')")
    for c in ("y", "x"):
        if c not in projections.coords or projections.sizes[c] < 2:
            raise ValidationError("projections", f"needs a '{c}' coordinate in metres")
    for c in ("z", "y", "x"):
        if c not in volume.coords or volume.sizes[c] < 2:
            raise ValidationError("volume", f"needs a '{c}' coordinate in metres")
    yc = np.asarray(projections["y"].values, np.float64)
    xc = np.asarray(projections["x"].values, np.float64)
    px, py = float(xc[1] - xc[0]), float(yc[1] - yc[0])
    if not (px > 0 and py > 0) or abs(py - px) > 1e-6 * px:
        raise ValidationError("projections", f"needs square pixels with increasing coords, got {py!r} x {px!r} m")
    Ph = np.asarray(to_host(P), dtype=np.float64)
    if not np.all(np.isfinite(Ph)):
        raise ValidationError("projections", "contain NaN or infinite values")
    S0 = np.zeros((n, 2)) if shifts is None else np.asarray(shifts, dtype=np.float64)
    E0 = np.zeros((n, 3)) if poses is None else np.asarray(poses, dtype=np.float64)
    if S0.shape != (n, 2) or not np.all(np.isfinite(S0)):
        raise ValidationError("shifts", f"must be finite with shape ({n}, 2)")
    if E0.shape != (n, 3) or not np.all(np.isfinite(E0)):
        raise ValidationError("poses", f"must be finite with shape ({n}, 3)")
    V = np.asarray(to_host(volume.data), dtype=np.float64)
    if not np.all(np.isfinite(V)):
        raise ValidationError("volume", "contains NaN or infinite values")
    vz, vy, vx = (np.asarray(volume[c].values, np.float64) for c in ("z", "y", "x"))
    vsize = np.array([vz[1] - vz[0], vy[1] - vy[0], vx[1] - vx[0]])

    def reject(reason, misfit=(), rms=()):
        warnings.warn(f"atomic_refinement: {reason}; the input poses are kept", RuntimeWarning, stacklevel=3)
        return S0.copy(), E0.copy(), {"atoms": None, "misfit": np.asarray(misfit), "rms": np.asarray(rms),
                                      "offsets": np.zeros(n), "n_atoms": 0, "status": STATUS_REJECTED,
                                      "reason": reason, "options": o}

    vmax = float(V.max())
    if not vmax > 0:
        return reject("the volume has no positive values to take atoms from")
    idx, _ = _local_maxima(V, float(o.seed_threshold) * vmax)
    if len(idx) == 0:
        return reject("no local maxima above seed_threshold")

    dt = torch.float64
    T = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dt)
    data = T(Ph)
    power = float((data ** 2).sum()) or 1.0
    v = T(yc / px)
    u = T(xc / px)
    grid = [vz / px, vy / px, vx / px]
    widths = [float(w) for w in np.asarray(o.widths, dtype=np.float64).reshape(-1)]
    K = len(widths)
    # starting atoms and classes (log-midpoint of the peak values)
    pos = T(np.stack([g[i] for g, i in zip(grid, idx.T)], 1)).requires_grad_(True)
    peak = V[tuple(idx.T)]
    lp = np.log(peak)
    cls = torch.as_tensor((lp > 0.5 * (lp.max() + np.percentile(lp, 5))).astype(np.int64))
    # starting amplitudes: the atoms share the mean integrated signal of a projection (px^2)
    a0 = max(float(np.mean(Ph.sum((1, 2)))), 1e-12 * float(np.abs(Ph).sum()) + 1e-30) / len(idx)
    rho = T(np.full(len(idx), math.log(math.expm1(1.0)))).requires_grad_(True)
    W = T(np.full((2, K), a0 / K)).requires_grad_(True)
    E = T(E0.copy()).requires_grad_(True)
    D = T(-S0.copy()).requires_grad_(True)  # object displacement (px)
    off = T(np.zeros(n)).requires_grad_(True)
    Eg = T(rotation_gauge(ang, geometry=geom, tilt=tlt).reshape(-1, n * 3))
    Sg = T(rigid_null_space(ang, geometry=geom, tilt=tlt).reshape(-1, n * 2))
    E_start, D_start = E.detach().clone(), D.detach().clone()
    lam = float(o.gauge_weight) * power

    def model():
        return render_atoms(pos, torch.nn.functional.softplus(rho), W, cls, widths, ang, tilt=tlt, poses=E,
                            displacements=D, offsets=off, v=v, u=u)

    def fit(params):
        opt = torch.optim.LBFGS(params, lr=1, max_iter=int(o.iterations), history_size=50,
                                tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = ((model() - data) ** 2).sum()
            if lam > 0:
                loss = loss + lam * (((Eg @ (E - E_start).reshape(-1)) ** 2).sum()
                                     + ((Sg @ (D - D_start).reshape(-1)) ** 2).sum())
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            r = model() - data
        return float(torch.sqrt((r ** 2).sum() / power)), float(torch.sqrt((r ** 2).mean())), r

    from .joint import _cgls
    from .torch_ops import posed_project

    def voxel_project(vol, Ed, Dd):
        return posed_project(vol, ang, tilt=tlt, poses=Ed, shifts=Dd, detector_shape=Ph.shape[1:],
                             voxel_size=tuple(vsize), pixel_size=(py, px), step=1.0,
                             vol_origin=(vz[0], vy[0], vx[0]), det_origin=(yc[0], xc[0]))

    def significance():
        """Each atom's amplitude (px^2 units) and its signal-to-noise ratio: the amplitude over
        its least-squares error from ``n`` views of white noise at the current residual rms,
        ``rms * sqrt(4 pi / n) * w_eff`` for a profile of effective width ``w_eff`` (px)."""
        with torch.no_grad():
            Wa = W.detach().abs().numpy()
            w2 = np.asarray(widths) ** 2
            w_eff = np.sqrt((Wa @ w2) / np.maximum(Wa.sum(1), 1e-30))  # (class,)
            amp_ = (torch.nn.functional.softplus(rho)[:, None] * W[cls]).sum(1).numpy()
        err = max(rms[-1], 1e-30) * math.sqrt(4 * math.pi / n) * w_eff[cls.numpy()]
        return amp_, amp_ / err

    misfit, rms = [], []
    status = STATUS_COMPLETE
    best = None
    bar = _progress(range(int(o.cycles) + 1), progress, "atomic refinement")
    for c in bar:
        for params in ([pos, rho, W, off], [pos, rho, W, off, E, D]):
            if is_cancelled(cancel):
                status = STATUS_CANCELLED
                break
            rel, rr, resid = fit(params)
            if not math.isfinite(rel):
                return reject("the fit diverged (non-finite misfit)", misfit, rms)
            misfit.append(rel)
            rms.append(rr)
            best = (D.detach().clone(), E.detach().clone())
        if status == STATUS_CANCELLED or c == int(o.cycles):
            break
        # prune weak atoms, then add the maxima of the residual's reconstruction
        amp, snr = significance()
        sig_ = snr >= float(o.min_snr)
        if not sig_.any():
            return reject(f"no atom is above min_snr {float(o.min_snr)}", misfit, rms)
        strong = np.zeros(amp.shape, bool)
        strong[sig_], weak_mean, _ = _two_classes(amp[sig_])
        keep = sig_ & (amp > float(o.prune_fraction) * weak_mean)
        Ed = E.detach().to(torch.float32)
        Dd = D.detach().to(torch.float32)
        zero = torch.zeros(V.shape, dtype=torch.float32)
        rv = _cgls(lambda x, Ed=Ed, Dd=Dd: voxel_project(x, Ed, Dd), -resid.to(torch.float32), zero,
                   int(o.residual_steps), torch).numpy()
        mv = _cgls(lambda x, Ed=Ed, Dd=Dd: voxel_project(x, Ed, Dd), data.to(torch.float32), zero,
                   int(o.residual_steps), torch).numpy()
        cand_idx, _ = _local_maxima(rv, float(o.add_threshold) * float(mv.max()))
        kept = pos.detach().numpy()[keep]
        cand = np.stack([g[i] for g, i in zip(grid, cand_idx.T)], 1) if len(cand_idx) else np.zeros((0, 3))
        if len(cand) and len(kept):
            from scipy.spatial import cKDTree

            dd, _ = cKDTree(kept).query(cand)
            cand = cand[dd > float(o.min_separation) / px]
        # the classes were re-drawn: both start from the radial shape of the class that carried
        # most of the amplitude (unit sum), and each atom's scale is its amplitude
        Wn = W.detach().numpy()
        cl = cls.numpy()
        main = int(np.argmax([amp[cl == k].sum() if (cl == k).any() else -np.inf for k in (0, 1)]))
        shape = Wn[main] / Wn[main].sum() if Wn[main].sum() > 0 else np.full(K, 1.0 / K)
        all_sc = np.maximum(np.concatenate([amp[keep], np.full(len(cand), weak_mean)]), 1e-6)
        pos = T(np.concatenate([kept, cand])).requires_grad_(True)
        rho = T(np.log(np.expm1(np.minimum(all_sc, 50.0))) + np.maximum(all_sc - 50.0, 0)).requires_grad_(True)
        cls = torch.as_tensor(np.concatenate([strong[keep], np.zeros(len(cand), bool)]).astype(np.int64))
        W = T(np.stack([shape, shape])).requires_grad_(True)
        if len(pos) == 0:
            return reject("every atom was pruned", misfit, rms)
    if best is None:
        return S0.copy(), E0.copy(), {"atoms": None, "misfit": np.asarray(misfit), "rms": np.asarray(rms),
                                      "offsets": np.zeros(n), "n_atoms": 0, "status": STATUS_CANCELLED,
                                      "options": o}
    if status == STATUS_COMPLETE and misfit[-1] > float(o.max_misfit):
        return reject(f"the atomic model misses the data by {misfit[-1]:.2f} (relative; max_misfit "
                      f"{float(o.max_misfit)}): the sample is not resolved into atoms", misfit, rms)
    D_fin, E_fin = best
    amp, snr = significance()
    sig_ = snr >= float(o.min_snr)  # atoms the data do not support are left out of the list
    strong = np.zeros(amp.shape, bool)
    if sig_.any():
        strong[sig_] = _two_classes(amp[sig_])[0]
    p_m = pos.detach().numpy()[sig_, ::-1] * px  # (z, y, x) -> (x, y, z), metres
    atoms = xr.Dataset({"position": (("atom", "xyz"), p_m, {"units": "m"}),
                        "amplitude": ("atom", amp[sig_] * px ** 2,
                                      {"long_name": "integrated projected amplitude",
                                       "units": f"{projections.attrs.get('units', '1')} m^2"}),
                        "snr": ("atom", snr[sig_], {"long_name": "amplitude / its noise error"}),
                        "strong": ("atom", strong[sig_])},
                       coords={"xyz": ["x", "y", "z"]},
                       attrs={"frame": "the volume's (sample) frame", "model": "isotropic atoms, two radial "
                              "profile classes (ptynb.tomo.atomic)"})
    info = {"atoms": atoms, "misfit": np.asarray(misfit), "rms": np.asarray(rms),
            "offsets": off.detach().numpy().copy(), "n_atoms": len(p_m), "status": status, "options": o}
    return -D_fin.numpy().astype(np.float64), E_fin.numpy().astype(np.float64), info


atomic_refinement.__doc__ = atomic_refinement.__doc__.replace(
    "{options}", "Fields: " + ", ".join(AtomicRefinementOptions.fields()) + " (see the class).")
