"""Physics: units and wavelengths, probes, propagation, multislice, scan patterns, phantoms."""
from .units import wavelength, energy_from_wavelength, interaction_constant, check_radiation

__all__ = ["wavelength", "energy_from_wavelength", "interaction_constant", "check_radiation"]
