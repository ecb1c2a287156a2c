"""Initial probes from what a user knows: nominal optics, or the data alone.

:func:`nominal_probe` builds the probe from the *nominal* measurement attrs (see
:mod:`ptynb.data`): X-ray zone plate (``zone_plate_diameter``, ``zone_plate_outer_zone_width``,
optional ``central_stop_diameter``, m) or electron aperture (``convergence_semiangle``, rad),
with ``nominal_defocus`` (m) and ``nominal_Cs`` (m). It never reads the ``probe_*`` attrs or
``true_*`` variables of a simulation (the truth).

Without any optics, :func:`data_probe` builds one from the data alone: the pupil amplitude is
the square root of the mean diffraction pattern on its bright-field support, and the defocus
is measured by :func:`estimate_defocus` from the parallax of the shadow (in-line hologram) in
the bright field: for a probe diverging from (or converging to) a focus a distance ``z``
from the sample, the pattern of position ``r_k`` is that of ``r_j`` shifted by
``(r_k - r_j) / (lambda z)`` in spatial frequency (Fresnel scaling; exact in the paraxial
limit within the bright field), the tcBF/parallax principle.
"""
from __future__ import annotations

import math

import numpy as np

from ..data import ValidationError

__all__ = ["NOMINAL_ATTRS", "data_probe", "estimate_defocus", "nominal_probe"]

#: the attrs a user gives to describe the optics (m, rad)
NOMINAL_ATTRS = {
    "xray": ("zone_plate_diameter", "zone_plate_outer_zone_width", "central_stop_diameter",
             "nominal_defocus"),
    "electron": ("convergence_semiangle", "nominal_defocus", "nominal_Cs"),
}
#: estimate_defocus refuses below this mean normalised cross-correlation of neighbouring
#: bright-field shadows at the best shift. Measured: 0.32-0.48 on zone-plate data 0.15-0.5 mm
#: out of focus, 0.22-0.25 on the 4D-STEM tests (10-15 nm defocus); 0.006 on pure Poisson
#: noise, 0.024 in focus and 0.032 at 20 um defocus (no measurable parallax)
MIN_PARALLAX_CORRELATION = 0.1
#: ... and unless the best correlation is this many times the best one of the opposite sign
#: of the defocus (parallax has a sign; structure that does not move with the scan does not):
#: measured 5-19 on the data above, 1.3 on a focused 32 px data set
SIGN_CONTRAST = 2.0
#: ... or when the bright field has fewer pixels (radius < 4 px: no resolvable shadow; a
#: focused 4 px Gaussian probe on 32 px gives 21 px and a spurious correlation of 0.42)
MIN_BRIGHT_FIELD = 50
#: without a measurable parallax, data_probe starts in focus if every probe that fits the
#: window is within this many depths of focus of its focus (bright field radius <= 4 px)
MAX_WINDOW_DEPTHS = 2.0
#: the pupil amplitude of data_probe is sqrt(mean pattern) where the mean exceeds this
#: fraction of its robust maximum (weak scattering outside the pupil is dropped). Measured
#: NRMSE after 30 ePIE / LSQ-ML its on a focused Gaussian probe: 0.070 / 0.102 at 0.3 (the
#: tails cut), 0.022 / 0.014 at 0.03 (true probe: 0.022 / 0.015); the zone-plate demo is the
#: same (0.013 / 0.009) at 0.3 to 0.01
PUPIL_LEVEL = 0.03
#: at most this many neighbour pairs are correlated (an even subset beyond)
MAX_PAIRS = 256


def _float(attrs, *names):
    for k in names:
        v = attrs.get(k)
        if v is not None:
            return float(v)
    return None


def _refuse(radiation, why):
    names = ", ".join(NOMINAL_ATTRS.get(radiation, NOMINAL_ATTRS["xray"]))
    raise ValidationError(
        "probe", f"no initial probe: {why}. Give probe=..., or the nominal optics as "
                 f"measurement attrs ({names}; m, rad; see ptynb.data)")


