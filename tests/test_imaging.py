"""Tests for ptynb.imaging: sub-pixel shifts, registration, phase-ramp removal, unwrapping
(moved from test_align.py with the functions), and the old import paths."""
import numpy as np
import pytest
import xarray as xr
from scipy import ndimage as ndi

from ptynb import imaging as I
from ptynb.data import ValidationError


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def smooth_image(rng, shape=(64, 64), sigma=3.0):
    return ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")


def test_tomo_exports_the_same_functions():
    """ptynb.tomo re-exports the 2D tools of ptynb.imaging (no second implementation)."""
    from ptynb import tomo

    assert tomo.shift_image is I.shift_image
    assert tomo.phase_cross_correlation is I.phase_cross_correlation
    for name in ("remove_phase_ramp", "unwrap_phase", "wrap_phase"):
        assert getattr(I, name) is getattr(tomo, name)


# ----------------------------------------------------------------------------- registration
def test_shift_image_roundtrip_and_integer(rng):
    img = smooth_image(rng)
    s = np.array([3.0, -5.0])
    np.testing.assert_allclose(I.shift_image(img, s), np.roll(img, (3, -5), axis=(0, 1)), atol=1e-12)
    z = np.exp(1j * img)
    back = I.shift_image(I.shift_image(z, (1.37, -2.61)), (-1.37, 2.61))
    np.testing.assert_allclose(back, z, atol=1e-10)
    # a real image loses only its (tiny) Nyquist component in a non-integer round trip
    back = I.shift_image(I.shift_image(img, (1.37, -2.61)), (-1.37, 2.61))
    np.testing.assert_allclose(back, img, atol=1e-5)
    assert I.shift_image(img.astype(np.float32), (0.5, 0.5)).dtype == np.float32
    z = np.exp(1j * img).astype(np.complex64)
    assert I.shift_image(z, (0.5, 0.5)).dtype == np.complex64
    with pytest.raises(ValidationError, match="length-2"):
        I.shift_image(img, (1.0, 2.0, 3.0))


def test_phase_cross_correlation_known_shifts(rng):
    from skimage.registration import phase_cross_correlation as sk_pcc

    img = smooth_image(rng)
    true = rng.uniform(-8, 8, (12, 2))
    moving = I.shift_image(np.broadcast_to(img, (12,) + img.shape), -true)  # needs +true back
    for norm in ("phase", None):
        est = I.phase_cross_correlation(img, moving, upsample=50, normalization=norm)
        assert est.shape == (12, 2)
        assert np.abs(est - true).max() < 0.05
    est = I.phase_cross_correlation(img, moving, upsample=20)
    for k in range(4):
        ref, _, _ = sk_pcc(img, moving[k], upsample_factor=20)
        np.testing.assert_allclose(est[k], ref, atol=1e-9)
    # noise: still well below 0.05 px with plain correlation
    noisy = moving + 0.05 * img.std() * rng.standard_normal(moving.shape)
    est = I.phase_cross_correlation(img, noisy, upsample=50, normalization=None)
    assert np.abs(est - true).max() < 0.05
    s, peak = I.phase_cross_correlation(img, moving[:2], normalization=None, return_error=True)
    np.testing.assert_allclose(peak, 1.0, atol=2e-3)


def test_phase_cross_correlation_mask_and_bad_input(rng):
    """A fixed (unshifted) pattern near the edges dominates the unmasked correlation (zero
    shift); a taper mask around the object removes it."""
    from scipy.signal.windows import tukey

    n = 64
    obj = np.zeros((n, n))
    obj[20:44, 20:44] = ndi.gaussian_filter(rng.standard_normal((24, 24)), 2)
    obj = ndi.gaussian_filter(obj, 1)
    fixed = np.zeros((n, n))
    fixed[:, :6] = 3 * rng.standard_normal((n, 6))
    fixed[:6, :] = 3 * rng.standard_normal((6, n))
    fixed = ndi.gaussian_filter(fixed, 1)
    img = obj + fixed
    mov = I.shift_image(obj, (-2.3, 1.1)) + fixed
    np.testing.assert_allclose(I.phase_cross_correlation(img, mov), 0.0)
    w = np.zeros((n, n))
    w[8:56, 8:56] = np.outer(tukey(48, 0.3), tukey(48, 0.3))
    est = I.phase_cross_correlation(img, mov, mask=w)
    assert np.abs(est - (2.3, -1.1)).max() < 0.06
    with pytest.raises(ValidationError, match="image shape"):
        I.phase_cross_correlation(img, img[:10])
    bad = img.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValidationError, match="NaN"):
        I.phase_cross_correlation(img, bad)
    with pytest.raises(ValidationError, match="no pixels"):
        I.phase_cross_correlation(img, mov, mask=np.zeros(img.shape))


