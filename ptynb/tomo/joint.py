"""Joint refinement of volume and per-view rigid pose (the MSPT scheme).

:func:`joint_refinement` refines a volume and per-projection poses (3 Euler angles, 2
detector shifts) together through the differentiable torch projector
(:func:`ptynb.tomo.torch_ops.posed_project`) on a multi-scale schedule
(:data:`MSPT_SCHEDULE`): CGLS volume steps (:func:`_cgls`, ramp-preconditioned), per-view
Gauss-Newton pose steps (:func:`_pose_gauss_newton`), one coupled volume-pose Gauss-Newton
step per round (:func:`_coupled_gauss_newton`) and an automatic support
(:func:`_auto_support`). Its settings are :class:`JointRefinementOptions`.

Conventions are those of :mod:`ptynb.tomo.align` (shifts: the correction in pixels, the
aligned projection is ``shift_image(measured, shift)``) and :mod:`ptynb.physics.rotations`
(poses: extrinsic x-y-z Euler angles in degrees after the nominal rotation).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import param

import numpy as np
import xarray as xr

from .. import backend
from ..backend import to_host, xp_of
from ..control import STATUS_CANCELLED, STATUS_COMPLETE, check_event, is_cancelled
from ..data import ValidationError
from ..options import Options
from ..imaging import shift_image
from .align import (_check_projections, _geometry_of, _progress, _remove_basis, _to_xp, align,
                    rigid_null_space, rotation_gauge)

__all__ = ["MSPT_SCHEDULE", "JointRefinementOptions", "joint_refinement"]

# ----------------------------------------------------------------------------- joint refinement
#: MSPT multi-scale schedule: (parameters refined with the volume, fraction of full resolution)
MSPT_SCHEDULE = (("shifts", 0.1), ("rotations", 0.2), ("all", 1.0))


class JointRefinementOptions(Options):
    """Settings of :func:`joint_refinement` (defaults stated here and nowhere else).

    ``JointRefinementOptions(iterations=2, mask="auto")``; values are checked on
    construction and assignment (a bad value raises :class:`~ptynb.data.ValidationError`
    naming the field). :meth:`defaults` gives ``{field: default}``, :meth:`copy` a changed
    copy. The docstring of :func:`joint_refinement` lists these fields, generated from the
    class.
    """

    iterations = param.Integer(default=4, bounds=(1, None),
                               doc="rounds per stage when the schedule does not give them")
    schedule = param.Parameter(default=MSPT_SCHEDULE,
                               doc="stages (params, fraction[, rounds]): params in 'shifts', "
                                   "'rotations', 'all', 'volume'; fraction of full resolution "
                                   "in (0, 1]")
    volume_solver = param.Selector(default="cgls", objects=["cgls", "adam"],
                                   doc="volume step: CGLS (adjoint by autograd) or torch Adam")
    volume_steps = param.Integer(default=5, bounds=(0, None),
                                 doc="volume iterations (CGLS or Adam) per round")
    lr_volume = param.Number(default=0.02, bounds=(0, None), inclusive_bounds=(False, True),
                             doc="Adam volume step, as a fraction of the volume maximum")
    precondition = param.Boolean(default=True,
                                 doc="ramp-filter preconditioning of the volume in CGLS and in "
                                     "the coupled step")
    pose_solver = param.Selector(default="gauss-newton", objects=["gauss-newton", "adam"],
                                 doc="pose step: per-view damped Gauss-Newton or torch Adam")
    pose_steps = param.Integer(default=5, bounds=(0, None),
                               doc="pose iterations per round (Gauss-Newton or Adam steps)")
    coupled_iterations = param.Integer(default=40, bounds=(0, None),
                                       doc="CGLS iterations of the coupled volume-pose "
                                           "Gauss-Newton step ending every Gauss-Newton round "
                                           "(0: alternate only)")
    lr_shift = param.Number(default=0.3, bounds=(0, None), inclusive_bounds=(False, True),
                            doc="Adam pose step of the shifts (pixels)")
    lr_rotation = param.Number(default=0.3, bounds=(0, None), inclusive_bounds=(False, True),
                               doc="Adam pose step of the Euler angles (degrees)")
    lr_decay = param.Number(default=0.05, bounds=(0, 1), inclusive_bounds=(False, True),
                            doc="Adam steps decay geometrically over all rounds to this fraction")
    blur_sigma = param.Number(default=0.5, bounds=(0, None),
                              doc="Gaussian blur of the volume in the full-scale model (voxels)")
    mask = param.Parameter(default=None,
                           doc="support of the volume: None, 'auto' (from the first stage's "
                               "volume) or a boolean (z, y, x) array")
    mask_threshold = param.Number(default=0.1,
                                  doc="mask='auto': level in [0, 1), as a fraction of the maximum "
                                      "of the smoothed |V|, of the object core")
    mask_margin = param.Number(default=3.0,
                               doc="mask='auto': dilation of the core, full-resolution voxels "
                                   "(>= 0)")
    mask_smooth = param.Number(default=None, allow_None=True, bounds=(0, None),
                               doc="mask='auto': Gaussian smoothing (full-resolution voxels) of "
                                   "the signed volume before its magnitude is thresholded, so "
                                   "noise averages out instead of adding up in |V| (None: |V| "
                                   "smoothed by half a binned voxel)")
    min_size = param.Integer(default=16, bounds=(1, None),
                             doc="smallest binned image/volume size (pixels) of a stage")
    ray_step = param.Number(default=1.0, bounds=(0, None), inclusive_bounds=(False, True),
                            doc="ray-marching step of the torch projector (voxels)")
    pose_prior = param.Number(default=None, allow_None=True, bounds=(0, None),
                              inclusive_bounds=(False, True),
                              doc="rms of the Euler-angle errors expected before refinement "
                                  "(degrees, an assumption about the stage); with a value the "
                                  "Gauss-Newton pose steps are MAP estimates with a Gaussian "
                                  "prior of that width about zero, so rotations the data cannot "
                                  "see stay near zero (None: no prior)")
    fix_gauge = param.Boolean(default=True,
                              doc="project global rotations/translations out of the poses")
    prealign = param.Selector(default="projection_matching",
                              objects=["projection_matching", "cross_correlation", None],
                              doc="pre-alignment when no initial_shifts are given (None: "
                                  "start from zero)")
    prealign_iterations = param.Integer(default=5, bounds=(1, None),
                                        doc="rounds of the pre-alignment")

    _owner = "joint_refinement"

    @classmethod
    def doc_table(cls, indent: str = "    ") -> str:
        """The fields as numpydoc entries ``name : default`` + doc (for docstrings)."""
        lines = []
        for k in cls.fields():
            d = cls.param[k].default
            lines.append(f"{k} : default {d!r}")
            lines.append(f"{indent}{cls.param[k].doc}")
        return ("\n" + indent).join(lines)


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


def _prior_weights(r, prior, cols):
    """Per-view, per-column weights ``w`` (n, a) of the pose prior ``sum w p^2`` for the
    misfit ``sum r^2`` (MAP scaled by the noise variance): ``sigma_k^2 / prior^2`` on the
    rotation columns (2, 3, 4), zero on the shifts, with ``sigma_k^2`` view ``k``'s mean
    squared residual per pixel (model error counts as noise, so the prior is, if anything,
    too strong). ``r`` (n, pixels) residuals; ``prior`` degrees or None (all zero)."""
    import torch

    n = r.shape[0]
    w = torch.zeros((n, len(cols)), dtype=torch.float64, device=r.device)
    if prior is None:
        return w
    var = (r.double() ** 2).mean(1)
    rot = torch.tensor([j >= 2 for j in cols], device=r.device)
    return torch.where(rot[None, :], var[:, None] / float(prior) ** 2, w)


def _pose_gauss_newton(fwd, data, p, cols, steps, fd_step, torch, tol=1e-3, prior=None):
    """Per-view damped Gauss-Newton (Levenberg-Marquardt) on the pose columns ``cols`` of
    ``p`` (angle, 5) = (S_y, S_x [px], rx, ry, rz [deg]) for ``min sum_k ||fwd(p)_k -
    data_k||^2`` with ``fwd`` fixed (the volume does not change here).

    Projection ``k`` depends on pose ``k`` only, so the normal matrix is block diagonal: one
    ``len(cols) x len(cols)`` system per view. Jacobian columns by forward differences of
    ``fwd_step[j]`` (all views perturbed at once: one projection per column). Each view
    keeps its own Marquardt damping ``lam`` (``(H + lam diag H) d = -g``), takes a step only
    where it lowers that view's misfit, and stops when its step is below ``tol`` (px and deg)
    or it cannot improve. ``steps`` Gauss-Newton iterations at most. With ``prior`` (degrees)
    each view minimises ``misfit + sum w p_rot^2`` (:func:`_prior_weights`, the weights fixed
    from the residual at entry): a MAP estimate under a zero-mean Gaussian prior on the
    Euler angles.

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
    w = _prior_weights(r, prior, cols)  # (n, a)

    def penalty(q):
        qc = torch.as_tensor(q[:, cols], dtype=torch.float64, device=r.device)
        return (w * qc * qc).sum(1)

    f0 = (r * r).sum(1) + penalty(p)  # (n,) per-view misfit (+ prior)
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
        pc = torch.as_tensor(p[:, cols], dtype=torch.float64, device=r.device)
        H = J @ J.transpose(1, 2) + torch.diag_embed(w)  # (n, a, a)
        g = J @ r[:, :, None] + (w * pc)[:, :, None]  # (n, a, 1)
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
            ft = (rt * rt).sum(1) + penalty(q)
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
                          damping=1e-3, gauge=None, precond=None, prior=None):
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

    With ``prior`` (degrees) the objective gains the pose prior ``sum w |p_rot + dp_rot|^2``
    (:func:`_prior_weights`): the step is solved for the new rotation itself (damping rows
    of weight ``w`` towards zero instead of towards the current pose).

    Returns ``(V, p, loss_before, loss_after)`` with the losses as ``sum (fwd - data)^2 /
    mean(data^2)`` (plus the prior term when there is one); the step is halved until the
    loss drops (no step if it never does).
    """
    n = p.shape[0]
    a = len(cols)
    Cm = precond if precond is not None else (lambda v: v)
    with torch.no_grad():
        f0 = fwd(V, p)
        cb = float(torch.sqrt(torch.mean(data.double() ** 2))) or 1.0
        r = (data - f0) / cb
        w = _prior_weights(r.reshape(n, -1), prior, cols).to(data.dtype)  # (n, a)

        def penalty(q):
            qc = torch.as_tensor(q[:, cols], dtype=torch.float64, device=data.device)
            return float((w.double() * qc * qc).sum())

        loss0 = float(torch.sum(r.double() ** 2)) + penalty(p)
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

    # damping rows: lam on every pose column (numerical), plus the prior's w (scaled) on the
    # rotations, pulling the new pose p + dp (not the step) to zero: with yp = y0 + z and
    # y0 = -p / dp_scale on the prior's columns, CGLS solves for z from the residual r - K y0
    pcur = torch.as_tensor(p[:, cols], dtype=V.dtype, device=V.device)
    lamv = float(damping) + w * dp_scale ** 2
    y0 = torch.where(w > 0, -pcur / dp_scale, torch.zeros_like(pcur))
    yv = torch.zeros_like(V)
    yp = torch.zeros((n, a), dtype=V.dtype, device=V.device)
    res = r.clone() if prior is None else r - K(torch.zeros_like(V), y0)
    sv, sp = KT(res)
    pv, pp = sv.clone(), sp.clone()
    gamma = dot(sv, sv) + dot(sp, sp)
    for _ in range(int(cg_iterations)):
        if not gamma > 0:
            break
        q = K(pv, pp)
        qq = dot(q, q) + dot(pp, lamv * pp)
        if not qq > 0:
            break
        alpha = gamma / qq
        yv = yv + alpha * pv
        yp = yp + alpha * pp
        res = res - alpha * q
        sv, sp = KT(res)
        sp = sp - lamv * yp  # the damping rows
        gnew = dot(sv, sv) + dot(sp, sp)
        pv = sv + (gnew / gamma) * pv
        pp = sp + (gnew / gamma) * pp
        gamma = gnew
    with torch.no_grad():
        dV = Cm(yv) * (dv_scale * cb / ca)
        dP = np.zeros((n, 5))
        dP[:, cols] = Gp((yp + y0) * dp_scale).double().cpu().numpy()
        t = 1.0
        for _ in range(5):
            V1 = V + t * dV
            p1 = p + t * dP
            loss1 = float(torch.sum(((data - fwd(V1, p1)) / cb).double() ** 2)) + penalty(p1)
            if loss1 < loss0:
                return V1, p1, loss0, loss1
            t *= 0.5
    return V, p, loss0, loss0


def _auto_support(v, b, vshape, threshold, margin, smooth=None):
    """Support mask (bool, ``vshape``) from a volume ``v`` reconstructed at binning ``b``.

    ``smooth=None``: ``|v|`` is smoothed by a Gaussian of 0.5 binned voxel (against speckle
    and streaks) and interpolated (trilinearly) to the full grid. ``smooth`` = a number: the
    *signed* ``v`` is interpolated to the full grid and smoothed by a Gaussian of ``smooth``
    full-resolution voxels, then its magnitude is taken - the noise of an unregularised
    reconstruction of noisy data then averages out instead of adding up (its ``|v|`` is
    nearly as large outside the object as inside, and every threshold of it keeps nearly
    everything). Either map is thresholded at ``threshold`` times its maximum and dilated by
    ``margin`` full-resolution voxels (all voxels within that Euclidean distance of the
    thresholded core).

    The mask multiplies the volume in the model, so whatever part of the object it cuts off
    is a misfit that no pose can remove: the poses then absorb it, the weakest pose direction
    (rotation about the rotation axis, varying slowly with the angle) most. The magnitude is
    used so that a negative object (a phase of ``-k delta t``) is not thresholded away, and
    the margin is in full-resolution voxels so the mask is as tight at any binning.
    """
    import torch
    from scipy import ndimage as ndi

    a = np.asarray(v, dtype=np.float32)
    if smooth is None:
        a = ndi.gaussian_filter(np.abs(a), 0.5, mode="constant")
    vs_b = tuple(int(m) for m in a.shape)
    full = tuple(m * b for m in vs_b)
    if b > 1:
        # binned voxel i covers full voxels [i b, (i + 1) b): align_corners=False maps centres
        a = torch.nn.functional.interpolate(torch.as_tensor(a)[None, None], size=full,
                                            mode="trilinear", align_corners=False)[0, 0].numpy()
    pad = [(0, int(vshape[i]) - full[i]) for i in range(3)]
    a = np.pad(a, pad, mode="edge")
    if smooth is not None:
        a = np.abs(ndi.gaussian_filter(a, float(smooth), mode="constant")) if smooth > 0 else np.abs(a)
    amax = float(a.max())
    if not amax > 0:  # an empty volume says nothing about the support
        return np.ones(tuple(vshape), dtype=bool)
    m = a > threshold * amax
    if margin > 0:
        m = ndi.distance_transform_edt(~m) <= margin
    return m


def joint_refinement(projections, *, options: JointRefinementOptions | None = None,
                     initial_shifts=None, initial_poses=None, volume_shape=None,
                     geometry: str | None = None, tilt: float | None = None, device=None,
                     progress: bool = True, callback: Callable[[int, dict], Any] | None = None,
                     cancel=None, **overrides):
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
      Gauss-Newton step on volume and poses together: ``coupled_iterations`` CGLS
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
    a Gaussian of ``blur_sigma`` voxels in the model, against frequencies beyond
    Nyquist. ``mask="auto"`` makes a support from the first stage's volume, used in later
    stages (and on the returned volume): ``|V|`` smoothed by half a binned voxel
    (``mask_smooth=None``, default) - or, with ``mask_smooth`` a number, the signed ``V``
    upsampled to the full grid and smoothed by a Gaussian of that many full-resolution voxels
    before its magnitude is taken - above ``mask_threshold`` times its maximum, dilated by
    ``mask_margin`` full-resolution voxels (so the schedule needs at least two stages for it
    to act); a boolean (z, y, x) array is used as given. The magnitude of an unregularised
    reconstruction of noisy data is nearly as large outside the object as inside (on the MSPT
    CI series the default rule keeps 99.8 % of the voxels); smoothing the signed volume first
    averages the noise out (``mask_smooth=2, mask_threshold=0.25, mask_margin=3``, the MSPT
    workflow's rule: 0.57-0.59 of the volume there, > 99.9 % of the true object's mass kept). The mask multiplies the volume in the model, so any part of the object
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
    options : JointRefinementOptions, optional
        The solver settings (listed with their defaults under *Options* below).
    initial_shifts : array (angle, 2), optional
        Starting correction in the :func:`align` convention (pixels, ``= -S``). If omitted,
        ``prealign`` runs first (the MSPT workflow starts from an initially aligned series).
    initial_poses : array (angle, 3), optional
        Starting Euler angles (rx, ry, rz), degrees.
    volume_shape : (nz, ny, nx), optional
        Default: the grid recorded by :func:`ptynb.tomo.project`, else (nx, ny, nx).
    geometry, tilt : optional
        Override the attrs' nominal geometry and laminography tilt (degrees; None: the attrs,
        else :data:`ptynb.physics.rotations.DEFAULT_TILT` for laminography).
    device : {"cpu", "gpu", None}
        Torch device.
    progress, callback
        tqdm bar over rounds; ``callback(round, info)`` with ``loss`` (at the end of the
        round), ``loss_volume`` (after its volume step), ``stage``, ``bin``, ``shifts``
        (pixels, correction convention) and ``poses`` (degrees); for observing only (its
        return value is ignored).
    cancel : threading.Event, optional
        Polled after every round (after ``callback``): once set, the refinement stops and
        returns the volume and poses so far with ``info["status"] = "cancelled"`` (see
        :mod:`ptynb.control`).
    **overrides
        Any field of :class:`JointRefinementOptions` as a keyword (``iterations=2``); a
        keyword overrides the same field of ``options``. Unknown names raise
        :class:`~ptynb.data.ValidationError` (with the closest field name).

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
        ``loss`` (per round), ``stages`` (list of (params, bin, rounds)), ``model_shifts``,
        ``options`` (the :class:`JointRefinementOptions` used), ``status`` (``"complete"``
        or ``"cancelled"``).

    Options
    -------
    {options}
    """
    o = JointRefinementOptions.resolve(options, overrides)
    check_event(cancel)
    iterations = o.iterations
    schedule = o.schedule
    volume_solver = o.volume_solver
    volume_steps = o.volume_steps
    lr_volume = o.lr_volume
    precondition = o.precondition
    pose_solver = o.pose_solver
    pose_steps = o.pose_steps
    coupled_iterations = o.coupled_iterations
    lr_shift = o.lr_shift
    lr_rotation = o.lr_rotation
    lr_decay = o.lr_decay
    blur_sigma = o.blur_sigma
    mask = o.mask
    mask_threshold = o.mask_threshold
    mask_margin = o.mask_margin
    min_size = o.min_size
    ray_step = o.ray_step
    fix_gauge = o.fix_gauge
    prealign = o.prealign
    prealign_iterations = o.prealign_iterations
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
    for p_, f_, r_ in stages:
        if r_ < 1:
            raise ValidationError("schedule", f"rounds per stage must be >= 1, got {r_}")
        if p_ not in ("shifts", "rotations", "all", "volume"):
            raise ValidationError("schedule", f"unknown stage parameters {p_!r}: use 'shifts', 'rotations', 'all' or 'volume'")
        if not 0 < f_ <= 1:
            raise ValidationError("schedule", f"resolution fraction must be in (0, 1], got {f_}")
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
    cancelled = False
    total = sum(st[2] for st in stages)
    bar = _progress(range(total), progress, "joint refinement")
    bar_it = iter(bar) if progress else None
    for si, (params, frac, rounds) in enumerate(stages):
        nmin = min(Ph.shape[1], Ph.shape[2], *vshape)
        b = max(1, min(int(round(1.0 / frac)), max(1, nmin // int(min_size))))
        data = torch.tensor(_bin2d(Ph, b), dtype=tdt, device=dev)
        scale2 = float(torch.mean(data ** 2)) or 1.0  # loss relative to the data power
        detector_shape = tuple(data.shape[-2:])
        det_origin = (float(yc[: detector_shape[0] * b].reshape(-1, b).mean(axis=1)[0]),
                      float(xc[: detector_shape[1] * b].reshape(-1, b).mean(axis=1)[0]))
        vs_b = tuple(m // b for m in vshape)
        vox_b = vsize * b
        vorig_b = vorigin + (b - 1) / 2 * vsize
        full = b == 1 and frac >= 1.0
        # initial volume of this stage
        if V is None:
            corr = shift_image(Ph, -S.detach().cpu().numpy().astype(np.float64))
            da = projections.copy(data=corr)
            da = da.isel(y=slice(0, detector_shape[0] * b), x=slice(0, detector_shape[1] * b))
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
            return posed_project(veff, ang, tilt=tlt, poses=e, shifts=sh / b,
                                 detector_shape=detector_shape, voxel_size=tuple(vox_b),
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
                                          pose_steps, fd, torch, tol=_POSE_TOL, prior=o.pose_prior)
                q = gauge_free(q) if fix_gauge else q
                if int(coupled_iterations) > 0:
                    V, q, _, l1 = _coupled_gauss_newton(
                        forward_q, data, V, q, cols, fd, torch, cg_iterations=int(coupled_iterations),
                        gauge=gauge_free if fix_gauge else None, precond=precond,
                        prior=o.pose_prior)
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
            if is_cancelled(cancel):
                cancelled = True
                break
        stage_log.append((params, b, r + 1))
        if cancelled:
            break
        if si == 0 and isinstance(mask, str) and mask == "auto":
            auto_mask = _auto_support(V.detach().cpu().numpy(), b, vshape, mask_threshold, mask_margin,
                                      smooth=o.mask_smooth)
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
            (user_mask if user_mask is not None else auto_mask),
            "options": o, "status": STATUS_CANCELLED if cancelled else STATUS_COMPLETE}
    return aligned, -S_np, E_np, info


joint_refinement.__doc__ = joint_refinement.__doc__.replace("{options}",
                                                            JointRefinementOptions.doc_table())
