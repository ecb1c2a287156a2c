"""The one rotation convention of ptynb (tomography, laminography, posed views, phantoms, atoms).

Convention
----------
* Vectors are written in **(z, y, x) component order** (the volume axes); the matrices here
  act on such column vectors. :func:`zyx_to_xyz` converts a matrix to (x, y, z) order.
* The beam travels along lab ``+z``; the detector axes are lab (y, x).
* All rotations are **right-handed** (counter-clockwise looking down the axis towards the
  origin) and *active*: ``r_lab = R @ s`` maps a sample point ``s`` to where it is in the lab.
  About y by ``a``: ``z' = cos a z - sin a x``, ``x' = sin a z + cos a x`` (so a point on
  ``+z`` moves to ``+x`` for ``a = +90 deg``). About x: ``y' = cos a y - sin a z``,
  ``z' = sin a y + cos a z`` (``+y`` moves to ``+z``). About z: ``x' = cos a x - sin a y``,
  ``y' = sin a x + cos a y`` (``+x`` moves to ``+y``).
* **Nominal view rotation** at angle ``theta`` with laminography ``tilt`` (degrees, the
  angle between rotation axis and beam, in (0, 90]; 90 = tomography):
  ``R_nominal = Rx(90 deg - tilt) @ Ry(theta)``: the sample turns about its own y axis,
  which is tilted in the lab y-z plane to ``(z, y, x) = (cos tilt, sin tilt, 0)``.
* **Pose correction** (posed views): extrinsic x-y-z Euler angles ``(rx, ry, rz)`` in degrees
  about the lab axes, x first: ``E = Rz(rz) @ Ry(ry) @ Rx(rx)``, applied after the nominal
  rotation: ``R = E @ R_nominal``.
* :data:`DEFAULT_TILT` (61.108 deg, the ADePt / LamNI instrument) is the laminography tilt
  wherever a function takes ``tilt=None``; :func:`resolve_tilt` is the single rule.

Every function works on numpy arrays and on torch tensors with the same code (the namespace
is picked from the argument type), so the torch posed projector gets gradients with respect
to angles and Euler angles through exactly these formulas.
"""
from __future__ import annotations

import math

import numpy as np

from ..data import ValidationError

__all__ = [
    "DEFAULT_TILT",
    "EULER_CONVENTION",
    "euler_xyz",
    "resolve_tilt",
    "rotation_about",
    "rotation_x",
    "rotation_y",
    "rotation_z",
    "sample_to_lab",
    "zyx_to_xyz",
]

#: Angle between rotation axis and beam of the ADePt / LamNI laminography instruments
#: (degrees); the default laminography tilt everywhere in ptynb.
DEFAULT_TILT = 61.108
EULER_CONVENTION = "extrinsic x-y-z about lab axes (R = Rz Ry Rx), applied after the nominal rotation"


