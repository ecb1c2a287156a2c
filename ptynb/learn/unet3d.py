"""APT's 3D U-Net: a ResNet-like encoder, axial self-attention at the bottleneck, a decoder.

Shapes: input and output (batch, 1, Z, Y, X) float32; Y and X must be divisible by 4 (two
x2 lateral down-samplings); Z is kept at every scale (the samples are thin along the beam).

Architecture (``width=1`` is the paper's size)::

    stem      conv3 1 -> c1/4,  BN, ReLU
    stage 1   3 bottleneck blocks, c1 = 128 w channels (inner 32 w)          full size
    stage 2   4 bottleneck blocks, c2 = 256 w (inner 64 w), first stride (1, 2, 2)
    stage 3   6 bottleneck blocks, c3 = 512 w (inner 128 w), first stride (1, 2, 2)
    attention multi-head axial self-attention along z, y, x (ptynb.learn.attention)
    decoder   x2 lateral up-sampling (trilinear), concat skip, 2 x (conv3, BN, ReLU): c3 -> c2 -> c1
    head      conv1 c1 -> 1, added to the input (the network learns a correction of the
              Approximant)

Bottleneck block (ResNet-50 style): conv1 (c_in -> inner), conv3 (inner, stride), conv1
(inner -> 4 inner), each with BatchNorm over channels; a projection shortcut when the shape
changes. All BatchNorms are ``nn.BatchNorm3d`` (statistics per channel over batch and space).

:func:`build_unet3d` builds the model from an architecture dict (what shipped weights store
and what :func:`ptynb.learn.training.load_weights` compares).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .attention import AxialAttentionBlock

__all__ = ["Bottleneck", "UNet3D", "architecture", "build_unet3d"]


def _ch(n: float) -> int:
    return max(2, int(round(n)))


class Bottleneck(nn.Module):
    """ResNet bottleneck block in 3D: (B, c_in, Z, Y, X) -> (B, 4 inner, Z, Y/s, X/s)."""

    def __init__(self, c_in: int, inner: int, stride=(1, 1, 1)):
        super().__init__()
        c_out = 4 * inner
        self.c1 = nn.Conv3d(c_in, inner, 1, bias=False)
        self.b1 = nn.BatchNorm3d(inner)
        self.c2 = nn.Conv3d(inner, inner, 3, stride=stride, padding=1, bias=False)
        self.b2 = nn.BatchNorm3d(inner)
        self.c3 = nn.Conv3d(inner, c_out, 1, bias=False)
        self.b3 = nn.BatchNorm3d(c_out)
        self.short = None
        if c_in != c_out or tuple(stride) != (1, 1, 1):
            self.short = nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = F.relu(self.b2(self.c2(y)))
        y = self.b3(self.c3(y))
        s = x if self.short is None else self.short(x)
        return F.relu(y + s)


def _stage(c_in, inner, n, stride):
    blocks = [Bottleneck(c_in, inner, stride)]
    blocks += [Bottleneck(4 * inner, inner) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


class _Up(nn.Module):
    def __init__(self, c_in, c_skip, c_out):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv3d(c_in + c_skip, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True),
            nn.Conv3d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True))

    def forward(self, x, skip):
        x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class UNet3D(nn.Module):
    """The APT network (see the module docstring).

    Parameters
    ----------
    width : float
        Channel factor: 1 gives the paper's 32->128, 64->256, 128->512 (inner->out per stage).
    blocks : (int, int, int)
        Bottleneck blocks per encoder stage (paper: 3, 4, 6).
    heads : int
        Attention heads at the bottleneck.
    max_length : int
        Longest line (voxels) of the attention's relative-position table.
    residual : bool
        Add the input to the head's output (learn a correction of the Approximant).
    """

    def __init__(self, width: float = 1.0, blocks=(3, 4, 6), heads: int = 4, max_length: int = 64,
                 residual: bool = True):
        super().__init__()
        i1, i2, i3 = _ch(32 * width), _ch(64 * width), _ch(128 * width)
        c1, c2, c3 = 4 * i1, 4 * i2, 4 * i3
        if c3 % heads:
            raise ValueError(f"bottleneck channels {c3} not divisible by heads {heads}")
        self.residual = bool(residual)
        self.stem = nn.Sequential(nn.Conv3d(1, i1, 3, padding=1, bias=False), nn.BatchNorm3d(i1), nn.ReLU(inplace=True))
        self.enc1 = _stage(i1, i1, blocks[0], (1, 1, 1))
        self.enc2 = _stage(c1, i2, blocks[1], (1, 2, 2))
        self.enc3 = _stage(c2, i3, blocks[2], (1, 2, 2))
        self.attn = AxialAttentionBlock(c3, heads, max_length)
        self.up2 = _Up(c3, c2, c2)
        self.up1 = _Up(c2, c1, c1)
        self.head = nn.Conv3d(c1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, Z, Y, X) -> (B, 1, Z, Y, X); Y and X divisible by 4."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"expected (batch, 1, Z, Y, X), got {tuple(x.shape)}")
        if x.shape[3] % 4 or x.shape[4] % 4:
            raise ValueError(f"Y and X must be divisible by 4, got {tuple(x.shape[2:])}")
        s1 = self.enc1(self.stem(x))
        s2 = self.enc2(s1)
        b = self.attn(self.enc3(s2))
        y = self.up1(self.up2(b, s2), s1)
        y = self.head(y)
        return x + y if self.residual else y


def architecture(width: float = 1.0, blocks=(3, 4, 6), heads: int = 4, max_length: int = 64,
                 residual: bool = True, **extra) -> dict:
    """The architecture dict of a :class:`UNet3D` (plus ``extra`` keys such as the patch size)."""
    d = {"model": "UNet3D", "width": float(width), "blocks": [int(b) for b in blocks], "heads": int(heads),
         "max_length": int(max_length), "residual": bool(residual)}
    d.update(extra)
    return d


def build_unet3d(arch: dict) -> UNet3D:
    """A :class:`UNet3D` from an architecture dict (:func:`architecture`); extra keys ignored."""
    if arch.get("model", "UNet3D") != "UNet3D":
        raise ValueError(f"not a UNet3D architecture: {arch.get('model')!r}")
    return UNet3D(width=arch["width"], blocks=tuple(arch["blocks"]), heads=arch["heads"],
                  max_length=arch["max_length"], residual=arch.get("residual", True))
