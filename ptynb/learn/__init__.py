"""Learned reconstruction in torch: networks, losses and one training loop.

Shared by the ADePt (deep image prior, self-supervised) and APT (supervised, trained from
simulation) workflows. torch is imported on first use of a name from this package, never by
``import ptynb`` or ``import ptynb.learn`` itself.

- :mod:`ptynb.learn.training`: :class:`TrainOptions` and :func:`train`, the one training loop
  (CPU or CUDA with the same code, progress and live loss, atomic checkpoints of weights +
  optimiser + scheduler + RNG state, resume equal to an uninterrupted run, clean cancel).
- ADePt: :mod:`~ptynb.learn.dip` (the deep-image-prior 3D U-Net, ``DIPOptions``,
  ``build_dip``), :mod:`~ptynb.learn.filters` (wavelet high-pass with energy
  renormalisation), :mod:`~ptynb.learn.tv` (depth-dependent total variation).
- APT: :mod:`~ptynb.learn.unet3d` (3D U-Net with a ResNet bottleneck encoder),
  :mod:`~ptynb.learn.attention` (multi-head axial self-attention with relative positions),
  :mod:`~ptynb.learn.stitch` (overlapping patches, blended stitching),
  :mod:`~ptynb.learn.losses` (NPCC); shipped weights in ``ptynb/learn/weights/``.

Import those modules by their full path (``from ptynb.learn.dip import build_dip``); the
modules that define torch classes import torch when they are imported.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "TrainOptions": "training",
    "TrainContext": "training",
    "TrainResult": "training",
    "train": "training",
    "load_weights": "training",
    "save_weights": "training",
    "resolve_torch_device": "training",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
