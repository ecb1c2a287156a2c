"""Multi-head axial self-attention for 3D feature maps (APT's bottleneck), in torch.

For a feature map ``x`` of shape (batch, channels, z, y, x), :class:`AxialAttention3d` attends
along one axis at a time: every line of voxels along axis ``a`` (the other two coordinates
fixed) is a sequence, and each voxel attends to every voxel of its line with

    logits[h, i, j] = q_h(i) . k_h(j) / sqrt(d) + bias_h[i - j]
    out_h(i) = sum_j softmax_j(logits[h, i, :]) v_h(j)

where ``q, k, v`` are 1x1x1 linear maps of the channels (``heads`` heads of ``d = channels /
heads`` channels), and ``bias_h[r]`` a learned relative-position bias per head and offset
``r = i - j`` (``-(L-1)..L-1`` for a maximum line length ``L``). The heads are concatenated
and mapped back to the channels by a last 1x1x1 map; the block adds the result to its input
(residual) after a BatchNorm over channels. :class:`AxialAttentionBlock` applies the three
axes in turn (z, then y, then x).

Unlike the released TF code of the APT paper the similarity is the query-key dot product (a
correct attention), and the softmax runs over the key index of the same line.

:func:`full_attention_reference` computes the same thing the slow way (all voxels as one
sequence, pairs on different lines masked out) and is what the tests compare against.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["AxialAttention3d", "AxialAttentionBlock", "full_attention_reference"]

_AXES = {"z": 2, "y": 3, "x": 4}


class AxialAttention3d(nn.Module):
    """Multi-head self-attention along one axis of a (batch, channels, z, y, x) tensor.

    Parameters
    ----------
    channels : int
        Feature channels C (divisible by ``heads``).
    heads : int
        Number of heads.
    axis : {"z", "y", "x"}
        The axis along which voxels attend to each other.
    max_length : int
        Longest line the relative-position table covers (offsets beyond it share the edge
        entry of the table).
    """

    def __init__(self, channels: int, heads: int = 2, axis: str = "z", max_length: int = 64):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        if axis not in _AXES:
            raise ValueError(f"axis must be one of {tuple(_AXES)}, got {axis!r}")
        self.channels, self.heads, self.axis, self.max_length = int(channels), int(heads), axis, int(max_length)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1, bias=False)
        self.out = nn.Conv3d(channels, channels, 1)
        self.rel_bias = nn.Parameter(torch.zeros(heads, 2 * self.max_length - 1))

    def bias(self, length: int) -> torch.Tensor:
        """Relative-position bias (heads, length, length): entry [h, i, j] = bias_h[i - j]."""
        i = torch.arange(length, device=self.rel_bias.device)
        r = (i[:, None] - i[None, :]).clamp(-(self.max_length - 1), self.max_length - 1) + self.max_length - 1
        return self.rel_bias[:, r]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, Z, Y, X) -> (B, C, Z, Y, X): the attention output (no residual)."""
        B, C = x.shape[:2]
        ax = _AXES[self.axis]
        L = x.shape[ax]
        h, d = self.heads, C // self.heads
        qkv = self.qkv(x)  # (B, 3C, Z, Y, X)
        # move the attended axis last: (B, 3C, a, b, L)
        perm = [0, 1] + [a for a in (2, 3, 4) if a != ax] + [ax]
        qkv = qkv.permute(*perm)
        a_, b_ = qkv.shape[2], qkv.shape[3]
        qkv = qkv.reshape(B, 3, h, d, a_, b_, L).permute(1, 0, 4, 5, 2, 6, 3)  # (3, B, a, b, h, L, d)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d) + self.bias(L)
        att = torch.softmax(logits, dim=-1)
        o = torch.matmul(att, v)  # (B, a, b, h, L, d)
        o = o.permute(0, 3, 5, 1, 2, 4).reshape(B, C, a_, b_, L)
        inv = [0] * 5
        for i, p in enumerate(perm):
            inv[p] = i
        o = o.permute(*inv).contiguous()
        return self.out(o)


class AxialAttentionBlock(nn.Module):
    """Axial attention along z, y and x in turn, each with a residual and a BatchNorm.

    ``x <- x + BN(Attn_axis(x))`` for axis in (z, y, x). Shapes: (B, C, Z, Y, X) in and out.

    Parameters
    ----------
    channels, heads, max_length : see :class:`AxialAttention3d`.
    """

    def __init__(self, channels: int, heads: int = 2, max_length: int = 64):
        super().__init__()
        self.attn = nn.ModuleList(AxialAttention3d(channels, heads, a, max_length) for a in ("z", "y", "x"))
        self.norm = nn.ModuleList(nn.BatchNorm3d(channels) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for att, bn in zip(self.attn, self.norm):
            x = x + bn(att(x))
        return x


def full_attention_reference(layer: AxialAttention3d, x: torch.Tensor) -> torch.Tensor:
    """The output of ``layer(x)`` computed directly, for tests (slow, small tensors only).

    All Z*Y*X voxels form one sequence; ``logits[h, n, m] = q_h(n).k_h(m)/sqrt(d) +
    bias_h[i_n - i_m]`` with ``i`` the coordinate along ``layer.axis``, and pairs (n, m) that
    differ in another coordinate get ``-inf`` before one full softmax over ``m``.

    Parameters
    ----------
    layer : AxialAttention3d
    x : tensor (B, C, Z, Y, X)

    Returns
    -------
    tensor (B, C, Z, Y, X)
    """
    B, C, Z, Y, X = x.shape
    h, d = layer.heads, C // layer.heads
    W = layer.qkv.weight.reshape(3 * C, C)
    flat = x.reshape(B, C, -1)  # (B, C, N)
    qkv = torch.einsum("oc,bcn->bon", W, flat)
    q, k, v = (qkv[:, i * C:(i + 1) * C].reshape(B, h, d, -1) for i in range(3))
    zz, yy, xx = torch.meshgrid(torch.arange(Z), torch.arange(Y), torch.arange(X), indexing="ij")
    coords = {"z": zz.reshape(-1), "y": yy.reshape(-1), "x": xx.reshape(-1)}
    along = coords[layer.axis]
    same = torch.ones(along.numel(), along.numel(), dtype=torch.bool)
    for name, c in coords.items():
        if name != layer.axis:
            same &= c[:, None] == c[None, :]
    r = (along[:, None] - along[None, :]).clamp(-(layer.max_length - 1), layer.max_length - 1) + layer.max_length - 1
    out = torch.empty(B, h, d, along.numel(), dtype=x.dtype)
    for b in range(B):
        for hh in range(h):
            logits = q[b, hh].T @ k[b, hh] / math.sqrt(d)  # (N, N)
            logits = logits + layer.rel_bias[hh][r]
            logits = logits.masked_fill(~same, float("-inf"))
            att = torch.softmax(logits, dim=-1)
            out[b, hh] = (att @ v[b, hh].T).T
    o = out.reshape(B, C, Z, Y, X)
    return layer.out(o)
