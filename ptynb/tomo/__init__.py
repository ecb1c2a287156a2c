"""Tomography and laminography: geometries, projector, FBP, SIRT/SART, gradient solvers."""
from .fbp import FILTERS, angle_weights, fbp, ramp_filter  # noqa: F401
from .geometry import DEFAULT_TILT, Geometry  # noqa: F401
from .iterative import gradient, sart, sirt, tv_value_and_grad  # noqa: F401
from .masks import fourier_grid, missing_cone_mask, missing_wedge_mask  # noqa: F401
from .projector import Projector, backproject, project, projector_for  # noqa: F401
from .torch_ops import backproject_torch, posed_project, project_torch  # noqa: F401

# 2D image tools live in ptynb.imaging (shared with the stereo workflow)
from ..imaging import (phase_cross_correlation, remove_phase_ramp, shift_image,  # noqa: F401
                       unwrap_phase, wrap_phase)

# note: the function `align` shadows the submodule name; import the module itself with
# `from ptynb.tomo import align as _m` only via importlib, or use these names directly.
from .align import (  # noqa: F401, E402
    align,
    remove_null_space,
    rigid_null_space,
    rotation_gauge,
)

# joint refinement (torch, param) loads on first use: `import ptynb.tomo` stays as fast as it was
_JOINT = ("MSPT_SCHEDULE", "JointRefinementOptions", "joint_refinement")
_ATOMIC = ("AtomicRefinementOptions", "atomic_refinement", "render_atoms")


def __getattr__(name):
    if name in _JOINT:
        from . import joint

        return getattr(joint, name)
    if name in _ATOMIC:
        from . import atomic

        return getattr(atomic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_JOINT) | set(_ATOMIC))
