"""Tomography and laminography: geometries, projector, FBP, SIRT/SART, gradient solvers."""
from .fbp import FILTERS, angle_weights, fbp, ramp_filter  # noqa: F401
from .geometry import ADEPT_TILT_DEG, Geometry  # noqa: F401
from .iterative import gradient, sart, sirt, tv_value_and_grad  # noqa: F401
from .masks import fourier_grid, missing_cone_mask, missing_wedge_mask  # noqa: F401
from .projector import Projector, backproject, project, projector_for  # noqa: F401
from .torch_ops import backproject_torch, posed_project, project_torch  # noqa: F401

try:  # alignment lives in align.py (another module owner); optional until it exists
    from .align import align, phase_cross_correlation  # noqa: F401
except ImportError:
    pass
