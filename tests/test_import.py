"""`import ptynb` is fast and does not pull in heavy or optional packages."""
import json
import subprocess
import sys


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_is_light_and_fast():
    code = (
        "import time, sys, json; t = time.perf_counter(); import ptynb, ptynb.data, ptynb.physics;"
        "dt = time.perf_counter() - t;"
        "print(json.dumps({'dt': dt, 'mods': [m for m in ('panel', 'holoviews', 'bokeh', 'cupy', 'torch')"
        " if m in sys.modules]}))"
    )
    res = min((_run(code) for _ in range(2)), key=lambda r: r["dt"])
    assert res["mods"] == [], f"import ptynb pulled in {res['mods']}"
    assert res["dt"] < 2.0, f"import took {res['dt']:.2f} s"


def test_lazy_submodules_and_version():
    import ptynb

    assert ptynb.__version__ == "0.1.0"
    assert ptynb.data.DIMS["scan"]
    assert "io" in dir(ptynb)
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        ptynb.nonexistent  # noqa: B018
