"""Tests of ptynb.parallel.map_blocks: serial and on a 2-worker LocalCluster."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from ptynb import parallel
from ptynb.data import ValidationError


def _dataset(n_angle=4, beams=None):
    rng = np.random.default_rng(0)
    lead = ([("beam", len(beams))] if beams else []) + [("angle", n_angle)]
    shape = tuple(n for _, n in lead) + (5, 6, 6)
    dims = tuple(d for d, _ in lead) + ("scan", "qy", "qx")
    coords = {"angle": ("angle", np.linspace(-30.0, 30.0, n_angle), {"units": "degree"}),
              "qy": np.arange(6.0), "qx": np.arange(6.0), "scan": np.arange(5),
              "scan_y": ("scan", np.arange(5) * 1e-9)}
    if beams:
        coords["beam"] = ("beam", list(beams))
        coords["beam_tilt"] = ("beam", [-5.0, 0.0, 5.0][: len(beams)], {"units": "degree"})
    ds = xr.Dataset({"intensity": (dims, rng.uniform(0, 10, shape).astype(np.float32)),
                     "mask": (("qy", "qx"), np.ones((6, 6), bool))},
                    coords=coords, attrs={"kind": "measurement", "energy_eV": 8000.0})
    return ds


def toy(block, scale=1.0):
    """A deterministic per-block computation using the block's scalar angle coordinate."""
    if "angle" in block.dims or "beam" in block.dims:
        raise AssertionError("split dims must be dropped")
    img = block["intensity"].mean("scan").values
    obj = np.fft.ifft2(np.fft.fft2(img) * np.cos(np.deg2rad(float(block["angle"])))) * scale
    return xr.Dataset({"object": (("y", "x"), obj.astype(np.complex64)),
                       "cost": (("iteration",), np.array([img.sum(), img.max()]))},
                      attrs={"kind": "reconstruction", "angle_seen": float(block["angle"])})


def fail_on_second(block):
    if float(block["angle"]) == pytest.approx(-10.0):
        raise ValidationError("intensity", "all-zero patterns")
    return toy(block)


def test_serial_restores_dims_and_coords():
    ds = _dataset()
    out = parallel.map_blocks(toy, ds, progress=False, scale=2.0)
    assert out["object"].dims == ("angle", "y", "x")
    assert out["cost"].dims == ("angle", "iteration")
    np.testing.assert_array_equal(out["angle"].values, ds["angle"].values)
    assert out["angle"].attrs["units"] == "degree"
    for i in range(4):
        ref = toy(ds.isel(angle=i), scale=2.0)
        np.testing.assert_array_equal(out["object"].values[i], ref["object"].values)
    assert out.attrs["kind"] == "reconstruction"
    assert "angle_seen" not in out.attrs  # differs between blocks: dropped, not made up


def test_serial_beam_and_angle_grid():
    ds = _dataset(n_angle=2, beams=["left", "center", "right"])
    out = parallel.map_blocks(toy, ds, progress=False)
    assert out["object"].dims == ("beam", "angle", "y", "x")
    assert list(out["beam"].values) == ["left", "center", "right"]
    np.testing.assert_array_equal(out["beam_tilt"].values, [-5.0, 0.0, 5.0])
    assert out["beam_tilt"].dims == ("beam",)
    ref = toy(ds.isel(beam=2, angle=1))
    np.testing.assert_array_equal(out["object"].sel(beam="right").values[1], ref["object"].values)
    # only along angle: each block keeps the beam dim
    out2 = parallel.map_blocks(lambda b: b[["intensity"]].sum("scan"), ds, dims=("angle",),
                               progress=False)
    xr.testing.assert_allclose(out2["intensity"].transpose(*ds["intensity"].sum("scan").dims),
                               ds["intensity"].sum("scan"))


def _grid_depends_on_angle(block):
    n = 3 + int(block["angle"] > 0)
    return xr.Dataset({"v": (("y",), np.ones(n))}, coords={"y": np.arange(n) * 1e-9})


def test_mismatched_block_grids():
    ds = _dataset(n_angle=2)
    with pytest.raises(ValueError, match="different coordinates"):
        parallel.map_blocks(_grid_depends_on_angle, ds, progress=False)
    out = parallel.map_blocks(_grid_depends_on_angle, ds, progress=False, join="outer")
    assert out["v"].shape == (2, 4) and np.isnan(out["v"].values[0, 3])