# ----------------------------------------------------------------------------- ramps / unwrap
def _ramp_bump(ny=64, nx=80):
    y = (np.arange(ny) - ny // 2)[:, None]
    x = (np.arange(nx) - nx // 2)[None, :]
    r = np.hypot(y - 3, x + 5)
    bump = 4.0 * np.clip(1 - (r / 20) ** 2, 0, None) ** 2  # compact support, r < 20
    plane = 0.7 + 0.35 * y - 0.22 * x
    return plane, bump, r > 22


def test_remove_phase_ramp_real_and_complex():
    plane, bump, mask = _ramp_bump()
    out, p = I.remove_phase_ramp(plane + bump, mask, return_params=True)
    np.testing.assert_allclose(p, [0.7, 0.35, -0.22], atol=1e-10)
    np.testing.assert_allclose(out, bump, atol=1e-10)
    # complex: the ramp wraps many times; the result keeps the amplitude
    z = (0.8 * np.exp(1j * (plane + bump))).astype(np.complex64)
    oz, pz = I.remove_phase_ramp(z, mask, return_params=True)
    assert oz.dtype == np.complex64
    np.testing.assert_allclose(np.abs(oz), 0.8, rtol=1e-5)
    np.testing.assert_allclose(I.wrap_phase(np.angle(oz) - bump), 0, atol=2e-5)
    np.testing.assert_allclose(I.wrap_phase(pz[0] - 0.7), 0, atol=1e-5)
    np.testing.assert_allclose(pz[1:], [0.35, -0.22], atol=1e-6)
    # stacks and DataArrays
    da = xr.DataArray(np.stack([plane + bump, 2 * (plane + bump)]), dims=("angle", "y", "x"))
    res = I.remove_phase_ramp(da, mask)
    assert isinstance(res, xr.DataArray)
    np.testing.assert_allclose(res.values[1], 2 * bump, atol=1e-9)


def test_remove_phase_ramp_bad_input():
    plane, bump, mask = _ramp_bump()
    with pytest.raises(ValidationError, match="fewer than 3"):
        I.remove_phase_ramp(plane, np.zeros_like(mask))
    with pytest.raises(ValidationError, match="boolean"):
        I.remove_phase_ramp(plane, mask.astype(float))
    bad = plane.copy()
    bad[1, 1] = np.inf
    with pytest.raises(ValidationError, match="NaN or inf"):
        I.remove_phase_ramp(bad)


def test_unwrap_phase_ramp_plus_bump():
    plane, bump, mask = _ramp_bump()
    truth = plane + 3.0 * bump  # peaks at ~12 rad, steepest step < pi per pixel
    wrapped = I.wrap_phase(truth)
    assert np.ptp(wrapped) < 2 * np.pi
    un = I.unwrap_phase(wrapped)
    d = un - truth
    assert np.ptp(d) < 1e-9
    k = d.mean() / (2 * np.pi)
    assert abs(k - round(k)) < 1e-9
    # masked: invalid pixels stay unchanged, valid ones unwrap
    valid = np.ones(truth.shape, bool)
    valid[:, :3] = False
    um = I.unwrap_phase(wrapped, mask=valid)
    assert np.ptp((um - truth)[valid]) < 1e-9
    np.testing.assert_array_equal(um[~valid], wrapped[~valid])
    with pytest.raises(ValidationError, match="complex"):
        I.unwrap_phase(np.exp(1j * wrapped))


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("ptynb").backend.gpu_available(), reason="needs CUDA + cupy")
def test_registration_on_gpu(rng):
    import cupy as cp

    img = smooth_image(rng)
    true = rng.uniform(-5, 5, (4, 2))
    mov = I.shift_image(cp.asarray(np.broadcast_to(img, (4,) + img.shape)), cp.asarray(-true))
    assert isinstance(mov, cp.ndarray)
    est = I.phase_cross_correlation(cp.asarray(img), mov, upsample=50)
    assert np.abs(est - true).max() < 0.05
