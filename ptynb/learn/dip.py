"""Deep-image-prior 3D U-Net of ADePt (an encoder-decoder with skips fed with noise).

The network maps a fixed tensor of uniform noise to the volume; its weights are the unknowns
of the reconstruction (Ulyanov et al.'s deep image prior; Kang et al., Optica 2023, Fig. 1D):

- encoder level ``i`` (i = 0..4): 3x3x3 convolution with stride ``strides[i]`` -> batch norm
  -> leaky ReLU -> 3x3x3 convolution -> batch norm -> leaky ReLU, ``channels[i]`` features
  (default 32, 64, 96, 96, 96 with strides 2, 2, 1, 1, 1);
- a skip branch per level: 1x1x1 convolution of the level's input to ``skip_channels`` (8);
- decoder level ``i`` (deepest first): trilinear upsampling by ``strides[i]`` -> concatenation
  with skip ``i`` -> batch norm -> 3x3x3 convolution -> batch norm -> leaky ReLU -> 1x1x1
  convolution -> batch norm -> leaky ReLU;
- output: 1x1x1 convolution to one channel and a scaled sigmoid,
  ``out = output_scale * (2 sigmoid(h) - 1)`` in (-output_scale, +output_scale) (0.03 in the
  paper: the phase per voxel, in radians).

Convolution weights are Xavier-uniform with gain 0.2 (``init_gain``), biases zero. ``width``
multiplies every channel count (at least 1 channel each) so CPU runs stay small. The input
noise (``noise_channels`` channels, uniform in [0, ``noise_scale``)) is drawn once from a
seeded generator; with ``learnable_input=True`` it is an ``nn.Parameter`` and trained with
the weights (the released script meant to do this but froze it by accident), otherwise a
buffer (saved in checkpoints, never trained).

Any volume shape works: the noise is padded up to a multiple of the product of the strides
and the output cropped back.
"""
from __future__ import annotations

import math

from ..data import ValidationError

__all__ = ["DIPOptions", "DIPUNet", "build_dip", "scaled_channels"]  # noqa: F822 - DIPUNet is lazy (torch)

import param

from ..options import Options


class DIPOptions(Options):
    """Shape of the deep-image-prior U-Net (the paper's defaults)."""

    channels = param.List([32, 64, 96, 96, 96], item_type=int,
                          doc="Feature channels of the encoder levels (before the width factor).")
    strides = param.List([2, 2, 1, 1, 1], item_type=int,
                         doc="Stride of each encoder level (1 or 2); same length as channels.")
    skip_channels = param.Integer(8, bounds=(0, None), doc="Channels of each skip branch (0: no skips).")
    width = param.Number(1.0, bounds=(0, None), inclusive_bounds=(False, True),
                         doc="Multiplies every channel count (e.g. 0.25 for small CPU runs).")
    noise_channels = param.Integer(32, bounds=(1, None), doc="Channels of the noise input.")
    noise_scale = param.Number(0.1, bounds=(0, None), inclusive_bounds=(False, True),
                               doc="The input noise is uniform in [0, noise_scale).")
    learnable_input = param.Boolean(False, doc="Train the noise input with the weights (else fixed).")
    output_scale = param.Number(0.03, bounds=(0, None), inclusive_bounds=(False, True),
                                doc="Output range (-s, s) of the scaled sigmoid (rad per voxel in ADePt).")
    init_gain = param.Number(0.2, bounds=(0, None), inclusive_bounds=(False, True),
                             doc="Gain of the Xavier-uniform initialisation of the convolutions.")
    negative_slope = param.Number(0.2, bounds=(0, 1), doc="Slope of the leaky ReLUs below zero.")

    def _check(self):
        if len(self.channels) != len(self.strides) or not self.channels:
            raise ValidationError("strides", f"needs one stride per level: {len(self.channels)} "
                                  f"channels, {len(self.strides)} strides")
        if any(s not in (1, 2) for s in self.strides):
            raise ValidationError("strides", f"each stride must be 1 or 2, got {self.strides}")
        if any(c < 1 for c in self.channels):
            raise ValidationError("channels", f"must be positive, got {self.channels}")


def scaled_channels(channels, width: float) -> list[int]:
    """Channel counts times ``width``, rounded, at least 1 each."""
    return [max(1, int(round(c * float(width)))) for c in channels]


