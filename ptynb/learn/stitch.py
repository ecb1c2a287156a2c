"""Patch extraction with overlap and blended stitching (numpy; no torch needed).

A volume (Z, Y, X) larger than a network's patch (pz, py, px) is cut into patches whose
starts along each axis are ``0, s, 2 s, ...`` with stride ``s = p (1 - overlap)`` (50 %
overlap by default), the last one flush with the far edge; an axis shorter than its patch is
padded (edge values) to the patch and cropped back. The network's outputs are put back with a
separable tent weight ``w(i) = min(i + 1, p - i)`` per axis (largest at a patch's centre,
positive everywhere) and divided by the summed weight::

    out = sum_k w_k * patch_k / sum_k w_k

so overlapping predictions fade into each other (no seams) and a constant field comes back
as the same constant (to float rounding).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["blend_weight", "extract_patches", "patch_starts", "predict_stitched", "stitch_patches"]


def patch_starts(n: int, p: int, overlap: float = 0.5) -> list[int]:
    """Starts (voxels) of patches of length ``p`` covering ``n`` voxels with ``overlap``.

    ``n <= p`` gives ``[0]`` (the axis is padded to ``p``).
    """
    n, p = int(n), int(p)
    if p < 1:
        raise ValueError(f"patch length must be >= 1, got {p}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if n <= p:
        return [0]
    step = max(1, int(round(p * (1.0 - overlap))))
    starts = list(range(0, n - p, step))
    starts.append(n - p)
    return sorted(set(starts))


def _pad_to(vol: np.ndarray, patch) -> np.ndarray:
    pad = [(0, max(0, p - n)) for n, p in zip(vol.shape, patch)]
    if any(b for _, b in pad):
        vol = np.pad(vol, pad, mode="edge")
    return vol


def extract_patches(volume, patch, overlap: float = 0.5):
    """Cut a (Z, Y, X) array into overlapping patches.

    Parameters
    ----------
    volume : array (Z, Y, X)
    patch : (pz, py, px) voxels
    overlap : float
        Fraction of a patch shared with its neighbour along each axis (0.5: 50 %).

    Returns
    -------
    patches : array (K, pz, py, px)
    corners : list of (z0, y0, x0) starts, one per patch
    """
    vol = _pad_to(np.asarray(volume), patch)
    grids = [patch_starts(n, p, overlap) for n, p in zip(vol.shape, patch)]
    corners = [(a, b, c) for a in grids[0] for b in grids[1] for c in grids[2]]
    pz, py, px = patch
    out = np.stack([vol[a:a + pz, b:b + py, c:c + px] for a, b, c in corners])
    return out, corners


def blend_weight(patch) -> np.ndarray:
    """Separable tent weight (pz, py, px), float64, ``prod_axis min(i + 1, p - i)`` (> 0)."""
    w = np.ones(1)
    for ax, p in enumerate(patch):
        i = np.arange(p)
        t = np.minimum(i + 1, p - i).astype(np.float64)
        sh = [1] * len(patch)
        sh[ax] = p
        w = w * t.reshape(sh)
    return w


def stitch_patches(patches, corners, shape, patch=None) -> np.ndarray:
    """Blend patches (K, pz, py, px) at ``corners`` into a volume of ``shape`` (Z, Y, X).

    Returns a float64 array of ``shape`` (padding cropped away).
    """
    patches = np.asarray(patches)
    patch = tuple(patches.shape[1:]) if patch is None else tuple(patch)
    full = tuple(max(n, p) for n, p in zip(shape, patch))
    acc = np.zeros(full)
    wsum = np.zeros(full)
    w = blend_weight(patch)
    pz, py, px = patch
    for P, (a, b, c) in zip(patches, corners):
        acc[a:a + pz, b:b + py, c:c + px] += w * P
        wsum[a:a + pz, b:b + py, c:c + px] += w
    out = acc / wsum
    return out[:shape[0], :shape[1], :shape[2]]


def predict_stitched(fn: Callable[[np.ndarray], np.ndarray], volume, patch, *, overlap: float = 0.5,
                     batch: int = 4, cancel=None) -> np.ndarray:
    """Apply ``fn`` patch-wise to a volume of any size and stitch the results.

    Parameters
    ----------
    fn : callable(array (k, pz, py, px) float32) -> array (k, pz, py, px)
        The network on a batch of patches.
    volume : array (Z, Y, X)
    patch : (pz, py, px)
    overlap : float
        50 % by default.
    batch : int
        Patches per call of ``fn``.
    cancel : threading.Event, optional
        Checked between batches; raises :class:`ptynb.control.Cancelled` when set.

    Returns
    -------
    array (Z, Y, X) float32
    """
    from ..control import Cancelled, is_cancelled

    vol = np.asarray(volume, dtype=np.float32)
    patches, corners = extract_patches(vol, patch, overlap)
    outs = []
    for i in range(0, len(patches), max(1, int(batch))):
        if is_cancelled(cancel):
            raise Cancelled("cancelled while stitching patches")
        outs.append(np.asarray(fn(patches[i:i + batch]), dtype=np.float64))
    return stitch_patches(np.concatenate(outs), corners, vol.shape, patch).astype(np.float32)
