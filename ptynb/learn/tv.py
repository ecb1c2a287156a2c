"""Depth-dependent total variation in torch (ADePt's regulariser).

``TV(u) = sum_z w(z) * sum_{y,x} sqrt(|grad u|^2 + eps^2)`` (isotropic, forward differences
in voxel units, zero difference past the last voxel), with one weight per depth ``z``: in
ADePt the layers with coarse features get a strong weight and the fine-feature layers a
weak one (Kang et al.: 3e-6 for z < 2.75 um, 3e-8 above). :func:`depth_weights` builds
that step profile from the z coordinate.
"""
from __future__ import annotations

import numpy as np

from ..data import ValidationError

__all__ = ["depth_tv", "depth_weights"]


def depth_weights(z, boundary: float, below: float, above: float) -> np.ndarray:
    """Per-depth TV weights: ``below`` where ``z < boundary``, ``above`` elsewhere.

    Parameters
    ----------
    z : array (z,)
        Depth coordinate of the slices (m).
    boundary : float
        Depth (m) where the weight changes.
    below, above : float
        Weights (>= 0) on either side.

    Returns
    -------
    numpy.ndarray (z,), float32
    """
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    if below < 0 or above < 0:
        raise ValidationError("tv_weight", f"weights must be >= 0, got {below!r}, {above!r}")
    return np.where(z < boundary, below, above).astype(np.float32)


def depth_tv(u, weights=None, *, eps: float = 1e-8, reduction: str = "mean"):
    """Isotropic total variation of a volume with one weight per depth slice.

    Parameters
    ----------
    u : torch.Tensor (z, y, x) or (batch, channel, z, y, x)
        The volume (any unit; the TV has the unit of ``u`` per voxel).
    weights : array-like or tensor (z,), optional
        Weight of each depth slice (default all 1).
    eps : float
        Smoothing of the square root at zero gradient (differentiable everywhere).
    reduction : {"mean", "sum"}
        Sum of the weighted terms, or that sum divided by the number of voxels.

    Returns
    -------
    torch.Tensor, scalar
    """
    import torch

    if u.dim() == 3:
        u = u[None, None]
    if u.dim() != 5:
        raise ValidationError("u", f"must be (z, y, x) or (batch, channel, z, y, x), got {tuple(u.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValidationError("reduction", f"must be 'mean' or 'sum', got {reduction!r}")
    dz = torch.zeros_like(u)
    dy = torch.zeros_like(u)
    dx = torch.zeros_like(u)
    dz[:, :, :-1] = u[:, :, 1:] - u[:, :, :-1]
    dy[:, :, :, :-1] = u[:, :, :, 1:] - u[:, :, :, :-1]
    dx[..., :-1] = u[..., 1:] - u[..., :-1]
    mag = torch.sqrt(dz * dz + dy * dy + dx * dx + eps * eps)
    per_z = mag.sum(dim=(0, 1, 3, 4))
    if weights is not None:
        w = torch.as_tensor(weights, dtype=u.dtype, device=u.device).reshape(-1)
        if w.numel() != per_z.numel():
            raise ValidationError("weights", f"has {w.numel()} values for {per_z.numel()} depth slices")
        per_z = per_z * w
    total = per_z.sum()
    return total / u.numel() if reduction == "mean" else total
