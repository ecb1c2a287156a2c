"""Every bad input of issue 11 gets a clear, specific answer (the catalogue).

One test per input (or per small family), each asserting the message a user sees: from the
API (``ptynb.data``, ``ptynb.io``, ``ptynb._memory``, ``ptynb.ptycho``), from the CLI (in process
through ``ptynb.cli.main`` and, for "no traceback", as a subprocess) and from the apps (without a
server: the task runner finishes synchronously).
"""
from __future__ import annotations

import subprocess
import sys
import warnings

import h5py
import numpy as np
import pytest
import xarray as xr

import ptynb
from ptynb import io
from ptynb._memory import (
    MemoryForecastError,
    MemoryForecastWarning,
    check_available,
    forecast,
    forecast_bytes,
)
from ptynb.data import DataWarning, UnitWarning, ValidationError, measurement, projections, validate
from ptynb.io import FileFormatError

E_CHARGE = 1.602176634e-19


def _meas(inten=None, n=6, det=8, **kw):
    if inten is None:
        inten = np.random.default_rng(0).poisson(5.0, (n, det, det)).astype(np.float32)
    n = np.shape(inten)[-3]
    args = {"radiation": "xray", "energy_eV": 8000.0, "pixel_size": 1e-8}
    args.update(kw)
    return measurement(inten, np.arange(n) * 2e-8, np.zeros(n), **args)


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning where none is expected fails the test
        yield


# ============================================================================ units
def test_xray_energy_in_kev_given_as_ev():
    with pytest.raises(ValidationError, match=r"^energy_eV: 8 eV is below 100 eV, too low for X-ray "
                                              r"photons: was the energy given in keV\? For 8 keV use "
                                              r"energy_eV=8000"):
        _meas(energy_eV=8)


def test_electron_energy_in_kev_given_as_ev():
    with pytest.raises(ValidationError, match=r"200 eV is below 1000 eV, too low for electrons: .*"
                                              r"For 200 keV use energy_eV=200000"):
        _meas(radiation="electron", energy_eV=200, pixel_size=1e-10)


def test_validate_refuses_a_kev_energy_in_attrs():
    m = _meas()
    m.attrs["energy_eV"] = 12.4
    m.attrs.pop("wavelength")
    with pytest.raises(ValidationError, match="For 12.4 keV use energy_eV=12400"):
        validate(m)


def test_low_energy_accepted_when_meant(no_warnings):
    m = _meas(energy_eV=92.0, allow_low_energy=True)  # EUV ptychography at 13.5 nm
    assert m.attrs["energy_eV"] == 92.0


def test_projection_angles_in_radians_warn():
    with pytest.warns(UnitWarning, match=r"angle: all 90 angles lie within \+-2 pi .*degrees: were "
                                         r"radians given\? Convert with numpy.degrees"):
        validate(projections(np.zeros((90, 4, 4)), np.linspace(0, np.pi, 90), pixel_size=1e-8))


def test_measurement_angles_in_radians_warn():
    inten = np.ones((10, 3, 8, 8), np.float32)
    with pytest.warns(UnitWarning, match="all 10 angles lie within"):
        _meas(inten, angle=np.linspace(-1.2, 1.2, 10), dims=("angle", "scan", "qy", "qx"))


def test_degrees_and_short_tilt_series_do_not_warn(no_warnings):
    validate(projections(np.zeros((90, 4, 4)), np.linspace(0, 180, 90), pixel_size=1e-8))
    validate(projections(np.zeros((5, 4, 4)), [-2, -1, 0, 1, 2], pixel_size=1e-8))  # a few views


def _foreign_cxi(path, energy, units=None):
    rng = np.random.default_rng(6)
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 140
        e = f.create_group("entry_1")
        e["instrument_1/source_1/energy"] = energy
        if units is not None:
            e["instrument_1/source_1/energy"].attrs["units"] = units
        det = e.create_group("instrument_1/detector_1")
        det["data"] = rng.poisson(7.0, (4, 10, 10)).astype(np.uint16)
        det["distance"] = 5.0
        det["x_pixel_size"] = det["y_pixel_size"] = 172e-6
        tr = np.zeros((4, 3))
        tr[:, 0] = np.arange(4) * 1e-7
        e["sample_1/geometry_1/translation"] = tr
    return path