def test_no_split_dim_calls_once():
    ds = _dataset().isel(angle=0, drop=True)
    out = parallel.map_blocks(lambda b: b["intensity"].sum(), ds, progress=False)
    assert float(out) == pytest.approx(float(ds["intensity"].sum()))


def test_error_names_failing_block_serial():
    with pytest.raises(ValidationError, match=r"angle=-10\.0 \(index 1\).*all-zero") as info:
        parallel.map_blocks(fail_on_second, _dataset(), progress=False)
    assert info.value.variable == "intensity"


def test_bad_input():
    with pytest.raises(TypeError, match="dataset"):
        parallel.map_blocks(toy, np.zeros((4, 3)))
    with pytest.raises(TypeError, match="callable"):
        parallel.map_blocks(3, _dataset())
    with pytest.raises(TypeError, match="Dataset or DataArray"):
        parallel.map_blocks(lambda b: 3, _dataset(), progress=False)
    with pytest.raises(ValueError, match="client"):
        parallel.get_client(3.5)


def history(block, stop=None):
    """A per-block 'reconstruction' whose cost history has 2 + index entries; it marks itself
    cancelled (and stops the run) at the block whose angle is ``stop``."""
    k = int(round((float(block["angle"]) + 30.0) / 20.0))  # 0..3
    status = "complete"
    if stop is not None and float(block["angle"]) == stop:
        status = "cancelled"
    return xr.Dataset({"object": (("y", "x"), np.full((2, 2), k + 1.0, np.complex64)),
                       "cost": (("iteration",), np.arange(2.0 + k))},
                      coords={"iteration": np.arange(2 + k)}, attrs={"status": status})


