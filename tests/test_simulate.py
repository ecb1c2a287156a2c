"""The simulator against direct computations, energy conservation, noise statistics, bad input."""
import math

import numpy as np
import pytest
import xarray as xr

import ptynb.backend
from ptynb import physics, simulate
from ptynb.data import ValidationError, validate

gpu = pytest.mark.skipif(not ptynb.backend.gpu_available(), reason="needs CUDA + cupy")

E = 8000.0
LAM = physics.wavelength(E, "xray")
DX = 10e-9
N = 32


def _probe(n=N, counts=None):
    return physics.gaussian_probe(n, DX, 60e-9, total_counts=counts)


def _obj(shape=(96, 96), seed=0, phase_only=False, slices=None):
    o = simulate.smooth_random_object(shape, seed=seed, correlation=2.0,
                                      amplitude_range=(1.0, 1.0) if phase_only else (0.7, 1.0))
    if slices:
        rng = np.random.default_rng(seed + 1)
        extra = [np.exp(0.3j * rng.standard_normal(shape)).astype(np.complex64) for _ in range(slices - 1)]
        o = np.stack([o] + extra)
    return o


def _direct(obj2d, probe, y, x, n=N):
    """|FT(probe * patch)|^2 (centred, orthonormal) at an integer-pixel probe centre (y, x)."""
    i0, j0 = int(round(y / DX)) - n // 2, int(round(x / DX)) - n // 2
    ex = probe * obj2d[i0:i0 + n, j0:j0 + n]
    return np.abs(np.fft.fftshift(np.fft.fft2(ex, norm="ortho"))) ** 2


KW = dict(pixel_size=DX, radiation="xray", energy_eV=E, progress=False)


def test_single_slice_equals_direct_computation():
    obj = _obj()
    p = _probe(counts=1e4).values
    sy = np.array([20, 35, 50, 61]) * DX
    sx = np.array([30, 22, 47, 60]) * DX
    ds = simulate.ptychography(obj, p, sy, sx, noise=None, **KW)
    validate(ds)
    assert ds["intensity"].dims == ("scan", "qy", "qx")
    assert ds["intensity"].shape == (4, N, N) and ds["intensity"].dtype == np.float32
    for k in range(4):
        ref = _direct(obj, p, sy[k], sx[k])
        np.testing.assert_allclose(ds["intensity"].values[k], ref, rtol=1e-4, atol=1e-4 * ref.max())
    np.testing.assert_array_equal(ds["true_object"].values[0], obj)
    assert ds["true_object"].dims == ("slice", "y", "x")
    assert ds["true_probe"].dims == ("mode", "py", "px")
    assert float(ds["x"][1] - ds["x"][0]) == pytest.approx(DX)
    assert ds.attrs["noise"] == "none" and ds.attrs["upsample"] == 1
    assert float(ds.qy[1] - ds.qy[0]) == pytest.approx(1 / (N * DX))