def nominal_probe(measurement, n, *, estimate=True):
    """Probe (n, n) complex128 from the nominal optics in the measurement attrs, or None.

    X-ray (``radiation == "xray"``): :func:`ptynb.physics.zone_plate_probe` from
    ``zone_plate_diameter``, ``zone_plate_outer_zone_width`` (m), optional
    ``central_stop_diameter`` (m) and ``nominal_defocus`` (m, positive = sample downstream of
    the focus). Electron: :func:`ptynb.physics.electron_probe` from ``convergence_semiangle``
    (rad), ``nominal_defocus`` (m, positive = underfocus; the real-data name ``defocus`` is
    accepted too) and ``nominal_Cs`` (or ``Cs``, m). A missing defocus is measured from the
    data (:func:`estimate_defocus`) when ``estimate``; if that fails, ValidationError.
    Returns None when the attrs describe no optics.
    """
    from ..physics import probes as _probes

    a = measurement.attrs
    rad = a.get("radiation")
    dx = float(a["pixel_size"])
    e = float(a["energy_eV"])
    if rad == "electron" and a.get("convergence_semiangle") is not None:
        df = _float(a, "nominal_defocus", "defocus")
        if df is None:
            z = estimate_defocus(measurement) if estimate else None
            if z is None:
                _refuse(rad, "the defocus is neither given (nominal_defocus) nor measurable "
                             "from the data")
            df = -z  # electron defocus: positive = underfocus = focus beyond the sample
        cs = _float(a, "nominal_Cs", "Cs") or 0.0
        return np.asarray(_probes.electron_probe((n, n), dx, e, float(a["convergence_semiangle"]),
                                                 defocus=df, Cs=cs).values)
    if rad == "xray" and a.get("zone_plate_diameter") is not None \
            and a.get("zone_plate_outer_zone_width") is not None:
        dz = _float(a, "nominal_defocus")
        if dz is None:
            z = estimate_defocus(measurement) if estimate else None
            if z is None:
                _refuse(rad, "the defocus is neither given (nominal_defocus) nor measurable "
                             "from the data")
            dz = z
        csd = _float(a, "central_stop_diameter")
        return np.asarray(_probes.zone_plate_probe(
            n, dx, e, diameter=float(a["zone_plate_diameter"]),
            outer_zone_width=float(a["zone_plate_outer_zone_width"]),
            central_stop_diameter=csd, defocus=dz, check_window=False).values)
    return None


# ----------------------------------------------------------------------------- data alone
def _first_block(measurement):
    """The first leading (beam/angle) block of a measurement: (scan, qy, qx)."""
    lead = [d for d in measurement["intensity"].dims if d not in ("scan", "qy", "qx")]
    return measurement.isel({d: 0 for d in lead}) if lead else measurement


def _mean_pattern(measurement):
    """(mean pattern (qy, qx) float64, mask or None) of a (scan, qy, qx) block, without a
    float64 copy of the whole data (chunked; lazy data are read once)."""
    inten = measurement["intensity"]
    if tuple(inten.dims) != ("scan", "qy", "qx"):
        raise ValidationError("intensity", f"has dims {inten.dims}; expected (scan, qy, qx)")
    J = inten.sizes["scan"]
    total = np.zeros(inten.shape[1:], np.float64)
    for j0 in range(0, J, 256):
        total += np.asarray(inten.isel(scan=slice(j0, j0 + 256)).values, np.float64).sum(0)
    mask = None
    if "mask" in measurement:
        mask = np.asarray(measurement["mask"].values, dtype=bool)
    return total / J, mask


def _bright_field(mean, mask, level=0.3):
    """Bright-field support: mean pattern above ``level`` (30 %) of its robust maximum (99th
    percentile of the 3 x 3 mean), valid pixels."""
    from scipy.ndimage import uniform_filter

    sm = uniform_filter(mean, 3, mode="constant")
    top = float(np.percentile(sm[sm > 0], 99)) if np.any(sm > 0) else 0.0
    bf = sm > level * top
    if mask is not None:
        bf &= mask
    return bf


