"""ptynb: labelled data, physics, engines and workflows for 3D ptychography.

Submodules load on first use (``ptynb.io``, ``ptynb.tomo``, ...), so ``import ptynb`` stays
fast and never imports panel, holoviews, torch or cupy. The one eager import is
:mod:`ptynb.accessor` (numpy and xarray only), which registers the ``.pty`` accessor on xarray
objects as soon as ptynb is imported.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "accessor", "apps", "backend", "cli", "control", "data", "imaging", "io", "learn", "metrics",
    "options", "parallel", "physics", "ptycho", "simulate", "tomo", "viz", "workflows",
)

from . import accessor  # noqa: F401  (registers ds.pty; imports only numpy and xarray)

__all__ = ["__version__", *_SUBMODULES]  # noqa: PLE0604


def __getattr__(name: str):
    if name in _SUBMODULES:
        mod = importlib.import_module(f".{name}", __name__)
        globals()[name] = mod
        return mod
    raise AttributeError(f"module 'ptynb' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))