def test_subpixel_position_shifts_probe():
    obj = _obj()
    p = _probe(counts=1e4).values
    base_y, base_x = 40 * DX, 45 * DX
    for dy, dx in ((0.3, 0.0), (0.0, -0.4), (0.25, 0.45)):
        ds = simulate.ptychography(obj, p, [base_y + dy * DX], [base_x + dx * DX], noise=None, **KW)
        ky = np.fft.fftfreq(N)[:, None]
        kx = np.fft.fftfreq(N)[None, :]
        shifted = np.fft.ifft2(np.fft.fft2(p) * np.exp(-2j * np.pi * (ky * dy + kx * dx)))
        ref = _direct(obj, shifted, base_y, base_x)
        np.testing.assert_allclose(ds["intensity"].values[0], ref, atol=2e-4 * ref.max())
        # and it differs from the unshifted pattern
        assert np.abs(ds["intensity"].values[0] - _direct(obj, p, base_y, base_x)).max() > 1e-3 * ref.max()
    # the shifted probe's centroid moved by (dy, dx): check via a flat object's exit wave
    yy = (np.arange(N) - N // 2)[:, None]
    i = np.abs(shifted) ** 2
    assert (i * yy).sum() / i.sum() == pytest.approx(0.25, abs=1e-3)


def test_energy_conservation_multislice_modes():
    obj = _obj(phase_only=True, slices=3)
    obj[1:] = np.exp(1j * np.angle(obj[1:]))  # pure phase slices
    modes = physics.mixed_state_probe(_probe(), 3, weights=[0.7, 0.2, 0.1])
    sy, sx = physics.raster_scan(4, 4, 8 * DX, jitter=0.3, seed=1, origin=(25 * DX, 25 * DX))
    ds = simulate.ptychography(obj, modes, sy, sx, slice_thickness=20e-9, noise=None,
                               counts_per_pattern=5e3, **KW)
    sums = ds["intensity"].sum(("qy", "qx")).values
    np.testing.assert_allclose(sums, 5e3, rtol=1e-4)
    assert ds.attrs["n_slices"] == 3 and ds.attrs["n_modes"] == 3
    np.testing.assert_allclose(ds["z"].values, [0, 20e-9, 40e-9])
    # mixed modes: incoherent sum of the single-mode patterns
    tp = ds["true_probe"].values
    single = [simulate.ptychography(obj, tp[m], sy, sx, slice_thickness=20e-9, noise=None, **KW)
              ["intensity"].values for m in range(3)]
    np.testing.assert_allclose(ds["intensity"].values, sum(single), rtol=1e-4, atol=1e-4)


def test_poisson_counts_statistics_and_seed():
    obj = _obj(phase_only=True)
    sy, sx = physics.raster_scan(8, 8, 5 * DX, origin=(25 * DX, 25 * DX))
    ds = simulate.ptychography(obj, _probe(), sy, sx, counts_per_pattern=1e4, seed=7, **KW)
    sums = ds["intensity"].sum(("qy", "qx")).values
    assert np.all(ds["intensity"].values == np.round(ds["intensity"].values))
    # each pattern sum is Poisson(1e4): the mean of 64 is within 4 sigma = 4 * sqrt(1e4 / 64)
    assert abs(sums.mean() - 1e4) < 4 * math.sqrt(1e4 / 64)
    assert 0.5 < sums.var(ddof=1) / 1e4 < 1.6
    assert ds.attrs["seed"] == 7 and ds.attrs["counts_per_pattern"] == 1e4
    again = simulate.ptychography(obj, _probe(), sy, sx, counts_per_pattern=1e4, seed=7, **KW)
    np.testing.assert_array_equal(again["intensity"].values, ds["intensity"].values)
    other = simulate.ptychography(obj, _probe(), sy, sx, counts_per_pattern=1e4, seed=8, **KW)
    assert not np.array_equal(other["intensity"].values, ds["intensity"].values)
    # dose in counts per m^2: a raster of step s gives dose * s^2 counts per pattern
    dd = simulate.ptychography(obj, _probe(), sy, sx, dose=1e4 / (5 * DX) ** 2, noise=None, **KW)
    assert dd.attrs["counts_per_pattern"] == pytest.approx(1e4)
    np.testing.assert_allclose(dd["intensity"].sum(("qy", "qx")).values, 1e4, rtol=1e-4)


def test_upsample_bins_detector():
    obj = _obj()
    p = _probe(counts=1e4).values
    sy, sx = [40 * DX, 50 * DX], [44 * DX, 41 * DX]
    fine = simulate.ptychography(obj, p, sy, sx, noise=None, **KW)
    ds = simulate.ptychography(obj, p, sy, sx, noise=None, upsample=2, **KW)
    assert ds["intensity"].shape == (2, N // 2, N // 2)
    assert ds.attrs["upsample"] == 2 and ds.attrs["pixel_size"] == DX
    expect = fine["intensity"].values.reshape(2, N // 2, 2, N // 2, 2).sum((2, 4))
    np.testing.assert_allclose(ds["intensity"].values, expect, rtol=1e-5, atol=1e-5)
    assert float(ds.qy[1] - ds.qy[0]) == pytest.approx(2 / (N * DX))
    assert ds["true_probe"].shape == (1, N, N)
    with pytest.raises(ValidationError, match="upsample"):
        simulate.ptychography(obj, p, sy, sx, upsample=3, **KW)


def test_geometry_attrs():
    obj = _obj()
    p = _probe()
    ds = simulate.ptychography(obj, p, [40 * DX], [40 * DX], detector_distance=2.0,
                               counts_per_pattern=1e4, seed=0, **KW)
    assert ds.attrs["detector_pixel_size"] == pytest.approx(LAM * 2.0 / (N * DX))
    el = simulate.ptychography(obj, physics.electron_probe(N, 20e-12, 200e3, 20e-3), [40 * 20e-12],
                               [40 * 20e-12], pixel_size=20e-12, radiation="electron",
                               energy_eV=200e3, progress=False, counts_per_pattern=1e4, seed=0)
    assert el.attrs["reciprocal_pixel_size"] == pytest.approx(1 / (N * 20e-12))
    assert el.attrs["convergence_semiangle"] == 20e-3
    with pytest.raises(ValidationError, match="pixel_size"):
        simulate.ptychography(obj, p, [40 * DX], [40 * DX], detector_distance=2.0,
                              detector_pixel_size=1e-3, counts_per_pattern=1e4, **KW)


def test_bad_inputs():
    obj = _obj((64, 64))
    p = _probe().values
    with pytest.raises(ValidationError, match="probe: window .* larger than the object"):
        simulate.ptychography(obj[:20, :20], p, [10 * DX], [10 * DX], **KW)
    with pytest.raises(ValidationError, match="outside the object"):
        simulate.ptychography(obj, p, [10 * DX], [30 * DX], **KW)
    with pytest.raises(ValidationError, match="outside the object"):
        simulate.ptychography(obj, p, [30 * DX], [60 * DX], **KW)
    with pytest.raises(ValidationError, match="counts_per_pattern: must be a real"):
        simulate.ptychography(obj, p, [30 * DX], [30 * DX], counts_per_pattern=1e4 + 1j, **KW)
    with pytest.raises(ValidationError, match="counts_per_pattern"):
        simulate.ptychography(obj, p, [30 * DX], [30 * DX], counts_per_pattern=-5, **KW)
    three = np.stack([obj] * 3)
    with pytest.raises(ValidationError, match="slice_thickness: is required"):
        simulate.ptychography(three, p, [30 * DX], [30 * DX], **KW)
    with pytest.raises(ValidationError, match="slice_thickness: has 4 values for 3 slices"):
        simulate.ptychography(three, p, [30 * DX], [30 * DX], slice_thickness=[1e-8] * 4, **KW)
    da = xr.DataArray(three, dims=("slice", "y", "x"), coords={"z": ("slice", [0, 1e-8, 2e-8])})
    with pytest.raises(ValidationError, match="slice_thickness: .* disagrees"):
        simulate.ptychography(da, p, [30 * DX], [30 * DX], slice_thickness=5e-8, **KW)
    with pytest.raises(ValidationError, match="obj: must be a complex transmission"):
        simulate.ptychography(np.abs(obj), p, [30 * DX], [30 * DX], **KW)
    with pytest.raises(ValidationError, match="scan_y/scan_x: have different lengths"):
        simulate.ptychography(obj, p, [30 * DX, 31 * DX], [30 * DX], **KW)
    with pytest.raises(ValidationError, match="scan_x: must be real"):
        simulate.ptychography(obj, p, [30 * DX], [30 * DX + 0j], **KW)
    with pytest.raises(ValidationError, match="noise"):
        simulate.ptychography(obj, p, [30 * DX], [30 * DX], noise="gauss", **KW)
    with pytest.raises(ValidationError, match="dose"):
        simulate.ptychography(obj, p, [30 * DX], [30 * DX], dose=1e20, counts_per_pattern=1, **KW)
    with pytest.raises(ValidationError, match="radiation"):
        simulate.ptychography(obj, p, [30 * DX], [30 * DX], pixel_size=DX, radiation="neutron",
                              energy_eV=E)
    with pytest.raises(ValidationError, match="probe: was built for pixel_size"):
        simulate.ptychography(obj, physics.gaussian_probe(N, 2 * DX, 60e-9), [30 * DX], [30 * DX], **KW)


def test_positions_at_the_edge_of_the_field_of_view():
    obj = _obj((64, 64))
    p = _probe().values
    lo = (N // 2 - 0.49) * DX  # rounds to the first window: still inside
    hi = (64 - N + N // 2 + 0.49) * DX
    # 1e4 counts: with the probe's own power (1 count) Poisson noise leaves a pattern empty
    # with probability 1/e, and an all-zero measurement is refused by validation
    ds = simulate.ptychography(obj, p, [lo, hi], [hi, lo], counts_per_pattern=1e4, seed=0, **KW)
    validate(ds)
    y0, y1, x0, x1 = ds.attrs["field_of_view"]
    assert y0 == x0 == pytest.approx((N // 2 - 0.5) * DX)
    assert y1 == x1 == pytest.approx((64 - N + N // 2 + 0.5) * DX)
    with pytest.raises(ValidationError, match="outside the object"):
        simulate.ptychography(obj, p, [lo - 0.02 * DX], [hi], **KW)
    with pytest.raises(ValidationError, match="outside the object"):
        simulate.ptychography(obj, p, [lo], [hi + 0.02 * DX], **KW)


def test_dataarray_object_frame():
    obj = _obj((64, 64))
    y0, x0 = 1e-6, -2e-6
    da = xr.DataArray(obj, dims=("y", "x"), coords={"y": y0 + np.arange(64) * DX,
                                                    "x": x0 + np.arange(64) * DX})
    p = _probe(counts=100).values
    ds = simulate.ptychography(da, p, [y0 + 30 * DX], [x0 + 33 * DX], noise=None, **KW)
    np.testing.assert_allclose(ds["intensity"].values[0], _direct(obj, p, 30 * DX, 33 * DX),
                               atol=1e-4 * ds["intensity"].values.max())
    assert float(ds["y"][0]) == y0 and float(ds["x"][0]) == x0


def test_beams_tilts_and_labels():
    obj = _obj((96, 96), slices=4)
    probes = [_probe(counts=1e3).values, _probe(counts=2e3).values, _probe(counts=3e3).values]
    sy, sx = physics.raster_scan(2, 3, 6 * DX, origin=(40 * DX, 40 * DX))
    kw = dict(KW, slice_thickness=2e-6, noise=None)
    ds = simulate.beams(obj, probes, sy, sx, **kw)
    validate(ds)
    assert ds["intensity"].dims == ("beam", "scan", "qy", "qx")
    assert list(ds.beam.values) == ["left", "center", "right"]
    np.testing.assert_allclose(ds.beam_tilt.values, [-1.5, 0.0, 1.5])
    assert ds["true_probe"].dims == ("beam", "mode", "py", "px")
    centre = simulate.ptychography(obj, probes[1], sy, sx, **kw)
    np.testing.assert_allclose(ds["intensity"].sel(beam="center").values,
                               centre["intensity"].values, rtol=1e-5, atol=1e-6)
    left = simulate.ptychography(obj, probes[0], sy, sx, tilt=(0, math.radians(-1.5)), **kw)
    np.testing.assert_allclose(ds["intensity"].sel(beam="left").values,
                               left["intensity"].values, rtol=1e-5, atol=1e-6)
    # inclined beams through a thick object see different projections
    d = np.abs(ds["intensity"].sel(beam="left").values / 1e3 - ds["intensity"].sel(beam="right").values / 3e3)
    assert d.max() > 1e-3 * (ds["intensity"].sel(beam="right").values / 3e3).max()
    with pytest.raises(ValidationError, match="tilts"):
        simulate.beams(obj, probes, sy, sx, tilts=(0, 1), **kw)


def test_tomography_rotation_convention():
    n = 24
    vol = np.zeros((n, n, n), np.complex64)
    vol[2:6, 6:10, 14:18] = 1e-5 + 1e-7j  # block at x offset +4, z offset -7.5..
    p = physics.gaussian_probe(16, DX, 40e-9)
    sy, sx = physics.raster_scan(2, 2, 4 * DX, origin=(9 * DX, 9 * DX))
    ds = simulate.tomography(vol, [0.0, 90.0], p, sy, sx, radiation="xray", energy_eV=E,
                             voxel_size=DX, voxels_per_slice=6, noise=None, progress=False)
    validate(ds)
    assert ds["intensity"].dims == ("angle", "scan", "qy", "qx")
    np.testing.assert_allclose(ds.angle.values, [0, 90])
    assert ds["true_object"].dims == ("angle", "slice", "y", "x")
    assert ds["true_object"].shape == (2, 4, n, n)
    assert ds["true_volume"].dims == ("z", "y", "x")
    k = 2 * math.pi / LAM
    phase0 = np.angle(ds["true_object"].values[0]).sum(0)
    expect0 = -k * DX * vol.real.sum(0)
    np.testing.assert_allclose(phase0, expect0, atol=1e-4)
    # right-handed rotation by +90 deg about y: (x, z) -> (z, -x) about the centre;
    # the block (x offset +4.0, z offset -7.5) moves to x offset -7.5
    phase90 = np.angle(ds["true_object"].values[1]).sum(0)
    cols = np.nonzero(np.abs(phase90).sum(0) > 1e-6)[0]
    c = (n - 1) / 2
    assert cols.min() >= c - 7.5 - 2.5 and cols.max() <= c - 7.5 + 2.5
    rows = np.nonzero(np.abs(phase90).sum(1) > 1e-6)[0]
    assert rows.min() >= 5 and rows.max() <= 10
    assert np.abs(phase90).sum() == pytest.approx(np.abs(expect0).sum(), rel=0.05)
    with pytest.raises(ValidationError, match="tilt: is required for laminography"):
        simulate.tomography(vol, [0.0], p, sy, sx, radiation="xray", energy_eV=E, voxel_size=DX,
                            geometry="laminography")
    lam = simulate.tomography(vol, [0.0, 45.0], p, sy, sx, radiation="xray", energy_eV=E,
                              voxel_size=DX, voxels_per_slice=6, geometry="laminography",
                              tilt=60.0, noise=None, progress=False)
    assert lam.attrs["geometry"] == "laminography" and lam.attrs["lamino_tilt"] == 60.0


def test_ptychography_series_stacks_angles():
    objs = [_obj(seed=k) for k in range(3)]
    sy, sx = physics.raster_scan(2, 2, 6 * DX, origin=(40 * DX, 40 * DX))
    ds = simulate.ptychography_series(objs, [-30.0, 0.0, 30.0], _probe(counts=1e3), sy, sx,
                                      noise=None, **KW)
    validate(ds)
    assert ds["intensity"].dims == ("angle", "scan", "qy", "qx")
    assert ds["true_object"].dims == ("angle", "slice", "y", "x")
    one = simulate.ptychography(objs[2], _probe(counts=1e3), sy, sx, noise=None, **KW)
    np.testing.assert_allclose(ds["intensity"].sel(angle=30.0).values, one["intensity"].values,
                               rtol=1e-6)
    with pytest.raises(ValidationError, match="angles"):
        simulate.ptychography_series(objs, [0.0], _probe(), sy, sx, **KW)


def test_demo_validates_and_is_deterministic():
    for kind in ("xray", "electron"):
        ds = simulate.demo(kind)
        validate(ds)
        assert ds.sizes["scan"] == 100 and ds.sizes["qy"] == ds.sizes["qx"] == 64
        assert ds.attrs["radiation"] == kind
        assert float(ds["intensity"].sum()) > 0
    a = simulate.demo("xray", seed=3)
    b = simulate.demo("xray", seed=3)
    np.testing.assert_array_equal(a["intensity"].values, b["intensity"].values)
    np.testing.assert_array_equal(a["true_object"].values, b["true_object"].values)


def test_progress_and_callback_batches():
    obj = _obj()
    sy, sx = physics.raster_scan(5, 5, 4 * DX, origin=(30 * DX, 30 * DX))
    seen = []
    a = simulate.ptychography(obj, _probe(), sy, sx, noise=None, batch_size=7,
                              callback=lambda i, info: seen.append(info["done"]), **KW)
    assert seen == [7, 14, 21, 25]
    b = simulate.ptychography(obj, _probe(), sy, sx, noise=None, batch_size=256, **KW)
    np.testing.assert_allclose(a["intensity"].values, b["intensity"].values, rtol=1e-6, atol=1e-9)


@gpu
@pytest.mark.gpu
def test_simulate_gpu_matches_cpu():
    obj = _obj(slices=2)
    sy, sx = physics.raster_scan(3, 3, 5 * DX, jitter=0.2, seed=0, origin=(30 * DX, 30 * DX))
    kw = dict(KW, slice_thickness=20e-9, noise=None, counts_per_pattern=1e3)
    c = simulate.ptychography(obj, _probe(), sy, sx, **kw)
    g = simulate.ptychography(obj, _probe(), sy, sx, device="gpu", **kw)
    np.testing.assert_allclose(g["intensity"].values, c["intensity"].values, rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------------------- nominal optics
def test_nominal_optics_recorded_apart_from_the_truth():
    """The measurement attrs hold what a user knows: zone-plate/aperture dimensions and Cs
    exactly, the defocus off by ``nominal_defocus_error`` (default 0.15, sign from the seed);
    the true parameters stay as probe_* attrs (ground truth). No bare defocus/Cs attr."""
    obj = _obj()
    zp = physics.zone_plate_probe(N, DX, 8000.0, diameter=74.9e-6, outer_zone_width=60e-9,
                                  central_stop_diameter=25e-6, defocus=0.3e-3, check_window=False)
    sy = sx = [40 * DX]
    signs = set()
    for seed in range(6):
        ds = simulate.ptychography(obj, zp, sy, sx, seed=seed, counts_per_pattern=1e4, **KW)
        a = ds.attrs
        assert a["zone_plate_diameter"] == 74.9e-6 and a["zone_plate_outer_zone_width"] == 60e-9
        assert a["central_stop_diameter"] == 25e-6 and a["probe_defocus"] == 0.3e-3
        rel = a["nominal_defocus"] / a["probe_defocus"] - 1
        assert abs(rel) == pytest.approx(0.15) and a["nominal_defocus_error"] == 0.15
        signs.add(np.sign(rel))
        assert "defocus" not in a
    assert signs == {-1.0, 1.0}  # the sign is drawn from the seed
    again = simulate.ptychography(obj, zp, sy, sx, seed=3, counts_per_pattern=1e4, **KW)
    assert again.attrs["nominal_defocus"] == simulate.ptychography(
        obj, zp, sy, sx, seed=3, counts_per_pattern=1e4, **KW).attrs["nominal_defocus"]
    exact = simulate.ptychography(obj, zp, sy, sx, seed=0, nominal_defocus_error=0.0, counts_per_pattern=1e4, **KW)
    assert exact.attrs["nominal_defocus"] == 0.3e-3
    given = simulate.ptychography(obj, zp, sy, sx, seed=0, nominal_defocus=0.2e-3, counts_per_pattern=1e4, **KW)
    assert given.attrs["nominal_defocus"] == 0.2e-3
    # in focus: the error is a fraction of the depth of focus 2 dr^2 / lambda (46.5 um)
    f0 = physics.zone_plate_probe(N, DX, 8000.0, diameter=74.9e-6, outer_zone_width=60e-9,
                                  check_window=False)
    d0 = simulate.ptychography(obj, f0, sy, sx, seed=0, counts_per_pattern=1e4, **KW)
    assert abs(d0.attrs["nominal_defocus"]) == pytest.approx(0.15 * 2 * 60e-9**2 / LAM)
    with pytest.raises(ValidationError, match="nominal_defocus_error"):
        simulate.ptychography(obj, zp, sy, sx, nominal_defocus_error=-0.1, counts_per_pattern=1e4, **KW)
    el = simulate.ptychography(obj, physics.electron_probe(N, 20e-12, 200e3, 20e-3, defocus=10e-9,
                                                           Cs=1e-3),
                               [40 * 20e-12], [40 * 20e-12], pixel_size=20e-12,
                               radiation="electron", energy_eV=200e3, progress=False, seed=0,
                               counts_per_pattern=1e4)
    a = el.attrs
    assert a["convergence_semiangle"] == 20e-3 and a["nominal_Cs"] == 1e-3
    assert abs(a["nominal_defocus"] / 10e-9 - 1) == pytest.approx(0.15)
    assert "defocus" not in a and "Cs" not in a and a["probe_defocus"] == 10e-9
    # a plain-array probe: no optics known
    plain = simulate.ptychography(obj, zp.values, sy, sx, seed=0, counts_per_pattern=1e4, **KW)
    assert "nominal_defocus" not in plain.attrs and "nominal_defocus_error" not in plain.attrs