def _namespace(*arrays):
    """``torch`` if any argument is a torch tensor, else ``numpy``."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("torch"):
            import torch

            return torch
    return np


def _as_float(x, xp, like=None):
    if xp is np:
        return np.asarray(x, dtype=np.float64)
    if xp.is_tensor(x):
        return x if x.is_floating_point() else x.to(xp.float64)
    dt = like.dtype if like is not None and like.is_floating_point() else xp.float64
    dev = like.device if like is not None else None
    return xp.as_tensor(x, dtype=dt, device=dev)


def _matrix(rows, xp):
    return xp.stack([xp.stack(r, -1) for r in rows], -2)


def rotation_y(a):
    """Right-handed rotations about y by ``a`` radians: (..., 3, 3), (z, y, x) components."""
    xp = _namespace(a)
    a = _as_float(a, xp)
    c, s, o, z = xp.cos(a), xp.sin(a), xp.ones_like(a), xp.zeros_like(a)
    return _matrix([[c, z, -s], [z, o, z], [s, z, c]], xp)


def rotation_x(a):
    """Right-handed rotations about x by ``a`` radians: (..., 3, 3), (z, y, x) components."""
    xp = _namespace(a)
    a = _as_float(a, xp)
    c, s, o, z = xp.cos(a), xp.sin(a), xp.ones_like(a), xp.zeros_like(a)
    return _matrix([[c, s, z], [-s, c, z], [z, z, o]], xp)


def rotation_z(a):
    """Right-handed rotations about z (the beam) by ``a`` radians: (..., 3, 3), (z, y, x)."""
    xp = _namespace(a)
    a = _as_float(a, xp)
    c, s, o, z = xp.cos(a), xp.sin(a), xp.ones_like(a), xp.zeros_like(a)
    return _matrix([[o, z, z], [z, c, s], [z, -s, c]], xp)


_AXES = {"x": rotation_x, "y": rotation_y, "z": rotation_z}


def rotation_about(axes: str, angles):
    """Successive right-handed rotations about the fixed lab ``axes`` (first applied first).

    ``rotation_about("zy", (a, b)) = Ry(b) @ Rz(a)``; ``angles`` in **degrees**, one per axis
    (a scalar for a single axis); (z, y, x) components.
    """
    axes = str(axes).lower()
    if not axes or any(c not in _AXES for c in axes):
        raise ValidationError("axes", f"must be a string of 'x', 'y', 'z', got {axes!r}")
    xp = _namespace(angles)
    a = xp.deg2rad(_as_float(angles, xp)).reshape(-1)
    if a.shape[0] != len(axes):
        raise ValidationError("angles", f"has {a.shape[0]} value(s) for {len(axes)} axes {axes!r}")
    r = None
    for i, c in enumerate(axes):
        m = _AXES[c](a[i])
        r = m if r is None else m @ r
    return r


def euler_xyz(euler):
    """Pose corrections ``Rz(rz) @ Ry(ry) @ Rx(rx)`` (..., 3, 3) from ``euler`` (..., 3) =
    (rx, ry, rz) in degrees (extrinsic x-y-z about the lab axes)."""
    xp = _namespace(euler)
    e = xp.deg2rad(_as_float(euler, xp))
    return rotation_z(e[..., 2]) @ rotation_y(e[..., 1]) @ rotation_x(e[..., 0])


def resolve_tilt(geometry: str = "tomography", tilt=None) -> float:
    """The laminography tilt (degrees) of ``geometry``, checked: the single default rule.

    ``tilt=None`` means :data:`DEFAULT_TILT` for ``"laminography"`` and 90 (no tilt) for
    ``"tomography"`` and ``"posed"`` (whose nominal rotation defaults to tomography). A
    given tilt must be a finite number in (0, 90] degrees; ValidationError("tilt") else.
    """
    if tilt is None:
        return DEFAULT_TILT if str(geometry).strip().lower().startswith("lamino") else 90.0
    try:
        t = float(tilt)
    except (TypeError, ValueError):
        raise ValidationError("tilt", f"must be a number of degrees, got {tilt!r}") from None
    if not math.isfinite(t) or not 0.0 < t <= 90.0:
        raise ValidationError("tilt", f"must lie in (0, 90] degrees (angle between rotation axis "
                                      f"and beam; 90 = tomography), got {tilt!r}")
    return t


def sample_to_lab(angles, tilt, euler=None):
    """Sample-to-lab rotations ``R = E(euler) @ Rx(90 - tilt) @ Ry(angle)`` (angle, 3, 3).

    Parameters
    ----------
    angles : array or tensor (angle,) or scalar
        Nominal rotation angles about the sample's y axis, degrees.
    tilt : float or 0-d tensor
        Angle between rotation axis and beam, degrees (90 = tomography; use
        :func:`resolve_tilt` to apply the default). May require grad (torch).
    euler : array or tensor (angle, 3), optional
        Pose corrections (rx, ry, rz), degrees (:func:`euler_xyz`).

    Returns
    -------
    array or tensor (angle, 3, 3) (or (3, 3) for a scalar angle), (z, y, x) components,
    float64 for numpy input; torch keeps the angles' floating dtype.
    """
    xp = _namespace(angles, tilt, euler)
    a = _as_float(angles, xp)
    like = None if xp is np else a

    def same(x):  # torch: one floating dtype for the products
        return x if xp is np else x.to(a.dtype)

    r = rotation_y(xp.deg2rad(a))
    t = same(_as_float(tilt, xp, like=like))
    if not (xp is np and float(t) == 90.0):  # (Rx(0) = I: skipped, exact and cheaper)
        r = rotation_x(xp.deg2rad(90.0 - t)) @ r
    if euler is not None:
        r = euler_xyz(same(_as_float(euler, xp, like=like))) @ r
    return r


def zyx_to_xyz(matrix):
    """A matrix (..., 3, 3) acting on (z, y, x) vectors rewritten to act on (x, y, z) ones
    (and back: the permutation is its own inverse)."""
    xp = _namespace(matrix)
    if xp is np:
        return np.asarray(matrix)[..., ::-1, ::-1].copy()
    return matrix.flip(-1).flip(-2)
