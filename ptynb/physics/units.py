"""Physical constants, wavelengths and unit helpers (SI inside: metres, eV, radians).

Constants are CODATA 2018 exact/recommended values (as in ``scipy.constants``).
"""
from __future__ import annotations

import numpy as np
from scipy import constants as _c

__all__ = [
    "H", "C", "E_CHARGE", "M_ELECTRON", "HC_EV_M",
    "RADIATIONS", "check_radiation", "wavelength", "energy_from_wavelength",
    "interaction_constant",
]

H = _c.h  #: Planck constant (J s)
C = _c.c  #: speed of light (m/s)
E_CHARGE = _c.e  #: elementary charge (C)
M_ELECTRON = _c.m_e  #: electron rest mass (kg)
HC_EV_M = H * C / E_CHARGE  #: h c in eV m (1.23984e-6)

RADIATIONS = ("xray", "electron")


def check_radiation(radiation: str) -> str:
    """Normalise a radiation name to ``"xray"`` or ``"electron"`` or raise ValueError."""
    key = str(radiation).strip().lower().replace("-", "").replace("_", "")
    aliases = {"xray": "xray", "xrays": "xray", "photon": "xray", "electron": "electron",
               "electrons": "electron", "e": "electron"}
    if key not in aliases:
        raise ValueError(f"radiation must be 'xray' or 'electron', not {radiation!r}")
    return aliases[key]


def _check_energy(energy_eV):
    e = np.asarray(energy_eV, dtype=float)
    if not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise ValueError(f"energy_eV must be positive and finite, got {energy_eV!r}")
    return e


def wavelength(energy_eV, radiation: str = "xray"):
    """Wavelength in metres of photons or (relativistic) electrons.

    Parameters
    ----------
    energy_eV : float or array
        Photon energy, or electron kinetic energy (accelerating voltage times e), in eV.
    radiation : {"xray", "electron"}

    Returns
    -------
    float or ndarray
        X-ray: ``h c / E``. Electron: ``h / sqrt(2 m0 E (1 + E / (2 m0 c^2)))`` with E in J.
        E.g. 8 keV X-rays: 1.5498e-10 m; 200 keV electrons: 2.508e-12 m.
    """
    radiation = check_radiation(radiation)
    e = _check_energy(energy_eV)
    if radiation == "xray":
        out = HC_EV_M / e
    else:
        ej = e * E_CHARGE
        out = H / np.sqrt(2.0 * M_ELECTRON * ej * (1.0 + ej / (2.0 * M_ELECTRON * C**2)))
    return float(out) if out.ndim == 0 else out


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
