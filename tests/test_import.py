"""`import ptynb` is fast and does not pull in heavy or optional packages."""
import json
import subprocess
import sys


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_is_light():
    """No GUI, GPU, learning, cluster or file-format stack behind ``import ptynb`` (what makes an
    import slow; checked by module, not by a timing that depends on the machine)."""
    code = (
        "import sys, json; import ptynb, ptynb.data, ptynb.physics;"
        "print(json.dumps({'mods': [m for m in ('panel', 'holoviews', 'bokeh', 'cupy', 'torch', 'dask',"
        " 'distributed', 'h5py', 'matplotlib', 'pywt') if m in sys.modules]}))"
    )
    res = _run(code)
    assert res["mods"] == [], f"import ptynb pulled in {res['mods']}"


def test_lazy_submodules_and_version():
    import ptynb

    assert ptynb.__version__ == "0.1.0"
    assert ptynb.data.DIMS["scan"]
    assert "io" in dir(ptynb)
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        ptynb.nonexistent  # noqa: B018


_HEAVY_PTYNB = ("ptynb.physics", "ptynb.io", "ptynb.tomo", "ptynb.ptycho", "ptynb.simulate")


def test_data_does_not_load_physics_io_or_engines():
    """``import ptynb.data`` and validating a measurement stay inside the data model."""
    code = (
        "import sys, json, numpy as np; import ptynb.data as D; before = sorted(sys.modules);"
        "m = D.measurement(np.ones((3, 8, 8)), np.arange(3) * 1e-8, np.zeros(3), radiation='electron',"
        " energy_eV=2e5, reciprocal_pixel_size=1e9); D.validate(m); k = m.pty.kind; w = m.pty.wavelength;"
        "print(json.dumps({'before': before, 'after': sorted(sys.modules), 'kind': k, 'wl': w}))"
    )
    res = _run(code)
    for when in ("before", "after"):
        loaded = [m for m in res[when] if any(m == h or m.startswith(h + ".") for h in _HEAVY_PTYNB)]
        assert loaded == [], f"{when} validate, ptynb.data loaded {loaded}"
    assert res["kind"] == "measurement"
    assert abs(res["wl"] - 2.5079e-12) < 1e-15  # 200 keV electrons


def test_pty_accessor_registered_by_import_ptynb_alone():
    code = (
        "import json, numpy as np, xarray as xr; import ptynb;"
        "da = xr.DataArray(np.zeros((2, 3, 3)), dims=('angle', 'y', 'x'), coords={'angle': [0.0, 90.0]});"
        "import sys; print(json.dumps({'kind': da.pty.kind, 'dt': xr.DataTree(xr.Dataset(attrs={'kind': 'experiment'})).pty.kind,"
        " 'cls': type(xr.Dataset().pty).__module__}))"
    )
    res = _run(code)
    assert res == {"kind": "projections", "dt": "experiment", "cls": "ptynb.accessor"}


def test_accessor_module_level_imports_only_numpy_and_xarray():
    import ast
    from pathlib import Path

    import ptynb.accessor as acc

    tree = ast.parse(Path(acc.__file__).read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add("." * node.level + (node.module or "").split(".")[0])
    assert top <= {"__future__", "numpy", "xarray", "warnings"}, top
