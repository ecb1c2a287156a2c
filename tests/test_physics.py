"""Physics against analytic results: wavelengths, propagation, multislice, probes, modes, scans."""
import math

import numpy as np
import pytest
import xarray as xr

import ptynb.backend
from ptynb import physics
from ptynb.data import ValidationError
from ptynb.physics import (
    angular_spectrum_kernel,
    electron_probe,
    far_field,
    fermat_spiral,
    fresnel_kernel,
    gaussian_probe,
    mixed_state_probe,
    multislice,
    orthogonalize_modes,
    propagate,
    raster_scan,
    zone_plate_probe,
)

gpu = pytest.mark.skipif(not ptynb.backend.gpu_available(), reason="needs CUDA + cupy")


# ----------------------------------------------------------------------------- wavelengths
def test_wavelengths():
    assert physics.wavelength(200e3, "electron") == pytest.approx(2.508e-12, rel=1e-3)
    assert physics.wavelength(300e3, "electron") == pytest.approx(1.969e-12, rel=1e-3)
    assert physics.wavelength(8e3, "xray") == pytest.approx(0.15498e-9, rel=1e-4)
    for bad in (0.0, -5.0, float("nan")):
        with pytest.raises(ValueError, match="energy_eV"):
            physics.wavelength(bad, "xray")
    with pytest.raises(ValueError, match="radiation"):
        physics.wavelength(8e3, "neutron")


# ----------------------------------------------------------------------------- propagation
LAM = physics.wavelength(8e3, "xray")
DX = 10e-9
N = 256


