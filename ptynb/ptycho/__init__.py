"""Ptychographic reconstruction engines.

Public API
----------
- :func:`reconstruct` -- run ePIE / rPIE / LSQ-ML (chained, multislice, mixed states,
  position refinement, upsampling) on a measurement Dataset; returns a reconstruction Dataset.
- settings objects (:mod:`.options`): :class:`PIEOptions`, :class:`LSQMLOptions`,
  :class:`PositionRefinement`, :class:`ProbeConstraints`, :class:`ObjectConstraints`,
  :class:`MultisliceOptions`, :class:`ComputeOptions` -- ``reconstruct(..., options=[...])``.
- :func:`initial_probe` -- the start: a given probe, the nominal optics in the measurement
  attrs, or the data alone (:mod:`.probe_start`: :func:`estimate_defocus` measures the
  defocus from the bright-field parallax).
- :class:`DivergenceError` -- raised when the cost becomes NaN/inf (``err.last_good``).
- :data:`ENGINE_NAMES` -- available engines.
- :mod:`.operators` -- the array-level forward model (numpy/cupy).
"""
from .options import (
    ComputeOptions,
    LSQMLOptions,
    MultisliceOptions,
    ObjectConstraints,
    PIEOptions,
    PositionRefinement,
    ProbeConstraints,
)
from .probe_start import estimate_defocus
from .reconstruct import ENGINE_NAMES, DivergenceError, default_engine, initial_probe, reconstruct

__all__ = ["ENGINE_NAMES", "DivergenceError", "default_engine", "estimate_defocus", "initial_probe", "reconstruct",
           "PIEOptions",
           "LSQMLOptions", "PositionRefinement", "ProbeConstraints", "ObjectConstraints",
           "MultisliceOptions", "ComputeOptions"]
