"""Data model: constructors, conventions and every validate() failure the issue lists."""
import numpy as np
import pytest
import xarray as xr

import ptynb.data as pd_
from ptynb.data import ValidationError, measurement, validate
from ptynb.physics import wavelength

E = 8000.0
Z = 2.0
DET = 75e-6


def _meas(n=12, det=32, **kw):
    rng = np.random.default_rng(0)
    inten = rng.poisson(5.0, (n, det, det)).astype(np.float32)
    y = np.linspace(0, 5e-7, n)
    x = np.linspace(0, 5e-7, n)
    args = dict(radiation="xray", energy_eV=E, detector_distance=Z, detector_pixel_size=DET)
    args.update(kw)
    return measurement(inten, y, x, **args)


def test_measurement_conventions():
    m = _meas()
    lam = wavelength(E, "xray")
    px = lam * Z / (32 * DET)
    assert m.attrs["kind"] == "measurement"
    assert m.attrs["pixel_size"] == pytest.approx(px, rel=1e-12)
    assert m.intensity.dtype == np.float32
    assert m.intensity.dims == ("scan", "qy", "qx")
    # every dim has an index coordinate; qy is centred with zero at n//2
    for d in m.intensity.dims:
        assert d in m.indexes
    assert m.qy.values[16] == 0.0
    assert np.diff(m.qy.values)[0] == pytest.approx(1 / (32 * px))
    assert m.scan_y.attrs["units"] == "m"
    assert m.attrs["ptynb_version"]


def test_measurement_leading_dims_and_beams():
    rng = np.random.default_rng(1)
    inten = rng.poisson(3.0, (3, 2, 5, 16, 16)).astype(np.float32)
    m = measurement(inten, np.zeros(5), np.linspace(0, 1e-7, 5), radiation="xray", energy_eV=E,
                    pixel_size=10e-9, beam=["left", "center", "right"], beam_tilt=[-1.5, 0, 1.5],
                    angle=[0.0, 30.0])
    assert m.intensity.dims == ("beam", "angle", "scan", "qy", "qx")
    assert list(m.beam.values) == ["left", "center", "right"]
    assert m.beam_tilt.sel(beam="right") == 1.5
    assert m.angle.attrs["units"] == "degree"


def test_electron_pixel_size_from_reciprocal_sampling():
    inten = np.ones((4, 64, 64), np.float32)
    dq = 1 / (64 * 0.1e-9)
    m = measurement(inten, np.zeros(4), np.zeros(4), radiation="electron", energy_eV=300e3,
                    reciprocal_pixel_size=dq)
    assert m.attrs["pixel_size"] == pytest.approx(0.1e-9)
    assert m.attrs["wavelength"] == pytest.approx(1.969e-12, rel=1e-3)


# ---- every validate() failure: type + message fragment
def test_missing_dims():
    with pytest.raises(ValidationError, match=r"intensity: needs dims \(\.\.\., scan, qy, qx\)"):
        measurement(np.ones((16, 16), np.float32), [0.0], [0.0], radiation="xray", energy_eV=E,
                    pixel_size=1e-8)


def test_wrong_dims():
    m = _meas()
    bad = m.assign(intensity=m.intensity.rename(qy="ky"))
    with pytest.raises(ValidationError, match=r"intensity: has dims .* expected \(\.\.\., scan, qy, qx\)"):
        validate(bad)
    with pytest.raises(ValidationError, match="unexpected dims"):
        validate(m.assign(intensity=m.intensity.expand_dims(time=2)))


def test_nan_and_inf():
    m = _meas()
    m.intensity.values[0, 0, 0] = np.nan
    m.intensity.values[1, 0, 0] = np.inf
    with pytest.raises(ValidationError, match=r"intensity: contains 2 NaN or inf"):
        validate(m)


def test_negative_intensity():
    m = _meas()
    m.intensity.values[2, 3, 4] = -1
    with pytest.raises(ValidationError, match="intensity: has 1 negative value"):
        validate(m)


def test_positions_count_mismatch():
    inten = np.ones((10, 16, 16), np.float32)
    with pytest.raises(ValidationError, match=r"scan_y: has 9 positions .* 10 patterns"):
        measurement(inten, np.zeros(9), np.zeros(10), radiation="xray", energy_eV=E, pixel_size=1e-8)


def test_positions_outside_field_of_view_raises():
    with pytest.raises(ValidationError, match=r"scan_y/scan_x: \d+ position\(s\) lie outside the field of view"):
        _meas(field_of_view=[0.0, 4e-7, 0.0, 4e-7])
    with pytest.raises(ValidationError, match="are the positions in metres"):
        _meas(pixel_size=None).pipe(lambda m: m.assign_coords(scan_x=m.scan_x * 1e6)).pipe(validate)


def test_missing_energy_and_geometry_attrs():
    m = _meas()
    no_e = m.copy()
    del no_e.attrs["energy_eV"]
    with pytest.raises(ValidationError, match="energy_eV: missing"):
        validate(no_e)
    no_rad = m.copy()
    del no_rad.attrs["radiation"]
    with pytest.raises(ValidationError, match="radiation: missing"):
        validate(no_rad)
    no_geom = m.copy()
    for k in ("pixel_size", "detector_distance", "detector_pixel_size"):
        del no_geom.attrs[k]
    with pytest.raises(ValidationError, match="pixel_size: missing"):
        validate(no_geom)
    with pytest.raises(ValidationError, match="pixel_size: missing"):
        measurement(np.ones((2, 8, 8), np.float32), [0, 0], [0, 0], radiation="xray", energy_eV=E)
    with pytest.raises(ValidationError, match="energy_eV: must be positive"):
        _meas(energy_eV=-5)


