"""Tests of the pre-run memory estimate and of atomic HDF5 checkpoints."""
from __future__ import annotations

import importlib.util
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    """Import ptynb.ptycho.<name>; by path while ptynb/ptycho/__init__.py does not exist yet."""
    try:
        return importlib.import_module(f"ptynb.ptycho.{name}")
    except ModuleNotFoundError:
        pass
    spec = importlib.util.spec_from_file_location(
        f"ptynb.ptycho.{name}", ROOT / "ptynb" / "ptycho" / f"{name}.py",
        submodule_search_locations=None)
    if "ptynb.ptycho" not in sys.modules:
        import types

        pkg = types.ModuleType("ptynb.ptycho")
        pkg.__path__ = [str(ROOT / "ptynb" / "ptycho")]
        sys.modules["ptynb.ptycho"] = pkg
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


import importlib  # noqa: E402

memory = _load("memory")
checkpoint = _load("checkpoint")

from ptynb.data import ValidationError  # noqa: E402


# ----------------------------------------------------------------------------- memory
def test_format_bytes():
    assert memory.format_bytes(512) == "512 B"
    assert memory.format_bytes(3 * 2**30) == "3.00 GiB"
    assert memory.format_bytes(1536) == "1.50 KiB"


def test_estimate_counts_arrays_exactly():
    est = memory.estimate_memory(n_patterns=100, detector_shape=(64, 64), object_shape=(200, 300),
                                 n_slices=2, n_modes=3, batch_size=10, engine="lsqml",
                                 device="cpu")
    br = est["breakdown"]
    assert br["intensity"] == 100 * 64 * 64 * 4
    assert br["object"] == 2 * 2 * 200 * 300 * 8  # estimate + last good state
    assert br["probe"] == 2 * 3 * 64 * 64 * 8
    # object patches (10 x 2 slices) + waves per slice and mode (10 x 2 x 3)
    assert br["batch_waves"] == 10 * (2 + 2 * 3) * 64 * 64 * 8
    assert est["device_bytes"] == 0
    # the caller's measurement is listed but not added (it is already in memory) ...
    assert est["host_bytes"] == sum(br.values()) - br["intensity_input"]
    # ... unless it is still to be loaded
    e_in = memory.estimate_memory(n_patterns=100, detector_shape=(64, 64), object_shape=(200, 300),
                                  n_slices=2, n_modes=3, batch_size=10, include_input=True)
    extra = e_in["host_bytes"] - est["host_bytes"]
    assert extra == pytest.approx(1.1 * br["intensity_input"], rel=1e-6)
    # sequential ePIE holds no batch or LSQ-ML buffers; batch_size does not matter to it
    e2 = memory.estimate_memory(n_patterns=100, detector_shape=(64, 64), object_shape=(200, 300),
                                n_slices=2, n_modes=3, batch_size=10, engine="epie")
    e3 = memory.estimate_memory(n_patterns=100, detector_shape=(64, 64), object_shape=(200, 300),
                                n_slices=2, n_modes=3, batch_size=50, engine="epie")
    assert "lsqml_buffers" not in e2["breakdown"] and e2["host_bytes"] < est["host_bytes"]
    assert e2["host_bytes"] == e3["host_bytes"]
    # a chain counts its largest engine
    chain = memory.estimate_memory(n_patterns=100, detector_shape=(64, 64),
                                   object_shape=(200, 300), n_slices=2, n_modes=3, batch_size=10,
                                   engine=[("epie", 5), ("lsqml", 5)])
    assert chain["host_bytes"] == est["host_bytes"]
    # upsampling doubles the probe window in each direction, not the patterns
    e4 = memory.estimate_memory(n_patterns=100, detector_shape=(64, 64), object_shape=(200, 300),
                                n_slices=2, n_modes=3, batch_size=10, engine="lsqml", upsample=2)
    assert e4["breakdown"]["probe"] == 4 * br["probe"]
    assert e4["breakdown"]["intensity"] == br["intensity"]
    # momentum adds buffers
    e5 = memory.estimate_memory(n_patterns=100, detector_shape=(64, 64), object_shape=(200, 300),
                                n_slices=2, n_modes=3, batch_size=10, momentum=True)
    assert e5["breakdown"]["momentum"] == 2 * (2 * 200 * 300 + 3 * 64 * 64) * 8