@pytest.mark.parametrize("value, guess", [(8.0, r"looks like 8 keV \(energy_eV=8000\)"),
                                          (8000.0, r"looks like 8000 eV \(energy_eV=8000\)")])
def test_cxi_energy_not_in_joules(tmp_path, value, guess):
    path = _foreign_cxi(tmp_path / "beamline.cxi", value)
    with pytest.raises(FileFormatError, match=r"beamline\.cxi: CXI field entry_1/instrument_1/source_1/"
                                              r"energy is " + f"{value:g}" + r", which in joules \(the CXI "
                                              r"unit\) would be .* eV: it " + guess):
        io.read_cxi(path)
    assert io.read_cxi(path, energy_eV=8000.0).attrs["energy_eV"] == 8000.0  # the way out works


def test_cxi_energy_with_explicit_units_and_in_joules(tmp_path):
    assert io.read_cxi(_foreign_cxi(tmp_path / "ev.cxi", 8000.0, units="eV")).attrs["energy_eV"] == 8000.0
    assert io.read_cxi(_foreign_cxi(tmp_path / "kev.cxi", 8.0, units="keV")).attrs["energy_eV"] == 8000.0
    got = io.read_cxi(_foreign_cxi(tmp_path / "j.cxi", 8000.0 * E_CHARGE))
    assert got.attrs["energy_eV"] == pytest.approx(8000.0, rel=1e-12)
    with pytest.raises(FileFormatError, match="has units 'furlongs'; expected J"):
        io.read_cxi(_foreign_cxi(tmp_path / "odd.cxi", 8.0, units="furlongs"))


# ============================================================================ silent acceptance
def test_numeric_strings_as_intensities():
    text = np.full((4, 8, 8), "12", dtype="<U2")
    with pytest.raises(ValidationError, match=r"^intensity: holds text \(dtype <U2\), not numbers: parse "
                                              r"it first"):
        _meas(text)
    m = _meas()
    bad = m.assign(intensity=(m.intensity.dims, m.intensity.values.astype(str)))
    with pytest.raises(ValidationError, match="intensity: holds text"):
        validate(bad)


def test_boolean_intensities():
    with pytest.raises(ValidationError, match="intensity: is boolean; diffraction intensities must be counts"):
        _meas(np.ones((4, 8, 8), bool))


def test_nan_intensity_eager():
    inten = np.ones((4, 8, 8), np.float32)
    inten[2, 3, 3] = np.nan
    with pytest.raises(ValidationError, match=r"^intensity: contains 1 NaN or inf value\(s\)$"):
        _meas(inten)


def test_all_zero_patterns():
    with pytest.raises(ValidationError, match=r"intensity: every one of the 4 diffraction patterns is zero"):
        _meas(np.zeros((4, 8, 8), np.float32))


def test_some_zero_patterns_are_named():
    inten = np.ones((6, 8, 8), np.float32)
    inten[[1, 4]] = 0
    with pytest.warns(DataWarning, match=r"intensity: 2 of 6 diffraction patterns are all zero \(scan 1, 4\)"):
        _meas(inten)


@pytest.fixture
def lazy_nan_file(tmp_path):
    inten = np.ones((6, 8, 8), np.float32)
    inten[5, 0, 0] = np.nan
    m = _meas(inten, validate_data=False)
    return io.save(m, tmp_path / "nan.h5")


def test_lazy_file_with_nan_says_it_did_not_check(lazy_nan_file):
    ds = io.load(lazy_nan_file, lazy=True)
    with pytest.warns(DataWarning, match=r"intensity: lazily loaded \(1.50 KiB, not read\): NaN/inf, negative "
                                         r"values and all-zero patterns were NOT checked; "
                                         r"validate\(ds, lazy='scan'\)"):
        validate(ds)
    ds.close()


def test_lazy_file_with_nan_found_by_a_chunked_scan(lazy_nan_file):
    ds = io.load(lazy_nan_file, lazy=True)
    with pytest.raises(ValidationError, match=r"intensity: contains 1 NaN or inf value\(s\) \(chunked scan "
                                              r"of the lazy data\)"):
        validate(ds, lazy="scan")
    with pytest.raises(ValidationError, match="lazy: must be 'warn', 'scan' or 'skip'"):
        validate(ds, lazy="maybe")
    ds.close()


