"""Differentiable projection in torch.

* ``ProjectFunction`` (``project_torch``; created lazily so that importing ptynb.tomo does
  not import torch) wraps the :class:`~ptynb.tomo.Projector`
  forward with its exact adjoint as the backward pass (volume gradients), on CPU tensors
  (numpy via DLPack, no copy) and CUDA tensors (cupy via DLPack). :class:`BackprojectFunction`
  is the transpose pair.
* :func:`posed_project` is a torch-native implementation of the *same* geometry convention
  (:mod:`ptynb.tomo.geometry`) through ``torch.nn.functional.grid_sample``: every ray is
  sampled at uniform steps with trilinear interpolation and summed, so gradients flow to the
  volume **and** to the per-view pose (extrinsic x-y-z Euler angles, degrees) and detector
  shifts (pixels); its matrices come from :mod:`ptynb.physics.rotations` (the same formulas
  as the numpy geometry, on tensors). It agrees with the Joseph projector to interpolation accuracy.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import from_torch, to_torch
from ..data import ValidationError
from ..physics.rotations import resolve_tilt, sample_to_lab
from .projector import Projector

__all__ = [
    "ProjectorModule",
    "backproject_torch",
    "posed_project",
    "project_torch",
    "rotation_matrices_torch",
]


def _torch():
    import torch

    return torch


def _to_array(t):
    return from_torch(t.contiguous())


def _from_array(a, like):
    out = to_torch(a)
    if out.device != like.device:
        out = out.to(like.device)
    return out


def _make_function():
    torch = _torch()

    class ProjectFunction(torch.autograd.Function):
        """``A x`` with backward ``A^T g`` (exact adjoint)."""

        @staticmethod
        def forward(ctx, volume, projector):
            ctx.projector = projector
            return _from_array(projector.forward(_to_array(volume)), volume)

        @staticmethod
        def backward(ctx, grad):
            g = ctx.projector.adjoint(_to_array(grad))
            return _from_array(g, grad), None

    class BackprojectFunction(torch.autograd.Function):
        """``A^T y`` with backward ``A g``."""

        @staticmethod
        def forward(ctx, proj, projector):
            ctx.projector = projector
            return _from_array(projector.adjoint(_to_array(proj)), proj)

        @staticmethod
        def backward(ctx, grad):
            return _from_array(ctx.projector.forward(_to_array(grad)), grad), None

    return ProjectFunction, BackprojectFunction


_FUNCS = None


def _funcs():
    global _FUNCS
    if _FUNCS is None:
        _FUNCS = _make_function()
    return _FUNCS


def __getattr__(name):
    if name == "ProjectFunction":
        return _funcs()[0]
    if name == "BackprojectFunction":
        return _funcs()[1]
    raise AttributeError(name)


def project_torch(volume, projector: Projector):
    """Differentiable ``projector.forward`` on a tensor (nz, ny, nx) -> (angle, nv, nu)."""
    if tuple(volume.shape) != projector.volume_shape:
        raise ValidationError("volume", f"has shape {tuple(volume.shape)}; the projector expects "
                              f"{projector.volume_shape}")
    return _funcs()[0].apply(volume, projector)


def backproject_torch(proj, projector: Projector):
    """Differentiable ``projector.adjoint`` on a tensor (angle, nv, nu) -> (nz, ny, nx)."""
    if tuple(proj.shape) != projector.shape_out:
        raise ValidationError("projections", f"has shape {tuple(proj.shape)}; the projector "
                              f"expects {projector.shape_out}")
    return _funcs()[1].apply(proj, projector)


def ProjectorModule(projector: Projector):
    """A ``torch.nn.Module`` whose ``forward(volume)`` is :func:`project_torch`."""
    torch = _torch()

    class _M(torch.nn.Module):
        def __init__(self, op):
            super().__init__()
            self.projector = op

        def forward(self, volume):
            return project_torch(volume, self.projector)

        def adjoint(self, proj):
            return backproject_torch(proj, self.projector)

    return _M(projector)


# ---------------------------------------------------------------------------- pose path
def rotation_matrices_torch(angles, tilt=None, poses=None):
    """Sample-to-lab matrices (angle, 3, 3) in torch: :func:`ptynb.physics.rotations.sample_to_lab`
    (``R = Rz(rz) Ry(ry) Rx(rx) @ Rx(90 - tilt) @ Ry(angle)``) on tensors, so gradients flow to
    any argument that requires them. Degrees; ``tilt=None`` is 90 (no tilt, see
    :func:`~ptynb.physics.rotations.resolve_tilt`); ``poses`` (angle, 3) = (rx, ry, rz)."""
    torch = _torch()
    ang = torch.as_tensor(angles)
    ang = ang if ang.is_floating_point() else ang.to(torch.float64)
    if tilt is None:
        tilt = resolve_tilt("posed", None)
    return sample_to_lab(ang, tilt, poses)


def posed_project(volume, angles, *, tilt=None, poses=None, shifts=None,
                  detector_shape=None, voxel_size=1.0, pixel_size=None, step=0.5, vol_origin=None,
                  det_origin=None, batch=16):
    """Torch-native projector with differentiable poses (grid_sample ray marching).

    Parameters
    ----------
    volume : tensor (nz, ny, nx), real or complex, float32/float64
    angles : array or tensor (angle,)
        Nominal angles (degrees).
    tilt : float, optional
        Rotation-axis-to-beam angle (degrees; 90 = tomography). None: 90, the nominal
        rotation of a posed geometry (:func:`ptynb.physics.rotations.resolve_tilt`).
    poses : tensor (angle, 3), optional
        Extrinsic x-y-z pose corrections (rx, ry, rz), degrees - may require grad.
    shifts : tensor (angle, 2), optional
        Detector shifts (s_y, s_x) in pixels - may require grad.
    detector_shape : (nv, nu), optional
        Default (ny, nx).
    voxel_size : float or (dz, dy, dx)
        Metres (the projections are line integrals in metres).
    pixel_size : float or (pv, pu), optional
        Default (dy, dx).
    step : float
        Ray step in units of the smallest voxel (default 0.5).
    vol_origin, det_origin : optional
        Coordinates of voxel/pixel 0 (default centred, zero at n // 2), metres.
    batch : int
        Views per grid_sample call.

    Returns
    -------
    tensor (angle, nv, nu)
        ``p(v, u) = sum_t f(R^T (t, v - s_y, u - s_x)) dt`` with trilinear interpolation,
        zero outside the volume.
    """
    torch = _torch()
    import torch.nn.functional as F

    if volume.ndim != 3:
        raise ValidationError("volume", f"has shape {tuple(volume.shape)}; expected (z, y, x)")
    cplx = volume.is_complex()
    rdt = volume.real.dtype if cplx else volume.dtype
    dev = volume.device
    nz, ny, nx = volume.shape
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    ps = np.broadcast_to(np.asarray(vs[1:] if pixel_size is None else pixel_size,
                                    dtype=np.float64), (2,))
    nv, nu = (ny, nx) if detector_shape is None else tuple(int(n) for n in detector_shape)
    if vol_origin is None:
        vol_origin = [-(n // 2) * d for n, d in zip((nz, ny, nx), vs)]
    if det_origin is None:
        det_origin = [-(nv // 2) * ps[0], -(nu // 2) * ps[1]]
    # sample (z, y, x) -> grid_sample coordinates (x, y, z) in [-1, 1] (align_corners=True):
    # g = gscale * (s - vol_origin) - 1, folded into the rotation and an offset
    vo_np = np.asarray(vol_origin, dtype=np.float64)
    gscale_np = 2.0 / (np.maximum(np.array([nz, ny, nx]) - 1, 1) * vs)
    gscale = torch.as_tensor(gscale_np[::-1].copy(), dtype=rdt, device=dev)  # (x, y, z)
    goff = torch.as_tensor((-gscale_np * vo_np - 1.0)[::-1].copy(), dtype=rdt, device=dev)
    ang = torch.as_tensor(np.array(angles, dtype=np.float64, copy=True) if not torch.is_tensor(angles)
                          else angles, dtype=rdt, device=dev).reshape(-1)
    na = ang.numel()
    eul = None if poses is None else torch.as_tensor(poses, dtype=rdt, device=dev).reshape(na, 3)
    R = rotation_matrices_torch(ang, resolve_tilt("posed", tilt), eul)  # (na, 3, 3)
    # ray sampling: centred on the rotation origin, long enough for the volume diagonal
    lo = np.asarray(vol_origin, dtype=np.float64) - vs
    hi = lo + (np.array([nz, ny, nx]) + 1) * vs
    ext = 2 * float(np.sqrt(np.sum(np.maximum(np.abs(lo), np.abs(hi)) ** 2)))
    dt = float(step) * float(vs.min())
    nt = math.ceil(ext / dt) + 1
    t = (torch.arange(nt, dtype=rdt, device=dev) - (nt - 1) / 2) * dt
    v = torch.as_tensor(det_origin[0] + np.arange(nv) * ps[0], dtype=rdt, device=dev)
    u = torch.as_tensor(det_origin[1] + np.arange(nu) * ps[1], dtype=rdt, device=dev)
    if shifts is not None:
        sh = torch.as_tensor(shifts, dtype=rdt, device=dev).reshape(na, 2)
        sv = sh[:, 0] * float(ps[0])
        su = sh[:, 1] * float(ps[1])
    else:
        sv = su = torch.zeros(na, dtype=rdt, device=dev)
    inp = torch.stack([volume.real, volume.imag], 0) if cplx else volume[None]
    inp = inp[None]  # (1, C, nz, ny, nx)
    batch = max(1, int(batch))
    outs = []
    for b0 in range(0, na, batch):
        b1 = min(na, b0 + int(batch))
        # lab -> sample rotation, rows in grid order (x, y, z) and scaled to grid units
        Mg = R[b0:b1].transpose(-1, -2).flip(-2) * gscale[:, None]  # (B, 3, 3)
        vv = v[None, :] - sv[b0:b1, None]  # (B, nv)
        uu = u[None, :] - su[b0:b1, None]
        # g = Mg @ (t, v, u) + goff: (B, nt, nv, nu, 3), summed small-to-large (one full pass)
        gt = Mg[:, None, None, None, :, 0] * t[None, :, None, None, None] + goff  # (B, nt, 1, 1, 3)
        gv = Mg[:, None, None, None, :, 1] * vv[:, None, :, None, None]  # (B, 1, nv, 1, 3)
        gu = Mg[:, None, None, None, :, 2] * uu[:, None, None, :, None]  # (B, 1, 1, nu, 3)
        g = (gt + gv) + gu
        B = b1 - b0
        smp = F.grid_sample(inp.expand(B, *inp.shape[1:]), g, mode="bilinear",
                            padding_mode="zeros", align_corners=True)  # (B, C, nt, nv, nu)
        outs.append(smp.sum(2) * dt)
    out = torch.cat(outs, 0)  # (na, C, nv, nu)
    if cplx:
        return torch.complex(out[:, 0], out[:, 1])
    return out[:, 0]
