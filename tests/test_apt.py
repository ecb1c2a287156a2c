"""APT workflow: shipped weights on held-out ICs, stitching sizes, bad inputs, a short training."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")

from ptynb.data import ValidationError
from ptynb.learn.training import save_weights
from ptynb.learn.unet3d import UNet3D, architecture
from ptynb.workflows import apt
from ptynb.workflows import apt_steps as steps

CI = dict(n_lateral=32, sirt_iterations=30, sart_iterations=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A short training run (seconds): loss must fall; its weights file."""
    out = tmp_path_factory.mktemp("apt") / "tiny.pt"
    ts = apt.TrainSettings(n_train=2, n_val=1, draws=1, nz=16, n_lateral=32, patch_lateral=32, width=0.0625,
                           blocks=(1, 1, 1), iterations=25, learning_rate=3e-3, n_min=9)
    r = apt.train_model(ts, out=out, progress=False)
    return r, out


def test_short_training_loss_falls_and_weights_file(tiny):
    r, out = tiny
    h = r["result"].history["loss"]
    assert np.mean(h[-5:]) < np.mean(h[:5]) - 0.05
    assert out.is_file() and r["meta"]["min_angles"] == 9
    _, arch, meta = steps.load_model(out)
    assert arch["patch"] == [16, 32, 32] and meta["recipe"]["iterations"] == 25


def test_ci_run_with_shipped_weights_tree_and_metrics():
    tree = apt.run(apt.Settings(**CI), progress=False)
    assert tree.attrs["status"] == "complete"
    for k in ("approximant", "apt", "fbp", "sirt", "sart"):
        da = tree[k].to_dataset()[k]
        assert da.dims == ("z", "y", "x") and da.shape == (32, 32, 32) and da["x"].attrs["units"] == "m"
        assert np.isfinite(da.values).all()
    m = tree["metrics"].to_dataset()
    assert set(m["method"].values) == {"approximant", "apt", "fbp", "sirt", "sart"}
    assert tree.attrs["pcc_apt"] > tree.attrs["pcc_fbp"]
    assert apt.Settings.from_attrs(tree.attrs).n_lateral == 32


def test_projections_input_other_size_by_stitching_no_truth():
    s = apt.Settings(n_lateral=48, nz=40)
    sim = apt.simulate(s)
    P = sim["projections"].to_dataset()["projections"]
    tree = apt.run(apt.Settings(baselines=False), projections=P, progress=False)
    assert "metrics" not in tree.children and "truth" not in tree.children
    v = tree["apt"].to_dataset()["apt"]
    assert v.shape == (40, 48, 48)  # grid from the projections' attrs; patches stitched
    tree2 = apt.run(apt.Settings(baselines=False), projections=P, truth=sim["truth"].to_dataset(), progress=False)
    assert "metrics" in tree2.children


def test_bad_inputs(tiny, tmp_path):
    _, out = tiny
    s = apt.Settings(**CI)
    P = apt.simulate(s)["projections"].to_dataset()["projections"]
    with pytest.raises(ValidationError, match="NaN"):
        apt.run(s, projections=P.where(P.x < 0), progress=False)
    with pytest.raises(ValidationError, match="angles; the network was trained on at least 9"):
        apt.run(s, projections=P.isel(angle=slice(0, 5)), weights=out, progress=False)
    with pytest.raises(ValidationError, match="dims"):
        apt.run(s, projections=P.transpose("x", "y", "angle"), progress=False)
    # another architecture or patch size
    with pytest.raises(ValidationError, match="patch"):
        steps.load_model(out, architecture=dict(steps.load_model(out)[1], patch=[32, 64, 64]))
    other = tmp_path / "other.pt"
    save_weights(other, UNet3D(width=0.0625, blocks=(1, 1, 1)), architecture(0.125, (1, 1, 1), 4, patch=[16, 32, 32]))
    with pytest.raises(ValidationError, match="do not fit"):
        steps.load_model(other)
    foreign = tmp_path / "foreign.pt"
    save_weights(foreign, torch.nn.Linear(2, 2), {"model": "DIP"})
    with pytest.raises(ValidationError, match="not APT weights"):
        apt.run(s, weights=foreign, progress=False)
    with pytest.raises(ValidationError, match="trained on 'fbp'"):
        apt.run(apt.Settings(approximant="backprojection", **CI), progress=False)
    with pytest.raises(ValidationError, match="measurement"):
        apt.run(s, measurement=xr.Dataset(), progress=False)


def test_cancel_gives_partial_tree():
    ev = threading.Event()
    ev.set()
    tree = apt.run(apt.Settings(**CI), cancel=ev, progress=False)
    assert tree.attrs["status"] == "cancelled"


def test_seed_ranges_disjoint_and_knee():
    tr, va, te = (set(steps.seeds_for(k, 1000)) for k in ("train", "val", "test"))
    assert not (tr & va or tr & te or va & te)
    assert apt.knee([5, 10, 20, 40], [0.0, 0.5, 0.95, 1.0]) == pytest.approx(10 + 10 * (0.9 - 0.5) / 0.45)


def test_cli_train_help_and_bad_setting(capsys):
    from ptynb.cli import main

    assert main(["train", "apt", "--set", "nope=1"]) == 2
    assert "unknown training setting" in capsys.readouterr().err
