"""Physical constants, wavelengths and unit helpers (SI inside: metres, eV, radians).

Constants: CODATA 2022 (h, c, e exact), defined once in :mod:`ptynb._units`.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "H", "C", "E_CHARGE", "M_ELECTRON", "HC_EV_M",
    "RADIATIONS", "check_radiation", "wavelength", "energy_from_wavelength",
    "interaction_constant",
]

# one definition of the constants, radiation names and wavelengths: ptynb._units (light, so that
# ptynb.data can validate without importing physics); re-exported here as their public home
from .._units import (C, E_CHARGE, H, HC_EV_M, M_ELECTRON, RADIATIONS,  # noqa: E402, F401
                      _check_energy, check_radiation, wavelength)


def energy_from_wavelength(wavelength_m, radiation: str = "xray"):
    """Inverse of :func:`wavelength`: energy in eV for a wavelength in metres."""
    radiation = check_radiation(radiation)
    lam = np.asarray(wavelength_m, dtype=float)
    if not np.all(np.isfinite(lam)) or np.any(lam <= 0):
        raise ValueError(f"wavelength must be positive and finite, got {wavelength_m!r}")
    if radiation == "xray":
        out = HC_EV_M / lam
    else:
        p = H / lam
        mc2 = M_ELECTRON * C**2
        out = (np.sqrt((p * C) ** 2 + mc2**2) - mc2) / E_CHARGE
    return float(out) if out.ndim == 0 else out


def interaction_constant(energy_eV) -> float:
    """Electron interaction constant sigma in rad / (V m) (Kirkland's convention).

    The phase shift of a thin specimen with projected potential V_p (V m) is ``sigma * V_p``.
    ``sigma = 2 pi m e lambda / h^2`` with the relativistic mass ``m = m0 (1 + E / m0 c^2)``;
    about 7.29e-4 rad/(V Angstrom) (7.29e6 rad/(V m)) at 200 keV.
    """
    e = float(_check_energy(energy_eV))
    lam = wavelength(e, "electron")
    m = M_ELECTRON * (1.0 + e * E_CHARGE / (M_ELECTRON * C**2))
    return 2.0 * np.pi * m * E_CHARGE * lam / H**2
