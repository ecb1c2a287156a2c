"""X-ray optical constants of the materials used by the ptynb phantoms.

The complex refractive index is ``n = 1 - delta + i beta`` (``delta``: refractive-index
decrement, ``beta``: absorption index), computed with :mod:`xraydb` from the chemical formula
and a mass density. ``DENSITIES`` holds the densities (g/cm^3) of the materials the phantoms
use; any other formula works when its ``density`` is given.

Sign convention (used everywhere in ptynb)
------------------------------------------
A layer of thickness ``t`` transmits ``T = exp(-i k (delta - i beta) t)`` with ``k = 2 pi /
lambda``, i.e. amplitude ``exp(-k beta t)`` and phase ``-k delta t``: a phase-*advancing*
material (``delta > 0``) gives a *negative* phase, as in the stereo-ptychography paper (mean
phase -0.61 rad for ~310 nm of Au at 8 keV).
"""
from __future__ import annotations

import numpy as np

from ..data import ValidationError
from .units import wavelength

__all__ = [
    "DENSITIES",
    "FORMULAS",
    "material_density",
    "material_formula",
    "phase_from_thickness",
    "refractive_index",
    "thickness_from_phase",
    "transmission",
]

#: Mass densities in g/cm^3 of the materials used by the phantoms (bulk values; thin films
#: such as SiO2 and Si3N4 are given typical deposited-film densities).
DENSITIES: dict[str, float] = {
    "Au": 19.32,
    "Ag": 10.49,
    "Pt": 21.45,
    "Cu": 8.96,
    "W": 19.25,
    "Ta": 16.69,
    "Ti": 4.506,
    "TiN": 5.22,
    "Al": 2.70,
    "Si": 2.329,
    "SiO2": 2.20,
    "Si3N4": 3.17,
    "Co": 8.90,
    "Ni": 8.908,
    "Fe": 7.874,
    "Co3O4": 6.11,
    "C": 2.00,
    "Be": 1.848,
    "H2O": 1.00,
}

#: Common names accepted as aliases of a formula in :data:`DENSITIES`.
FORMULAS: dict[str, str] = {
    "gold": "Au", "silver": "Ag", "platinum": "Pt", "copper": "Cu", "tungsten": "W",
    "tantalum": "Ta", "titanium": "Ti", "titanium nitride": "TiN", "aluminium": "Al",
    "aluminum": "Al", "silicon": "Si", "silica": "SiO2", "silicon dioxide": "SiO2",
    "silicon nitride": "Si3N4", "cobalt": "Co", "nickel": "Ni", "iron": "Fe",
    "cobalt oxide": "Co3O4", "carbon": "C", "beryllium": "Be", "water": "H2O",
}


def material_formula(material: str) -> str:
    """Chemical formula for a material name or formula (``"gold"`` -> ``"Au"``)."""
    if not isinstance(material, str) or not material.strip():
        raise ValidationError("material", f"must be a non-empty string, got {material!r}")
    m = material.strip()
    return FORMULAS.get(m.lower(), m)


def material_density(material: str, density: float | None = None) -> float:
    """Density in g/cm^3 of ``material`` (from :data:`DENSITIES`, unless ``density`` is given).

    Raises
    ------
    ValidationError
        For a material not in the table when no ``density`` is given, or a bad density.
    """
    formula = material_formula(material)
    if density is not None:
        try:
            d = float(density)
        except (TypeError, ValueError):
            raise ValidationError("density", f"must be a number in g/cm^3, got {density!r}") from None
        if not np.isfinite(d) or d <= 0:
            raise ValidationError("density", f"must be positive and finite (g/cm^3), got {density!r}")
        return d
    if formula not in DENSITIES:
        raise ValidationError(
            "material",
            f"unknown material {material!r}: known are {sorted(DENSITIES)} (or give density= "
            "in g/cm^3 together with a chemical formula)")
    return DENSITIES[formula]


def _energy(energy_eV):
    try:
        e = np.asarray(energy_eV, dtype=float)
    except (TypeError, ValueError):
        raise ValidationError("energy_eV", f"must be a number (eV), got {energy_eV!r}") from None
    if e.size == 0 or not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise ValidationError("energy_eV", f"must be positive and finite (eV), got {energy_eV!r}")
    if np.any(e < 50) or np.any(e > 1e6):
        raise ValidationError(
            "energy_eV", f"{energy_eV!r} is outside the tabulated X-ray range 50 eV - 1 MeV "
            "(is the energy in eV?)")
    return e


