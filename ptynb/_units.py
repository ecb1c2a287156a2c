"""The few unit facts the data model needs: radiation names and wavelengths (no heavy imports).

:mod:`ptynb.data` validates measurements with these, so they live here rather than in
:mod:`ptynb.physics` (whose package import pulls in the propagation and multislice code).
:mod:`ptynb.physics.units` is the public home of the same functions. Constants are written
out (CODATA 2022, the values of :mod:`scipy.constants` in scipy >= 1.15; h, c and e are exact
in the SI) so that importing :mod:`ptynb.data` does not import scipy.
"""
from __future__ import annotations

import numpy as np

__all__ = ["E_CHARGE", "HC_EV_M", "M_ELECTRON", "RADIATIONS", "C", "H", "check_radiation", "wavelength"]

H = 6.62607015e-34  #: Planck constant (J s, exact)
C = 299792458.0  #: speed of light (m/s, exact)
E_CHARGE = 1.602176634e-19  #: elementary charge (C, exact)
M_ELECTRON = 9.1093837139e-31  #: electron rest mass (kg, CODATA 2022)
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

    Raises
    ------
    ValueError
        Unknown radiation, or an energy that is not positive and finite.
    """
    radiation = check_radiation(radiation)
    e = _check_energy(energy_eV)
    if radiation == "xray":
        out = HC_EV_M / e
    else:
        ej = e * E_CHARGE
        out = H / np.sqrt(2.0 * M_ELECTRON * ej * (1.0 + ej / (2.0 * M_ELECTRON * C**2)))
    return float(out) if out.ndim == 0 else out