def test_estimate_gpu_splits_host_and_device():
    est = memory.estimate_memory(n_patterns=1000, detector_shape=(128, 128),
                                 object_shape=(600, 600), batch_size=64, engine="lsqml",
                                 device="gpu")
    br, loc = est["breakdown"], est["location"]
    assert loc["intensity"] == "device" and loc["intensity_input"] == "host"
    assert loc["result"] == "host"
    assert est["device_bytes"] == sum(v for k, v in br.items() if loc[k] == "device")
    assert est["host_bytes"] == sum(v for k, v in br.items()
                                    if loc[k] == "host" and k != "intensity_input")
    assert est["device_bytes"] > br["intensity"]


@pytest.mark.parametrize("kw, name", [
    (dict(n_patterns=0), "n_patterns"),
    (dict(detector_shape=(64,)), "detector_shape"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(engine="magic"), "engine"),
    (dict(device="tpu"), "device"),
    (dict(dtype_bytes=4), "dtype_bytes"),
    (dict(noise="laplace"), "noise"),
])
def test_estimate_bad_input(kw, name):
    args = dict(n_patterns=10, detector_shape=(32, 32), object_shape=(64, 64))
    args.update(kw)
    with pytest.raises(ValidationError, match=name):
        memory.estimate_memory(**args)


