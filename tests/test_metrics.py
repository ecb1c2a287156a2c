"""Tests for ptynb.metrics against analytic results and reference implementations."""
import numpy as np
import pytest
import xarray as xr

from ptynb import metrics as M
from ptynb.data import ValidationError


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ----------------------------------------------------------------------------- PCC
def test_pcc_matches_numpy(rng):
    a = rng.random((30, 40))
    b = 0.5 * a + 0.3 * rng.standard_normal(a.shape)
    assert M.pcc(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], abs=1e-12)
    m = rng.random(a.shape) > 0.3
    assert M.pcc(a, b, mask=m) == pytest.approx(np.corrcoef(a[m], b[m])[0, 1], abs=1e-12)
    assert M.pcc(a, -2 * a + 1) == pytest.approx(-1.0, abs=1e-12)


def test_pcc_complex_needs_part(rng):
    ph = rng.random((16, 16))
    a = np.exp(1j * ph)
    b = np.exp(1j * (0.5 * ph))
    with pytest.raises(ValidationError, match="complex"):
        M.pcc(a, b)
    assert M.pcc(a, b, part="phase") == pytest.approx(1.0, abs=1e-12)


def test_pcc_bad_input(rng):
    a = rng.random((8, 8))
    with pytest.raises(ValidationError, match="shape"):
        M.pcc(a, a[:7])
    bad = a.copy()
    bad[2, 2] = np.nan
    with pytest.raises(ValidationError, match="NaN"):
        M.pcc(a, bad)
    with pytest.raises(ValidationError, match="no voxels"):
        M.pcc(a, a, mask=np.zeros(a.shape, bool))
    with pytest.raises(ValidationError, match="constant"):
        M.pcc(a, np.ones_like(a))


# ----------------------------------------------------------------------------- SSIM
@pytest.mark.parametrize("gaussian", [False, True])
@pytest.mark.parametrize("shape", [(48, 52), (18, 20, 22)])
def test_ssim_matches_skimage(rng, gaussian, shape):
    from skimage.metrics import structural_similarity

    a = rng.random(shape)
    b = a + 0.2 * rng.standard_normal(shape)
    ours = M.ssim(a, b, gaussian_weights=gaussian, data_range=1.0)
    ref = structural_similarity(a, b, gaussian_weights=gaussian, data_range=1.0)
    assert abs(ours - ref) < 1e-6
    # window size 5, data range default = range of the reference
    ours = M.ssim(a, b, win_size=5)
    ref = structural_similarity(a, b, win_size=5, data_range=a.max() - a.min())
    assert abs(ours - ref) < 1e-6


def test_ssim_identical_and_bad(rng):
    a = rng.random((20, 20))
    assert M.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValidationError, match="win_size"):
        M.ssim(a[:5], a[:5])
    with pytest.raises(ValidationError, match="odd"):
        M.ssim(a, a, win_size=4)


