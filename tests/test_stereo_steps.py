"""Stereo steps: the paper's depth numbers, layer shifts, caustics, anaglyphs, layer recovery."""
import numpy as np
import pytest
from scipy import ndimage

from ptynb.data import ValidationError
from ptynb.imaging import shift_image
from ptynb.physics import wavelength
from ptynb.workflows import stereo_steps as S

LAM8 = wavelength(8000.0, "xray")
DEG = np.pi / 180


def test_paper_depth_numbers():
    # Eq. 1 at 8 keV: ~7 um for delta = 14 nm and ~9 um for 16.2 nm
    assert S.depth_resolution_multislice(14e-9, LAM8) == pytest.approx(6.58e-6, rel=0.01)
    assert S.depth_resolution_multislice(16.2e-9, LAM8) == pytest.approx(8.8e-6, rel=0.01)
    # Eq. 2: ~300 nm for 16.2 nm at 1.5 degrees
    assert S.depth_resolution_stereo(16.2e-9, 1.5 * DEG) == pytest.approx(309.4e-9, rel=0.005)
    # general form reduces to Eq. 2 for small symmetric angles
    g = S.depth_resolution_general(16.2e-9, 1.5 * DEG, 1.5 * DEG)
    assert g == pytest.approx(S.depth_resolution_stereo(16.2e-9, 1.5 * DEG), rel=1e-3)
    # layer shift for 480 nm at +-1.5 deg: 25.1 nm = 3.1 px at 8.1 nm
    m, px = S.layer_shift(480e-9, 1.5 * DEG, pixel_size=8.1e-9)
    assert m == pytest.approx(25.1e-9, abs=0.05e-9)
    assert px == pytest.approx(3.1, abs=0.01)
    with pytest.raises(ValidationError, match="resolution: must be positive"):
        S.depth_resolution_stereo(-1, 0.1)


def test_layer_shifts_geometry():
    sh = S.layer_shifts([0.0, 480e-9], [-1.5 * DEG, 1.5 * DEG], 8.1e-9)
    assert sh.shape == (2, 2, 2)
    np.testing.assert_allclose(sh[:, 0], 0.0)
    assert sh[1, 1, 1] - sh[0, 1, 1] == pytest.approx(3.1, abs=0.01)
    np.testing.assert_allclose(sh[..., 0], 0.0)