def test_complex_where_real_expected():
    with pytest.raises(ValidationError, match="intensity: is complex"):
        measurement(np.ones((2, 8, 8), np.complex64), [0, 0], [0, 0], radiation="xray",
                    energy_eV=E, pixel_size=1e-8)
    m = _meas()
    with pytest.raises(ValidationError, match="intensity: is complex"):
        validate(m.assign(intensity=m.intensity.astype(np.complex64)))


def test_inconsistent_pixel_sizes():
    with pytest.raises(ValidationError, match="pixel_size: .* inconsistent with the detector geometry"):
        _meas(pixel_size=1e-8)
    m = _meas()
    bad = m.assign_coords(qy=m.qy * 2)
    with pytest.raises(ValidationError, match="qy: coordinate spacing .* inconsistent"):
        validate(bad)
    bad_wl = m.assign_attrs(wavelength=1e-10)
    with pytest.raises(ValidationError, match="wavelength: .* disagrees with energy_eV"):
        validate(bad_wl)


def test_bad_mask():
    with pytest.raises(ValidationError, match="mask: has shape"):
        _meas(mask=np.ones((8, 8), bool))
    with pytest.raises(ValidationError, match="mask: marks every detector pixel invalid"):
        _meas(mask=np.zeros((32, 32), bool))


def test_validate_never_modifies():
    m = _meas()
    before = m.copy(deep=True)
    assert validate(m) is m
    xr.testing.assert_identical(m, before)


def test_unknown_kind_and_type():
    with pytest.raises(ValidationError, match="kind: cannot tell"):
        validate(xr.Dataset({"foo": ("a", [1, 2])}))
    with pytest.raises(ValidationError, match="expected an xarray"):
        validate(np.zeros(3))


# ---- other kinds
def test_reconstruction_constructor_and_checks():
    obj = np.ones((2, 40, 40), np.complex64)
    probe = np.ones((16, 16), np.complex64)
    rec = pd_.reconstruction(obj, probe, pixel_size=1e-8, slice_thickness=5e-8,
                             scan_y=[1e-7, 2e-7], scan_x=[1e-7, 2e-7], cost=[3.0, 2.0, 1.0])
    assert rec.object.dims == ("slice", "y", "x")
    assert rec.probe.dims == ("mode", "py", "px")
    assert rec.z.values[1] == pytest.approx(5e-8)
    validate(rec)
    far = rec.assign(scan_y=rec.scan_y + 1e-6)
    with pytest.raises(ValidationError, match="outside the object field of view"):
        validate(far)
    with pytest.raises(ValidationError, match="object: must be complex"):
        validate(rec.assign(object=rec.object.real))
    with pytest.raises(ValidationError, match="x: coordinate spacing"):
        validate(rec.assign_coords(x=rec.x * 1.5))


def test_projections_and_volume():
    p = pd_.projections(np.zeros((3, 8, 10)), [0, 10, 20], pixel_size=1e-8, geometry="tomography")
    assert p.dims == ("angle", "y", "x") and p.attrs["geometry"] == "tomography"
    assert p.x.values[5] == 0.0
    validate(p)
    with pytest.raises(ValidationError, match="angle: has 2 values for 3 projections"):
        pd_.projections(np.zeros((3, 8, 10)), [0, 10], pixel_size=1e-8)
    v = pd_.volume(np.zeros((4, 5, 6), np.complex64), voxel_size=(1e-8, 2e-8, 2e-8))
    assert v.dims == ("z", "y", "x") and v.y.values[1] - v.y.values[0] == pytest.approx(2e-8)
    validate(v)
    v2 = v.copy()
    v2.values[0, 0, 0] = np.nan
    with pytest.raises(ValidationError, match="volume: contains 1 NaN"):
        validate(v2)


def test_experiment_tree_shares_attrs_and_validates():
    m0, m1 = _meas(), _meas()
    tree = pd_.experiment({"angle_000": m0, "angle_030": m1.assign_attrs(angle_deg=30.0)},
                          sample="membrane")
    assert tree.attrs["kind"] == "experiment"
    assert tree.attrs["energy_eV"] == E  # shared detector/probe info lives in the parent
    assert "energy_eV" not in tree["angle_000"].attrs
    assert tree["angle_030"].attrs["angle_deg"] == 30.0
    assert set(tree.children) == {"angle_000", "angle_030"}
    validate(tree)
    ds = pd_.node_dataset(tree, "angle_030")
    validate(ds)
    assert ds.attrs["energy_eV"] == E
    bad = m1.copy(deep=True)
    bad.intensity.values[0, 0, 0] = -3
    with pytest.raises(ValidationError, match="angle_001: has 1 negative|intensity: has 1 negative"):
        pd_.experiment({"angle_001": bad})


def test_accessor():
    m = _meas()
    assert m.pty.kind == "measurement"
    assert m.pty.wavelength == pytest.approx(1.5498e-10, rel=1e-4)
    assert m.pty.validate() is m