def _gauss(w0=100e-9, n=N, dx=DX, y0=0.0, x0=0.0):
    y = (np.arange(n) - n // 2)[:, None] * dx
    x = (np.arange(n) - n // 2)[None, :] * dx
    return np.exp(-((y - y0) ** 2 + (x - x0) ** 2) / w0**2).astype(np.complex64)


def _moments(w, dx=DX):
    i = np.abs(w) ** 2
    n = w.shape[-1]
    c = (np.arange(n) - n // 2) * dx
    tot = i.sum()
    cy = (i.sum(1) * c).sum() / tot
    cx = (i.sum(0) * c).sum() / tot
    vx = (i.sum(0) * (c - cx) ** 2).sum() / tot
    return cy, cx, 2 * math.sqrt(vx)  # 1/e^2 radius = 2 sigma of the intensity


@pytest.mark.parametrize("method", ["angular_spectrum", "fresnel"])
def test_propagation_energy_and_inverse(method):
    w = _gauss()
    z = 3e-4
    out = propagate(w, z, DX, LAM, method=method)
    assert out.dtype == np.complex64 and out.shape == w.shape
    e_in = np.sum(np.abs(w.astype(np.complex128)) ** 2)
    e_out = np.sum(np.abs(out.astype(np.complex128)) ** 2)
    assert abs(e_out / e_in - 1) < 1e-5
    back = propagate(out, -z, DX, LAM, method=method)
    assert np.max(np.abs(back - w)) / np.max(np.abs(w)) < 1e-5
    assert not np.allclose(out, w, atol=1e-2)  # it really propagated


@pytest.mark.parametrize("method", ["angular_spectrum", "fresnel"])
def test_gaussian_beam_width(method):
    w0 = 100e-9
    z_r = math.pi * w0**2 / LAM
    for z in (0.5 * z_r, 2.0 * z_r):
        out = propagate(_gauss(w0), z, DX, LAM, method=method)
        _, _, w = _moments(out)
        assert w == pytest.approx(w0 * math.sqrt(1 + (z / z_r) ** 2), rel=0.01)


def test_tilted_propagation_shifts_beam():
    z = 20e-6
    for ty, tx in ((0.0, 0.01), (-0.004, 0.0), (0.003, -0.006)):
        out = propagate(_gauss(), z, DX, LAM, tilt=(ty, tx))
        cy, cx, _ = _moments(out)
        assert cy == pytest.approx(z * math.tan(ty), abs=0.01 * DX)
        assert cx == pytest.approx(z * math.tan(tx), abs=0.01 * DX)


def test_angular_spectrum_and_fresnel_agree_paraxially():
    w = _gauss()
    a = propagate(w, 1e-4, DX, LAM)
    b = propagate(w, 1e-4, DX, LAM, method="fresnel")
    assert np.max(np.abs(a - b)) < 1e-3 * np.max(np.abs(a))


def test_band_limit_and_evanescent_cut():
    n, dx = 64, 10e-9
    z = 2e-3  # long distance: the band limit bites
    h = angular_spectrum_kernel(n, dx, LAM, z)
    f = np.fft.fftfreq(n, dx)
    lim = 1 / (LAM * math.sqrt((2 * z / (n * dx)) ** 2 + 1))
    keep = (np.abs(f)[:, None] <= lim) & (np.abs(f)[None, :] <= lim)
    assert 0 < keep.sum() < n * n
    np.testing.assert_array_equal(np.abs(h) > 0, keep)
    np.testing.assert_allclose(np.abs(h[keep]), 1, atol=1e-6)
    assert h[0, 0] == 1  # carrier phase dropped
    assert not angular_spectrum_kernel(n, dx, LAM, z).flags.writeable  # cached, shared
    hf = fresnel_kernel(n, dx, LAM, z)
    limf = n * dx / (2 * LAM * z)
    keepf = (np.abs(f)[:, None] <= limf) & (np.abs(f)[None, :] <= limf)
    np.testing.assert_array_equal(np.abs(hf) > 0, keepf)
    # without band limit: all propagating waves kept
    assert np.all(np.abs(angular_spectrum_kernel(n, dx, LAM, z, band_limit=False)) > 0.99)
    # evanescent waves (f > 1/lambda) removed: wavelength comparable to the pixel
    lam = 3 * dx
    he = angular_spectrum_kernel(n, dx, lam, 1e-9, band_limit=False)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    assert np.all(he[f2 >= 1 / lam**2] == 0)
    assert np.all(np.abs(he[f2 < 1 / lam**2]) > 0.99)
    # the analytic phase at one frequency
    k = 5
    fy = f[k]
    expect = 2 * math.pi * 1e-9 * (math.sqrt(1 / lam**2 - fy**2) - 1 / lam)
    assert np.angle(he[k, 0]) == pytest.approx(expect, abs=1e-5)


def test_propagate_dataarray_and_errors():
    w = gaussian_probe(64, DX, 80e-9)
    out = propagate(w, 1e-5, wavelength=LAM)
    assert isinstance(out, xr.DataArray) and out.dims == ("py", "px")
    np.testing.assert_allclose(out.values, propagate(w.values, 1e-5, DX, LAM), atol=1e-7)
    assert out.attrs["propagated_distance"] == 1e-5
    with pytest.raises(ValueError, match="method"):
        propagate(w.values, 1e-5, DX, LAM, method="ray")
    with pytest.raises(ValueError, match="pixel_size"):
        propagate(w.values, 1e-5, -DX, LAM)
    with pytest.raises(ValueError, match="tilt"):
        propagate(w.values, 1e-5, DX, LAM, tilt=(0, 2.0))


def test_far_field_centring_and_sampling():
    n = 64
    flat = np.ones((n, n), np.complex64)
    ff = far_field(flat)
    assert np.abs(ff[n // 2, n // 2]) ** 2 == pytest.approx(n * n, rel=1e-6)
    assert np.sum(np.abs(ff) ** 2) == pytest.approx(n * n, rel=1e-5)
    # a plane wave of spatial frequency (3, -5) / (n dx) lands 3 rows down, 5 columns left
    y, x = np.mgrid[:n, :n]
    ramp = np.exp(2j * np.pi * (3 * y - 5 * x) / n).astype(np.complex64)
    i = physics.far_field_intensity(ramp)
    assert np.unravel_index(np.argmax(i), i.shape) == (n // 2 + 3, n // 2 - 5)
    rnd = np.random.default_rng(1).standard_normal((2, n, n)).astype(np.complex64)
    np.testing.assert_allclose(physics.inverse_far_field(far_field(rnd)), rnd, atol=1e-5)
    # sampling helpers: 8 keV, 5 m, 75 um pixels, 256 pixels -> 40.4 nm
    dx = physics.pixel_size_for(75e-6, 256, LAM, 5.0)
    assert dx == pytest.approx(LAM * 5.0 / (256 * 75e-6))
    assert dx == pytest.approx(40.36e-9, rel=1e-3)
    assert physics.detector_pixel_size_for(dx, 256, LAM, 5.0) == pytest.approx(75e-6)
    dq = physics.reciprocal_pixel_size_for(20e-12, 128)
    assert physics.pixel_size_from_reciprocal(dq, 128) == pytest.approx(20e-12)


# ----------------------------------------------------------------------------- multislice
def test_transmissions_sign_conventions():
    delta, beta, t = 4.7e-5, 4.9e-6, 100e-9  # about gold at 8 keV
    tr = physics.xray_transmission(delta, beta, t, LAM)
    k = 2 * math.pi / LAM
    assert np.angle(tr) == pytest.approx(-k * delta * t, rel=1e-5)
    assert np.angle(tr) < 0
    assert np.abs(tr) == pytest.approx(math.exp(-k * beta * t), rel=1e-6)
    sigma = physics.interaction_constant(200e3)
    assert sigma * 1e-10 == pytest.approx(7.29e-4, rel=5e-3)  # rad per V Angstrom (Kirkland)
    te = physics.electron_transmission(np.array([1e-9, 2e-9]), 200e3)
    np.testing.assert_allclose(np.angle(te), sigma * np.array([1e-9, 2e-9]), rtol=1e-5)
    tp = physics.transmission(np.array([0.5]), np.array([0.9]))
    assert tp[0] == pytest.approx(0.9 * np.exp(0.5j), rel=1e-6)
    with pytest.raises(ValueError, match="phase"):
        physics.transmission(np.ones(2, complex))


def test_multislice_matches_manual_and_batches():
    rng = np.random.default_rng(0)
    n, dz = 64, 50e-9
    p = _gauss(60e-9, n)
    t = np.exp(1j * 0.3 * rng.standard_normal((3, 4, n, n))).astype(np.complex64)
    out = multislice(p, t, DX, LAM, dz)
    assert out.shape == (4, n, n)
    for b in range(4):
        w = p * t[0, b]
        for s in (1, 2):
            w = propagate(w, dz, DX, LAM) * t[s, b]
        np.testing.assert_allclose(out[b], w, atol=2e-6)
    # single slice: plain product; per-gap spacings
    np.testing.assert_allclose(multislice(p, t[:1, 0], DX, LAM, dz), p * t[0, 0], atol=1e-7)
    two = multislice(p, t[:, 0], DX, LAM, [dz, 2 * dz])
    w = propagate(propagate(p * t[0, 0], dz, DX, LAM) * t[1, 0], 2 * dz, DX, LAM) * t[2, 0]
    np.testing.assert_allclose(two, w, atol=2e-6)
    with pytest.raises(ValueError, match="slice_thickness"):
        multislice(p, t[:, 0], DX, LAM, [dz, dz, dz])


def test_tilted_multislice_shears():
    n, dz, tx = 128, 1e-6, 0.02
    vac = np.ones((5, n, n), np.complex64)
    out = multislice(_gauss(60e-9, n), vac, DX, LAM, dz, tilt=(0.0, tx))
    cy, cx, _ = _moments(out)
    assert cx == pytest.approx(4 * dz * math.tan(tx), abs=0.01 * DX)
    assert cy == pytest.approx(0.0, abs=0.01 * DX)


# ----------------------------------------------------------------------------- zone plate
def _first_zero_and_fwhm(p, dx):
    n = p.shape[0]
    row = np.real(p[n // 2, n // 2:]) * np.sign(np.real(p[n // 2, n // 2]))
    k = int(np.argmax(row < 0))
    zero = (k - 1 + row[k - 1] / (row[k - 1] - row[k])) * dx
    inten = np.abs(p[n // 2, n // 2:]) ** 2
    inten = inten / inten[0]
    j = int(np.argmax(inten < 0.5))
    half = (j - 1 + (inten[j - 1] - 0.5) / (inten[j - 1] - inten[j])) * dx
    return zero, 2 * half


def test_zone_plate_focus():
    d, dr, e = 74.9e-6, 60e-9, 8000.0
    lam = physics.wavelength(e, "xray")
    f = physics.zone_plate_focal_length(d, dr, lam)
    assert f == pytest.approx(d * dr / lam)
    assert f == pytest.approx(29e-3, rel=0.01)  # the stereo paper's 29 mm
    assert physics.numerical_aperture(dr, lam) == pytest.approx(d / (2 * f))
    dx = dr / 8
    p = zone_plate_probe(512, dx, e, diameter=d, outer_zone_width=dr, total_counts=1e6)
    assert p.dtype == np.complex64 and p.dims == ("py", "px")
    assert float(np.sum(np.abs(p.values.astype(complex)) ** 2)) == pytest.approx(1e6, rel=1e-5)
    assert p.attrs["focal_length"] == pytest.approx(f)
    zero, fwhm = _first_zero_and_fwhm(p.values, dx)
    print(f"zone plate focus: first zero {zero / dr:.4f} dr (Airy 1.22), FWHM {fwhm / dr:.4f} dr "
          "(Airy 1.029)")
    assert zero == pytest.approx(1.22 * dr, rel=0.05)
    assert fwhm == pytest.approx(1.029 * dr, rel=0.05)
    # a central stop narrows the central lobe and moves power into the rings
    pc = zone_plate_probe(512, dx, e, diameter=d, outer_zone_width=dr,
                          central_stop_diameter=25e-6)
    zc, _ = _first_zero_and_fwhm(pc.values, dx)
    assert zc < zero
    spec = np.abs(np.fft.fft2(np.fft.ifftshift(pc.values)))
    q = np.hypot(*np.meshgrid(np.fft.fftfreq(512, dx), np.fft.fftfreq(512, dx), indexing="ij"))
    assert spec[q < 0.9 * 25e-6 / (2 * lam * f)].max() < 1e-6 * spec.max()  # stop blocks inside
    assert spec[(q > 1.1 * 25e-6 / (2 * lam * f)) & (q < 0.9 / (2 * dr))].min() > 0.5 * spec.max()
    assert spec[q > 1.1 / (2 * dr)].max() < 1e-6 * spec.max()  # the zone plate's NA


def test_zone_plate_defocus_and_astigmatism():
    d, dr, e = 74.9e-6, 60e-9, 8000.0
    lam = physics.wavelength(e, "xray")
    dx, n, z = 30e-9, 128, 50e-6
    kw = dict(diameter=d, outer_zone_width=dr, central_stop_diameter=25e-6)
    foc = zone_plate_probe(n, dx, e, **kw)
    de = zone_plate_probe(n, dx, e, defocus=z, **kw)
    # the probe at +z (downstream) propagated back by z is the focus
    back = propagate(de.values, -z, dx, lam, band_limit=False)
    np.testing.assert_allclose(back, foc.values, atol=1e-4 * np.abs(foc.values).max())
    # 0.3 mm out of focus the beam is an annulus of outer radius D z / (2 f) (geometric
    # optics): the radius holding 90 % of the power is 0.954 of it, plus some diffraction
    p3 = zone_plate_probe(n, dx, e, defocus=3e-4, **kw)
    i = np.abs(p3.values) ** 2
    r = np.hypot(*np.meshgrid(p3.py.values, p3.px.values, indexing="ij"))
    o = np.argsort(r.ravel())
    r90 = r.ravel()[o][np.searchsorted(np.cumsum(i.ravel()[o]) / i.sum(), 0.9)]
    assert r90 / (d * 3e-4 / (2 * 29e-3)) == pytest.approx(0.954, rel=0.15)
    # astigmatism (beyond the depth of focus): at +A the x focus (a line along y), at -A the
    # y focus; widths = half-width holding 80 % of the marginal profile's power
    a = 1e-4

    def w80(profile):
        c = np.cumsum(np.sort(profile)[::-1]) / profile.sum()
        return np.searchsorted(c, 0.8)

    px = np.abs(zone_plate_probe(n, dx, e, defocus=a, astigmatism=a, **kw).values) ** 2
    py = np.abs(zone_plate_probe(n, dx, e, defocus=-a, astigmatism=a, **kw).values) ** 2
    assert w80(px.sum(0)) < 0.5 * w80(px.sum(1))
    assert w80(py.sum(1)) < 0.5 * w80(py.sum(0))
    with pytest.raises(ValidationError, match="pixel_size"):
        zone_plate_probe(64, 70e-9, e, **kw)
    with pytest.raises(ValidationError, match="central_stop_diameter"):
        zone_plate_probe(64, dx, e, diameter=d, outer_zone_width=dr, central_stop_diameter=1e-4)
    with pytest.warns(UserWarning, match="wraps around"):
        zone_plate_probe(64, dx, e, defocus=1e-3, **kw)


# ----------------------------------------------------------------------------- electron probe
def test_electron_probe_aperture_and_defocus_sign():
    e, alpha, dx, n = 200e3, 20e-3, 20e-12, 128
    lam = physics.wavelength(e, "electron")
    foc = electron_probe(n, dx, e, alpha, total_counts=5.0)
    assert float(np.sum(np.abs(foc.values.astype(complex)) ** 2)) == pytest.approx(5.0, rel=1e-5)
    spec = np.fft.fft2(np.fft.ifftshift(foc.values))
    dq = 1 / (n * dx)
    radius = math.sqrt(np.count_nonzero(np.abs(spec) > 0.5 * np.abs(spec).max()) / math.pi) * dq
    assert radius == pytest.approx(alpha / lam, abs=dq)
    # defocus = -C10: the Fourier phase is -chi = +pi lambda defocus q^2
    df = 20e-9  # several depths of focus (lambda / alpha^2 = 6 nm)
    p = electron_probe(n, dx, e, alpha, defocus=df)
    spec = np.fft.fft2(np.fft.ifftshift(p.values))
    k = 20  # q = 20 dq along x, inside the 20 mrad aperture (alpha/lambda = 31 dq)
    q = k * dq
    expect = math.pi * lam * df * q**2
    got = np.angle(spec[0, k] / spec[0, 0])
    assert np.angle(np.exp(1j * (got - expect))) == pytest.approx(0, abs=1e-3)
    # positive defocus = underfocus: the crossover lies downstream, at +df
    peak = lambda w: float(np.max(np.abs(w) ** 2))
    foc = electron_probe(n, dx, e, alpha)  # unit power like p
    assert peak(p.values) < 0.3 * peak(foc.values)
    down = propagate(p.values, df, dx, lam, band_limit=False)
    up = propagate(p.values, -df, dx, lam, band_limit=False)
    assert peak(down) == pytest.approx(peak(foc.values), rel=1e-3)
    assert peak(up) < 0.3 * peak(foc.values)
    # Cs = C30: chi = 2 pi / lambda * Cs alpha^4 / 4
    cs = 1e-3
    pc = electron_probe(n, dx, e, alpha, Cs=cs)
    sc = np.fft.fft2(np.fft.ifftshift(pc.values))
    a = lam * q
    chi = 2 * math.pi / lam * cs * a**4 / 4
    assert np.angle(sc[k, 0] / sc[0, 0] * np.exp(1j * chi)) == pytest.approx(0, abs=1e-3)
    # two-fold astigmatism along x vs y, aberrations dict and aliases
    pa = electron_probe(n, dx, e, alpha, aberrations={"C12": 2e-9, "phi12": 0.0})
    sa = np.fft.fft2(np.fft.ifftshift(pa.values))
    chi_x = 2 * math.pi / lam * 0.5 * a**2 * 2e-9
    assert np.angle(sa[0, k] / sa[0, 0] * np.exp(1j * chi_x)) == pytest.approx(0, abs=1e-3)
    assert np.angle(sa[k, 0] / sa[0, 0] * np.exp(-1j * chi_x)) == pytest.approx(0, abs=1e-3)
    assert pa.attrs["C12"] == 2e-9 and p.attrs["defocus"] == df
    with pytest.raises(ValidationError, match="aberrations"):
        electron_probe(n, dx, e, alpha, aberrations={"C99": 1.0})
    with pytest.raises(ValidationError, match="semiangle"):
        electron_probe(n, 100e-12, e, alpha)


# ----------------------------------------------------------------------------- modes
def test_mixed_state_probe_orthogonal_with_fractions():
    p = gaussian_probe(64, DX, 100e-9, total_counts=1e4)
    w = np.array([0.6, 0.25, 0.1, 0.05])
    m = mixed_state_probe(p, 4, weights=w)
    assert m.dims == ("mode", "py", "px") and m.shape == (4, 64, 64)
    a = m.values.reshape(4, -1).astype(np.complex128)
    g = a @ a.conj().T
    powers = np.real(np.diag(g))
    np.testing.assert_allclose(powers / 1e4, w, rtol=1e-5)
    off = np.abs(g - np.diag(np.diag(g))) / np.sqrt(np.outer(powers, powers))
    assert off.max() < 1e-5
    assert powers.sum() == pytest.approx(1e4, rel=1e-5)
    np.testing.assert_allclose(m.attrs["power_fractions"], w)
    d = mixed_state_probe(p, 20, seed=3)  # beyond the polynomial modes: random ones
    a = d.values.reshape(20, -1).astype(np.complex128)
    g = a @ a.conj().T
    pw = np.real(np.diag(g))
    np.testing.assert_allclose(pw / pw.sum(), 0.5 ** np.arange(20) / np.sum(0.5 ** np.arange(20)),
                               rtol=1e-4)
    assert (np.abs(g - np.diag(np.diag(g))) / np.sqrt(np.outer(pw, pw))).max() < 1e-5
    with pytest.raises(ValidationError, match="weights"):
        mixed_state_probe(p, 3, weights=[1, 2])


def test_orthogonalize_modes():
    rng = np.random.default_rng(2)
    a = (rng.standard_normal((3, 32, 32)) + 1j * rng.standard_normal((3, 32, 32))).astype(np.complex64)
    a[1] += 2 * a[0]
    a[2] *= 0.1
    modes, powers = orthogonalize_modes(a)
    assert np.all(np.diff(powers) <= 0)
    flat = modes.reshape(3, -1).astype(np.complex128)
    g = flat @ flat.conj().T
    np.testing.assert_allclose(np.real(np.diag(g)), powers, rtol=1e-5)
    assert (np.abs(g - np.diag(np.diag(g))) / np.sqrt(np.outer(powers, powers))).max() < 1e-5
    dens_in = np.sum(np.abs(a.astype(np.complex128)) ** 2, 0)
    dens_out = np.sum(np.abs(modes.astype(np.complex128)) ** 2, 0)
    np.testing.assert_allclose(dens_out, dens_in, rtol=1e-4)
    da, pw = orthogonalize_modes(xr.DataArray(a, dims=("mode", "py", "px")))
    assert isinstance(da, xr.DataArray)
    np.testing.assert_allclose(pw, powers)


# ----------------------------------------------------------------------------- scans
def test_raster_scan_jitter_and_counts():
    sy, sx = raster_scan(10, 12, 300e-9, origin=(1e-6, 2e-6))
    assert sy.shape == sx.shape == (120,) and sy.dtype == np.float64
    assert sy[0] == 1e-6 and sx[0] == 2e-6 and sx[1] - sx[0] == pytest.approx(300e-9)
    assert sy[12] - sy[0] == pytest.approx(300e-9)
    jy, jx = raster_scan(20, 20, 300e-9, jitter=0.3, seed=4)
    ny, nx = raster_scan(20, 20, 300e-9)
    off = np.concatenate([jy - ny, jx - nx]) / 300e-9
    assert np.abs(off).max() <= 0.3
    assert np.abs(off).max() > 0.29  # the full range is used
    assert abs(off.mean()) < 0.02
    np.testing.assert_array_equal(raster_scan(20, 20, 300e-9, jitter=0.3, seed=4)[0], jy)
    snake = raster_scan(2, 3, 1.0, snake=True)[1]
    np.testing.assert_array_equal(snake, [0, 1, 2, 2, 1, 0])
    with pytest.raises(ValidationError, match="step"):
        raster_scan(3, 3, -1.0)
    with pytest.raises(ValidationError, match="n_y"):
        raster_scan(0, 3, 1.0)


def test_fermat_spiral_spacing():
    from scipy.spatial import cKDTree

    step = 100e-9
    sy, sx = fermat_spiral(500, step, origin=(1e-6, 1e-6))
    assert sy.shape == (500,)
    r = np.hypot(sy - 1e-6, sx - 1e-6)
    np.testing.assert_allclose(r, step * np.sqrt(np.arange(500) / np.pi), rtol=1e-9, atol=1e-18)
    d, _ = cKDTree(np.column_stack([sy, sx])).query(np.column_stack([sy, sx]), k=2)
    nn = np.median(d[:, 1]) / step
    assert 0.9 < nn < 1.2
    assert d[:, 1].min() > 0.5 * step


def test_overlap_fraction():
    assert physics.overlap_fraction(0.3e-6, 1e-6) == pytest.approx(0.7)
    assert physics.overlap_fraction(2e-6, 1e-6) == pytest.approx(-1.0)
    assert physics.step_for_overlap(0.7, 1e-6) == pytest.approx(0.3e-6)


# ----------------------------------------------------------------------------- GPU
@gpu
@pytest.mark.gpu
def test_multislice_gpu_matches_cpu():
    import cupy

    rng = np.random.default_rng(0)
    p = _gauss(60e-9, 64)
    t = np.exp(1j * 0.3 * rng.standard_normal((3, 2, 64, 64))).astype(np.complex64)
    cpu = multislice(p, t, DX, LAM, 50e-9, tilt=(0, 0.01))
    gpu_out = multislice(cupy.asarray(p), cupy.asarray(t), DX, LAM, 50e-9, tilt=(0, 0.01))
    assert isinstance(gpu_out, cupy.ndarray)
    np.testing.assert_allclose(gpu_out.get(), cpu, atol=1e-5)
    ff = far_field(cupy.asarray(p))
    np.testing.assert_allclose(ff.get(), far_field(p), atol=1e-5)