def _make_classes():
    import torch
    from torch import nn

    def conv(cin, cout, k, stride=1):
        return nn.Conv3d(cin, cout, k, stride=stride, padding=k // 2, padding_mode="reflect" if k > 1 else "zeros")

    class Net(nn.Module):
        def __init__(self, shape, opts: DIPOptions, seed: int):
            super().__init__()
            self.shape = tuple(int(n) for n in shape)
            self.options = opts
            ch = scaled_channels(opts.channels, opts.width)
            sk = max(0, int(round(opts.skip_channels * opts.width))) if opts.skip_channels else 0
            if opts.skip_channels and sk == 0:
                sk = 1
            slope = float(opts.negative_slope)
            act = lambda: nn.LeakyReLU(slope)
            self.factor = int(math.prod(opts.strides))
            self.padded = tuple(int(math.ceil(n / self.factor) * self.factor) for n in self.shape)
            g = torch.Generator().manual_seed(int(seed))
            noise = float(opts.noise_scale) * torch.rand((1, int(opts.noise_channels)) + self.padded,
                                                         generator=g)
            if opts.learnable_input:
                self.noise = nn.Parameter(noise)
            else:
                self.register_buffer("noise", noise)
            self.down, self.skip, self.up = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            cin = int(opts.noise_channels)
            for c, s in zip(ch, opts.strides):
                self.down.append(nn.Sequential(conv(cin, c, 3, s), nn.BatchNorm3d(c), act(),
                                               conv(c, c, 3), nn.BatchNorm3d(c), act()))
                self.skip.append(nn.Sequential(conv(cin, sk, 1), nn.BatchNorm3d(sk), act()) if sk else None)
                cin = c
            self.strides = list(opts.strides)
            for i in reversed(range(len(ch))):
                cout = ch[i - 1] if i > 0 else ch[0]
                cat = cin + sk
                self.up.append(nn.Sequential(nn.BatchNorm3d(cat), conv(cat, cout, 3), nn.BatchNorm3d(cout), act(),
                                             conv(cout, cout, 1), nn.BatchNorm3d(cout), act()))
                cin = cout
            self.head = conv(cin, 1, 1)
            self.output_scale = float(opts.output_scale)
            gen = torch.Generator().manual_seed(int(seed) + 1)
            for m in self.modules():
                if isinstance(m, nn.Conv3d):
                    fan_in = m.in_channels * math.prod(m.kernel_size)
                    fan_out = m.out_channels * math.prod(m.kernel_size)
                    bound = float(opts.init_gain) * math.sqrt(6.0 / (fan_in + fan_out))
                    with torch.no_grad():
                        m.weight.uniform_(-bound, bound, generator=gen)
                        m.bias.zero_()

        def forward(self, noise=None):
            """The volume (z, y, x) in (-output_scale, output_scale)."""
            import torch.nn.functional as F

            x = self.noise if noise is None else noise
            skips = []
            for down, skip in zip(self.down, self.skip):
                skips.append(skip(x) if skip is not None else None)
                x = down(x)
            for j, up in enumerate(self.up):
                i = len(self.down) - 1 - j
                s = skips[i]
                target = s.shape[2:] if s is not None else tuple(n * self.strides[i] for n in x.shape[2:])
                if tuple(x.shape[2:]) != tuple(target):
                    x = F.interpolate(x, size=target, mode="trilinear", align_corners=False)
                if s is not None:
                    x = torch.cat([x, s], dim=1)
                x = up(x)
            h = self.head(x)[0, 0]
            nz, ny, nx = self.shape
            return self.output_scale * (2.0 * torch.sigmoid(h[:nz, :ny, :nx]) - 1.0)

        def architecture(self) -> dict:
            """JSON description (for weights files and checkpoint fingerprints)."""
            o = self.options
            return {"kind": "dip_unet3d", "shape": list(self.shape), "channels": list(o.channels),
                    "strides": list(o.strides), "skip_channels": int(o.skip_channels), "width": float(o.width),
                    "noise_channels": int(o.noise_channels), "learnable_input": bool(o.learnable_input),
                    "output_scale": float(o.output_scale)}

    return Net


_CLASS = None


def __getattr__(name):
    if name == "DIPUNet":
        global _CLASS
        if _CLASS is None:
            _CLASS = _make_classes()
        return _CLASS
    raise AttributeError(name)


def build_dip(shape, options: DIPOptions | None = None, *, seed: int = 0):
    """The deep-image-prior U-Net for a volume of ``shape``.

    Parameters
    ----------
    shape : (nz, ny, nx)
        Output volume shape (voxels).
    options : DIPOptions, optional
        Network shape (default: the paper's).
    seed : int
        Seeds the noise input and the weight initialisation (same seed, same network).

    Returns
    -------
    torch.nn.Module
        ``model()`` returns a float32 tensor (nz, ny, nx) in ``(-output_scale, output_scale)``;
        ``model.architecture()`` a JSON-friendly description.
    """
    opts = DIPOptions() if options is None else options
    if not isinstance(opts, DIPOptions):
        raise ValidationError("options", f"must be a DIPOptions, got {type(opts).__name__}")
    opts._check()
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValidationError("shape", f"must be three positive sizes (nz, ny, nx), got {shape!r}")
    if seed < 0:
        raise ValidationError("seed", f"must be >= 0, got {seed}")
    return __getattr__("DIPUNet")(shape, opts, seed)
