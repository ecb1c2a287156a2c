"""Tests for ptynb.io: HDF5/Zarr round trips, sharding, lazy loading, CXI, atomic saves, errors."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import xarray as xr

import ptynb.data as D
from ptynb import io
from ptynb.data import ValidationError
from ptynb.io import FileFormatError

FORMATS = [".h5", ".zarr"]
E_CHARGE = 1.602176634e-19


# ----------------------------------------------------------------------------- fixtures
def _positions(n, step=1e-7, seed=1):
    rng = np.random.default_rng(seed)
    sy = (np.arange(n) // 3) * step + rng.uniform(-0.3, 0.3, n) * step
    sx = (np.arange(n) % 3) * step + rng.uniform(-0.3, 0.3, n) * step
    return sy, sx


@pytest.fixture
def meas():
    rng = np.random.default_rng(0)
    n = 7
    intensity = rng.poisson(20.0, (n, 16, 12)).astype(np.float32)
    intensity[3] = -0.0  # a whole pattern of negative zeros must survive bit for bit
    sy, sx = _positions(n)
    mask = np.ones((16, 12), bool)
    mask[0, :3] = False
    m = D.measurement(
        intensity, sy, sx, radiation="xray", energy_eV=6200.0, detector_distance=3.5,
        detector_pixel_size=75e-6, mask=mask,
        flag=True, nothing=None, nested={"a": [1, 2.5, (3, "x")], "b": {"c": None}},
        matrix=np.arange(6.0).reshape(2, 3), tricky="ptynb-json:not json", cplx=1 - 2j,
        npbool=np.bool_(False), npint=np.int16(-7), fov=np.array([0.0, 1e-6, 0.0, 1e-6]),
        odd_keys={1: "one", "__tuple__": [2]}, labels=np.array(["a", "bc"]),
    )
    m["true_probe"] = (("qy", "qx"), (rng.standard_normal((16, 12)) + 1j).astype(np.complex64))
    m["intensity"].attrs["note"] = {"detector": "Eiger", "gain": None}
    return m


@pytest.fixture
def recon():
    rng = np.random.default_rng(2)
    obj = np.exp(1j * rng.uniform(-np.pi, np.pi, (2, 20, 24))).astype(np.complex64)
    u = obj.view(np.uint32)
    u[0, 0, 0] = 0x7FC00123  # NaN with a payload (real part)
    u[0, 0, 3] = 0xFF800000  # -inf (imag part)
    obj[1, 5] = complex(-0.0, -0.0)
    probe = (rng.standard_normal((2, 8, 8)) + 1j * rng.standard_normal((2, 8, 8))).astype(np.complex64)
    return D.reconstruction(obj, probe, pixel_size=1e-8, slice_thickness=5e-8,
                            scan_y=np.linspace(5e-8, 1e-7, 4), scan_x=np.linspace(5e-8, 1.2e-7, 4),
                            cost=np.geomspace(1, 1e-3, 5), engine="rPIE", alpha=0.1)


def _bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype.kind in "fc":
        w = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize // (2 if a.dtype.kind == "c" else 1)]
        return np.array_equal(a.view(w), b.view(w))
    return np.array_equal(a, b)


def _assert_exact(a: xr.Dataset, b: xr.Dataset):
    xr.testing.assert_identical(a, b)
    for name in a.variables:
        assert a[name].dtype == b[name].dtype, name
        assert _bits_equal(a[name].values, b[name].values), name
    assert set(a.attrs) == set(b.attrs)
    for k, v in a.attrs.items():
        assert type(b.attrs[k]) is type(v) or isinstance(v, (float, np.floating)), (k, type(v), type(b.attrs[k]))


def _listdir(d):
    return sorted(p for p in os.listdir(d))


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("suffix", FORMATS)
def test_measurement_round_trip_exact(tmp_path, meas, suffix):
    path = io.save(meas, tmp_path / f"m{suffix}")
    assert path == tmp_path / f"m{suffix}"
    back = io.load(path)
    _assert_exact(meas, back)
    assert back["mask"].dtype == bool and back["intensity"].dtype == np.float32
    assert back.attrs["nested"] == {"a": [1, 2.5, (3, "x")], "b": {"c": None}}
    assert back.attrs["flag"] is True and back.attrs["nothing"] is None
    assert back.attrs["tricky"] == "ptynb-json:not json"
    np.testing.assert_array_equal(back.attrs["matrix"], np.arange(6.0).reshape(2, 3))
    assert back.attrs["cplx"] == 1 - 2j
    assert back.attrs["odd_keys"] == {1: "one", "__tuple__": [2]}
    assert back.attrs["npint"] == -7 and back.attrs["npint"].dtype == np.int16
    assert back.attrs["labels"].dtype.kind == "U" and list(back.attrs["labels"]) == ["a", "bc"]
    assert back["intensity"].attrs["note"] == {"detector": "Eiger", "gain": None}
    assert _listdir(tmp_path) == [f"m{suffix}"]
    D.validate(back)


@pytest.mark.parametrize("suffix", FORMATS)
def test_reconstruction_complex_bit_exact(tmp_path, recon, suffix):
    back = io.load(io.save(recon, tmp_path / f"r{suffix}"))
    assert back["object"].dtype == np.complex64
    assert _bits_equal(recon["object"].values, back["object"].values)
    assert np.isnan(back["object"].values[0, 0, 0].real)
    assert back["object"].values.view(np.uint32)[0, 0, 0] == 0x7FC00123
    _assert_exact(recon, back)


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("name", ["projections", None])
def test_dataarray_round_trip(tmp_path, suffix, name):
    rng = np.random.default_rng(3)
    p = D.projections((rng.standard_normal((5, 6, 7)) + 1j).astype(np.complex64),
                      np.linspace(0, 180, 5), pixel_size=1e-8, geometry="laminography", tilt=61.0)
    p.name = name
    v = D.volume(rng.standard_normal((4, 5, 6)).astype(np.float32), voxel_size=(1e-8, 2e-8, 2e-8),
                 name="delta")
    for da, fname in ((p, "p"), (v, "v")):
        back = io.load(io.save(da, tmp_path / f"{fname}{suffix}"))
        assert isinstance(back, xr.DataArray)
        xr.testing.assert_identical(da, back)
        assert back.name == da.name
        assert _bits_equal(da.values, back.values)
        assert set(back.attrs) == set(da.attrs)
        np.testing.assert_array_equal(back.attrs.get("voxel_size", 0), da.attrs.get("voxel_size", 0))


def _tree(meas, recon):
    kids = {}
    for k, angle in enumerate((0.0, 30.0, 60.0)):
        m = meas.copy(deep=True)
        m["intensity"] = m["intensity"] + k
        m.attrs["angle"] = angle
        kids[f"angle_{int(angle):03d}"] = m.drop_vars("true_probe")
    tree = D.experiment(kids, name="tomo", sample="IC chip")
    tree["results"] = xr.DataTree(dataset=recon)
    return tree


@pytest.mark.parametrize("suffix", FORMATS)
def test_datatree_round_trip(tmp_path, meas, recon, suffix):
    tree = _tree(meas, recon)
    back = io.load(io.save(tree, tmp_path / f"t{suffix}"))
    assert isinstance(back, xr.DataTree)
    xr.testing.assert_identical(tree, back)
    assert back.name == "tomo"
    assert sorted(back.children) == ["angle_000", "angle_030", "angle_060", "results"]
    assert back["angle_030"].attrs["angle"] == 30.0 and back.attrs["sample"] == "IC chip"
    assert _bits_equal(back["results"]["object"].values, recon["object"].values)
    np.testing.assert_array_equal(back["angle_060"]["intensity"].values, meas["intensity"].values + 2)
    # one node on its own
    node = io.load(tmp_path / f"t{suffix}", group="angle_030")
    assert isinstance(node, xr.Dataset) and node.attrs["angle"] == 30.0
    np.testing.assert_array_equal(node["intensity"].values, meas["intensity"].values + 1)
    # lazily
    lazy = io.load(tmp_path / f"t{suffix}", lazy=True)
    assert lazy["angle_000"]["intensity"].chunks is not None
    xr.testing.assert_identical(tree, lazy.load())


@pytest.mark.parametrize("suffix", FORMATS)
def test_multibeam_measurement_and_open_intensity(tmp_path, suffix):
    rng = np.random.default_rng(4)
    inten = rng.poisson(3.0, (3, 2, 5, 8, 8)).astype(np.float32)
    sy, sx = _positions(5)
    m = D.measurement(inten, np.broadcast_to(sy, (3, 2, 5)), np.broadcast_to(sx, (3, 2, 5)),
                      radiation="electron", energy_eV=300e3, reciprocal_pixel_size=2e8,
                      beam=["left", "center", "right"], beam_tilt=[-5.0, 0.0, 5.0], angle=[0.0, 90.0])
    path = io.save(m, tmp_path / f"b{suffix}")
    back = io.load(path)
    _assert_exact(m, back)
    assert back["beam"].dtype.kind == "U"
    np.testing.assert_array_equal(io.open_intensity(path, (2, 1, 4)), inten[2, 1, 4])
    with pytest.raises(ValidationError, match="index"):
        io.open_intensity(path, 3)
    lazy = io.load(path, lazy=True)
    assert lazy["intensity"].chunks[:3] == ((1,) * 3, (1,) * 2, (1,) * 5)


# ----------------------------------------------------------------------------- layout
def test_hdf5_per_pattern_chunks(tmp_path, meas):
    path = io.save(meas, tmp_path / "m.h5")
    with h5py.File(path, "r") as f:
        assert f["intensity"].chunks == (1, 16, 12)
        assert f["intensity"].dtype == np.float32
        assert f.attrs["_ptynb_io_object"] == "Dataset"
    np.testing.assert_array_equal(io.open_intensity(path, 5), meas["intensity"].values[5])
    io.save(meas, tmp_path / "g.h5", compression="gzip", chunks=(2, 16, 12))
    with h5py.File(tmp_path / "g.h5", "r") as f:
        assert f["intensity"].chunks == (2, 16, 12) and f["intensity"].compression == "gzip"
    _assert_exact(meas, io.load(tmp_path / "g.h5"))
    _assert_exact(meas, io.load(io.save(meas, tmp_path / "m.nc")))
    _assert_exact(meas, io.load(io.save(meas, tmp_path / "m.bin", format="hdf5")))


def test_zarr_sharding_applied(tmp_path, meas, monkeypatch):
    import zarr

    path = io.save(meas, tmp_path / "m.zarr")
    arr = zarr.open_array(str(path / "intensity"), mode="r")
    assert arr.chunks == (1, 16, 12)  # inner chunk: one pattern
    assert arr.shards == (7, 16, 12)  # whole (small) scan in one shard
    meta = json.loads((path / "intensity" / "zarr.json").read_text())
    assert meta["codecs"][0]["name"] == "sharding_indexed"
    assert meta["codecs"][0]["configuration"]["chunk_shape"] == [1, 16, 12]
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [7, 16, 12]

    # explicit patterns per shard -> ceil(7 / 3) = 3 shard files
    io.save(meas, tmp_path / "s.zarr", shards=3)
    arr = zarr.open_array(str(tmp_path / "s.zarr" / "intensity"), mode="r")
    assert arr.shards == (3, 16, 12) and arr.chunks == (1, 16, 12)
    assert len(os.listdir(tmp_path / "s.zarr" / "intensity" / "c")) == 3
    np.testing.assert_array_equal(io.open_intensity(tmp_path / "s.zarr", 4), meas["intensity"].values[4])
    _assert_exact(meas, io.load(tmp_path / "s.zarr"))

    # automatic shard size follows SHARD_BYTES (here: two 768-byte patterns per shard)
    monkeypatch.setattr(io._common, "SHARD_BYTES", 2 * 16 * 12 * 4)
    io.save(meas, tmp_path / "a.zarr")
    assert zarr.open_array(str(tmp_path / "a.zarr" / "intensity"), mode="r").shards == (2, 16, 12)

    io.save(meas, tmp_path / "n.zarr", shards=False, compression=False)
    arr = zarr.open_array(str(tmp_path / "n.zarr" / "intensity"), mode="r")
    assert arr.shards is None and arr.chunks == (1, 16, 12) and arr.compressors == ()
    _assert_exact(meas, io.load(tmp_path / "n.zarr"))


def test_zarr_dask_input_is_realigned(tmp_path, meas):
    lazy = meas.chunk({"scan": 2})  # dask chunks of 2 do not line up with shards of 3
    io.save(lazy, tmp_path / "d.zarr", shards=3)
    _assert_exact(meas, io.load(tmp_path / "d.zarr"))


@pytest.mark.parametrize("suffix", FORMATS)
def test_lazy_load_chunks(tmp_path, meas, suffix):
    path = io.save(meas, tmp_path / f"m{suffix}")
    lazy = io.load(path, lazy=True)
    data = lazy["intensity"].data
    assert not isinstance(data, np.ndarray) and hasattr(data, "dask")
    assert lazy["intensity"].chunks == ((1,) * 7, (16,), (12,))
    assert isinstance(lazy["scan_y"].data, np.ndarray)  # coordinates are read eagerly
    _assert_exact(meas, lazy.load())
    big = io.load(path, lazy=True, chunks={"scan": 7})
    assert big["intensity"].chunks[0] == (7,)


# ----------------------------------------------------------------------------- lazy 2 GB
def _make_big_measurement(path, n_scan=8192, n=256):
    """A 2 GiB (apparent size) netCDF4 measurement whose chunks are allocated but never written."""
    import h5netcdf

    sy, sx = _positions(n_scan, step=5e-8)
    m = D.measurement(np.zeros((n_scan, 1, 1), np.float32), sy, sx, radiation="xray",
                      energy_eV=8000.0, pixel_size=1e-8, validate_data=False)
    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"scan": n_scan, "qy": n, "qx": n}
        f.attrs.update({k: v for k, v in m.attrs.items()})
        f.attrs["_ptynb_io_object"] = "Dataset"
        for name, vals in (("scan", np.arange(n_scan)), ("qy", D.centered_coord(n, 1 / (n * 1e-8))),
                           ("qx", D.centered_coord(n, 1 / (n * 1e-8)))):
            f.create_variable(name, (name,), vals.dtype, data=vals)
        f.create_variable("scan_y", ("scan",), "f8", data=sy)
        f.create_variable("scan_x", ("scan",), "f8", data=sx)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # reserve all 2 GiB now ...
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # ... without writing a byte
        v = f.create_variable("intensity", ("scan", "qy", "qx"), "f4", chunks=(1, n, n), dcpl=dcpl)
        v.attrs["coordinates"] = "scan_y scan_x"
        v.attrs["units"] = "counts"


def test_lazy_open_2gb_reads_no_intensity(tmp_path, monkeypatch):
    path = tmp_path / "big.h5"
    _make_big_measurement(path)
    assert os.path.getsize(path) >= 2 * 2**30
    small = tmp_path / "small.h5"
    _make_big_measurement(small, n_scan=4, n=8)
    io.load(small, lazy=True)  # warm up imports (xarray backends, dask) outside the timing

    reads = []
    orig_getitem = h5py.Dataset.__getitem__
    orig_read_direct = h5py.Dataset.read_direct

    def spy_getitem(self, args, *rest, **kw):
        reads.append((self.name, args))
        return orig_getitem(self, args, *rest, **kw)

    def spy_read_direct(self, *args, **kw):
        reads.append((self.name, "read_direct"))
        return orig_read_direct(self, *args, **kw)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy_getitem)
    monkeypatch.setattr(h5py.Dataset, "read_direct", spy_read_direct)
    ds = io.load(path, lazy=True)  # lazy: no read of the 2 GiB intensity (the spy checks)
    assert ds["intensity"].shape == (8192, 256, 256) and ds["intensity"].nbytes == 2 * 2**30
    assert not [r for r in reads if r[0] == "/intensity"], reads[:5]
    assert any(r[0] == "/scan_y" for r in reads)  # the spy does see reads (positions)
    # and it would see an intensity read:
    pattern = ds["intensity"][17].values
    assert pattern.shape == (256, 256)
    assert [r for r in reads if r[0] == "/intensity"]
    ds.close()


def test_lazy_zarr_reads_no_intensity_chunks(tmp_path, meas, monkeypatch):
    from zarr.storage import LocalStore

    path = io.save(meas, tmp_path / "m.zarr", shards=2)
    keys = []
    real_get = LocalStore.get

    async def spy_get(self, key, *args, **kw):
        keys.append(key)
        return await real_get(self, key, *args, **kw)

    monkeypatch.setattr(LocalStore, "get", spy_get)
    ds = io.load(path, lazy=True)
    assert any(k.startswith("intensity/") for k in keys)  # its metadata was read ...
    assert not [k for k in keys if k.startswith("intensity/c")], keys  # ... but no shard
    np.testing.assert_array_equal(ds["intensity"][5].values, meas["intensity"].values[5])
    # one pattern: only its shard (index + inner chunk byte ranges) is touched
    assert {k for k in keys if k.startswith("intensity/c")} == {"intensity/c/2/0/0"}


# ----------------------------------------------------------------------------- CXI
def test_cxi_round_trip_and_layout(tmp_path, meas):
    m = meas.drop_vars("true_probe")
    m["true_object"] = (("qy", "qx"), np.ones((16, 12), np.complex64) * (1 + 2j))
    path = io.write_cxi(m, tmp_path / "m.cxi")
    with h5py.File(path, "r") as f:
        assert int(f["cxi_version"][()]) == 150
        e = f["entry_1"]
        assert e["instrument_1/source_1/energy"][()] == pytest.approx(6200.0 * E_CHARGE, rel=1e-12)
        det = e["instrument_1/detector_1"]
        np.testing.assert_array_equal(det["data"][()], m["intensity"].values)
        assert det["distance"][()] == 3.5 and det["x_pixel_size"][()] == 75e-6 == det["y_pixel_size"][()]
        cmask = det["mask"][()]
        assert cmask[0, 0] != 0 and cmask[5, 5] == 0 and np.count_nonzero(cmask) == 3
        tr = e["sample_1/geometry_1/translation"][()]
        assert tr.shape == (7, 3)
        np.testing.assert_array_equal(tr[:, 0], m["scan_x"].values)  # column 0 = scan_x
        np.testing.assert_array_equal(tr[:, 1], m["scan_y"].values)  # column 1 = scan_y
        np.testing.assert_array_equal(tr[:, 2], 0.0)
        assert e.get("data_1/data", getlink=True).path == "/entry_1/instrument_1/detector_1/data"
        np.testing.assert_array_equal(e["data_1/data"][()], m["intensity"].values)
        assert e["ptynb"].attrs["radiation"] == "xray"
    back = io.read_cxi(path)
    _assert_exact(m, back)
    _assert_exact(m, io.load(path))  # load() dispatches on the .cxi suffix


def test_cxi_electron_and_multi_entry(tmp_path):
    rng = np.random.default_rng(5)
    inten = rng.poisson(4.0, (2, 3, 6, 8, 8)).astype(np.float32)
    sy, sx = _positions(6)
    m = D.measurement(inten, np.stack([np.stack([sy + k * 1e-9] * 3) for k in range(2)]),
                      np.broadcast_to(sx, (2, 3, 6)),
                      radiation="electron", energy_eV=200e3, reciprocal_pixel_size=1.5e9,
                      beam=["left", "right"], beam_tilt=[-3.0, 3.0], angle=[-30.0, 0.0, 30.0],
                      convergence_semiangle=0.02)
    m["true_positions_error"] = (("beam", "angle", "scan"), rng.standard_normal((2, 3, 6)))
    path = io.write_cxi(m, tmp_path / "e.cxi")
    with h5py.File(path, "r") as f:
        entries = sorted(k for k in f if k.startswith("entry_"))
        assert len(entries) == 6
        assert json.loads(f["entry_5/ptynb"].attrs["label_angle"]) == 0.0  # beam 1, angle 1
        assert json.loads(f["entry_5/ptynb"].attrs["label_beam"]) == "right"
        # the standard fields alone give the same sampling (equivalent geometry)
        from ptynb.physics.units import wavelength

        dq = f["entry_1/instrument_1/detector_1/x_pixel_size"][()] / (
            wavelength(200e3, "electron") * f["entry_1/instrument_1/detector_1/distance"][()])
        assert dq == pytest.approx(1.5e9, rel=1e-12)
    back = io.read_cxi(path)
    _assert_exact(m, back)
    one = io.read_cxi(path, entry="entry_4")  # beam "right", angle -30
    np.testing.assert_array_equal(one["intensity"].values, inten[1, 0])
    assert one.attrs["reciprocal_pixel_size"] == 1.5e9 and one.attrs["radiation"] == "electron"


def _foreign_cxi(path, *, energy=True, distance=True, n=5, ny=10, nx=10):
    rng = np.random.default_rng(6)
    data = rng.poisson(7.0, (n, ny, nx)).astype(np.uint16)
    tr = np.zeros((n, 3))
    tr[:, 0] = np.arange(n) * 2e-7
    tr[:, 1] = np.arange(n) * 1e-7
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 140
        e = f.create_group("entry_1")
        if energy:
            e["instrument_1/source_1/energy"] = 8000.0 * E_CHARGE
        det = e.create_group("instrument_1/detector_1")
        det["data"] = data
        if distance:
            det["distance"] = 5.0
        det["x_pixel_size"] = 172e-6
        det["y_pixel_size"] = 172e-6
        mask = np.zeros((ny, nx), np.uint32)
        mask[2, 3] = 0x2  # saturated -> bad
        det["mask"] = mask
        e["sample_1/geometry_1/translation"] = tr
    return data, tr


def test_cxi_from_another_program(tmp_path):
    from ptynb.physics.units import wavelength

    path = tmp_path / "foreign.cxi"
    data, tr = _foreign_cxi(path)
    m = io.read_cxi(path)
    assert m.attrs["radiation"] == "xray"
    assert m.attrs["energy_eV"] == pytest.approx(8000.0, rel=1e-12)
    np.testing.assert_array_equal(m["intensity"].values, data.astype(np.float32))
    np.testing.assert_array_equal(m["scan_x"].values, tr[:, 0])
    np.testing.assert_array_equal(m["scan_y"].values, tr[:, 1])
    assert m.attrs["pixel_size"] == pytest.approx(wavelength(8000.0) * 5.0 / (10 * 172e-6), rel=1e-12)
    assert m["mask"].values.sum() == 99 and not m["mask"].values[2, 3]
    neg = io.read_cxi(path, translation_sign=-1.0)
    np.testing.assert_array_equal(neg["scan_x"].values, -tr[:, 0])
    ele = io.read_cxi(path, radiation="electron", energy_eV=300e3)
    assert ele.attrs["reciprocal_pixel_size"] == pytest.approx(
        172e-6 / (wavelength(300e3, "electron") * 5.0), rel=1e-12)

    bare = tmp_path / "bare.cxi"
    _foreign_cxi(bare, energy=False, distance=False)
    with pytest.raises(FileFormatError, match=r"bare\.cxi.*entry_1/instrument_1/source_1/energy"):
        io.read_cxi(bare)
    with pytest.raises(FileFormatError, match=r"detector_1/distance"):
        io.read_cxi(bare, energy_eV=8000.0)
    ok = io.read_cxi(bare, energy_eV=8000.0, detector_distance=5.0)
    assert ok.attrs["detector_distance"] == 5.0 and ok.attrs["energy_eV"] == 8000.0
    with pytest.raises(FileFormatError, match="cxi_version"):
        h5 = tmp_path / "plain.h5"
        with h5py.File(h5, "w") as f:
            f["x"] = 1
        io.read_cxi(h5)


# ----------------------------------------------------------------------------- from_arrays
def test_from_arrays_units_and_order(tmp_path):
    rng = np.random.default_rng(7)
    inten = rng.poisson(2.0, (4, 8, 8))
    pos_nm = np.array([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0], [70.0, 80.0]])  # (x, y) in nm
    m = io.from_arrays(inten, pos_nm, radiation="xray", energy_eV=8000.0, positions_order="xy",
                       position_units="nm", pixel_size=5e-9)
    np.testing.assert_allclose(m["scan_x"].values, pos_nm[:, 0] * 1e-9, rtol=1e-15)
    np.testing.assert_allclose(m["scan_y"].values, pos_nm[:, 1] * 1e-9, rtol=1e-15)
    assert m["intensity"].dtype == np.float32
    m2 = io.from_arrays(inten, np.c_[pos_nm * 10, np.zeros(4)], radiation="xray", energy_eV=8000.0,
                        positions_order="yxz", position_units="A", pixel_size=5e-9)
    np.testing.assert_allclose(m2["scan_y"].values, pos_nm[:, 0] * 1e-9, rtol=1e-15)
    with pytest.raises(ValidationError, match="position_units"):
        io.from_arrays(inten, pos_nm, radiation="xray", energy_eV=8000.0, position_units="furlong",
                       pixel_size=5e-9)
    with pytest.raises(ValidationError, match="positions"):
        io.from_arrays(inten, pos_nm[:, :1], radiation="xray", energy_eV=8000.0, pixel_size=5e-9)
    with pytest.raises(ValidationError, match="scan_y"):
        io.from_arrays(inten, pos_nm[:3], radiation="xray", energy_eV=8000.0, pixel_size=5e-9)


# ----------------------------------------------------------------------------- atomic saves
class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("exc", [_Boom, KeyboardInterrupt])
def test_interrupted_save_keeps_previous_file(tmp_path, meas, monkeypatch, suffix, exc):
    path = io.save(meas, tmp_path / f"m{suffix}")
    before = _listdir(tmp_path)
    changed = meas.copy(deep=True)
    changed["intensity"] = changed["intensity"] + 1
    name = "_write_hdf5" if suffix == ".h5" else "_write_zarr"
    real = getattr(io._store, name)

    def half_write(obj, tmp, *args):
        real(obj, tmp, *args)  # the temporary is complete on disk ...
        if tmp.is_dir():  # ... then gets damaged and the "process" dies
            (tmp / "intensity" / "zarr.json").unlink()
        else:
            with open(tmp, "r+b") as fh:
                fh.truncate(os.path.getsize(tmp) // 2)
        raise exc("interrupted")

    monkeypatch.setattr(io._store, name, half_write)
    with pytest.raises(exc, match="interrupted"):
        io.save(changed, path)
    assert _listdir(tmp_path) == before  # no temp file or directory left
    _assert_exact(meas, io.load(path))


def test_interrupted_inside_hdf5_library(tmp_path, meas, monkeypatch):
    """Fail in the middle of h5py writing the intensity (file open, partly written)."""
    path = io.save(meas, tmp_path / "m.h5")
    real = h5py.Dataset.__setitem__
    calls = []

    def failing(self, key, value):
        calls.append(self.name)
        if self.name == "/intensity":
            raise KeyboardInterrupt
        return real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", failing)
    with pytest.raises(KeyboardInterrupt):
        io.save(meas.drop_vars("mask"), path)
    monkeypatch.undo()
    assert "/intensity" in calls
    assert _listdir(tmp_path) == ["m.h5"]
    _assert_exact(meas, io.load(path))


def test_interrupted_inside_zarr_library(tmp_path, meas, monkeypatch):
    import zarr

    path = io.save(meas, tmp_path / "m.zarr")
    real = zarr.Array.__setitem__

    def failing(self, key, value):
        if self.basename == "intensity":
            raise _Boom("disk full")
        return real(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", failing)
    with pytest.raises(_Boom):
        io.save(meas, path)
    monkeypatch.undo()
    assert _listdir(tmp_path) == ["m.zarr"]
    _assert_exact(meas, io.load(path))


@pytest.mark.parametrize("suffix", FORMATS)
def test_overwrite(tmp_path, meas, recon, suffix):
    path = io.save(meas, tmp_path / f"x{suffix}")
    with pytest.raises(FileExistsError, match=f"x\\{suffix}"):
        io.save(recon, path, overwrite=False)
    _assert_exact(meas, io.load(path))
    lazy = io.load(path, lazy=True)
    io.save(lazy.assign_attrs(note="re-saved"), path)  # from a lazy view of the same file
    again = io.load(path)
    assert again.attrs["note"] == "re-saved"
    _assert_exact(meas, again.drop_attrs(deep=False).assign_attrs(meas.attrs))
    io.save(recon, path)  # replaces (Zarr: directory swapped)
    _assert_exact(recon, io.load(path))
    assert _listdir(tmp_path) == [f"x{suffix}"]


def test_zarr_swap_fallback_without_renameat2(tmp_path, meas, recon, monkeypatch):
    path = io.save(meas, tmp_path / "x.zarr")
    monkeypatch.setattr(io._atomic, "_renameat2_exchange", lambda a, b: False)
    io.save(recon, path)
    _assert_exact(recon, io.load(path))
    assert _listdir(tmp_path) == ["x.zarr"]


# ----------------------------------------------------------------------------- errors
def test_truncated_hdf5(tmp_path, meas):
    path = io.save(meas, tmp_path / "m.h5")
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    for lazy in (False, True):
        with pytest.raises(FileFormatError, match=r"m\.h5.*(truncated|corrupt)") as info:
            io.load(path, lazy=lazy)
        assert info.value.path == str(path)
        assert info.value.__cause__ is not None  # chained to the h5py error


def test_foreign_files(tmp_path):
    png = tmp_path / "image.h5"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(FileFormatError, match=r"image\.h5.*not an HDF5 file.*PNG"):
        io.load(png)
    txt = tmp_path / "notes.nc"
    txt.write_text("hello, this is text\n")
    with pytest.raises(FileFormatError, match=r"notes\.nc.*text file"):
        io.load(txt)
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty"):
        io.load(empty)
    # HDF5, but no netCDF layout (dataset without dimension scales in a nested group)
    raw = tmp_path / "raw.h5"
    with h5py.File(raw, "w") as f:
        f["data"] = np.zeros((3, 4))
        f["data"].attrs["weird"] = np.zeros((2, 2))
    with pytest.raises(FileFormatError, match=r"raw\.h5.*not a ptynb/netCDF layout"):
        io.load(raw)
    bare = tmp_path / "bare.h5"
    h5py.File(bare, "w").close()
    with pytest.raises(FileFormatError, match=r"bare\.h5.*no variables"):
        io.load(bare)
    d = tmp_path / "folder.zarr"
    d.mkdir()
    (d / "readme.txt").write_text("x")
    with pytest.raises(FileFormatError, match=r"folder\.zarr.*not a Zarr store"):
        io.load(d)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        io.load(tmp_path / "missing.h5")


def test_corrupt_zarr(tmp_path, meas):
    path = io.save(meas, tmp_path / "m.zarr")
    (path / "zarr.json").write_text("{not json")
    with pytest.raises(FileFormatError, match=r"m\.zarr.*corrupt"):
        io.load(path)
    path = io.save(meas, tmp_path / "k.zarr")
    shard = path / "intensity" / "c" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:50])  # truncated shard
    with pytest.raises(FileFormatError, match=r"k\.zarr"):
        io.load(path)


def test_bad_input(tmp_path, meas):
    with pytest.raises(ValidationError, match="obj.*xarray.*ndarray"):
        io.save(np.zeros(3), tmp_path / "a.h5")
    with pytest.raises(ValidationError, match=r"suffix '\.txt'"):
        io.save(meas, tmp_path / "a.txt")
    with pytest.raises(ValidationError, match="format"):
        io.save(meas, tmp_path / "a.h5", format="tiff")
    with pytest.raises(ValidationError, match="shards.*Zarr"):
        io.save(meas, tmp_path / "a.h5", shards=4)
    with pytest.raises(ValidationError, match="multiple of the chunks"):
        io.save(meas, tmp_path / "a.zarr", chunks=(2, 16, 12), shards=(3, 16, 12))
    with pytest.raises(ValidationError, match="compression"):
        io.save(meas, tmp_path / "a.zarr", compression="lzf")
    with pytest.raises(ValidationError, match=r"attrs\['handle'\].*object"):
        io.save(meas.assign_attrs(handle=object()), tmp_path / "a.h5")
    with pytest.raises(ValidationError, match="path"):
        io.save(meas, 42)
    with pytest.raises(ValidationError, match="write_cxi needs a measurement"):
        io.write_cxi(xr.DataArray(np.zeros(3)), tmp_path / "a.cxi")
    assert _listdir(tmp_path) == []
    folder = tmp_path / "data.zarr"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a Zarr store"):
        io.save(meas, folder)
    assert (folder / "precious.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        io.save(meas, tmp_path / "no_such_dir" / "a.h5")


# ----------------------------------------------------------------------------- integrity
def _dead_pid():
    """A process id that is not running (a child that has exited and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("suffix", [".h5", ".zarr", ".cxi"])
def test_stale_temporaries_of_killed_saves_are_removed(tmp_path, meas, suffix):
    path = io.save(meas, tmp_path / f"m{suffix}")
    dead = _dead_pid()
    stale_file = tmp_path / f".m{suffix}.tmp-{dead}-0123abcd"
    stale_file.write_bytes(b"half a file")
    stale_dir = tmp_path / f".m{suffix}.old-{dead}-89abcdef"
    (stale_dir / "intensity").mkdir(parents=True)
    legacy = tmp_path / f".m{suffix}.tmp-deadbeef"  # ptynb <= 0.1: no pid in the name
    legacy.write_bytes(b"x")
    alive = tmp_path / f".m{suffix}.tmp-{os.getppid()}-00000000"  # a live process: kept
    alive.write_bytes(b"y")
    other = tmp_path / f".other{suffix}.tmp-{dead}-0123abcd"  # another target: kept
    other.write_bytes(b"z")
    io.save(meas, path)
    assert _listdir(tmp_path) == sorted([path.name, alive.name, other.name])
    _assert_exact(meas, io.load(path))


def test_checkpoint_uses_the_shared_atomic_writer(tmp_path):
    from ptynb.ptycho import checkpoint

    path = tmp_path / "run.h5"
    legacy = tmp_path / "run.h5.tmp-k2j4_x9q"  # tempfile.mkstemp name of the old writer
    legacy.write_bytes(b"")
    stale = tmp_path / f".run.h5.tmp-{_dead_pid()}-0123abcd"
    stale.write_bytes(b"")
    checkpoint.save_checkpoint(path, {"a": np.arange(5, dtype=np.int16)}, {"iteration": 3})
    assert _listdir(tmp_path) == ["run.h5"]
    arrays, meta = checkpoint.load_checkpoint(path)
    np.testing.assert_array_equal(arrays["a"], np.arange(5, dtype=np.int16))
    assert meta["iteration"] == 3


def test_failed_write_removes_its_temporary(tmp_path, meas, monkeypatch):
    seen = []
    real = io._store._write_hdf5

    def failing(obj, tmp, *args):
        real(obj, tmp, *args)
        seen.append(tmp)
        assert tmp.name.startswith(".m.h5.tmp-") and tmp.exists()
        raise OSError("disk full")

    monkeypatch.setattr(io._store, "_write_hdf5", failing)
    with pytest.raises(OSError, match="disk full"):
        io.save(meas, tmp_path / "m.h5")
    assert seen and _listdir(tmp_path) == []


def _flip_byte_in_chunk(path, variable, chunk_index, offset=10):
    with h5py.File(path, "r") as f:
        d = f[variable]
        assert d.fletcher32
        start = d.id.get_chunk_info(chunk_index).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(start + offset)
        b = fh.read(1)
        fh.seek(start + offset)
        fh.write(bytes([b[0] ^ 0x04]))


def test_hdf5_checksum_detects_a_flipped_byte(tmp_path, meas, recon):
    path = io.save(meas, tmp_path / "m.h5")
    with h5py.File(path, "r") as f:
        assert f["intensity"].fletcher32 and f["scan_y"].fletcher32 and f["mask"].fletcher32
    _flip_byte_in_chunk(path, "intensity", 4)
    with pytest.raises(FileFormatError, match=r"m\.h5.*checksum") as info:
        io.load(path)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(FileFormatError, match="checksum"):
        io.open_intensity(path, 4)
    np.testing.assert_array_equal(io.open_intensity(path, 3), meas["intensity"].values[3])  # other chunks fine
    # CXI patterns carry the checksum too
    cpath = io.save(meas, tmp_path / "m.cxi")
    _flip_byte_in_chunk(cpath, "entry_1/instrument_1/detector_1/data", 2)
    with pytest.raises(FileFormatError, match=r"m\.cxi.*checksum"):
        io.read_cxi(cpath)
    # complex (compound) data are protected too
    rpath = io.save(recon, tmp_path / "r.h5")
    _flip_byte_in_chunk(rpath, "object", 0, offset=100)
    with pytest.raises(FileFormatError, match="checksum"):
        io.load(rpath)


def test_zarr_missing_chunk_is_an_error(tmp_path, meas):
    path = io.save(meas, tmp_path / "m.zarr", shards=2)  # 7 patterns -> shards 0..3
    shard = path / "intensity" / "c" / "1" / "0" / "0"
    assert shard.is_file()
    shard.unlink()
    for lazy in (False, True):
        with pytest.raises(FileFormatError, match=r"m\.zarr.*missing chunks.*intensity: 3 of 4 shards") as info:
            io.load(path, lazy=lazy)
        assert "fill_missing=True" in str(info.value)
    with pytest.raises(FileFormatError, match="missing chunks"):
        io.open_intensity(path, 0)
    back = io.load(path, fill_missing=True)  # explicit opt-in: zarr's fill value
    np.testing.assert_array_equal(back["intensity"].values[:2], meas["intensity"].values[:2])
    assert np.isnan(back["intensity"].values[2:4]).all()
    np.testing.assert_array_equal(back["intensity"].values[4:], meas["intensity"].values[4:])
    # a coordinate chunk missing is caught as well
    io.save(meas, tmp_path / "c.zarr")
    (tmp_path / "c.zarr" / "scan_y" / "c" / "0").unlink()
    with pytest.raises(FileFormatError, match="scan_y: 0 of 1"):
        io.load(tmp_path / "c.zarr")


def test_load_any_measurement_from_each_format(tmp_path, meas, recon):
    for name in ("m.h5", "m.zarr", "m.cxi"):
        got = io.load_any(io.save(meas, tmp_path / name))
        assert got.attrs["kind"] == "measurement"
        np.testing.assert_array_equal(got["intensity"].values, meas["intensity"].values)
        np.testing.assert_array_equal(got["scan_x"].values, meas["scan_x"].values)
    # a DataTree: the first node with intensity, with the attrs inherited from the root
    tree = xr.DataTree.from_dict({"/": xr.Dataset(attrs={"sample": "gold"}), "/recon": recon,
                                  "/angle_000": meas})
    got = io.load_any(io.save(tree, tmp_path / "t.h5"))
    assert got.attrs["sample"] == "gold" and got.sizes["scan"] == meas.sizes["scan"]
    with pytest.raises(ValidationError, match=r"intensity.*r\.h5.*not a measurement"):
        io.load_any(io.save(recon, tmp_path / "r.h5"))
    with pytest.raises(ValidationError, match="intensity.*no measurement node"):
        io.load_any(io.save(xr.DataTree.from_dict({"/a": recon}), tmp_path / "rt.zarr"))
    with pytest.raises(FileNotFoundError):
        io.load_any(tmp_path / "nothing.h5")


def test_load_any_still_importable_from_the_explorer():
    pytest.importorskip("panel")
    from ptynb.apps import explorer

    assert explorer.load_any is io.load_any
