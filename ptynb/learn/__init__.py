"""Learned reconstruction in torch: networks, losses and one training loop.

Shared by the ADePt (deep image prior, self-supervised) and APT (supervised, trained from
simulation) workflows. torch is imported on first use of a name from this package, never by
``import ptynb`` or ``import ptynb.learn`` itself.

- :mod:`ptynb.learn.training`: :class:`TrainOptions` and :func:`train`, the one training loop
  (CPU or CUDA with the same code, progress and live loss, atomic checkpoints of weights +
  optimiser + scheduler + RNG state, resume equal to an uninterrupted run, clean cancel).
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