def refractive_index(material: str, energy_eV, *, density: float | None = None):
    """X-ray refractive-index decrement and absorption index of a material.

    Parameters
    ----------
    material : str
        Chemical formula (``"Au"``, ``"SiO2"``, ``"Si3N4"``, ``"Co3O4"``, ...) or a common name
        (``"gold"``). Formulas not in :data:`DENSITIES` need ``density``.
    energy_eV : float or array
        Photon energy in eV (50 eV to 1 MeV).
    density : float, optional
        Mass density in g/cm^3 (overrides the table).

    Returns
    -------
    (delta, beta) : floats (or arrays shaped like ``energy_eV``)
        ``n = 1 - delta + i beta``. E.g. Au at 8 keV: delta = 4.73e-5, beta = 4.6e-6.

    Raises
    ------
    ValidationError
        Unknown material without density, unparsable formula, bad energy.
    """
    import xraydb

    formula = material_formula(material)
    rho = material_density(formula, density)
    e = _energy(energy_eV)
    try:
        delta, beta, _ = xraydb.xray_delta_beta(formula, rho, e.reshape(-1) if e.ndim else float(e))
    except Exception as exc:  # xraydb raises assorted errors for bad formulas
        raise ValidationError("material", f"cannot compute optical constants of {material!r}: {exc}") from None
    delta = np.asarray(delta, dtype=float)
    beta = np.asarray(beta, dtype=float)
    if e.ndim == 0:
        return float(delta.reshape(-1)[0]), float(beta.reshape(-1)[0])
    return delta.reshape(e.shape), beta.reshape(e.shape)


def thickness_from_phase(phase_rad, material: str, energy_eV: float, *, density: float | None = None):
    """Material thickness (m) that produces a phase shift, ``t = -phase * lambda / (2 pi delta)``.

    Parameters
    ----------
    phase_rad : float or array
        Phase of the transmission in radians, with the ptynb convention
        ``T = exp(-i k (delta - i beta) t)`` (so material gives a *negative* phase).
    material, energy_eV, density
        As in :func:`refractive_index`.

    Returns
    -------
    float or ndarray
        Thickness in metres (positive for negative phases; a positive phase gives a negative
        number, returned as is). E.g. -0.61 rad of Au at 8 keV -> 3.18e-7 m.
    """
    ph = np.asarray(phase_rad, dtype=float)
    if not np.all(np.isfinite(ph)):
        raise ValidationError("phase_rad", "contains NaN or inf")
    delta, _ = refractive_index(material, energy_eV, density=density)
    lam = wavelength(float(_energy(energy_eV)), "xray")
    t = -ph * lam / (2.0 * np.pi * delta)
    return float(t) if t.ndim == 0 else t


def phase_from_thickness(thickness_m, material: str, energy_eV: float, *, density: float | None = None):
    """Phase (rad) of a layer of ``thickness_m`` metres: ``-2 pi delta t / lambda`` (inverse of
    :func:`thickness_from_phase`)."""
    t = np.asarray(thickness_m, dtype=float)
    if not np.all(np.isfinite(t)):
        raise ValidationError("thickness_m", "contains NaN or inf")
    delta, _ = refractive_index(material, energy_eV, density=density)
    lam = wavelength(float(_energy(energy_eV)), "xray")
    ph = -2.0 * np.pi * delta * t / lam
    return float(ph) if ph.ndim == 0 else ph


def transmission(thickness_m, material: str, energy_eV: float, *, density: float | None = None):
    """Complex transmission ``exp(-i k (delta - i beta) t)`` of a projected thickness map.

    Parameters
    ----------
    thickness_m : float or array (..., y, x)
        Projected thickness in metres (>= 0).
    material, energy_eV, density
        As in :func:`refractive_index`.

    Returns
    -------
    complex or complex64 ndarray
        Same shape as ``thickness_m``.
    """
    t = np.asarray(thickness_m, dtype=float)
    if not np.all(np.isfinite(t)):
        raise ValidationError("thickness_m", "contains NaN or inf")
    if np.any(t < 0):
        raise ValidationError("thickness_m", "contains negative thicknesses")
    delta, beta = refractive_index(material, energy_eV, density=density)
    k = 2.0 * np.pi / wavelength(float(_energy(energy_eV)), "xray")
    out = np.exp(-1j * k * (delta - 1j * beta) * t)
    return complex(out) if out.ndim == 0 else out.astype(np.complex64)
