"""ptynb.learn.dip / filters / tv: the deep-image-prior U-Net, the wavelet high-pass and the
depth-dependent TV of ADePt, against numbers known exactly."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pywt")

from ptynb.data import ValidationError
from ptynb.learn.dip import DIPOptions, build_dip, scaled_channels
from ptynb.learn.filters import effective_levels, wavelet_highpass
from ptynb.learn.tv import depth_tv, depth_weights


# ------------------------------------------------------------------ high-pass filter
def test_hpf_keeps_the_energy_exactly_and_boosts_fine_detail():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((3, 64, 64)).cumsum(axis=1).cumsum(axis=2)  # red spectrum
    out = wavelet_highpass(img, boost=3.0)
    assert out.shape == img.shape
    assert math.isclose(float(np.sum(out ** 2)), float(np.sum(img ** 2)), rel_tol=1e-12)
    per_img = wavelet_highpass(img, boost=3.0, renormalise="image")
    np.testing.assert_allclose(np.sum(per_img ** 2, axis=(1, 2)), np.sum(img ** 2, axis=(1, 2)), rtol=1e-12)

    def hf(a):  # energy fraction above half the Nyquist frequency
        F = np.abs(np.fft.fftshift(np.fft.fft2(a), axes=(-2, -1))) ** 2
        q = np.hypot(*np.meshgrid(np.arange(64) - 32, np.arange(64) - 32, indexing="ij"))
        return float(F[..., q > 16].sum() / F.sum())

    assert hf(out) > 3.0 * hf(img)


def test_hpf_boost_one_is_the_identity_and_zero_a_lowpass():
    rng = np.random.default_rng(1)
    img = rng.standard_normal((40, 48)).astype(np.float32)
    same = wavelet_highpass(img, boost=1.0, renormalise="none")
    assert same.dtype == np.float32
    np.testing.assert_allclose(same, img, atol=1e-5)
    low = wavelet_highpass(img, boost=0.0, renormalise="none")
    assert np.sum(low ** 2) < 0.35 * np.sum(img ** 2)  # one level on 40 x 48: ~1/4 of white noise
    assert effective_levels((256, 256)) == 4 and effective_levels((32, 32)) == 1


def test_hpf_bad_inputs():
    with pytest.raises(ValidationError, match="NaN"):
        wavelet_highpass(np.full((16, 16), np.nan))
    with pytest.raises(ValidationError, match="boost"):
        wavelet_highpass(np.zeros((16, 16)), boost=-1)
    with pytest.raises(ValidationError, match="real"):
        wavelet_highpass(np.zeros((16, 16), complex))


# ------------------------------------------------------------------ depth-dependent TV
def test_tv_value_of_a_step_and_weights():
    u = torch.zeros(4, 5, 6, dtype=torch.float64)
    u[:, :, 3:] = 2.0  # a step of 2 along x: one jump per (z, y) row
    w = torch.tensor([1.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    tv = depth_tv(u, w, eps=0.0, reduction="sum")
    assert float(tv) == pytest.approx(2.0 * 5 * (1.0 + 0.5))
    assert float(depth_tv(u, eps=0.0)) == pytest.approx(2.0 * 5 * 4 / u.numel())
    np.testing.assert_array_equal(depth_weights([-2e-9, 0.0, 1e-9], 0.0, 3e-6, 3e-8),
                                  np.array([3e-6, 3e-8, 3e-8], np.float32))


def test_tv_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(4, 5, 6, dtype=torch.float64, generator=g).requires_grad_(True)
    w = torch.tensor([1.0, 0.3, 0.01, 2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: depth_tv(v, w, eps=1e-3), (u,), eps=1e-6, atol=1e-6)
    val = depth_tv(u, w, eps=1e-3, reduction="sum")
    (grad,) = torch.autograd.grad(val, u)
    idx = (2, 1, 3)
    h = 1e-6
    up, dn = u.detach().clone(), u.detach().clone()
    up[idx] += h
    dn[idx] -= h
    fd = (depth_tv(up, w, eps=1e-3, reduction="sum") - depth_tv(dn, w, eps=1e-3, reduction="sum")) / (2 * h)
    assert float(grad[idx]) == pytest.approx(float(fd), rel=1e-6)


# ------------------------------------------------------------------ DIP U-Net
def test_dip_shape_range_and_determinism():
    opts = DIPOptions(width=0.25, output_scale=0.03)
    m = build_dip((10, 13, 17), opts, seed=3)  # sizes not multiples of the strides
    with torch.no_grad():
        out = m()
    assert tuple(out.shape) == (10, 13, 17) and out.dtype == torch.float32
    assert float(out.abs().max()) < 0.03
    m2 = build_dip((10, 13, 17), opts, seed=3)
    with torch.no_grad():
        assert torch.equal(out, m2())
    # a large pre-activation saturates at +-output_scale, never beyond
    with torch.no_grad():
        m.head.bias.fill_(50.0)
        assert float(m().max()) == pytest.approx(0.03, rel=1e-6)
    arch = m.architecture()
    assert arch["channels"] == [32, 64, 96, 96, 96] and arch["strides"] == [2, 2, 1, 1, 1]


def test_dip_channels_strides_skips_and_init_gain():
    m = build_dip((8, 16, 16), DIPOptions(width=1.0), seed=0)
    convs = [mod for mod in m.down if True]
    assert [c[0].out_channels for c in convs] == [32, 64, 96, 96, 96]
    assert [c[0].stride[0] for c in convs] == [2, 2, 1, 1, 1]
    assert all(s[0].out_channels == 8 for s in m.skip)
    assert scaled_channels([32, 64, 96], 0.25) == [8, 16, 24]
    # Xavier uniform with gain 0.2: bound = 0.2 sqrt(6 / (fan_in + fan_out)), std = bound / sqrt(3)
    w = m.down[2][0].weight
    fan_in, fan_out = w.shape[1] * 27, w.shape[0] * 27
    bound = 0.2 * math.sqrt(6.0 / (fan_in + fan_out))
    assert float(w.abs().max()) <= bound
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert all(float(mod.bias.abs().max()) == 0.0 for mod in m.modules() if isinstance(mod, torch.nn.Conv3d))


def test_dip_noise_input_fixed_or_learnable():
    fixed = build_dip((8, 8, 8), DIPOptions(width=0.125), seed=0)
    assert "noise" in dict(fixed.named_buffers()) and "noise" not in dict(fixed.named_parameters())
    assert float(fixed.noise.min()) >= 0 and float(fixed.noise.max()) < 0.1
    learn = build_dip((8, 8, 8), DIPOptions(width=0.125, learnable_input=True), seed=0)
    assert dict(learn.named_parameters())["noise"].requires_grad
    learn().sum().backward()
    assert learn.noise.grad is not None and float(learn.noise.grad.abs().sum()) > 0


def test_dip_bad_options():
    with pytest.raises(ValidationError, match="strides"):
        build_dip((8, 8, 8), DIPOptions(channels=[8, 8], strides=[2]))
    with pytest.raises(ValidationError, match="shape"):
        build_dip((8, 8), DIPOptions())