def test_check_memory_raises_for_absurd_size():
    est = memory.estimate_memory(n_patterns=10**7, detector_shape=(1024, 1024),
                                 object_shape=(50000, 50000), n_modes=8, batch_size=4096,
                                 engine="lsqml", device="cpu")
    with pytest.raises(memory.InsufficientMemoryError, match="batch_size") as info:
        memory.check_memory(est, "cpu")
    msg = str(info.value)
    assert "needs about" in msg and "available" in msg and "cropping the detector" in msg
    assert isinstance(info.value, MemoryError)
    # a small run fits
    small = memory.estimate_memory(n_patterns=10, detector_shape=(32, 32), object_shape=(64, 64))
    memory.check_memory(small, "cpu")
    # the GPU side is checked separately, with given free sizes
    g = memory.estimate_memory(n_patterns=1000, detector_shape=(256, 256), object_shape=(900, 900),
                               batch_size=256, device="gpu", n_modes=3)
    memory.check_memory(g, available={"host": 10**12, "device": 10**12})
    with pytest.raises(memory.InsufficientMemoryError, match="GPU memory"):
        memory.check_memory(g, available={"host": 10**12, "device": g["device_bytes"] // 2})


@pytest.fixture(scope="module")
def demo_measurement():
    from ptynb.simulate import demo

    ds = demo("xray", "small", seed=0)
    return ds.drop_vars(["true_object", "true_probe"])


@pytest.mark.parametrize("engine, slices, modes, batch, noise", [
    ("lsqml", 1, 1, 32, "poisson"),
    ("lsqml", 2, 3, 16, "poisson"),
    ("epie", 1, 1, None, "poisson"),
    ("epie", 3, 2, None, "poisson"),
    ("lsqml", 1, 1, 32, "gaussian"),
    ("epie", 1, 1, None, "gaussian"),
])
def test_estimate_within_30_percent_of_measured_peak(demo_measurement, engine, slices, modes,
                                                      batch, noise):
    """The estimate vs the tracemalloc peak of a real ptynb.ptycho.reconstruct run."""
    from ptynb.ptycho import reconstruct
    from ptynb import backend

    meas = demo_measurement
    # load the compiled kernels of the CPU sweep first (numba's one-time import, compile or
    # cache load allocate tens of MB of Python objects that are not part of a run's memory)
    reconstruct(meas.isel(scan=slice(0, 4)), engine=engine, iterations=1, slices=slices,
                modes=modes, slice_thickness=1e-6 if slices > 1 else None, batch_size=batch,
                noise=noise, progress=False)
    backend._PLANS.clear()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        rec = reconstruct(meas, engine=engine, iterations=2, slices=slices, modes=modes,
                          slice_thickness=1e-6 if slices > 1 else None, batch_size=batch,
                          noise=noise, progress=False)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    est = memory.estimate_memory(
        n_patterns=meas.sizes["scan"], detector_shape=(meas.sizes["qy"], meas.sizes["qx"]),
        object_shape=(rec.sizes["y"], rec.sizes["x"]), n_slices=slices, n_modes=modes,
        batch_size=batch or 32, engine=engine, device="cpu", noise=noise)
    ratio = est["host_bytes"] / peak
    assert 0.7 <= ratio <= 1.3, (ratio, peak, est["breakdown"])


# ----------------------------------------------------------------------------- checkpoint
def _arrays():
    rng = np.random.default_rng(1)
    st = np.random.default_rng(7).bit_generator.state["state"]
    words = [(st[k] >> (64 * i)) & (2**64 - 1) for k in ("state", "inc") for i in range(2)]
    obj = rng.standard_normal((2, 40, 50)) + 1j * rng.standard_normal((2, 40, 50))
    return {
        "object": obj.astype(np.complex64),
        "probe": (rng.standard_normal((3, 16, 16)) * np.exp(1j)).astype(np.complex64),
        "positions": rng.uniform(-1e-6, 1e-6, (20, 2)),
        "cost": np.array([3.0, 2.0, np.nan], np.float64),
        "mask": rng.uniform(size=(16, 16)) > 0.3,
        "pcg_state": np.array(words, dtype=np.uint64),
        "mt_keys": np.random.RandomState(3).get_state()[1],  # uint32 Mersenne-Twister state
        "iteration": np.int64(17),
    }


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    arrays = _arrays()
    meta = {"iteration": 17, "engine": "lsqml", "settings": {"beta": np.float32(0.5), "modes": 3},
            "z": np.arange(3) * 1e-9}
    path = checkpoint.save_checkpoint(tmp_path / "run.h5", arrays, meta)
    assert path == tmp_path / "run.h5"
    got, m = checkpoint.load_checkpoint(path)
    assert set(got) == set(arrays)
    for k, a in arrays.items():
        a = np.asarray(a)
        assert got[k].dtype == a.dtype and got[k].shape == a.shape, k
        assert got[k].tobytes() == a.tobytes(), k
    assert m["iteration"] == 17 and m["engine"] == "lsqml"
    assert m["settings"] == {"beta": 0.5, "modes": 3}
    assert m["z"] == [0.0, 1e-9, 2e-9]
    assert m["checkpoint_version"] == checkpoint.CHECKPOINT_VERSION
    # an RNG restored from the checkpointed Mersenne-Twister keys continues identically
    rs = np.random.RandomState(3)
    st = list(rs.get_state())
    st[1] = got["mt_keys"]
    rs.set_state(tuple(st))
    assert np.array_equal(rs.uniform(size=5), np.random.RandomState(3).uniform(size=5))
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_interrupted_write_keeps_old_checkpoint(tmp_path, monkeypatch):
    import h5py

    path = tmp_path / "run.h5"
    old = {"object": np.full((4, 4), 1 + 2j, np.complex64)}
    checkpoint.save_checkpoint(path, old, {"iteration": 1})
    before = path.read_bytes()

    calls = {"n": 0}
    real = h5py.Group.create_dataset

    def failing(self, name, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # interrupted half way through the new file
        return real(self, name, *a, **k)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    new = {"object": np.zeros((4, 4), np.complex64), "probe": np.ones((2, 2), np.complex64)}
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, new, {"iteration": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    arrays, meta = checkpoint.load_checkpoint(path)
    assert meta["iteration"] == 1 and np.array_equal(arrays["object"], old["object"])
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]

    # a failure of the final rename also leaves the old file
    def bad_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(checkpoint.os, "replace", bad_replace)
    with pytest.raises(OSError, match="disk gone"):
        checkpoint.save_checkpoint(path, new, {"iteration": 3})
    monkeypatch.undo()
    assert path.read_bytes() == before


def test_truncated_and_foreign_files_raise(tmp_path):
    import h5py

    path = tmp_path / "run.h5"
    checkpoint.save_checkpoint(path, {"object": np.ones((64, 64), np.complex64)}, {"iteration": 5})
    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="cut.h5"):
        checkpoint.load_checkpoint(cut)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(checkpoint.CheckpointError, match="junk.h5"):
        checkpoint.load_checkpoint(junk)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.arange(3)
    with pytest.raises(checkpoint.CheckpointError, match="not a ptynb checkpoint"):
        checkpoint.load_checkpoint(foreign)
    with h5py.File(path, "a") as f:
        f.attrs["ptynb_checkpoint_version"] = checkpoint.CHECKPOINT_VERSION + 1
    with pytest.raises(checkpoint.CheckpointError, match="newer"):
        checkpoint.load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        checkpoint.load_checkpoint(tmp_path / "missing.h5")
    assert issubclass(checkpoint.CheckpointError, ValueError)


def test_checkpoint_bad_input(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="name"):
        checkpoint.save_checkpoint(tmp_path / "a.h5", {"a/b": np.ones(2)}, {})
    with pytest.raises(checkpoint.CheckpointError, match="JSON"):
        checkpoint.save_checkpoint(tmp_path / "a.h5", {"a": np.ones(2)}, {"f": object()})
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.save_checkpoint(tmp_path / "nodir" / "a.h5", {"a": np.ones(2)}, {})
