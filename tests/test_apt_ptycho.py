"""The ptychographic Approximant of APT against ground truth (tiny ICs, a few angles)."""
from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import xarray as xr

from ptynb import metrics
from ptynb.data import ValidationError
from ptynb.workflows import apt_ptycho as ap
from ptynb.workflows import apt_steps as steps

SHAPE = (16, 32, 32)
VOXEL = 14e-9
SEED = steps.seeds_for("test", 1, 0)[0]  # a held-out IC


@pytest.fixture(scope="module")
def ic():
    return steps.simulate_ic(SEED, SHAPE, VOXEL)["q"]


@pytest.fixture(scope="module")
def meas7(ic):
    """7 angles over +-17 deg (the shipped weights need >= 7), M = 2 modes, L = 5 slices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ap.simulate_measurement(ic, np.linspace(-17, 17, 7), modes=2, seed=SEED)


def test_single_angle_summed_slice_phase_is_the_projection(ic):
    m = ap.simulate_measurement(ic, [0.0], modes=2, seed=SEED)
    ph = ap.ptycho_phases(m)  # 2 ePIE iterations, 5 slices, 2 modes
    assert ph["phase"].dims == ("angle", "slice", "y", "x") and ph.sizes["slice"] == 5
    p = ap.ptycho_projections(ph)
    ideal = steps.phase_projections(ic, [0.0])
    assert p.shape == ideal.shape and np.allclose(p["x"], ideal["x"])
    # measured 0.70 (LSQ-ML: 0.13, ePIE with step 1 instead of 1/L: 0.33); 20 iterations: 0.90
    assert metrics.pcc(ideal.values[0], p.values[0]) > 0.6
    # the sum over the 5 slices: 2 iterations recover about half the phase (slope measured
    # 0.56; one slice alone 0.11)
    slope = np.polyfit(ideal.values[0].ravel(), p.values[0].ravel(), 1)[0]
    assert 0.3 < slope < 1.2
    a = ap.slab_approximant(ph)
    assert a.dims == ("z", "y", "x") and a.shape == SHAPE and a.attrs["units"] == "rad/m"
    assert np.allclose(a["z"], ic["z"]) and np.allclose(a["x"], ic["x"])
    # one view at 0 deg: q = -phase / slice thickness, so its z-mean follows minus the projection
    assert metrics.pcc(ideal.values[0], -a.values.mean(axis=0)) > 0.6


def test_rotate_back_puts_an_off_centre_feature_in_place():
    """A small metal cube off the rotation axis, seen at +-30 deg: the two rotated-back slab
    streaks cross at the cube's (z, y, x); the single view's streak passes through it."""
    q = np.zeros(SHAPE, np.float32)
    z0, y0, x0 = 8 + 4, 16 - 5, 16 + 6  # voxel indices (centre 8, 16, 16)
    q[z0 - 1:z0 + 2, y0 - 1:y0 + 2, x0 - 1:x0 + 2] = 2e6
    vol = xr.DataArray(q, dims=("z", "y", "x"),
                       coords={d: (np.arange(n) - n // 2) * VOXEL for d, n in zip("zyx", SHAPE)})
    m = ap.simulate_measurement(vol, [-30.0, 30.0], modes=1, noise=None, seed=1)
    # the true slice phases (what a converged ptychography gives), L = 5 as in the simulation
    obj = m["true_object"]
    T = float(m.attrs["sample_thickness"])
    ph = xr.Dataset({"phase": xr.DataArray(np.angle(obj.values), dims=("angle", "slice", "y", "x"),
                                           coords={"angle": m["angle"].values, "y": obj["y"].values,
                                                   "x": obj["x"].values})},
                    attrs={"sample_shape": np.asarray(SHAPE), "sample_voxel_size": np.full(3, VOXEL),
                           "sample_thickness": T, "slice_thickness": T / 5})
    both = ap.slab_approximant(ph).values
    assert np.unravel_index(np.argmax(both), SHAPE) == pytest.approx((z0, y0, x0), abs=1)
    one = ap.slab_approximant(ph, angles=[30.0]).values
    assert np.unravel_index(np.argmax(one[z0]), SHAPE[1:]) == pytest.approx((y0, x0), abs=1)


def test_average_over_angles_beats_one_angle(ic):
    ang = np.linspace(-40, 40, 5)
    m = ap.simulate_measurement(ic, ang, modes=2, seed=SEED)
    a, ph = ap.ptycho_approximant(m, return_phases=True)
    assert a.attrs["seconds_per_angle"] > 0 and a.attrs["n_angles"] == 5
    pcc_all = metrics.pcc(ic.values, a.values)
    pcc_one = metrics.pcc(ic.values, ap.slab_approximant(ph, angles=[0.0]).values)
    assert pcc_all > pcc_one + 0.05, (pcc_all, pcc_one)
    # and close to the ideal (projection-path) backprojection Approximant of the same angles
    bp = steps.approximant(steps.phase_projections(ic, ang), "backprojection")
    assert pcc_all > 0.7 * metrics.pcc(ic.values, bp.values)
    # cancelled: a partial result, marked, averaged over the angles started (blocks not run are
    # NaN in the phases and left out)
    ev = threading.Event()
    ev.set()
    c, cph = ap.ptycho_approximant(m, cancel=ev, return_phases=True)
    assert c.attrs["status"] == "cancelled" and c.attrs["n_angles"] < 5
    assert np.isnan(cph["phase"].values).any() and np.isfinite(c.values).all()


def test_run_with_measurement_end_to_end(meas7, ic):
    pytest.importorskip("torch")
    from ptynb.workflows import apt

    s = apt.Settings(nz=SHAPE[0], n_lateral=SHAPE[1], sirt_iterations=5, sart_iterations=2)
    # the fbp-trained weights (apt_small.pt): 'matched' feeds them the FBP of the ptycho projections
    tree = apt.run(s, measurement=meas7, weights=steps.SHIPPED_WEIGHTS, progress=False)
    assert tree.attrs["status"] == "complete"
    grid = None
    for k in ("approximant", "apt", "fbp", "sirt", "sart"):
        da = tree[k].to_dataset()[k]
        assert da.dims == ("z", "y", "x") and da.shape == SHAPE and np.isfinite(da.values).all()
        coords = [da[d].values for d in ("z", "y", "x")]
        grid = grid or coords
        assert all(np.allclose(c, g) for c, g in zip(coords, grid))
    assert np.allclose(grid[2], ic["x"].values)
    assert tree["approximant"].to_dataset()["approximant"].attrs["method"] == "ptychography"
    assert tree["projections"].to_dataset()["projections"].dims == ("angle", "y", "x")
    # metrics from the simulated measurement's truth (exactly the IC); the network gets its own input kind
    assert np.allclose(ap.truth_from_measurement(meas7).values, ic.values, rtol=1e-4)
    assert "metrics" in tree.children and tree.attrs["pcc_approximant"] > 0.2
    assert tree.attrs["network_input"] == "fbp of the ptychographic phase projections"
    assert tree.attrs["seconds_approximant_per_angle"] > 0
    assert apt.Settings.from_attrs(tree.attrs).ptycho_iterations == 2
    # the network on the ptychographic Approximant itself: the weights were not trained on it
    with pytest.warns(UserWarning, match="trained on the 'fbp' Approximant"):
        t2 = apt.run(s.copy(ptycho_network="approximant", baselines=False, weights=str(steps.SHIPPED_WEIGHTS)),
                     measurement=meas7, progress=False)
    assert t2["apt"].to_dataset()["apt"].attrs["network_input"] == "ptychography"


def test_default_weights_for_diffraction_data_are_the_ptycho_ones(meas7):
    """Without weights=, diffraction data get apt_ptycho_small.pt (trained on the ptychographic
    Approximant), fed that Approximant directly and without a warning; projections keep apt_small.pt."""
    pytest.importorskip("torch")
    from ptynb.workflows import apt

    assert steps.PTYCHO_WEIGHTS.is_file() and steps.PTYCHO_WEIGHTS.with_suffix(".json").is_file()
    assert apt.default_weights(True) == steps.PTYCHO_WEIGHTS and apt.default_weights(False) is None
    model, arch, meta = steps.load_model(steps.PTYCHO_WEIGHTS)
    assert arch["approximant"] == ap.PTYCHO_KIND and meta["approximant"] == ap.PTYCHO_KIND
    import json

    side = json.loads(steps.PTYCHO_WEIGHTS.with_suffix(".json").read_text())
    assert side["architecture"] == arch and side["meta"]["command"].startswith("ptynb train apt")
    assert "--set approximant=ptychography" in side["meta"]["command"]
    s = apt.Settings(nz=SHAPE[0], n_lateral=SHAPE[1], baselines=False)  # ptycho_network="matched"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # weights trained on this Approximant: no warning
        tree = apt.run(s, measurement=meas7, progress=False)
    n = tree["apt"].to_dataset()["apt"]
    assert n.attrs["network_trained_on"] == "ptychography" and n.attrs["network_input"] == "ptychography"
    assert tree.attrs["network_trained_on"] == "ptychography"
    # the network on the (tiny) ptychographic Approximant itself: a finite volume on its grid
    a = tree["approximant"].to_dataset()["approximant"]
    assert a.attrs["method"] == ap.PTYCHO_KIND
    out = apt._network(model, arch, meta, a, overlap=0.5, batch=4, cancel=None)
    assert out.dims == ("z", "y", "x") and out.shape == SHAPE and np.isfinite(out.values).all()
    assert all(np.allclose(out[d], a[d]) for d in ("z", "y", "x")) and out.attrs["units"] == "rad/m"
    assert np.allclose(n.values, out.values, atol=1e-4 * float(np.abs(out.values).max()))
    # these weights on phase projections: refused with a pointer to diffraction data
    p = steps.phase_projections(steps.simulate_ic(SEED, SHAPE, VOXEL)["q"], np.linspace(-17, 17, 7))
    with pytest.raises(ValidationError, match="trained on 'ptychography'.*diffraction data"):
        apt.run(s, projections=p, weights=steps.PTYCHO_WEIGHTS, progress=False)


def test_tiny_training_on_ptychographic_approximants(tmp_path, monkeypatch):
    """approximant="ptychography": simulated diffraction data per training volume and draw; the
    loss falls and the weights (and their json) say which Approximant they were trained on."""
    pytest.importorskip("torch")
    import json

    from ptynb.cli import main
    from ptynb.workflows import apt

    ts = apt.TrainSettings(n_train=2, n_val=1, draws=1, nz=16, n_lateral=16, patch_lateral=16, width=0.0625,
                           blocks=(1, 1, 1), iterations=20, learning_rate=3e-3, n_min=3, n_max=3,
                           theta_min=15.0, theta_max=20.0, approximant="ptychography")
    out = tmp_path / "tiny_ptycho.pt"
    calls = []
    pair = steps._ptycho_pair

    def counted(q, angles, **kw):  # every pair's input is a ptychographic Approximant of simulated data
        a = pair(q, angles, **kw)
        calls.append((len(angles), a.shape))
        return a

    monkeypatch.setattr(steps, "_ptycho_pair", counted)
    r = apt.train_model(ts, out=out, progress=False)
    assert calls == [(3, (16, 16, 16))] * 3  # 2 training volumes + 1 validation volume, 3 angles each
    h = r["result"].history["loss"]
    assert np.mean(h[-5:]) < np.mean(h[:5]) - 0.05, h
    _, arch, meta = steps.load_model(out)
    assert arch["approximant"] == "ptychography" and meta["approximant"] == "ptychography"
    assert meta["data"]["ptycho_iterations"] == 2 and meta["data"]["pairs_train"] == 2
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["architecture"]["approximant"] == "ptychography" and side["meta"]["recipe"]["iterations"] == 20
    # the CLI accepts the setting (a bad value is refused before any simulation)
    assert main(["train", "apt", "--set", "approximant=nope", "--out", str(tmp_path / "x.pt")]) == 2


def test_bad_measurements(meas7):
    pytest.importorskip("torch")
    from ptynb.workflows import apt

    s = apt.Settings(nz=SHAPE[0], n_lateral=SHAPE[1], baselines=False)
    with pytest.raises(ValidationError, match="angle: the measurement has dims"):
        apt.run(s, measurement=meas7.isel(angle=0, drop=True), progress=False)
    bad = meas7.copy()
    bad["intensity"] = bad["intensity"].where(bad["qx"] < bad["qx"][-3])
    with pytest.raises(ValidationError, match="intensity: contains .* NaN"):
        apt.run(s, measurement=bad, progress=False)
    with pytest.raises(ValidationError, match="has 3 angles; the network was trained on at least 7"):
        apt.run(s, measurement=meas7.isel(angle=slice(0, 3)), progress=False)
    rad = meas7.assign_coords(angle=np.deg2rad(meas7["angle"].values))
    with pytest.raises(ValidationError, match="looks like radians"):
        apt.run(s, measurement=rad, progress=False)
    nogrid = meas7.copy()
    nogrid.attrs = {k: v for k, v in meas7.attrs.items() if not k.startswith("sample_")}
    with pytest.raises(ValidationError, match="sample_shape"):
        apt.run(s, measurement=nogrid, progress=False)
    p = steps.phase_projections(steps.simulate_ic(SEED, SHAPE, VOXEL)["q"], np.linspace(-17, 17, 7))
    with pytest.raises(ValidationError, match="not both"):
        apt.run(s, measurement=meas7, projections=p, progress=False)


def test_simulated_ptycho_source_run():
    pytest.importorskip("torch")
    from ptynb.workflows import apt

    s = apt.Settings(nz=SHAPE[0], n_lateral=SHAPE[1], n_angles=7, source="ptychography", baselines=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = apt.run(s, progress=False)
    assert {"truth", "projections", "approximant", "apt", "metrics"} <= set(tree.children)
    assert tree.attrs["approximant_source"] == "ptychography" and tree.attrs["pcc_approximant"] > 0.2
    assert apt.Settings.from_attrs(tree.attrs).source == "ptychography"
