"""Acquisition geometries for tomography, laminography and per-view rigid poses.

Convention (defined once in :mod:`ptynb.physics.rotations`; used by every projector,
solver and torch operator in ``ptynb.tomo``)
-----------------------------------------------------------------------------------------
* Volume axes are ``(z, y, x)``; their coordinates (metres) are the *sample* frame.
  Rotations act about the coordinate origin ``(0, 0, 0)`` (voxel ``n // 2`` for centred
  coordinates).
* The beam travels along the lab ``+z`` axis. The detector axes are ``(y, x)`` = lab y and
  lab x; detector coordinates are metres, zero at pixel ``n // 2`` by default.
* All 3x3 matrices below act on vectors written in ``(z, y, x)`` component order and map
  sample coordinates to lab coordinates: ``r_lab = R @ s``.
* A detector pixel at ``(v, u)`` records the line integral (metres times the volume value)

      p(v, u) = integral dt  f( R^T (t, v - s_y, u - s_x) )

  where ``(s_y, s_x)`` is the view's detector shift (zero unless posed).
* ``Ry(a)`` is the right-handed rotation by ``a`` about the y axis:
  ``z' = cos a z - sin a x``, ``x' = sin a z + cos a x``. ``Rx(a)``: ``z' = cos a z + sin a y``,
  ``y' = cos a y - sin a z``. ``Rz(a)``: ``y' = cos a y + sin a x``, ``x' = -sin a y + cos a x``
  (all three are the usual right-handed rotations of (x, y, z) space).

Kinds
-----
``"tomography"``
    ``R = Ry(angle)``: the sample turns about the (vertical) y axis, perpendicular to the
    beam. Every y row of the volume maps to the same detector row, so the 3D problem
    separates into independent 2D slices (the fast path of :class:`~ptynb.tomo.Projector`).
``"laminography"``
    ``R = Rx(90 deg - tilt) @ Ry(angle)``: the sample still turns about its own y axis (the
    normal of a flat sample lies along volume y), and that axis is tilted in the lab y-z
    plane so that it makes the angle ``tilt`` with the beam (``a = (cos tilt, sin tilt, 0)``
    in (z, y, x)). ``tilt = 90`` is tomography; LamNI / ADePt use 61 deg (61.108 deg).
``"posed"``
    The nominal rotation above (``tilt`` defaults to 90; laminography to 61.108, both by
    :func:`ptynb.physics.rotations.resolve_tilt`) followed by a per-view rigid
    correction ``E = Rz(rz) @ Ry(ry) @ Rx(rx)`` - *extrinsic x-y-z* Euler angles about the
    lab axes, applied x first - so ``R = E @ R_nominal``; plus a detector shift
    ``(s_y, s_x)`` in detector pixels (the projection moves by ``+s``).

Serialisation: :meth:`Geometry.to_attrs` writes ``geometry`` (kind), ``tilt`` (degrees),
``euler_convention`` and, for posed views, ``pose_euler_deg`` (flat, angle-major, degrees)
and ``pose_shift_px`` (flat); the angles themselves live in the ``angle`` coordinate.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data import ValidationError
from ..physics.rotations import DEFAULT_TILT, EULER_CONVENTION, resolve_tilt, sample_to_lab

__all__ = ["DEFAULT_TILT", "GEOMETRY_KINDS", "Geometry"]

GEOMETRY_KINDS = ("tomography", "laminography", "posed")


def _as_angles(angles) -> np.ndarray:
    try:
        a = np.asarray(angles, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValidationError("angles", f"must be numbers in degrees, got {angles!r}") from None
    if a.size == 0:
        raise ValidationError("angles", "is empty; give at least one angle (degrees)")
    if not np.all(np.isfinite(a)):
        raise ValidationError("angles", "contains NaN or inf")
    if np.any(np.abs(a) > 3600):
        raise ValidationError("angles", f"has |angle| up to {np.abs(a).max():.4g}; angles are in "
                              "degrees and must lie within +/-3600 (are they radians * 1e3?)")
    return a


@dataclass
class Geometry:
    """One acquisition geometry: nominal angles, laminography tilt and optional per-view poses.

    Parameters
    ----------
    kind : {"tomography", "laminography", "posed"}
    angles : array (angle,)
        Nominal rotation angles about the sample's y axis, degrees.
    tilt : float, optional
        Angle between the rotation axis and the beam, degrees, in (0, 90]. 90 = tomography.
        None: :func:`ptynb.physics.rotations.resolve_tilt` (61.108 for laminography, 90 else).
    poses : array (angle, 3), optional
        ``posed`` only: extrinsic x-y-z Euler angles (rx, ry, rz) in degrees applied after
        the nominal rotation (see module docstring). Zero if omitted.
    shifts : array (angle, 2), optional
        ``posed`` only: detector shifts (s_y, s_x) in detector pixels. Zero if omitted.

    Notes
    -----
    See the module docstring for the full convention. :meth:`rotations` returns the
    sample-to-lab matrices ``R`` (angle, 3, 3).
    """

    kind: str = "tomography"
    angles: np.ndarray = field(default_factory=lambda: np.zeros(1))
    tilt: float | None = None
    poses: np.ndarray | None = None
    shifts: np.ndarray | None = None

    def __post_init__(self):
        kind = str(self.kind).strip().lower()
        if kind not in GEOMETRY_KINDS:
            raise ValidationError("geometry", f"unknown kind {self.kind!r}; use one of {GEOMETRY_KINDS}")
        self.kind = kind
        self.angles = _as_angles(self.angles)
        n = self.angles.size
        tilt = resolve_tilt(kind, self.tilt)
        if kind == "tomography" and tilt != 90.0:
            raise ValidationError("tilt", f"is {tilt} deg but geometry='tomography' needs 90; "
                                  "use geometry='laminography' for a tilted axis")
        self.tilt = tilt
        if kind != "posed" and (self.poses is not None or self.shifts is not None):
            raise ValidationError("poses", f"per-view poses/shifts need geometry='posed', not {kind!r}")
        if kind == "posed":
            self.poses = self._per_view("poses", self.poses, n, 3)
            self.shifts = self._per_view("shifts", self.shifts, n, 2)
            if np.any(np.abs(self.poses) > 180):
                raise ValidationError("poses", "Euler angles must lie within +/-180 degrees")

    @staticmethod
    def _per_view(name, value, n, k):
        if value is None:
            return np.zeros((n, k))
        try:
            a = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValidationError(name, f"must be numeric, got {value!r}") from None
        if a.shape != (n, k):
            raise ValidationError(name, f"has shape {a.shape}; expected ({n}, {k}) for {n} angles")
        if not np.all(np.isfinite(a)):
            raise ValidationError(name, "contains NaN or inf")
        return a

    # ------------------------------------------------------------------ derived
    @property
    def n_angles(self) -> int:
        return int(self.angles.size)

    @property
    def is_plain_tomography(self) -> bool:
        """True when every view is a pure rotation about y with no shift (separable slices)."""
        if self.kind in ("tomography", "laminography") and self.tilt == 90.0:
            return True
        if self.kind == "posed" and self.tilt == 90.0:
            return not (np.any(self.poses) or np.any(self.shifts))
        return False

    def nominal_rotations(self) -> np.ndarray:
        """``R_nominal`` (angle, 3, 3) without the pose correction."""
        return sample_to_lab(self.angles, self.tilt)

    def rotations(self) -> np.ndarray:
        """Sample-to-lab rotation matrices ``R`` (angle, 3, 3), (z, y, x) component order
        (:func:`ptynb.physics.rotations.sample_to_lab`)."""
        return sample_to_lab(self.angles, self.tilt, self.poses if self.kind == "posed" else None)

    def shifts_px(self) -> np.ndarray:
        """Detector shifts (angle, 2) = (s_y, s_x) in pixels (zeros unless posed)."""
        return np.zeros((self.n_angles, 2)) if self.shifts is None else np.asarray(self.shifts)

    def subset(self, index) -> Geometry:
        """The geometry of a subset of the views (``index``: slice, int array or mask)."""
        idx = np.arange(self.n_angles)[index]
        return Geometry(self.kind, self.angles[idx], self.tilt,
                        None if self.poses is None else self.poses[idx],
                        None if self.shifts is None else self.shifts[idx])

    def key(self) -> tuple:
        """Hashable identity (for operator caches)."""
        parts = [self.kind, self.tilt, self.angles.tobytes()]
        if self.kind == "posed":
            parts += [self.poses.tobytes(), self.shifts.tobytes()]
        return tuple(parts)

    # ------------------------------------------------------------------ attrs
    def to_attrs(self) -> dict:
        """Attrs (SI / degrees) that :meth:`from_attrs` reads back."""
        out = {"geometry": self.kind, "tilt": float(self.tilt),
               "rotation_axis": "sample y, tilted in the lab y-z plane by (90 - tilt) deg",
               "beam_axis": "z"}
        if self.kind == "posed":
            out["euler_convention"] = EULER_CONVENTION
            out["pose_euler_deg"] = np.asarray(self.poses, dtype=np.float64).ravel()
            out["pose_shift_px"] = np.asarray(self.shifts, dtype=np.float64).ravel()
        return out

    @classmethod
    def from_attrs(cls, attrs: dict, angles) -> Geometry:
        """Rebuild the geometry from projections attrs and the ``angle`` coordinate (degrees)."""
        kind = attrs.get("geometry", "tomography")
        tilt = attrs.get("tilt", None)
        ang = _as_angles(angles)
        poses = shifts = None
        if kind == "posed":
            n = ang.size
            if "pose_euler_deg" in attrs:
                poses = np.asarray(attrs["pose_euler_deg"], dtype=np.float64).reshape(n, 3)
            if "pose_shift_px" in attrs:
                shifts = np.asarray(attrs["pose_shift_px"], dtype=np.float64).reshape(n, 2)
        return cls(kind, ang, tilt, poses, shifts)

    @classmethod
    def make(cls, angles, geometry="tomography", tilt=None, poses=None, shifts=None) -> Geometry:
        """Build from the keyword style of :func:`ptynb.tomo.project` (``geometry`` may be a
        :class:`Geometry`, returned unchanged when no other argument is given)."""
        if isinstance(geometry, Geometry):
            return geometry
        kind = str(geometry).strip().lower()
        if kind == "posed" and poses is not None:
            p = np.asarray(poses, dtype=np.float64)
            # Allow (angle, 5) = 3 Euler angles + 2 shifts in one array.
            if p.ndim == 2 and p.shape[1] == 5 and shifts is None:
                poses, shifts = p[:, :3], p[:, 3:]
        return cls(kind, angles, tilt, poses, shifts)