def estimate_defocus(measurement, *, min_correlation=MIN_PARALLAX_CORRELATION,
                     return_score=False):
    """Distance ``z`` (m) of the sample plane from the probe focus, measured from the data.

    ``z > 0``: the sample is downstream of the focus (diverging beam; the X-ray
    ``defocus`` of :func:`ptynb.physics.zone_plate_probe`); ``z < 0``: upstream (converging;
    electron underfocus ``defocus = -z`` of :func:`ptynb.physics.electron_probe`).

    Method (parallax of the bright-field shadow): the contrast ``D_j = I_j / mean - 1`` on the
    bright-field support (mean pattern > 30 % of its maximum) of neighbouring positions ``j``,
    ``k`` (up to 6 nearest, within 2.5 median neighbour distances) obeys
    ``D_k(q) = D_j(q + c (r_k - r_j))`` with ``c = 1 / (lambda z)`` (sign measured on simulated
    zone-plate and electron probes). The normalised
    cross-correlation of every pair, averaged over pairs at ``c (r_k - r_j)``, is scanned over
    ``c`` (shifts of 1 detector pixel up to 1.5 bright-field radii at the median neighbour
    distance, both signs; where the supports overlap by at least 15 %), and its maximum is
    refined by a parabola. The estimate is refused (None) when the maximum is below
    ``min_correlation``, less than ``SIGN_CONTRAST`` times the best correlation of the other
    sign, or at an end of the scanned range, and when the bright field has fewer than
    ``MIN_BRIGHT_FIELD`` pixels.

    Returns
    -------
    float or None
        ``z`` (m); None when the best mean correlation is below ``min_correlation`` or the
        data have no usable bright field or neighbours (then give ``nominal_defocus``).
        With ``return_score``: ``(z, correlation)``.
    """
    from scipy.ndimage import map_coordinates
    from scipy.spatial import cKDTree

    measurement = _first_block(measurement)
    a = measurement.attrs
    lam = float(a.get("wavelength") or 0.0)
    if not lam > 0:
        from ..physics.units import wavelength

        lam = wavelength(float(a["energy_eV"]), a["radiation"])
    dx = float(a["pixel_size"])
    mean, mask = _mean_pattern(measurement)
    J = measurement.sizes["scan"]
    N = mean.shape[0]
    dq = 1.0 / (N * dx)  # detector pixel (1/m): 1 / (n_det * pixel_size), also with upsample
    bf = _bright_field(mean, mask)
    nb = int(bf.sum())
    fail = (None, 0.0) if return_score else None
    if nb < MIN_BRIGHT_FIELD or J < 3:
        return fail
    radius = math.sqrt(nb / math.pi)  # bright-field radius (px), also for an annulus' extent
    # pairs of neighbours
    pos = np.column_stack([np.asarray(measurement["scan_y"].values, float).ravel(),
                           np.asarray(measurement["scan_x"].values, float).ravel()])
    tree = cKDTree(pos)
    kk = min(7, J)
    dist, idx = tree.query(pos, k=kk)
    nn = float(np.median(dist[:, 1]))
    if not nn > 0:
        return fail
    pairs = {(min(j, int(k)), max(j, int(k))) for j in range(J) for d, k in zip(dist[j, 1:], idx[j, 1:])
             if 0 < d <= 2.5 * nn}
    if not pairs:
        return fail
    pairs = np.array(sorted(pairs))
    M = 2 * N
    cap = min(MAX_PAIRS, max(16, 2**24 // (M * M)))  # 3 x pairs x (2N)^2 float32 <= ~200 MB
    if len(pairs) > cap:  # an even subset, deterministic
        pairs = pairs[np.linspace(0, len(pairs) - 1, cap).round().astype(int)]
    used, inv = np.unique(pairs, return_inverse=True)  # read only the paired patterns
    I = np.asarray(measurement["intensity"].isel(scan=used).values, np.float64)
    D = np.where(bf, I / np.where(bf, mean, 1.0) - 1.0, 0.0)
    del I
    pj, pk = inv.reshape(pairs.shape).T
    pos = pos[used]
    dr = (pos[pk] - pos[pj]) / dq  # (pairs, 2): metres / (1/m per px) -> multiply by c (1/m^2)
    # cross-correlations via zero-padded FFTs: C(s) = sum_q D_j(q + s) D_k(q)
    F = np.fft.rfft2(D, (M, M)).astype(np.complex64)
    Fb = np.fft.rfft2(bf.astype(float), (M, M))
    F2 = np.fft.rfft2(D * D, (M, M)).astype(np.complex64)
    cross = np.fft.irfft2(F[pj] * np.conj(F[pk]), (M, M)).astype(np.float32)
    ej = np.fft.irfft2(F2[pj] * np.conj(Fb), (M, M)).astype(np.float32)  # sum D_j^2(q+s) bf(q)
    ek = np.fft.irfft2(Fb * np.conj(F2[pk]), (M, M)).astype(np.float32)  # sum bf(q+s) D_k^2(q)
    ov = np.fft.irfft2(Fb * np.conj(Fb), (M, M))  # overlap of the supports (px)
    # candidate c: shift |c| * nn / dq from 1 px to 1.5 radii at the median neighbour distance
    s_max = 1.5 * radius
    mags = np.geomspace(1.0, s_max, 160) * dq / nn
    cands = np.concatenate([-mags[::-1], mags])
    P, C = len(pj), len(cands)
    sy = np.mod(cands[None, :] * dr[:, 0, None], M).ravel()  # (pairs * candidates,)
    sx = np.mod(cands[None, :] * dr[:, 1, None], M).ravel()
    pidx = np.repeat(np.arange(P, dtype=float), C)
    o = map_coordinates(ov, [sy, sx], order=1, mode="grid-wrap").reshape(P, C)
    at = dict(order=1, mode="grid-wrap")
    cc = map_coordinates(cross, [pidx, sy, sx], **at).reshape(P, C)
    e1 = map_coordinates(ej, [pidx, sy, sx], **at).reshape(P, C)
    e2 = map_coordinates(ek, [pidx, sy, sx], **at).reshape(P, C)
    rho = cc / np.sqrt(np.maximum(e1 * e2, 1e-30))
    ok = o >= 0.15 * nb
    n_ok = ok.sum(axis=0)
    sc = np.where(n_ok >= np.maximum(3, 0.2 * P),
                  np.where(ok, rho, 0.0).sum(axis=0) / np.maximum(n_ok, 1), -1.0)
    i = int(np.argmax(sc))
    best = float(sc[i])
    opposite = float(sc[np.sign(cands) != np.sign(cands[i])].max())
    edge = min(i, len(cands) - 1 - i, abs(i - len(mags) + 0.5) - 0.5) < 3
    if not best >= min_correlation or not best >= SIGN_CONTRAST * max(opposite, 0.0) or edge:
        return (None, best) if return_score else None
    c = float(cands[i])
    if 0 < i < len(cands) - 1 and np.sign(cands[i - 1]) == np.sign(cands[i + 1]):
        # parabola through the three samples, in log|c| (the grid is geometric)
        x = np.log(np.abs(cands[i - 1:i + 2]))
        y = sc[i - 1:i + 2]
        den = y[0] - 2 * y[1] + y[2]
        if den < 0:  # a maximum
            t = 0.5 * (y[0] - y[2]) / den
            if abs(t) < 1:
                c = math.copysign(math.exp(x[1] + t * (x[1] - x[0])), c)
    z = 1.0 / (lam * c)
    return (z, best) if return_score else z


def data_probe(measurement, n, upsample=1):
    """Probe (n, n) complex128 from the data alone, or a ValidationError naming the attrs to give.

    Pupil amplitude: ``sqrt`` of the mean pattern where it exceeds ``PUPIL_LEVEL`` (3 %) of its
    maximum (upsampled by
    pixel repetition when ``upsample > 1``), propagated to the defocus measured by
    :func:`estimate_defocus` with the angular-spectrum kernel (positive = downstream). When no
    parallax is measurable: in focus if the bright field is so small (radius ``r_bf`` <= 4
    detector pixels, ``upsample * r_bf / 2 <= MAX_WINDOW_DEPTHS``) that any probe fitting the
    window lies within 2 depths of focus of its focus; otherwise a ValidationError.
    """
    from ..physics.propagation import angular_spectrum_kernel

    a = measurement.attrs
    rad = a.get("radiation")
    mean, mask = _mean_pattern(_first_block(measurement))
    bf = _bright_field(mean, mask)
    z = estimate_defocus(measurement)
    if z is None:
        # a probe of numerical aperture NA = lambda q_bf that fits the n dx window is at most
        # z_win = n dx / (2 NA) from its focus; in depths of focus (lambda / NA^2) that is
        # upsample * r_bf / 2 (r_bf: bright-field radius in detector pixels). Up to 2 depths
        # of focus the in-focus pupil is a fair start; beyond, the defocus matters: refuse.
        r_bf = math.sqrt(max(int(bf.sum()), 1) / math.pi)
        if upsample * r_bf / 2 > MAX_WINDOW_DEPTHS:
            _refuse(rad, "the attrs name no optics and the defocus cannot be measured from "
                         "the data (no bright-field parallax between neighbouring patterns: a "
                         "focused or very strongly defocused probe, or too little overlap)")
        z = 0.0
    amp = np.sqrt(np.maximum(mean, 0.0)) * _bright_field(mean, mask, PUPIL_LEVEL)
    if mask is not None:  # masked pixels inside the bright field: their neighbours' mean
        from scipy.ndimage import uniform_filter

        hole = bf & ~mask
        if hole.any():
            amp[hole] = uniform_filter(amp, 3)[hole]
    if upsample > 1:
        amp = np.repeat(np.repeat(amp, upsample, 0), upsample, 1) / upsample
    lam = float(a.get("wavelength") or 0.0)
    if not lam > 0:
        from ..physics.units import wavelength

        lam = wavelength(float(a["energy_eV"]), rad)
    spec = np.fft.ifftshift(amp)  # unshifted FFT order, zero frequency at [0, 0]
    spec = spec * angular_spectrum_kernel((n, n), float(a["pixel_size"]), lam, z, band_limit=False)
    return np.fft.fftshift(np.fft.ifft2(spec))
