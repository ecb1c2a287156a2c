"""Losses for learned reconstruction (torch).

NPCC, the negative Pearson correlation coefficient (APT's training loss), per sample::

    NPCC(p, t) = - sum((p - mean p)(t - mean t)) / sqrt(sum (p - mean p)^2 sum (t - mean t)^2)

in [-1, 1]; -1 for any ``p = a t + b`` with ``a > 0`` (the loss does not fix the scale or the
offset of the prediction).
"""
from __future__ import annotations

import torch

__all__ = ["npcc"]


def npcc(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12, reduction: str = "mean") -> torch.Tensor:
    """Negative Pearson correlation of each sample of a batch, averaged (or per sample).

    Parameters
    ----------
    pred, target : tensor (batch, ...)
        Same shape; every dim after the first is one sample's values (e.g. (B, 1, Z, Y, X)).
    eps : float
        Added to the denominator (a constant sample gives 0, not NaN).
    reduction : {"mean", "none"}
        Mean over the batch (a scalar), or the (batch,) values.

    Returns
    -------
    tensor: scalar or (batch,), dimensionless, in [-1, 1].
    """
    if pred.shape != target.shape:
        raise ValueError(f"npcc: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    p = pred.reshape(pred.shape[0], -1)
    t = target.reshape(target.shape[0], -1)
    p = p - p.mean(dim=1, keepdim=True)
    t = t - t.mean(dim=1, keepdim=True)
    r = (p * t).sum(1) / torch.sqrt((p * p).sum(1) * (t * t).sum(1) + eps)
    out = -r
    if reduction == "none":
        return out
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return out.mean()