def test_ms_ssim_against_scalewise_skimage(rng):
    """With K1 huge the luminance term is 1, so every scale's SSIM is its cs term:
    MS-SSIM = prod_j SSIM_j ** w_j on 2x block-averaged images (independent construction)."""
    from skimage.metrics import structural_similarity
    from skimage.transform import downscale_local_mean

    a = rng.random((176, 180))
    b = a + 0.3 * rng.standard_normal(a.shape)
    K1 = 1e6
    expect = 1.0
    x, y = a, b
    for j, w in enumerate(M.MS_SSIM_WEIGHTS):
        s = structural_similarity(x, y, gaussian_weights=True, data_range=1.0, K1=K1)
        expect *= max(s, 0) ** w
        x = downscale_local_mean(x[: x.shape[0] // 2 * 2, : x.shape[1] // 2 * 2], (2, 2))
        y = downscale_local_mean(y[: y.shape[0] // 2 * 2, : y.shape[1] // 2 * 2], (2, 2))
    ours = M.ms_ssim(a, b, data_range=1.0, K1=K1)
    assert ours == pytest.approx(expect, rel=1e-6)
    assert M.ms_ssim(a, a, data_range=1.0) == pytest.approx(1.0, abs=1e-12)
    # monotone in the noise level
    c = a + 0.6 * rng.standard_normal(a.shape)
    assert M.ms_ssim(a, c, data_range=1.0) < M.ms_ssim(a, b, data_range=1.0) < 1


def test_ms_ssim_3d_and_size_check(rng):
    v = rng.random((24, 24, 24))
    w = v + 0.2 * rng.standard_normal(v.shape)
    val = M.ms_ssim(v, w, weights=(0.5, 0.5), win_size=7, gaussian_weights=False, data_range=1.0)
    assert 0 < val < 1
    with pytest.raises(ValidationError, match="needs every side"):
        M.ms_ssim(v, w)


# ----------------------------------------------------------------------------- DSC / BER / EM
def test_dsc_ber_known_confusion_matrix():
    n = 1000
    ref = np.zeros(n, bool)
    ref[:300] = True  # 300 positives
    test = ref.copy()
    test[:40] = False  # FN = 40
    test[500:525] = True  # FP = 25
    c = M.confusion(ref.reshape(10, 10, 10), test.reshape(10, 10, 10))
    assert c == {"TP": 260, "TN": 675, "FP": 25, "FN": 40}
    assert M.dsc(ref, test) == pytest.approx(2 * 260 / (2 * 260 + 40 + 25), abs=1e-15)
    assert M.ber(ref, test) == pytest.approx(65 / 1000, abs=1e-15)
    with pytest.raises(ValidationError, match="not binary"):
        M.dsc(ref, test * 0.5)


def test_em_recovers_mixture(rng):
    x = np.concatenate([rng.normal(1.0, 0.3, 140_000), rng.normal(3.0, 0.5, 60_000)])
    rng.shuffle(x)
    t, p = M.em_threshold(x)
    assert p["converged"]
    np.testing.assert_allclose(p["means"], (1.0, 3.0), atol=0.01)
    np.testing.assert_allclose(p["stds"], (0.3, 0.5), atol=0.01)
    np.testing.assert_allclose(p["priors"], (0.7, 0.3), atol=0.005)
    # the threshold is where the weighted densities are equal
    def wpdf(v, m, s, w):
        return w * np.exp(-0.5 * ((v - m) / s) ** 2) / s
    d0 = wpdf(t, p["means"][0], p["stds"][0], p["priors"][0])
    d1 = wpdf(t, p["means"][1], p["stds"][1], p["priors"][1])
    assert d0 == pytest.approx(d1, rel=1e-9)
    assert 1.0 < t < 3.0
    # fixed priors stay fixed
    _, p2 = M.em_threshold(x, priors=(0.5, 0.5))
    assert p2["priors"] == (0.5, 0.5)


def test_ber_continuous_flipped_voxels_on_other_scale(rng):
    shape = (20, 20, 20)
    labels = rng.random(shape) < 0.35
    ref = labels * 1.0 + 0.05 * rng.standard_normal(shape)
    flip = np.zeros(labels.size, bool)
    flip[rng.choice(labels.size, 240, replace=False)] = True
    flip = flip.reshape(shape)
    test_labels = labels ^ flip
    # test lives on another scale/offset (e.g. FBP units): test-side EM handles it
    test = 7.0 + 3.0 * test_labels + 0.2 * rng.standard_normal(shape)
    val, det = M.ber(ref, test, return_details=True)
    assert val == pytest.approx(240 / labels.size, abs=1e-15)
    assert det["reference_params"]["priors"][1] == pytest.approx(labels.mean(), abs=1e-3)
    assert det["test_params"]["priors"] == det["reference_params"]["priors"]
    # with the reference's Gaussians the 7+ offset test is all "1": BER = fraction of zeros
    assert M.ber(ref, test, test_fit="reference") == pytest.approx(1 - labels.mean(), abs=1e-15)


def test_ber_bad_input(rng):
    a = rng.random((5, 5))
    with pytest.raises(ValidationError, match="shape"):
        M.ber(a, a[:4])
    with pytest.raises(ValidationError, match="test_fit"):
        M.ber(a, a, test_fit="bogus")
    with pytest.raises(ValidationError, match="constant"):
        M.em_threshold(np.ones(10))


# ----------------------------------------------------------------------------- FRC / FSC
def test_half_bit_threshold_values():
    assert M.half_bit_threshold(1) == pytest.approx(1.0, abs=1e-4)
    assert M.half_bit_threshold(1e12) == pytest.approx(0.2071 / 1.2071, abs=1e-5)
    assert M.one_bit_threshold(1) == pytest.approx(1.0, abs=1e-4)


def test_fsc_noisy_halves_cross_at_expected_frequency(rng):
    """Signal spectrum G(q) = exp(-q^2 / (2 s^2)) times unit white noise, two halves with
    independent white noise of variance sigma^2 per Fourier voxel: expected
    FSC(q) = G^2 / (G^2 + sigma^2), crossing 0.143 at q* = s sqrt(-ln(sigma^2 0.143/0.857))."""
    n, d, sigma = 48, 2e-10, 0.1
    s = 0.0989 / d
    g = [np.fft.fftfreq(n, d)]
    q2 = g[0][:, None, None] ** 2 + g[0][None, :, None] ** 2 + g[0][None, None, :] ** 2
    G = np.exp(-q2 / (2 * s ** 2))
    sig = np.fft.ifftn(G * np.fft.fftn(rng.standard_normal((n, n, n)), norm="ortho"), norm="ortho").real
    v1 = sig + sigma * rng.standard_normal(sig.shape)
    v2 = sig + sigma * rng.standard_normal(sig.shape)
    da1 = xr.DataArray(v1, dims=("z", "y", "x"), coords={k: np.arange(n) * d for k in "zyx"})
    curve = M.fsc(da1, v2)  # pixel size from da1's coords
    q = curve["q"].values
    dq = q[1]
    assert dq == pytest.approx(1 / (n * d))
    expect = np.exp(-q ** 2 / s ** 2) / (np.exp(-q ** 2 / s ** 2) + sigma ** 2)
    sel = slice(2, len(q))
    err = np.abs(curve.values[sel] - expect[sel])
    assert np.all(err < 5 / np.sqrt(curve["n_voxels"].values[sel]))
    qstar = s * np.sqrt(-np.log(sigma ** 2 * 0.143 / 0.857))
    assert abs(curve.attrs["q_0.143"] - qstar) < 0.5 * dq
    assert curve.attrs["resolution_0.143"] == pytest.approx(1 / curve.attrs["q_0.143"])
    # half-bit: crossing of the expected curve with T(n_k) on the same shells
    t = curve["threshold_half_bit"].values
    qh, _ = M.resolution(expect, t, q)
    assert abs(curve.attrs["q_half_bit"] - qh) < 0.5 * dq


def test_frc_band_limited_cutoff(rng):
    n = 128
    f = np.fft.fftfreq(n)
    qq = np.hypot(f[:, None], f[None, :])
    qc = 0.2  # cycles / pixel
    sig = np.fft.ifft2((qq < qc) * np.fft.fft2(rng.standard_normal((n, n)))).real
    noise = 0.02 * sig.std()
    a = sig + noise * rng.standard_normal(sig.shape)
    b = sig + noise * rng.standard_normal(sig.shape)
    c = M.frc(a, b)
    assert c.attrs["resolution_units"] == "pixel"
    assert qc - 1 / n <= c.attrs["q_half_bit"] <= qc + 1.5 / n
    assert qc - 1 / n <= c.attrs["q_0.143"] <= qc + 1.5 / n
    assert np.all(c.sel(q=slice(0.01, 0.18)).values > 0.99)
    # identical images never cross
    c2 = M.frc(a, a, pixel_size=1e-9)
    assert np.isnan(c2.attrs["resolution_half_bit"])
    with pytest.raises(ValidationError, match="2-D"):
        M.frc(a[None], b[None])


# ----------------------------------------------------------------------------- spectra
def test_psd_parseval_and_peak(rng):
    n, d = 32, 1e-9
    z = np.arange(n)
    x = 2.0 * np.cos(2 * np.pi * 5 * z / n)[None, None, :] + 0.1 * rng.standard_normal((n, n, n))
    p = M.psd(x, pixel_size=d)
    assert p.dims == ("qz", "qy", "qx")
    dq = 1 / (n * d)
    assert float(p.sum()) * dq ** 3 == pytest.approx(np.mean(x ** 2), rel=1e-10)
    cuts = M.psd_cuts(x, pixel_size=d)
    line = cuts["psd_qx"]
    top = np.sort(np.abs(line["qx"].values[np.argsort(line.values)[-2:]]))
    np.testing.assert_allclose(top, [5 * dq, 5 * dq])
    planes = M.psd_cuts(p, planes=True)
    assert set(planes.data_vars) == {"psd_qy_qx", "psd_qz_qx", "psd_qz_qy"}
    assert planes["psd_qz_qy"].shape == (n, n)
    lg = M.psd(x, pixel_size=d, log=True)
    np.testing.assert_allclose(lg.values, np.log10(p.values), rtol=1e-12)
    prof = M.radial_profile(p)
    assert prof["r"].values[1] == pytest.approx(dq)


def test_directional_resolution_lattice_like(rng):
    """Cosines at 0.1, 0.2, 0.3 cycles/px along x, 0.1 and 0.15 along y, 0.1 along z."""
    n = 40
    i = np.arange(n)
    vol = np.zeros((n, n, n))
    for f in (0.1, 0.2, 0.3):
        vol += np.cos(2 * np.pi * f * i)[None, None, :]
    for f in (0.1, 0.15):
        vol += np.cos(2 * np.pi * f * i)[None, :, None]
    vol += np.cos(2 * np.pi * 0.1 * i)[:, None, None]
    vol += 0.5 * rng.standard_normal(vol.shape)
    d = 0.5e-10
    res = M.directional_resolution(vol, pixel_size=d)
    assert res.attrs["resolution_x"] == pytest.approx(d / 0.3, rel=1e-9)
    assert res.attrs["resolution_y"] == pytest.approx(d / 0.15, rel=1e-9)
    assert res.attrs["resolution_z"] == pytest.approx(d / 0.1, rel=1e-9)
    noise_only = M.directional_resolution(rng.standard_normal((n, n, n)))
    assert np.isnan(noise_only.attrs["resolution_x"])


def test_spectrum_bad_input(rng):
    with pytest.raises(ValidationError, match="2-D or 3-D"):
        M.psd(rng.random(10))
    with pytest.raises(ValidationError, match="pixel_size"):
        M.psd(rng.random((8, 8)), pixel_size=-1)
    bad = rng.random((8, 8))
    bad[0, 0] = np.inf
    with pytest.raises(ValidationError, match="NaN or inf"):
        M.psd(bad)