def test_eager_load_of_the_nan_file_is_refused_by_the_workflow_check(lazy_nan_file):
    with pytest.raises(ValidationError, match="intensity: contains 1 NaN"):
        validate(io.load_any(lazy_nan_file))


# ============================================================================ memory forecasts
def test_forecast_bytes():
    assert forecast_bytes((200 * 200, 1024, 1024), "float32") == 40000 * 1024 * 1024 * 4  # 156.25 GiB
    assert forecast({"a": ((2, 3), "complex64"), "b": 10}) == {"a": 48, "b": 10}
    with pytest.raises(ValidationError, match="shape: must be non-negative integers"):
        forecast_bytes((3, -1))
    with pytest.raises(ValidationError, match="dtype: not a numpy dtype"):
        forecast_bytes((3,), "no-such-type")


def test_forecast_refuses_before_allocating():
    need = forecast({"intensity": ((40000, 1024, 1024), "float32")})
    with pytest.raises(MemoryForecastError) as info:
        check_available(need, "the stereo simulation", {"detector": 1024, "scan_grid": 200},
                        available=16 * 2**30)
    msg = str(info.value)
    assert msg == ("memory: the stereo simulation needs about 156.25 GiB but 16.00 GiB of memory is "
                   "available; largest: intensity 156.25 GiB. Reduce detector (now 1024), scan_grid "
                   "(now 200), or pass allow_exceeding=True (environment: "
                   "PTYNB_ALLOW_EXCEEDING_MEMORY=1) to try anyway")
    e = info.value
    assert isinstance(e, ValidationError) and isinstance(e, MemoryError)  # CLI one line; except MemoryError
    assert e.needed == 40000 * 1024 * 1024 * 4 and e.available == 16 * 2**30


def test_forecast_proceeds_when_told(monkeypatch):
    with pytest.warns(MemoryForecastWarning, match="allowed to exceed memory: big needs about 2.00 KiB"):
        assert check_available(2048, "big", allow_exceeding=True, available=1000) == 2048
    monkeypatch.setenv("PTYNB_ALLOW_EXCEEDING_MEMORY", "1")
    with pytest.warns(MemoryForecastWarning):
        check_available(2048, "big", available=1000)
    monkeypatch.delenv("PTYNB_ALLOW_EXCEEDING_MEMORY")
    assert check_available(100, "small", available=1000) == 100


def test_reconstruction_of_far_apart_positions_is_forecast_first(monkeypatch):
    """Two positions 60,000 px apart: refused before the 27 GB object is allocated (done in ptycho)."""
    from test_ptycho_reconstruct import _far_apart

    from ptynb.ptycho import memory, reconstruct

    m = _far_apart(60_000)
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": {"host": 2**30, "device": None})
    with pytest.raises(MemoryError, match="does not fit in memory.*allow_exceeding=True"):
        reconstruct(m, engine="epie", iterations=1, progress=False)