def test_pad_histories_along_iteration_only():
    out = parallel.map_blocks(history, _dataset(), progress=False, pad=("iteration",))
    assert out.sizes["iteration"] == 5 and out.attrs["status"] == "complete"
    assert "block_status" not in out
    np.testing.assert_array_equal(out["cost"].values[0], [0.0, 1.0, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(out["cost"].values[3], np.arange(5.0))
    with pytest.raises(ValueError, match="different coordinates"):  # without pad: refused
        parallel.map_blocks(history, _dataset(), progress=False)


def test_serial_cancel_stops_before_next_block():
    import threading

    ev = threading.Event()
    calls = []

    def func(block):
        calls.append(float(block["angle"]))
        if len(calls) == 2:
            ev.set()  # set while the second block runs
        return history(block, stop=-10.0)

    out = parallel.map_blocks(func, _dataset(), progress=False, cancel=ev, pad=("iteration",))
    assert calls == [-30.0, -10.0]
    assert out.attrs["status"] == "cancelled"
    assert list(out["block_status"].values) == ["complete", "cancelled", "not run", "not run"]
    assert out.sizes["iteration"] == 3
    np.testing.assert_array_equal(out["cost"].values[1], [0.0, 1.0, 2.0])
    assert np.all(np.isnan(out["cost"].values[2:])) and np.all(np.isnan(out["object"].values[2:]))
    np.testing.assert_array_equal(out["angle"].values, _dataset()["angle"].values)
    with pytest.raises(TypeError, match="threading.Event"):
        parallel.map_blocks(func, _dataset(), progress=False, cancel="stop")


def held_after_first(block, release: str):
    """Block -30 deg returns at once; every other block waits until the file ``release``
    exists (at most 120 s), so a map_blocks that waited for them could not return first."""
    import os
    import time

    if float(block["angle"]) != -30.0:
        t0 = time.monotonic()
        while not os.path.exists(release) and time.monotonic() - t0 < 120:
            time.sleep(0.05)
    return history(block)


def test_cluster_cancel_cancels_pending_blocks(client, tmp_path):
    import threading

    ev = threading.Event()
    ev.set()  # already set: the first finished block is kept, every other one cancelled
    release = tmp_path / "release"
    try:
        out = parallel.map_blocks(held_after_first, _dataset(), client=client, progress=False,
                                  cancel=ev, pad=("iteration",), release=str(release))
    finally:
        release.touch()  # lets the held blocks (still running on the workers) finish
    assert out.attrs["status"] == "cancelled"
    assert list(out["block_status"].values) == ["complete", "not run", "not run", "not run"]
    np.testing.assert_array_equal(out["cost"].values[0], [0.0, 1.0])
    assert np.all(np.isnan(out["cost"].values[1:]))


@pytest.fixture(scope="module")
def client():
    with parallel.local_cluster(n_workers=2) as c:
        yield c


def test_cluster_equals_serial(client):
    ds = _dataset()
    serial = parallel.map_blocks(toy, ds, progress=False, scale=3.0)
    dist = parallel.map_blocks(toy, ds, client=client, progress=False, scale=3.0)
    xr.testing.assert_identical(dist, serial)
    assert len(client.scheduler_info()["workers"]) == 2
    # blocks really ran in the worker processes
    pids = parallel.map_blocks(_pid, ds, client=client, progress=False)
    import os

    assert os.getpid() not in set(pids.values.tolist())


def _pid(block):
    import os

    return xr.DataArray(os.getpid())


def test_cluster_error_names_block(client):
    with pytest.raises(ValidationError, match=r"angle=-10\.0 \(index 1\)"):
        parallel.map_blocks(fail_on_second, _dataset(), client=client, progress=False)


def test_client_by_address(client):
    addr = client.scheduler.address
    out = parallel.map_blocks(toy, _dataset(n_angle=2), client=addr, progress=False)
    xr.testing.assert_identical(out, parallel.map_blocks(toy, _dataset(n_angle=2), progress=False))
    assert parallel.get_client(client) is client


def _reconstruct_block(block, **kw):
    from ptynb.ptycho import reconstruct

    return reconstruct(block, progress=False, **kw)


def _four_angle_measurement():
    """4 angles x 16 positions of 32x32 patterns (a different random object per angle)."""
    from ptynb.data import measurement
    from ptynb.physics.probes import gaussian_probe
    from ptynb.physics.scan import raster_scan
    from ptynb.simulate import ptychography, smooth_random_object

    dx, n, step = 30e-9, 32, 5
    probe = gaussian_probe(n, dx, 4 * dx, energy_eV=8000.0)
    margin = n // 2 + 4
    size = 2 * margin + 3 * step
    sy, sx = raster_scan(4, 4, step * dx, jitter=0.2, seed=1, origin=(margin * dx, margin * dx))
    stack = []
    for k in range(4):
        obj = smooth_random_object((size, size), seed=k, correlation=2.0)
        ds = ptychography(obj, probe, sy, sx, pixel_size=dx, radiation="xray", energy_eV=8000.0,
                          counts_per_pattern=1e5, seed=k, progress=False)
        stack.append(ds["intensity"].values)
    return measurement(np.stack(stack), sy, sx, radiation="xray", energy_eV=8000.0,
                       pixel_size=dx, angle=[0.0, 10.0, 20.0, 30.0])


@pytest.mark.slow
def test_reconstruct_4_angles_cluster_equals_serial(client):
    """Issue acceptance: 4 angles on a 2-worker LocalCluster equal the serial result."""
    from ptynb.ptycho import reconstruct

    meas = _four_angle_measurement()
    kw = dict(engine="lsqml", iterations=3, batch_size=8)
    serial = parallel.map_blocks(_reconstruct_block, meas, progress=False, **kw)
    dist = parallel.map_blocks(_reconstruct_block, meas, client=client, progress=False, **kw)
    assert dist["object"].dims[:2] == ("angle", "slice")
    np.testing.assert_array_equal(dist["angle"].values, meas["angle"].values)
    # Equal to float32 rounding: FFTW_MEASURE may pick a different (equally exact) algorithm
    # in a worker process than in this one, so bitwise equality is not guaranteed.
    for var in ("object", "probe", "cost"):
        a, b = dist[var].values, serial[var].values
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max(), err_msg=var)
    # the same through reconstruct's own fan-out (client=...)
    via = reconstruct(meas, client=client, progress=False, **kw)
    b = serial["object"].values
    np.testing.assert_allclose(via["object"].values, b, rtol=0, atol=1e-5 * np.abs(b).max())
    np.testing.assert_array_equal(via["angle"].values, meas["angle"].values)
    # blocks differ (different objects per angle), so equality is not trivial
    assert not np.array_equal(serial["object"].values[0], serial["object"].values[1])
