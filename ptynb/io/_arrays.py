"""Build a measurement from plain arrays (positions in any length unit)."""
from __future__ import annotations

import numpy as np
import xarray as xr

from ..data import ValidationError

#: Length units understood by :func:`from_arrays` (factor to metres).
LENGTH_UNITS = {
    "m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "micron": 1e-6, "nm": 1e-9,
    "A": 1e-10, "Å": 1e-10, "angstrom": 1e-10, "pm": 1e-12,
}



def from_arrays(
    intensity,
    positions,
    *,
    radiation: str,
    energy_eV: float,
    positions_order: str = "yx",
    position_units: str = "m",
    **kwargs,
) -> xr.Dataset:
    """Build a measurement Dataset from plain arrays (e.g. read from a beamline file).

    Parameters
    ----------
    intensity : array (..., scan, qy, qx)
        Diffraction patterns (counts), detector-centred.
    positions : array (..., scan, 2) or (..., scan, 3)
        Probe positions, columns in ``positions_order``; a third (``z``) column is ignored.
    radiation : {"xray", "electron"}
    energy_eV : float
        Photon energy or electron kinetic energy (eV).
    positions_order : {"yx", "xy", "yxz", "xyz"}
        Meaning of the position columns.
    position_units : {"m", "mm", "um", "nm", "A", "pm"}
        Unit of ``positions``; converted to metres (see :data:`LENGTH_UNITS`).
    **kwargs
        Passed to :func:`ptynb.data.measurement` (``detector_distance`` and
        ``detector_pixel_size`` in m, ``reciprocal_pixel_size`` in 1/m, ``pixel_size`` in m,
        ``mask`` (True = valid), ``angle``, ``beam``, extra attrs).

    Returns
    -------
    xarray.Dataset
        A validated measurement.
    """
    from ..data import measurement

    order = str(positions_order).lower()
    if order not in ("yx", "xy", "yxz", "xyz"):
        raise ValidationError("positions_order", f"must be 'yx', 'xy', 'yxz' or 'xyz', got {positions_order!r}")
    if position_units not in LENGTH_UNITS:
        raise ValidationError("position_units", f"unknown unit {position_units!r}; use one of {sorted(LENGTH_UNITS)}")
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim < 2 or pos.shape[-1] != len(order):
        raise ValidationError("positions", f"has shape {pos.shape}; expected (..., scan, {len(order)}) "
                                           f"for positions_order={positions_order!r}")
    pos = pos * LENGTH_UNITS[position_units]
    sy = pos[..., order.index("y")]
    sx = pos[..., order.index("x")]
    return measurement(intensity, sy, sx, radiation=radiation, energy_eV=energy_eV, **kwargs)