def test_cli_prints_a_memory_refusal_as_one_line(tmp_path, monkeypatch, capsys):
    from ptynb import cli, simulate

    def huge(**_kw):
        check_available(forecast({"intensity": ((40000, 1024, 1024), "float32")}), "the demo",
                        {"detector": 1024}, available=2**30)

    monkeypatch.setattr(simulate, "demo", huge)
    assert cli.main(["simulate", str(tmp_path / "out.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ptynb simulate: memory: the demo needs about 156.25 GiB")
    assert "Traceback" not in err[0]


def test_reading_a_file_larger_than_memory_is_forecast(tmp_path, monkeypatch, capsys):
    """A (400 GB) file read eagerly: refused before reading (here: 1 KiB 'available')."""
    import ptynb._memory as M
    from ptynb import cli

    m = _meas()  # 6 x 8 x 8 float32 = 1.5 KiB of patterns
    h5, cxi, zarr = (io.save(m, tmp_path / f"m{suf}") for suf in (".h5", ".cxi", ".zarr"))
    tree = io.save(xr.DataTree.from_dict({"/a": m}), tmp_path / "t.h5")
    monkeypatch.setattr(M, "available_memory", lambda: 1024)
    for path in (h5, zarr, tree):
        with pytest.raises(MemoryForecastError, match=r"memory: reading '.*' into memory needs about "
                                                      r"\d.* KiB but 1.00 KiB of memory is available.* "
                                                      r"load\(path, lazy=True\) reads patterns on demand"):
            io.load(path)
    with pytest.raises(MemoryForecastError, match=r"reading '.*m\.cxi' needs about .* largest: entry_1 "
                                                  r"as stored"):
        io.load_any(cxi)
    lazy = io.load(h5, lazy=True)  # lazy reads nothing: no forecast needed
    assert lazy["intensity"].shape == (6, 8, 8)
    lazy.close()
    with pytest.warns(MemoryForecastWarning):
        assert io.load(h5, allow_exceeding=True)["intensity"].shape == (6, 8, 8)
    assert cli.main(["run", "stereo", str(tmp_path / "o.h5"), "--input", str(h5)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ptynb run: memory: reading ")


# ============================================================================ files (integrity)
def test_files_truncated_corrupt_or_foreign(tmp_path):
    m = _meas()
    path = io.save(m, tmp_path / "m.h5")
    data = path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match=r"cut\.h5: truncated or corrupt HDF5 file"):
        io.load(tmp_path / "cut.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(FileFormatError, match=r"text\.h5: is not an HDF5 file: it looks like a text file"):
        io.load(tmp_path / "text.h5")
    with pytest.raises(FileNotFoundError):
        io.load(tmp_path / "missing.h5")


def test_flipped_byte_and_missing_zarr_chunk(tmp_path):
    from test_io import _flip_byte_in_chunk

    m = _meas()
    path = io.save(m, tmp_path / "m.h5")
    _flip_byte_in_chunk(path, "intensity", 1)
    with pytest.raises(FileFormatError, match=r"m\.h5: corrupt data: a chunk fails its checksum"):
        io.load(path)
    z = io.save(m, tmp_path / "m.zarr", shards=2)
    (z / "intensity" / "c" / "1" / "0" / "0").unlink()
    with pytest.raises(FileFormatError, match=r"Zarr store has missing chunks \(intensity: 2 of 3 shards"):
        io.load(z)


def test_killed_save_leaves_no_temporary_behind(tmp_path):
    m = _meas()
    path = io.save(m, tmp_path / "m.h5")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stale = tmp_path / f".m.h5.tmp-{proc.pid}-0123abcd"  # what a killed save of pid leaves
    stale.write_bytes(b"x" * 1000)
    io.save(m, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]


# ============================================================================ CLI
@pytest.mark.parametrize("argv, message", [
    (["run", "stereo", "out.txt"], "ptynb run: output 'out.txt': the result is a tree; use a .h5, .nc, .zarr file"),
    (["run", "stereo", "OUT.h5", "--set", "theta_s=20"],
     "ptynb run: theta_s: 20.0 rejected: must be a number in [0.1, 10]"),
    (["run", "stereo", "OUT.h5", "--set", "epie_iterations=2.5"],
     "ptynb run: epie_iterations: '2.5' is not an integer in [0, inf)"),
    (["run", "stereo", "OUT.h5", "--set", "seed=-1"], "ptynb run: seed: -1 rejected: must be an integer in [0, inf)"),
    (["run", "stereo", "OUT.h5", "--set", "nbeams=2"], "ptynb run: nbeams: unknown setting; did you mean 'n_beams'?"),
    (["run", "stereo", "OUT.h5", "--input", "MISSING.h5"], "No such file or directory"),
    (["run", "stereo", "OUT.h5", "--input", "TEXT.h5"], "is not an HDF5 file: it looks like a text file"),
    (["run", "stereo", "OUT.h5", "--input", "KEV.cxi"], "looks like 8 keV (energy_eV=8000)"),
    (["run", "stereo", "OUT.h5", "--input", "SINGLE.h5"], "no beam axis"),
    (["simulate", "OUT.h5", "--seed", "-1"], "ptynb simulate: --seed must be >= 0, got -1"),
    (["serve", "--port", "70000"], "ptynb serve: --port must be in 1..65535, got 70000"),
    (["run", "nosuchflow", "OUT.h5"], "nosuchflow"),
])
def test_cli_bad_inputs_are_one_line_exit_2(tmp_path, capsys, argv, message):
    from ptynb import cli

    (tmp_path / "TEXT.h5").write_text("hello")
    _foreign_cxi(tmp_path / "KEV.cxi", 8.0)
    if "SINGLE.h5" in argv:
        io.save(_meas(), tmp_path / "SINGLE.h5")
    argv = [str(tmp_path / a) if a.isupper() or a.startswith(("OUT", "MISSING", "TEXT", "KEV", "SINGLE"))
            else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert message in err[0], err[0]
    assert not (tmp_path / "OUT.h5").exists()  # nothing written, nothing half-written


def test_cli_subprocess_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ptynb.cli", "run", "stereo", str(tmp_path / "o.h5"),
                           "--set", "theta_s=20"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("ptynb run: theta_s: 20.0 rejected: must be a number in [0.1, 10] "
                                   "(--debug shows the traceback)")
    assert "Traceback" not in proc.stderr + proc.stdout


# ============================================================================ apps
pn = pytest.importorskip("panel")


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PTYNB_DATA_DIR", str(tmp_path))
    return tmp_path


def test_app_out_of_bounds_setting_shows_the_bound(data_dir):
    from ptynb.apps.stereo import StereoApp

    app = StereoApp()
    app.setting_cards()
    w = app._number_widgets["theta_s"][0]
    assert w.label == "Theta s (deg)"
    w.value = 20.0
    assert app.settings.theta_s == 1.5 and w.value == 1.5
    assert app.setting_error.object == ("**Theta s**: 20 deg is not allowed; it must be in [0.1, 10] deg. "
                                        "Kept 1.5 deg.")
    px = app._number_widgets["pixel_size"][0]
    assert px.label == "Pixel size (nm)" and px.value == 8.1
    px.value = 5000.0  # 5 um: above the 1000 nm bound
    assert "it must be in [0.1, 1000] nm. Kept 8.1 nm." in app.setting_error.object


def test_app_busy_alert_cleared(data_dir):
    from ptynb.apps.stereo import StereoApp

    app = StereoApp()
    app.runner.running = True
    assert not app.run() and "a run is already in progress" in app.error.object
    app.runner.running = False
    assert not app.error.visible


def test_app_shows_a_memory_refusal(data_dir):
    from ptynb.apps._workflow import WorkflowApp
    from ptynb.workflows import Step, Workflow, WorkflowSettings

    def step(run):
        check_available(10 * 2**40, "the toy simulation", {"size": 10}, available=2**30)

    wf = Workflow(name="memtoy", title="t", description="d", settings=WorkflowSettings,
                  steps=(Step("measurement", step),))
    app = WorkflowApp(wf)
    app.run()
    assert app.error.visible
    assert app.error.object.startswith("MemoryForecastError: memory: the toy simulation needs about "
                                       "10.00 TiB but 1.00 GiB of memory is available")
    assert app.message.object == "run error" and app.partial.visible  # the partial tree can be saved


def _explorer_with(data_dir, name, ds):
    from ptynb.apps.explorer import Explorer

    io.save(ds, data_dir / name)
    ex = Explorer()
    ex._load()  # the demo, so that there is something to go stale
    assert ex.views.objects and not ex.error.visible
    ex.source = "file from the data directory"
    ex.files.refresh()
    ex.files.select.value = name
    ex._load()
    return ex


def test_explorer_all_zero_file(data_dir):
    ex = _explorer_with(data_dir, "zeros.h5", _meas(np.zeros((4, 8, 8), np.float32), validate_data=False))
    assert ex.error.visible and "every one of the 4 diffraction patterns is zero" in ex.error.object
    assert ex.runner.status.object.startswith("**Error:** ValidationError")  # never "done"
    assert ex.views.objects == [] and ex.measurement is None  # no stale plots
    assert ex.info.object == "Nothing loaded (see the error above)."


def test_explorer_multi_beam_file_says_what_is_shown(data_dir):
    inten = np.random.default_rng(0).poisson(5.0, (3, 4, 8, 8)).astype(np.float32)
    ds = _meas(inten, beam=["left", "center", "right"], beam_tilt=[-1.5, 0, 1.5])
    ds["true_probe"] = (("beam", "mode", "py", "px"), np.ones((3, 1, 8, 8), np.complex64))  # one per beam
    ex = _explorer_with(data_dir, "beams.h5", ds)
    assert not ex.error.visible and ex.runner.status.object == "done"
    assert ex.warning.visible
    assert ("this measurement has 3 beams (left, center, right); only beam left is shown here. "
            "Use the stereo app (/stereo) to reconstruct them all.") in ex.warning.object


def test_explorer_negative_seed(data_dir):
    from ptynb.apps.explorer import Explorer

    ex = Explorer()
    ex.seed = -3
    ex._load()
    assert ex.error.visible and ex.error.object == "seed: must be an integer >= 0 (in [0, inf)), got -3"


def test_app_shows_warnings_of_the_users_file(data_dir):
    from ptynb.apps.stereo import StereoApp

    inten = np.random.default_rng(0).poisson(5.0, (2, 4, 8, 8)).astype(np.float32)
    inten[:, 1] = 0
    io.save(_meas(inten, beam=["left", "right"], beam_tilt=[-1.5, 1.5], validate_data=False),
            data_dir / "zero_pattern.h5")
    app = StereoApp()
    app.source = "file from the data directory"
    app.files.refresh()
    app.files.select.value = "zero_pattern.h5"
    started = []
    app.runner.start = lambda *a, **k: started.append(1) or True  # only the file check matters here
    assert app.run() and started
    assert app.warning.visible
    assert "intensity: 2 of 8 diffraction patterns are all zero (scan 1, 1" in app.warning.object


# ============================================================================ fixes in other modules
def test_non_integer_iteration_count():
    from test_ptycho_reconstruct import _far_apart

    from ptynb.ptycho import reconstruct

    with pytest.raises(ValidationError, match="iterations: must be a whole number"):
        reconstruct(_far_apart(0), engine="epie", iterations=2.5, progress=False)


def test_negative_seed_in_reconstruct():
    from test_ptycho_reconstruct import _far_apart

    from ptynb.ptycho import reconstruct

    with pytest.raises(ValidationError, match="seed: must be an integer >= 0"):
        reconstruct(_far_apart(0), engine="epie", iterations=1, seed=-1, progress=False)


def test_negative_seed_in_simulate():
    with pytest.raises(ValidationError, match="seed: must be an integer >= 0"):
        ptynb.simulate.demo(seed=-1)


def _stereo_with_reference(name):
    from ptynb.workflows import get

    wf = get("stereo")
    s = wf.settings()
    s.apply_preset("quick look (seconds)")
    s.reference_beam = name
    s.scan_grid = 3
    s.epie_iterations, s.lsqml_iterations = 1, 0
    with pytest.raises(ValidationError, match=r"^reference_beam: 'middle' is not a beam of the data; "
                                              r"beams: left, right$") as info:
        wf.run(s, progress=False)
    return info.value


def test_unknown_reference_beam():
    _stereo_with_reference("middle")  # fixed in ptynb/workflows/stereo.py this session


def test_unknown_reference_beam_is_refused_before_any_work():
    exc = _stereo_with_reference("middle")
    assert list(exc.partial_tree.attrs["steps_done"]) == []


def test_stereo_simulation_is_forecast(monkeypatch):
    import ptynb._memory as M
    from ptynb.ptycho import memory
    from ptynb.workflows import get

    monkeypatch.setattr(M, "available_memory", lambda: 2**20)
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": {"host": 2**20, "device": None})
    simulated = []
    real = ptynb.simulate.beams
    monkeypatch.setattr(ptynb.simulate, "beams", lambda *a, **k: simulated.append(1) or real(*a, **k))
    wf = get("stereo")
    s = wf.settings()
    s.apply_preset("quick look (seconds)")
    s.detector = 128
    s.scan_grid = 6
    with pytest.raises(MemoryForecastError, match=r"the stereo simulation needs about .* Reduce detector "
                                                  r"\(now 128\), scan_grid \(now 6\)"):
        wf.run(s, progress=False)
    assert not simulated


def test_simulator_is_forecast(monkeypatch):
    import ptynb._memory as M

    monkeypatch.setattr(M, "available_memory", lambda: 2**10)
    with pytest.raises(MemoryForecastError, match="the ptychography simulation needs about"):
        ptynb.simulate.demo()


def test_lazy_nan_measurement_in_reconstruct():
    da = pytest.importorskip("dask.array")
    from test_ptycho_reconstruct import _far_apart

    from ptynb.ptycho import reconstruct

    ds = _far_apart(0)
    x = ds["intensity"].values.copy()
    x[1, 2, 2] = np.nan
    ds["intensity"] = (ds["intensity"].dims, da.from_array(x, chunks=(1, 16, 16)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # no "not checked" warning: it is checked
        with pytest.raises(ValidationError, match=r"intensity: contains 1 NaN or inf value\(s\)"):
            reconstruct(ds, engine="epie", iterations=1, progress=False)
