"""Object transmission functions and the multislice forward model.

Sign conventions
----------------
Waves are ``exp(+i k z)`` (time dependence ``exp(-i omega t)``), so a slab of complex refractive
index ``n = 1 - delta + i beta`` and thickness ``t`` transmits, relative to vacuum,
``exp(-i k (delta - i beta) t) = exp(-i k delta t) exp(-k beta t)`` with ``k = 2 pi / lambda``:
the phase is ``-k delta t`` (negative for gold at X-ray energies) and the amplitude
``exp(-k beta t)``. Electrons gain phase in a positive potential: ``exp(i sigma V_p)`` with the
interaction constant ``sigma`` (rad / (V m)) and the projected potential ``V_p`` (V m).

Arrays may be numpy or cupy; results stay on the input's device.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from .propagation import angular_spectrum_kernel, fresnel_kernel
from .units import interaction_constant

__all__ = [
    "electron_transmission",
    "multislice",
    "slice_kernels",
    "transmission",
    "xray_transmission",
]


def transmission(phase, amplitude=None):
    """Complex transmission ``amplitude * exp(i * phase)`` (complex64).

    Parameters
    ----------
    phase : real array (...), rad
    amplitude : real array (...) or None
        Defaults to 1 (pure phase object).
    """
    xp = backend.xp_of(phase, amplitude)
    ph = xp.asarray(phase)
    if xp.iscomplexobj(ph):
        raise ValueError("phase: must be real (radians), got a complex array")
    t = xp.exp(1j * ph.astype(xp.float32)).astype(xp.complex64)
    if amplitude is not None:
        a = xp.asarray(amplitude)
        if xp.iscomplexobj(a):
            raise ValueError("amplitude: must be real, got a complex array")
        t = t * a.astype(xp.float32)
    return t


def xray_transmission(delta, beta, thickness, wavelength):
    """X-ray transmission ``exp(-i k (delta - i beta) t)`` of a slab (complex64).

    Parameters
    ----------
    delta, beta : float or real array (...)
        Refractive index decrement and absorption index (``n = 1 - delta + i beta``).
    thickness : float or real array (...)
        Thickness (m) along the beam.
    wavelength : float
        Wavelength (m); ``k = 2 pi / wavelength``.

    Returns
    -------
    complex64 array: phase ``-k delta t`` (negative for delta > 0), amplitude ``exp(-k beta t)``.
    """
    xp = backend.xp_of(delta, beta, thickness)
    lam = float(wavelength)
    if not np.isfinite(lam) or lam <= 0:
        raise ValueError(f"wavelength: must be positive, got {wavelength!r}")
    k = 2.0 * np.pi / lam
    d = xp.asarray(delta, dtype=xp.float64)
    b = xp.asarray(beta, dtype=xp.float64)
    t = xp.asarray(thickness, dtype=xp.float64)
    return xp.exp(-1j * k * (d - 1j * b) * t).astype(xp.complex64)


def electron_transmission(projected_potential_Vm, energy_eV):
    """Electron transmission ``exp(i sigma V_p)`` (complex64), weak-phase-object free.

    Parameters
    ----------
    projected_potential_Vm : real or complex array (...)
        Projected potential ``V_p`` in V m (potential in volts integrated along the beam).
        A complex value adds absorption (imaginary part, V m).
    energy_eV : float
        Electron kinetic energy (eV); ``sigma = interaction_constant(energy_eV)`` rad/(V m).
    """
    xp = backend.xp_of(projected_potential_Vm)
    sigma = interaction_constant(energy_eV)
    v = xp.asarray(projected_potential_Vm)
    v = v.astype(xp.complex128 if xp.iscomplexobj(v) else xp.float64)
    return xp.exp(1j * sigma * v).astype(xp.complex64)


def _gaps(slice_thickness, n_slices):
    dz = np.atleast_1d(np.asarray(slice_thickness, dtype=float))
    if dz.size == 1:
        dz = np.repeat(dz, max(n_slices - 1, 0))
    if n_slices > 1 and dz.size != n_slices - 1:
        raise ValueError(
            f"slice_thickness: {dz.size} values for {n_slices} slices; give one spacing or "
            f"{n_slices - 1} (one per gap between slices)")
    if not np.all(np.isfinite(dz)) or np.any(dz <= 0):
        raise ValueError(f"slice_thickness: must be positive (m), got {slice_thickness!r}")
    return dz


def slice_kernels(shape, pixel_size, wavelength, slice_thickness, n_slices, *, tilt=(0.0, 0.0),
                  method="angular_spectrum", band_limit=True, xp=np):
    """The (cached) inter-slice propagators for :func:`multislice`: a list of ``n_slices - 1``
    complex64 (ny, nx) transfer functions (angular spectrum by default)."""
    fn = fresnel_kernel if method == "fresnel" else angular_spectrum_kernel
    return [fn(shape, pixel_size, wavelength, float(d), tilt=tilt, band_limit=band_limit, xp=xp)
            for d in _gaps(slice_thickness, n_slices)]


def multislice(probe, slices, pixel_size, wavelength, slice_thickness, *, tilt=(0.0, 0.0),
               kernel=None, method="angular_spectrum", band_limit=True):
    """Exit wave of a thick object by the multislice method.

    ``psi_0 = t_0 * probe``; for ``s = 1 .. S-1``: ``psi_s = t_s * P_dz(psi_{s-1})`` where
    ``P_dz`` is free-space propagation over the slice spacing (``S - 1`` propagations, no
    propagation after the last slice). With ``tilt`` the propagator also shifts the wave by
    ``dz * tan(tilt)`` per gap, i.e. the inclined beam sees a sheared object.

    Parameters
    ----------
    probe : complex array (..., py, px)
        Incident wave(s) (numpy or cupy); leading dims are batch dims (positions, modes...).
    slices : complex array (S, ..., py, px), or a sequence of S arrays (..., py, px)
        Transmission of each slice, already cut to the probe window; the dims after ``S`` must
        broadcast against ``probe``'s. A sequence is indexed one slice at a time (it may build
        each slice on demand).
    pixel_size : float
        Pixel (m).
    wavelength : float
        Wavelength (m).
    slice_thickness : float or sequence of S-1 floats
        Spacing between consecutive slices (m). Ignored for S == 1.
    tilt : (ty, tx)
        Beam inclination (rad).
    kernel : complex array (py, px) or list of them, optional
        Precomputed propagator(s) in unshifted FFT order (overrides the geometry arguments).
    method : {"angular_spectrum", "fresnel"}
    band_limit : bool

    Returns
    -------
    complex64 array: broadcast shape of ``probe`` and ``slices[0]`` (..., py, px).
    """
    xp = backend.xp_of(probe, slices if hasattr(slices, "ndim") else None)
    p = xp.asarray(probe)
    if hasattr(slices, "ndim"):
        t = xp.asarray(slices)
        if t.ndim < 3:
            raise ValueError(f"slices: expected (S, ..., py, px), got shape {t.shape}")
    else:  # a sequence of per-slice arrays (e.g. gathered lazily, to save memory)
        t = slices
    n = len(t)
    if n < 1:
        raise ValueError("slices: at least one slice is required")
    t0 = t[0]
    if p.shape[-2:] != t0.shape[-2:]:
        raise ValueError(f"slices: window {t0.shape[-2:]} differs from the probe's {p.shape[-2:]}")
    if kernel is None:
        if n > 1:
            kernels = slice_kernels(p.shape[-2:], pixel_size, wavelength, slice_thickness, n,
                                    tilt=tilt, method=method, band_limit=band_limit, xp=xp)
        else:
            kernels = []
    elif isinstance(kernel, (list, tuple)):
        kernels = list(kernel)
        if len(kernels) != n - 1:
            raise ValueError(f"kernel: {len(kernels)} propagators given for {n} slices")
    else:
        kernels = [kernel] * (n - 1)
    psi = p * t0
    if psi.dtype != xp.complex64 and psi.dtype != xp.complex128:
        psi = psi.astype(xp.complex64)
    for s in range(1, n):
        f = backend.fft2(psi)
        f *= kernels[s - 1]
        psi = backend.ifft2(f)
        psi *= t[s]
    return psi