def _two_layers(n=128, shift=3.1, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    blobs = np.zeros((n, n))
    for _ in range(25):
        cy, cx = rng.uniform(10, n - 10, 2)
        blobs += ((yy - cy) ** 2 + (xx - cx) ** 2) < 16
    l1 = ndimage.gaussian_filter(-0.6 * np.minimum(blobs, 1), 0.7)
    rr = np.hypot(yy - n / 2, xx - n / 2)
    l2 = ndimage.gaussian_filter(-0.4 * ((np.sin(rr**2 / 60) > 0) & (rr < 50)), 0.7)
    t1 = shift_image(l1, (0, shift / 2)) + l2 + rng.normal(0, noise, (n, n))
    t2 = shift_image(l1, (0, -shift / 2)) + l2 + rng.normal(0, noise, (n, n))
    return np.stack([t1, t2]), l1, l2


def _pcc(a, b, m):
    a, b = a[m] - a[m].mean(), b[m] - b[m].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_recover_layers_subpixel_beats_integer():
    views, l1, l2 = _two_layers()
    m = np.zeros(l1.shape, bool)
    m[8:-8, 8:-8] = True
    shifts = np.array([[1.55, 0.0], [-1.55, 0.0]])  # (V, L) along x
    sub = S.recover_layers(views, shifts, iterations=400)
    ints = S.recover_layers(views, shifts, iterations=400, subpixel=False)
    p_sub = [_pcc(sub["layers"][0], l1, m), _pcc(sub["layers"][1], l2, m)]
    p_int = [_pcc(ints["layers"][0], l1, m), _pcc(ints["layers"][1], l2, m)]
    assert min(p_sub) > 0.95, p_sub
    assert min(p_sub) > min(p_int)
    xt_sub = abs(_pcc(sub["layers"][1], l1, m)) + abs(_pcc(sub["layers"][0], l2, m))
    xt_int = abs(_pcc(ints["layers"][1], l1, m)) + abs(_pcc(ints["layers"][0], l2, m))
    assert xt_sub < xt_int
    assert np.all(sub["layers"] <= 0)  # sign constraint holds
    assert sub["cost"][-1] < sub["cost"][5]


def test_recover_three_layers_from_three_views():
    rng = np.random.default_rng(3)
    n = 96
    layers = [ndimage.gaussian_filter(-np.maximum(rng.random((n, n)) - 0.93, 0) * 8, 1.0) for _ in range(3)]
    sh = S.layer_shifts([0.0, 300e-9, 600e-9], [-1.5 * DEG, 0.0, 1.5 * DEG], 8e-9)
    views = np.stack([sum(shift_image(layers[k], sh[v, k]) for k in range(3)) for v in range(3)])
    res = S.recover_layers(views, sh, iterations=600, smoothness=1e-4)
    m = np.zeros((n, n), bool)
    m[10:-10, 10:-10] = True
    pccs = [_pcc(res["layers"][k], layers[k], m) for k in range(3)]
    assert min(pccs) > 0.8, pccs


@pytest.mark.slow
def test_estimate_layer_shift_subpixel():
    # sparse blobs over rings, noise 0.01 rad: the data alone determine the shift
    views, _, _ = _two_layers(shift=3.1)
    est = S.estimate_layer_shift(views, max_shift=6)
    assert est["shift"] == pytest.approx(-3.1, abs=0.3)
    # with the size known, the sign (which layer moves) is decided clearly by the data
    sign = S.choose_shift_sign(views, 3.1)
    assert sign["shift"] == -3.1
    assert sign["scores"][3.1] > 2 * sign["scores"][-3.1]


def _rings_and_particles(shift, n=160, z_shift=0.0, noise=0.005, seed=1, three=False):
    """A fine non-positive ring pattern (period ~7 px, the aligned layer) and smooth Au-like
    particles (radius 12 px, the moving layer), seen by views at -+1.5 (and 0) degrees: the
    particles move by ``shift`` px relative to the rings between the outer views; the whole last
    view is misaligned by ``z_shift`` px (as a cross-correlation alignment leaves it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n].astype(float)
    rr = np.hypot(yy + 40, xx + 60)
    rings = ndimage.gaussian_filter(-0.6 * (np.sin(2 * np.pi * rr / 7.0) > 0), 0.8)
    parts = np.zeros((n, n))
    for cy, cx in rng.uniform(20, n - 20, (6, 2)):
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        parts -= 0.04 * np.sqrt(np.maximum(144.0 - r2, 0.0))
    tilts = np.array([-1.5, 0.0, 1.5] if three else [-1.5, 1.5]) * DEG
    f = np.tan(tilts) / (2 * np.tan(1.5 * DEG))
    views = []
    for k, fk in enumerate(f):
        v = rings + shift_image(parts, (0, shift * fk))
        if k == len(f) - 1:
            v = shift_image(v, (0, z_shift))
        views.append(np.real(v) + rng.normal(0, noise, (n, n)))
    return np.stack(views), tilts


@pytest.mark.parametrize("shift", [3.1, 1.55, -2.4])
def test_measure_layer_parallax_from_views_alone(shift):
    views, tilts = _rings_and_particles(shift, z_shift=0.25)
    m = S.measure_layer_parallax(views, tilts)
    assert m["shift"] == pytest.approx(shift, abs=0.15)
    assert 0 < m["uncertainty"] < 0.3 and abs(m["shift"] - shift) < 3 * m["uncertainty"] + 0.02
    assert m["reliable"], m["note"]
    # the rings' misalignment is fitted, not mistaken for parallax
    assert m["dominant_shifts"][-1, 1] - m["dominant_shifts"][0, 1] == pytest.approx(0.25, abs=0.1)
    assert 7 <= m["envelope"] <= 13


def test_measure_layer_parallax_three_views_are_consistent():
    views, tilts = _rings_and_particles(3.1, three=True)
    m = S.measure_layer_parallax(views, tilts)
    assert m["shift"] == pytest.approx(3.1, abs=0.15)
    assert m["per_view"][1] == pytest.approx(0.5 * (m["per_view"][0] + m["per_view"][2]), abs=0.1)
    assert m["chi2"] < 4.0


def test_measure_layer_parallax_says_when_it_cannot_tell():
    # both layers in one plane: no parallax to measure, and the result must not claim one
    views, tilts = _rings_and_particles(0.0)
    m = S.measure_layer_parallax(views, tilts)
    assert abs(m["shift"]) < 0.15
    assert not m["reliable"] and "uncertainty" in m["note"]
    with pytest.raises(ValidationError, match="tilts: need at least two different"):
        S.measure_layer_parallax(views, [0.1, 0.1])


def test_bad_layer_inputs():
    with pytest.raises(ValidationError, match="views: need"):
        S.recover_layers(np.zeros((1, 8, 8)), [[0.0]])
    with pytest.raises(ValidationError, match="shifts: need shape"):
        S.recover_layers(np.zeros((2, 8, 8)), np.zeros((3, 2)))
    v = np.zeros((2, 8, 8))
    v[0, 0, 0] = np.nan
    with pytest.raises(ValidationError, match="views: contain NaN"):
        S.recover_layers(v, np.zeros((2, 2)))
    with pytest.raises(ValidationError, match="views: are complex"):
        S.recover_layers(np.zeros((2, 8, 8), complex), np.zeros((2, 2)))


def test_anaglyph_and_shift():
    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.random((64, 64)), 2)
    b = shift_image(a, (0, 2.5))
    rgb = S.anaglyph(a, b)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.float32
    assert 0 <= rgb.min() and rgb.max() <= 1
    np.testing.assert_array_equal(rgb[..., 1], rgb[..., 2])  # cyan = green + blue
    aligned = S.anaglyph(a, b, shift=(0, -2.5))
    # after undoing the shift the red and cyan channels agree (away from the wrapped border)
    assert np.abs(aligned[8:-8, 8:-8, 0] - aligned[8:-8, 8:-8, 1]).mean() < 0.01
    assert np.abs(rgb[8:-8, 8:-8, 0] - rgb[8:-8, 8:-8, 1]).mean() > 0.05
    with pytest.raises(ValidationError, match="complex"):
        S.anaglyph(a + 0j, b)


def test_fwhm_of_gaussian():
    x = np.arange(201) - 100.0
    sigma = 7.3
    assert S.fwhm(np.exp(-x**2 / (2 * sigma**2))) == pytest.approx(2.3548 * sigma, rel=2e-3)


def test_caustic_of_astigmatic_zone_plate():
    from ptynb.physics import zone_plate_probe

    dz, astig = -100e-6, 20e-6  # sample 100 um upstream of the focus
    p = zone_plate_probe(128, 10e-9, 8000.0, diameter=74.9e-6, outer_zone_width=60e-9,
                         central_stop_diameter=25e-6, defocus=dz, astigmatism=astig)
    assert p.attrs["focal_length"] == pytest.approx(29.0e-3, rel=0.005)
    c = S.beam_caustic(p, np.linspace(40e-6, 160e-6, 61))
    # nominal focus 100 um downstream; line foci +-astig around it
    assert 0.5 * (c.attrs["focus_x"] + c.attrs["focus_y"]) == pytest.approx(100e-6, abs=5e-6)
    assert abs(c.attrs["astigmatic_offset"]) == pytest.approx(2 * astig, abs=6e-6)
    assert c.attrs["numerical_aperture"] == pytest.approx(LAM8 / (2 * 60e-9), rel=0.1)
    assert c.attrs["depth_of_focus"] == pytest.approx(46e-6, rel=0.25)
    stig = zone_plate_probe(128, 10e-9, 8000.0, diameter=74.9e-6, outer_zone_width=60e-9,
                            central_stop_diameter=25e-6, defocus=dz)
    c0 = S.beam_caustic(stig, np.linspace(70e-6, 130e-6, 31))
    spot = 0.5 * (c0.attrs["focal_spot_x"] + c0.attrs["focal_spot_y"])
    assert 0.8 * 1.03 * 60e-9 < spot < 1.05 * 1.03 * 60e-9
    assert c0.horizontal.dims == ("z", "px")
