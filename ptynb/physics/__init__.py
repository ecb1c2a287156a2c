"""Physics: units and wavelengths, probes, propagation, multislice, scan patterns, phantoms,
rotations (:mod:`ptynb.physics.rotations`, the one rotation convention).

The names below load their submodule on first use (PEP 562), so that importing one light
submodule (``ptynb.physics.rotations``, used by :mod:`ptynb.tomo`) does not import scipy's
special functions and constants with all the others.
"""
import importlib
import sys
import types

_NAMES = {
    **dict.fromkeys(['crystal_volume', 'projected_potential', 'rotate_atoms', 'scattering_factor'], "atoms"),
    **dict.fromkeys(['phase_from_thickness', 'refractive_index', 'thickness_from_phase'], "materials"),
    **dict.fromkeys(['electron_transmission', 'multislice', 'slice_kernels', 'transmission', 'xray_transmission'], "multislice"),
    **dict.fromkeys(['ellipsoid_line_integrals', 'ellipsoids_phantom', 'ic_labels', 'ic_volume', 'layered_stack', 'shepp_logan_3d', 'spinel_co3o4_nanocube', 'stereo_two_layer'], "phantoms"),
    **dict.fromkeys(['aberration_function', 'airy_first_zero', 'depth_of_focus', 'electron_probe', 'gaussian_probe', 'mixed_state_probe', 'numerical_aperture', 'orthogonalize_modes', 'probe_power', 'zone_plate_focal_length', 'zone_plate_probe'], "probes"),
    **dict.fromkeys(['angular_spectrum_kernel', 'band_limit_frequency', 'detector_pixel_size_for', 'far_field', 'far_field_intensity', 'fresnel_kernel', 'inverse_far_field', 'pixel_size_for', 'pixel_size_from_reciprocal', 'propagate', 'reciprocal_pixel_size_for', 'spatial_frequencies'], "propagation"),
    **dict.fromkeys(['fermat_spiral', 'overlap_fraction', 'raster_scan', 'step_for_overlap'], "scan"),
    **dict.fromkeys(['check_radiation', 'energy_from_wavelength', 'interaction_constant', 'wavelength'], "units"),
}


def __getattr__(name):
    mod = _NAMES.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_NAMES))


class _Package(types.ModuleType):
    """Keeps the function ``multislice`` as the package attribute: importing the submodule of
    the same name would otherwise replace it by the module (the import system sets it)."""

    @property
    def multislice(self):
        return importlib.import_module(".multislice", __name__).multislice

    @multislice.setter
    def multislice(self, value):
        if not isinstance(value, types.ModuleType):
            raise AttributeError("ptynb.physics.multislice is the multislice function")


sys.modules[__name__].__class__ = _Package

__all__ = [  # (loaded on first use)
    "crystal_volume", "projected_potential", "rotate_atoms", "scattering_factor",
    "phase_from_thickness", "refractive_index", "thickness_from_phase",
    "ellipsoid_line_integrals", "ellipsoids_phantom", "ic_labels", "ic_volume", "layered_stack",
    "shepp_logan_3d", "spinel_co3o4_nanocube", "stereo_two_layer",
    "aberration_function",
    "airy_first_zero",
    "angular_spectrum_kernel",
    "band_limit_frequency",
    "check_radiation",
    "depth_of_focus",
    "detector_pixel_size_for",
    "electron_probe",
    "electron_transmission",
    "energy_from_wavelength",
    "far_field",
    "far_field_intensity",
    "fermat_spiral",
    "fresnel_kernel",
    "gaussian_probe",
    "interaction_constant",
    "inverse_far_field",
    "mixed_state_probe",
    "multislice",
    "numerical_aperture",
    "orthogonalize_modes",
    "overlap_fraction",
    "pixel_size_for",
    "pixel_size_from_reciprocal",
    "probe_power",
    "propagate",
    "raster_scan",
    "reciprocal_pixel_size_for",
    "slice_kernels",
    "spatial_frequencies",
    "step_for_overlap",
    "transmission",
    "wavelength",
    "xray_transmission",
    "zone_plate_focal_length",
    "zone_plate_probe",
]
