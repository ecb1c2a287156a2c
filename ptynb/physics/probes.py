"""Illumination functions (probes) for X-ray and electron ptychography.

Every probe constructor returns a complex64 :class:`xarray.DataArray` with dims ``(py, px)``,
coordinates in metres (zero at index ``n // 2``, the probe centre), amplitude in sqrt(counts)
per pixel (``sum |p|**2 == total_counts``, default 1) and attrs holding every parameter in SI
units (m, eV, rad).

Probes are built in Fourier space: the angular spectrum ``A(f)`` (an aperture/pupil times an
aberration phase) is inverse-transformed, which gives the field in the focal plane directly (the
focal field is the Fourier transform of the pupil), then defocus is a free-space propagation.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import xarray as xr

from .. import backend
from ..data import ValidationError, centered_coord, check_finite, check_positive, provenance
from .propagation import angular_spectrum_kernel, spatial_frequencies
from .units import wavelength as _wavelength

__all__ = [
    "aberration_function",
    "airy_first_zero",
    "depth_of_focus",
    "electron_probe",
    "gaussian_probe",
    "mixed_state_probe",
    "numerical_aperture",
    "orthogonalize_modes",
    "probe_power",
    "zone_plate_focal_length",
    "zone_plate_probe",
]


# ----------------------------------------------------------------------------- helpers
_pos = check_positive  # (name, value, *, allow_zero=False)

_finite = check_finite

def _shape(shape):
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape), int(shape))
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValidationError("shape", f"expected an int or (ny, nx), got {shape!r}") from None
    if len(shape) != 2 or min(shape) < 2:
        raise ValidationError("shape", f"expected an int or (ny, nx) of ints >= 2, got {shape!r}")
    return shape


def _soft_disk(r, radius, dr):
    """1 inside ``radius``, 0 outside, with a linear edge one sample ``dr`` wide (anti-aliased)."""
    return np.clip((radius - r) / dr + 0.5, 0.0, 1.0)


def _to_dataarray(field, pixel_size, name, attrs):
    ny, nx = field.shape
    return xr.DataArray(
        field.astype(np.complex64),
        dims=("py", "px"),
        coords={"py": ("py", centered_coord(ny, pixel_size), {"units": "m"}),
                "px": ("px", centered_coord(nx, pixel_size), {"units": "m"})},
        name=name,
        attrs=provenance(kind="probe", pixel_size=float(pixel_size), units="sqrt(counts)",
                         **attrs),
    )


def _normalise(field, total_counts):
    tc = 1.0 if total_counts is None else _pos("total_counts", total_counts)
    power = float(np.sum(np.abs(field) ** 2))
    if power <= 0:
        raise ValidationError("probe", "has zero power (aperture smaller than one frequency pixel?)")
    return field * np.sqrt(tc / power), tc


def _from_spectrum(spectrum):
    """Centred real-space field from an angular spectrum in unshifted FFT order."""
    return np.fft.fftshift(np.fft.ifft2(spectrum), axes=(-2, -1))


def probe_power(probe) -> float:
    """Total power ``sum |p|**2`` over all modes and pixels (counts)."""
    a = backend.to_host(probe)
    return float(np.sum(np.abs(a) ** 2))


# ----------------------------------------------------------------------------- zone plate
def zone_plate_focal_length(diameter, outer_zone_width, wavelength):
    """First-order focal length ``f = D * dr / lambda`` (m) of a Fresnel zone plate."""
    return (_pos("diameter", diameter) * _pos("outer_zone_width", outer_zone_width)
            / _pos("wavelength", wavelength))


def numerical_aperture(outer_zone_width, wavelength):
    """Zone-plate numerical aperture ``NA = lambda / (2 dr)`` (= D / (2 f))."""
    return _pos("wavelength", wavelength) / (2.0 * _pos("outer_zone_width", outer_zone_width))


def depth_of_focus(outer_zone_width, wavelength):
    """Depth of focus ``lambda / (2 NA**2) = 2 dr**2 / lambda`` (m), the +-range of the focus."""
    na = numerical_aperture(outer_zone_width, wavelength)
    return float(wavelength) / (2.0 * na**2)


def airy_first_zero(outer_zone_width):
    """Rayleigh radius (first zero of the Airy pattern) ``0.61 lambda / NA = 1.22 dr`` (m)."""
    return 1.22 * _pos("outer_zone_width", outer_zone_width)


def zone_plate_probe(shape, pixel_size, energy_eV, *, diameter, outer_zone_width,
                     central_stop_diameter=None, osa_diameter=None, osa_distance=None,
                     defocus=0.0, astigmatism=0.0, astigmatism_angle=0.0, total_counts=None,
                     check_window=True):
    """X-ray probe of a Fresnel zone plate (first diffraction order) near its focus.

    The zone plate of diameter ``D`` and outermost zone width ``dr`` focuses its first order at
    ``f = D dr / lambda`` with numerical aperture ``NA = lambda / (2 dr)``. In the focal plane the
    field is the Fourier transform of the pupil, i.e. its angular spectrum is the pupil mapped
    to spatial frequency ``|q| = rho / (lambda f)``: a disk of radius ``1 / (2 dr)``. A central
    stop of diameter ``c`` (upstream of the zone plate) removes ``|q| < c / (2 lambda f)``; with
    the order-sorting aperture (OSA) it blocks the zero order, which is therefore not modelled.
    An OSA of diameter ``a`` at ``osa_distance`` ``L`` upstream of the focus clips first-order
    rays with ``|q| > a / (2 lambda L)`` (only if it is too small for the cone).
    The field at ``defocus`` is the focal field propagated with the angular spectrum method.

    Parameters
    ----------
    shape : int or (ny, nx)
        Probe window (pixels).
    pixel_size : float
        Sample-plane pixel (m); must be below ``dr`` (Nyquist) and should be ~dr/2 or finer.
    energy_eV : float
        Photon energy (eV).
    diameter, outer_zone_width : float
        Zone-plate diameter ``D`` and outermost zone width ``dr`` (m).
    central_stop_diameter : float, optional
        Central stop diameter (m), e.g. 25e-6 for the stereo set-up (D = 74.9 um, dr = 60 nm).
    osa_diameter, osa_distance : float, optional
        OSA diameter and its distance upstream of the focus (m).
    defocus : float
        Distance of the sample plane from the focus (m); **positive = downstream** of the focus
        (note: the electron convention of :func:`electron_probe` is the opposite).
    astigmatism : float
        Half the axial distance (m) between the two line foci: the phase
        ``pi lambda astigmatism q**2 cos(2 (phi - astigmatism_angle))`` is added to the pupil.
    astigmatism_angle : float
        Azimuth (rad) of the astigmatism.
    total_counts : float, optional
        Probe power ``sum |p|**2`` (default 1).
    check_window : bool
        Warn when the defocused beam (diameter ``D |defocus| / f``) does not fit the window.

    Returns
    -------
    xarray.DataArray complex64 (py, px)
        attrs: ``energy_eV``, ``wavelength``, ``focal_length``, ``numerical_aperture``,
        ``depth_of_focus``, ``rayleigh_radius`` (1.22 dr) and all parameters (m).
    """
    ny, nx = _shape(shape)
    dx = _pos("pixel_size", pixel_size)
    e = _pos("energy_eV", energy_eV)
    lam = _wavelength(e, "xray")
    D = _pos("diameter", diameter)
    dr = _pos("outer_zone_width", outer_zone_width)
    dz = _finite("defocus", defocus)
    astig = _finite("astigmatism", astigmatism)
    astig_phi = _finite("astigmatism_angle", astigmatism_angle)
    if dx >= dr:
        raise ValidationError(
            "pixel_size", f"{dx:.4g} m does not sample the zone-plate NA: it must be below the "
                          f"outer zone width {dr:.4g} m (ideally dr/2 or finer)")
    f = zone_plate_focal_length(D, dr, lam)
    na = numerical_aperture(dr, lam)
    fy, fx = spatial_frequencies((ny, nx), dx)
    q = np.sqrt(fy**2 + fx**2)
    dq = 1.0 / (max(ny, nx) * dx)
    q_max = 1.0 / (2.0 * dr)
    pupil = _soft_disk(q, q_max, dq)
    cs = None
    if central_stop_diameter is not None:
        cs = _pos("central_stop_diameter", central_stop_diameter)
        if cs >= D:
            raise ValidationError("central_stop_diameter",
                                  f"{cs:.4g} m blocks the whole zone plate (D = {D:.4g} m)")
        pupil = pupil * (1.0 - _soft_disk(q, cs / (2.0 * lam * f), dq))
    osa = osa_l = None
    if osa_diameter is not None:
        osa = _pos("osa_diameter", osa_diameter)
        if osa_distance is not None:
            osa_l = _pos("osa_distance", osa_distance)
            pupil = pupil * _soft_disk(q, osa / (2.0 * lam * osa_l), dq)
    phase = np.zeros_like(q)
    if astig:
        phi = np.arctan2(fy, fx)
        phase = phase + np.pi * lam * astig * q**2 * np.cos(2.0 * (phi - astig_phi))
    spectrum = pupil * np.exp(1j * phase)
    if dz:
        spectrum = spectrum * angular_spectrum_kernel((ny, nx), dx, lam, dz, band_limit=False)
        if check_window:
            beam = D * abs(dz) / f
            if beam > 0.9 * min(ny, nx) * dx:
                warnings.warn(
                    f"zone_plate_probe: the beam at defocus {dz:.3g} m is about {beam:.3g} m wide "
                    f"but the window is only {min(ny, nx) * dx:.3g} m: it wraps around; use a "
                    "larger shape", stacklevel=2)
    field, tc = _normalise(_from_spectrum(spectrum), total_counts)
    return _to_dataarray(field, dx, "probe", dict(
        radiation="xray", energy_eV=e, wavelength=lam, diameter=D, outer_zone_width=dr,
        central_stop_diameter=cs, osa_diameter=osa, osa_distance=osa_l, defocus=dz,
        astigmatism=astig, astigmatism_angle=astig_phi, total_counts=tc, focal_length=f,
        numerical_aperture=na, depth_of_focus=depth_of_focus(dr, lam),
        rayleigh_radius=1.22 * dr, probe_type="zone_plate"))


# ----------------------------------------------------------------------------- electrons
#: Aliases accepted in ``aberrations`` (mapped to the polar C_nm / phi_nm names).
ABERRATION_ALIASES = {
    "Cs": "C30", "C3": "C30", "C5": "C50", "astigmatism": "C12", "astigmatism_angle": "phi12",
    "coma": "C21", "coma_angle": "phi21", "trefoil": "C23", "trefoil_angle": "phi23",
}
_POLAR = [(1, 0), (1, 2), (2, 1), (2, 3), (3, 0), (3, 2), (3, 4), (4, 1), (4, 3), (4, 5),
          (5, 0), (5, 2), (5, 4), (5, 6)]
ABERRATION_NAMES = tuple([f"C{n}{m}" for n, m in _POLAR]
                         + [f"phi{n}{m}" for n, m in _POLAR if m > 0])


def _parse_aberrations(aberrations, defocus, Cs):
    coef = {name: 0.0 for name in ABERRATION_NAMES}
    for key, value in (aberrations or {}).items():
        if key == "defocus":
            coef["C10"] += -_finite("aberrations['defocus']", value)
            continue
        name = ABERRATION_ALIASES.get(key, key)
        if name not in coef:
            raise ValidationError(
                "aberrations", f"unknown aberration {key!r}; use polar names "
                               f"{', '.join(ABERRATION_NAMES)} or 'defocus'/'Cs'")
        coef[name] += _finite(f"aberrations[{key!r}]", value)
    coef["C10"] += -_finite("defocus", defocus)
    coef["C30"] += _finite("Cs", Cs)
    return coef


def aberration_function(qy, qx, wavelength, aberrations):
    """Aberration phase ``chi(q)`` (rad), abTEM/py4DSTEM polar convention.

    ``chi = 2 pi / lambda * sum_nm  alpha**(n+1) / (n+1) * C_nm * cos(m (phi - phi_nm))``
    with ``alpha = lambda |q|`` and ``phi = atan2(qy, qx)``. ``C10 = -defocus``; e.g. defocus
    only: ``chi = -pi lambda defocus q**2``. The probe's angular spectrum is
    ``aperture * exp(-i chi)``.

    Parameters
    ----------
    qy, qx : arrays (1/m), broadcastable
    wavelength : float (m)
    aberrations : dict
        ``{"C10": m, "C12": m, "phi12": rad, "C30": m, ...}`` (missing terms are zero).
    """
    lam = float(wavelength)
    q = np.sqrt(qy**2 + qx**2)
    alpha = lam * q
    phi = np.arctan2(qy, qx)
    chi = np.zeros(np.broadcast_shapes(np.shape(qy), np.shape(qx)))
    for n, m in _POLAR:
        c = float(aberrations.get(f"C{n}{m}", 0.0))
        if c == 0.0:
            continue
        ang = float(aberrations.get(f"phi{n}{m}", 0.0)) if m else 0.0
        term = alpha ** (n + 1) / (n + 1) * c
        if m:
            term = term * np.cos(m * (phi - ang))
        chi = chi + term
    return 2.0 * np.pi / lam * chi


def electron_probe(shape, pixel_size, energy_eV, semiangle, defocus=0.0, Cs=0.0, *,
                   aberrations=None, total_counts=None):
    """Convergent electron probe from a sharp condenser aperture with aberrations.

    Angular spectrum ``A(q) = aperture(lambda |q| <= semiangle) * exp(-i chi(q))`` (see
    :func:`aberration_function`), inverse-Fourier-transformed and centred at pixel n//2.

    Parameters
    ----------
    shape : int or (ny, nx)
    pixel_size : float
        Real-space pixel (m). The aperture radius ``semiangle / lambda`` must lie below the
        Nyquist frequency ``1 / (2 pixel_size)``.
    energy_eV : float
        Electron kinetic energy (eV).
    semiangle : float
        Convergence semi-angle (rad).
    defocus : float
        Defocus (m), ``defocus = -C10``: **positive = underfocus** (the crossover lies beyond
        the sample, downstream).
    Cs : float
        Spherical aberration C30 (m).
    aberrations : dict, optional
        More polar coefficients ``C12, phi12, C21, phi21, C23, phi23, C30, ..., C50, ...``
        (m, rad); ``"defocus"`` and ``"Cs"`` aliases are added to the arguments.
    total_counts : float, optional
        ``sum |p|**2`` (default 1).

    Returns
    -------
    xarray.DataArray complex64 (py, px), attrs with energy, wavelength, semiangle and every
    aberration coefficient (m, rad).
    """
    ny, nx = _shape(shape)
    dx = _pos("pixel_size", pixel_size)
    e = _pos("energy_eV", energy_eV)
    lam = _wavelength(e, "electron")
    alpha = _pos("semiangle", semiangle)
    coef = _parse_aberrations(aberrations, defocus, Cs)
    q_ap = alpha / lam
    if q_ap >= 1.0 / (2.0 * dx):
        raise ValidationError(
            "semiangle", f"{alpha:.4g} rad needs spatial frequency {q_ap:.4g} 1/m, beyond the "
                         f"Nyquist frequency {1 / (2 * dx):.4g} 1/m of pixel_size {dx:.4g} m; "
                         "use a smaller pixel")
    fy, fx = spatial_frequencies((ny, nx), dx)
    q = np.sqrt(fy**2 + fx**2)
    dq = 1.0 / (max(ny, nx) * dx)
    aperture = _soft_disk(q, q_ap, dq)
    chi = aberration_function(fy, fx, lam, coef)
    field, tc = _normalise(_from_spectrum(aperture * np.exp(-1j * chi)), total_counts)
    attrs = dict(radiation="electron", energy_eV=e, wavelength=lam, semiangle=alpha,
                 defocus=-coef["C10"], Cs=coef["C30"], total_counts=tc,
                 probe_type="convergent_beam")
    attrs.update({k: v for k, v in coef.items() if v != 0.0})
    return _to_dataarray(field, dx, "probe", attrs)


# ----------------------------------------------------------------------------- Gaussian
def gaussian_probe(shape, pixel_size, waist, *, energy_eV=None, radiation="xray", defocus=0.0,
                   total_counts=None):
    """Gaussian beam ``exp(-r**2 / w0**2)`` (``w0`` = 1/e**2 intensity radius) at its waist,
    optionally propagated by ``defocus`` (m, positive downstream; needs ``energy_eV``).

    Returns
    -------
    xarray.DataArray complex64 (py, px) with ``sum |p|**2 = total_counts`` (default 1).
    """
    ny, nx = _shape(shape)
    dx = _pos("pixel_size", pixel_size)
    w0 = _pos("waist", waist)
    dz = _finite("defocus", defocus)
    y = centered_coord(ny, dx)[:, None]
    x = centered_coord(nx, dx)[None, :]
    field = np.exp(-(y**2 + x**2) / w0**2).astype(np.complex128)
    lam = None
    if energy_eV is not None:
        lam = _wavelength(_pos("energy_eV", energy_eV), radiation)
    if dz:
        if lam is None:
            raise ValidationError("energy_eV", "is required to propagate a Gaussian probe (defocus != 0)")
        spec = np.fft.fft2(np.fft.ifftshift(field))
        spec = spec * angular_spectrum_kernel((ny, nx), dx, lam, dz, band_limit=False)
        field = _from_spectrum(spec)
    field, tc = _normalise(field, total_counts)
    return _to_dataarray(field, dx, "probe", dict(
        waist=w0, defocus=dz, energy_eV=energy_eV, wavelength=lam,
        radiation=radiation if energy_eV is not None else None, total_counts=tc,
        probe_type="gaussian"))


# ----------------------------------------------------------------------------- modes
def orthogonalize_modes(modes):
    """Orthogonalise a stack of probe modes, keeping the mutual-coherence (density) matrix.

    Eigen-decomposition of the Gram matrix ``G = A A^H`` of the flattened modes ``A`` (M, N):
    the new modes ``V^H A`` are mutually orthogonal, their powers are the eigenvalues of ``G``,
    and the incoherent sum ``sum_m |mode_m|**2`` is unchanged.

    Parameters
    ----------
    modes : complex array (M, py, px) (numpy or cupy) or DataArray (mode, py, px)

    Returns
    -------
    modes : same kind and shape, sorted by decreasing power
    powers : float64 array (M,) (numpy or cupy, like the input), decreasing
    """
    if isinstance(modes, xr.DataArray):
        out, powers = orthogonalize_modes(modes.data)
        return modes.copy(data=out), powers
    xp = backend.xp_of(modes)
    a = xp.asarray(modes)
    if a.ndim != 3:
        raise ValidationError("modes", f"expected (mode, py, px), got shape {a.shape}")
    m = a.shape[0]
    flat = a.reshape(m, -1).astype(xp.complex128)
    gram = flat @ flat.conj().T
    w, v = xp.linalg.eigh(gram)
    order = xp.argsort(w)[::-1]
    w = w[order]
    v = v[:, order]
    new = (v.conj().T @ flat).reshape(a.shape).astype(a.dtype if xp.iscomplexobj(a) else xp.complex64)
    return new, xp.maximum(w.real, 0.0)


def _rms_frame(power, dx):
    ny, nx = power.shape
    y = centered_coord(ny, dx)[:, None]
    x = centered_coord(nx, dx)[None, :]
    tot = power.sum()
    cy = float((power * y).sum() / tot)
    cx = float((power * x).sum() / tot)
    sy = math.sqrt(max(float((power * (y - cy) ** 2).sum() / tot), dx**2))
    sx = math.sqrt(max(float((power * (x - cx) ** 2).sum() / tot), dx**2))
    return (y - cy) / sy, (x - cx) / sx


def mixed_state_probe(probe, n_modes, *, weights=None, seed=0, decay=0.5):
    """A mixed-state probe: ``n_modes`` mutually orthogonal modes with given power fractions.

    Mode 0 is the input probe; higher modes are the probe times low-order polynomials
    ``y**a x**b`` (orders 1, 2, 3, 4 in the probe's RMS frame), then random smooth complex
    modulations (seeded) if more are needed; all are Gram-Schmidt orthogonalised against the
    previous ones, normalised and scaled to ``weights[m] * total`` power, where ``total`` is the
    input probe's power (preserved).

    Parameters
    ----------
    probe : complex array (py, px) or DataArray (py, px)
    n_modes : int >= 1
    weights : sequence of n_modes floats, optional
        Power fractions (normalised to sum 1). Default geometric ``decay**m``.
    seed : int
        Seed for the random modulations beyond the 14 polynomial ones.
    decay : float
        Ratio of consecutive default weights.

    Returns
    -------
    xarray.DataArray complex64 (mode, py, px); attrs ``power_fractions``.
    """
    n = int(n_modes)
    if n < 1:
        raise ValidationError("n_modes", f"must be >= 1, got {n_modes!r}")
    if isinstance(probe, xr.DataArray):
        if probe.ndim != 2:
            raise ValidationError("probe", f"expected (py, px), got dims {probe.dims}")
        p = np.asarray(backend.to_host(probe.data), dtype=np.complex128)
        dx = float(probe.attrs.get("pixel_size", 1.0))
        attrs = dict(probe.attrs)
        coords = {c: probe[c] for c in probe.dims if c in probe.coords}
        dims = probe.dims
    else:
        p = np.asarray(backend.to_host(probe), dtype=np.complex128)
        if p.ndim != 2:
            raise ValidationError("probe", f"expected (py, px), got shape {p.shape}")
        dx, attrs, coords, dims = 1.0, {}, {}, ("py", "px")
    if weights is None:
        w = np.asarray([float(decay) ** k for k in range(n)])
    else:
        w = np.asarray(weights, dtype=float).reshape(-1)
        if w.size != n:
            raise ValidationError("weights", f"{w.size} weights for {n} modes")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValidationError("weights", "must be positive and finite")
    w = w / w.sum()
    total = float(np.sum(np.abs(p) ** 2))
    if total <= 0:
        raise ValidationError("probe", "has zero power")
    yy, xx = _rms_frame(np.abs(p) ** 2, dx)
    candidates = [p]
    for order in range(1, 5):
        for a in range(order, -1, -1):
            candidates.append(p * yy**a * xx ** (order - a))
    rng = np.random.default_rng(seed)
    basis = []
    k = 0
    while len(basis) < n:
        if k < len(candidates):
            c = candidates[k]
        else:
            noise = rng.standard_normal(p.shape) + 1j * rng.standard_normal(p.shape)
            spec = np.fft.fft2(noise)
            fy, fx = np.fft.fftfreq(p.shape[0])[:, None], np.fft.fftfreq(p.shape[1])[None, :]
            spec *= np.exp(-(fy**2 + fx**2) / (2 * 0.05**2))
            c = p * np.fft.ifft2(spec)
        k += 1
        v = c.copy()
        for _ in range(2):  # Gram-Schmidt, twice for stability
            for b in basis:
                v = v - np.vdot(b, v) * b
        nv = math.sqrt(float(np.sum(np.abs(v) ** 2)))
        if nv > 1e-8 * math.sqrt(total):
            basis.append(v / nv)
        if k > len(candidates) + 10 * n:
            raise ValidationError("n_modes", f"could not build {n} independent modes")
    modes = np.stack([b * math.sqrt(wk * total) for b, wk in zip(basis, w)]).astype(np.complex64)
    attrs.update(n_modes=n, power_fractions=w, mode_seed=int(seed))
    return xr.DataArray(modes, dims=("mode",) + tuple(dims),
                        coords={"mode": np.arange(n), **coords}, name="probe", attrs=attrs)
