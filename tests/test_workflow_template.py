"""The workflow template (ptynb.workflows._base + registry + CLI), tested on a toy workflow
(tests/toy_workflow.py: settings + two steps + a view) and on the stereo workflow's settings."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import param
import pytest
import xarray as xr

import ptynb
from ptynb import workflows
from ptynb.control import Cancelled, Reporter
from ptynb.data import ValidationError
from ptynb.workflows import Step, Workflow, WorkflowSettings

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import toy_workflow as toy  # noqa: E402


@pytest.fixture(autouse=True)
def _registered():
    workflows.register(toy.WORKFLOW, replace=True)
    yield


# ----------------------------------------------------------------------------- settings
class Opts(param.Parameterized):
    alpha = param.Number(default=1.0, bounds=(0, 2))
    flag = param.Boolean(default=False)


class S(WorkflowSettings):
    n = param.Integer(default=3, bounds=(1, 10), doc="count")
    x = param.Number(default=0.5, bounds=(0, 1), doc="fraction")
    maybe = param.Number(default=None, allow_None=True)
    on = param.Boolean(default=True)
    kind = param.Selector(objects=[2, 3], default=3)
    label = param.String(default="left")
    opts = param.ClassSelector(class_=Opts, default=Opts())
    groups = {"A": ["n", "x"]}
    presets = {"default": {}, "big": {"n": 9, "opts.alpha": 1.5}}


def test_settings_round_trip_through_attrs_and_a_file(tmp_path):
    s = S(n=7, x=0.25, maybe=1e-9, on=False, kind=2, label="right")
    s.opts.alpha = 0.3
    attrs = s.as_attrs()
    assert attrs["setting_n"] == 7 and attrs["setting_on"] == 0 and attrs["setting_opts.alpha"] == 0.3
    # through HDF5, where ints/bools come back as numpy scalars
    ds = xr.Dataset(attrs=attrs)
    back = ptynb.io.load(ptynb.io.save(ds, tmp_path / "a.h5")).attrs
    r = S.from_attrs(back)
    assert r.values().keys() == s.values().keys()
    assert (r.n, r.x, r.maybe, r.on, r.kind, r.label, r.opts.alpha) == (7, 0.25, 1e-9, False, 2, "right", 0.3)
    assert isinstance(r.n, int) and isinstance(r.on, bool)
    assert S.from_attrs(S().as_attrs()).changed() == {}
    with pytest.warns(UserWarning, match="ignoring unknown settings"):
        S.from_attrs({"setting_gone": 1})
    with pytest.raises(ValidationError, match="unknown settings"):
        S.from_attrs({"setting_gone": 1}, strict=True)


def test_settings_copy_presets_groups_and_text():
    s = S()
    c = s.copy(n=5)
    c.opts.alpha = 0.1
    assert (s.n, s.opts.alpha, c.n) == (3, 1.0, 5)  # nested options are copied, not shared
    s.apply_preset("big")
    assert (s.n, s.opts.alpha) == (9, 1.5)
    s.apply_preset("default")
    assert (s.n, s.opts.alpha) == (3, 1.0)
    with pytest.raises(ValidationError, match="unknown preset"):
        s.apply_preset("huge")
    assert S.grouped() == {"A": ["n", "x"], "Other": ["maybe", "on", "kind", "label", "opts"]}
    s.set_text("n", "4")
    s.set_text("on", "false")
    s.set_text("kind", "2")
    s.set_text("opts.alpha", "0.7")
    s.set_text("maybe", "null")
    assert (s.n, s.on, s.kind, s.opts.alpha, s.maybe) == (4, False, 2, 0.7, None)
    with pytest.raises(ValidationError, match=r"n: '2.5' is not an integer in \[1, 10\]"):
        s.set_text("n", "2.5")
    with pytest.raises(ValidationError, match=r"n: 11 rejected"):
        s.set_text("n", "11")
    with pytest.raises(ValidationError, match="did you mean 'label'"):
        s.set_text("lable", "x")
    with pytest.raises(ValidationError, match="has no field 'beta'"):
        s.set("opts.beta", 1)
    with pytest.raises(ValidationError, match="one of: 2, 3"):
        s.set_text("kind", "7")

    class Open(WorkflowSettings):
        a = param.Number(default=1.0, bounds=(0, 2), inclusive_bounds=(False, True))

    with pytest.raises(ValidationError, match=r"a: 0.0 rejected: must be a number in \(0, 2\]"):
        Open().set_text("a", "0")


def test_groups_naming_unknown_settings_are_refused():
    class Bad(WorkflowSettings):
        a = param.Integer(default=1)
        groups = {"G": ["a", "b"]}

    with pytest.raises(ValueError, match="unknown setting 'b'"):
        Bad.grouped()


def test_stereo_settings_carry_their_groups_and_presets():
    from ptynb.workflows import stereo

    wf = workflows.get("stereo")
    assert wf.settings is stereo.Settings
    grouped = stereo.Settings.grouped()
    assert "Other" not in grouped  # every stereo setting is in a declared group
    assert sorted(sum(grouped.values(), [])) == sorted(stereo.Settings.parameter_names())
    s = stereo.Settings()
    s.apply_preset("quick look (seconds)")
    assert s.changed()["scan_grid"] == 8


# ----------------------------------------------------------------------------- runner
def test_toy_run_measures_the_known_width_and_reports_monotone_progress():
    seen = []
    tree = toy.WORKFLOW.run(toy.Settings(), progress=False, report=lambda f, m: seen.append((f, m)))
    assert tree.attrs["status"] == "complete"
    assert tree.attrs["steps_done"] == ["measurement", "estimate"]
    assert tree.attrs["measured_sigma"] == pytest.approx(80e-9, rel=0.03)
    fr = [f for f, _ in seen]
    assert fr[0] == 0.0 and fr[-1] == 1.0 and all(b >= a for a, b in zip(fr, fr[1:]))
    # the estimate step has weight 3 of 4: its iterations fill the bar from 0.25 to 1
    assert [m for f, m in seen if f == pytest.approx(0.25)] == ["measuring the width"]
    assert tree.attrs["workflow"] == "toy" and tree.attrs["kind"] == "toy_result"
    assert "ptynb_version" in tree.attrs


def test_assemble_builds_the_same_tree_as_run():
    s = toy.Settings(size=32)
    tree = toy.WORKFLOW.run(s, progress=False)
    again = toy.WORKFLOW.assemble(s, measurement=tree["measurement"].to_dataset(),
                                  estimate=tree["estimate"].to_dataset())
    assert dict(again.attrs) == dict(tree.attrs)
    xr.testing.assert_identical(again["estimate"].to_dataset(), tree["estimate"].to_dataset())
    with pytest.raises(ValidationError, match="not a step"):
        toy.WORKFLOW.assemble(s, bogus=1)


def test_cancel_mid_step_keeps_the_partial_result(tmp_path):
    ev = threading.Event()

    def report(f, m):
        if m == "iteration 4/20":
            ev.set()

    tree = toy.WORKFLOW.run(toy.Settings(), progress=False, report=report, cancel=ev)
    assert tree.attrs["status"] == "cancelled"
    assert tree.attrs["steps_done"] == ["measurement", "estimate"]
    assert tree["estimate"].to_dataset().sizes["iteration"] == 4  # the partial history
    assert "measured_sigma" not in tree.attrs  # nothing reported that was not finished
    back = ptynb.io.load(ptynb.io.save(tree, tmp_path / "partial.h5"))
    assert back.attrs["status"] == "cancelled"


def test_errors_propagate_with_a_partial_tree():
    def boom(run):
        raise ValidationError("image", "is broken")

    wf = Workflow("boom", "Boom", "fails in step 2", toy.Settings,
                  (toy.WORKFLOW.steps[0], Step("estimate", boom)))
    with pytest.raises(ValidationError, match="image: is broken") as info:
        wf.run(progress=False)
    part = info.value.partial_tree
    assert part.attrs["status"] == "error" and "measurement" in part
    assert part.attrs["error"] == "ValidationError: image: is broken"


def test_keyboard_interrupt_is_a_cancel():
    def interrupted(run):
        raise KeyboardInterrupt

    wf = Workflow("ki", "KI", "", toy.Settings, (toy.WORKFLOW.steps[0], Step("estimate", interrupted)))
    tree = wf.run(progress=False)
    assert tree.attrs["status"] == "cancelled" and "measurement" in tree


def test_optional_steps_inputs_and_bad_arguments():
    calls = []
    wf = Workflow("opt", "Opt", "", toy.Settings,
                  (toy.WORKFLOW.steps[0],
                   Step("extra", lambda r: calls.append(1), when=lambda r: r.settings.seed > 0)))
    assert wf.run(progress=False).attrs["steps_done"] == ["measurement"] and not calls
    wf.run(toy.Settings(seed=1), progress=False)
    assert calls == [1]
    with pytest.raises(ValidationError, match="unknown input"):
        wf.run(progress=False, projections=1)
    with pytest.raises(TypeError, match="must be a threading.Event"):
        wf.run(progress=False, cancel=True)
    with pytest.raises(ValidationError, match="expected .*toy_workflow.Settings"):
        wf.run(S(), progress=False)
    with pytest.raises(ValueError, match="duplicate step"):
        Workflow("d", "D", "", toy.Settings, (toy.WORKFLOW.steps[0], toy.WORKFLOW.steps[0]))


def test_reporter_spans_are_monotone_and_clipped():
    got = []
    r = Reporter(lambda f, m: got.append(f))
    child = r.span(0.5, 1.0)
    child(0.5)
    child(0.2)  # a later, smaller value never moves the bar back
    r(2.0)
    assert got == [0.75, 0.75, 1.0]
    with pytest.raises(Cancelled):
        from ptynb.control import raise_if_cancelled

        ev = threading.Event()
        ev.set()
        raise_if_cancelled(ev)


# ----------------------------------------------------------------------------- registry + CLI
def test_registry():
    assert "stereo" in workflows.names() and "toy" in workflows.names()
    assert workflows.get("toy") is toy.WORKFLOW
    with pytest.raises(workflows.UnknownWorkflowError, match="unknown workflow 'nope'; available: stereo"):
        workflows.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        workflows.register(Workflow("toy", "t", "", toy.Settings, ()))


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                PTYNB_WORKFLOWS="toy_workflow:WORKFLOW")


def _cli(*args, check=True):
    out = subprocess.run([sys.executable, "-m", "ptynb.cli", *args], capture_output=True, text=True,
                         env=_env(), timeout=120)
    if check and out.returncode != 0:
        raise AssertionError(out.stderr)
    return out


def test_cli_runs_the_plugin_workflow_with_set_and_reruns_from_its_result(tmp_path):
    out = _cli("run", "toy", str(tmp_path / "a.h5"), "--quiet", "--set", "sigma=6e-8", "--set", "seed=3")
    assert "toy: complete" in out.stdout
    import re

    got = float(re.search(r"measured sigma \(measured_sigma\) = ([0-9.]+) nm", out.stdout).group(1))
    assert got == pytest.approx(60.0, rel=0.03)  # the simulated spot's width, measured
    a = ptynb.io.load(tmp_path / "a.h5")
    assert a.attrs["setting_sigma"] == 6e-8
    # re-run from the saved settings: the same result
    _cli("run", "toy", str(tmp_path / "b.h5"), "--quiet", "--from", str(tmp_path / "a.h5"))
    b = ptynb.io.load(tmp_path / "b.h5")
    assert toy.Settings.from_attrs(b.attrs).values() == toy.Settings.from_attrs(a.attrs).values()
    assert b.attrs["measured_sigma"] == a.attrs["measured_sigma"]
    helptext = _cli("run", "toy", "--help").stdout
    assert "sigma (a number, default 8e-08 in [1e-10, inf))" in helptext and "Standard deviation" in helptext
    assert "'small'" in helptext
    assert "toy" in _cli("workflows").stdout


def test_cli_errors_are_one_line_before_any_work(tmp_path):
    bad = _cli("run", "toy", str(tmp_path / "a.txt"), check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and ".h5, .nc, .zarr" in bad.stderr
    bad = _cli("run", "toy", str(tmp_path / "nodir" / "a.h5"), check=False)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    bad = _cli("run", "toy", str(tmp_path / "a.h5"), "--set", "size=3", check=False)
    assert bad.returncode == 2 and "size: 3 rejected" in bad.stderr and "Traceback" not in bad.stderr
    bad = _cli("run", "toy", str(tmp_path / "a.h5"), "--set", "size=3", "--debug", check=False)
    assert bad.returncode == 1 and "Traceback" in bad.stderr
    assert not list(tmp_path.iterdir())
    assert _cli("--version").stdout.strip() == f"ptynb {ptynb.__version__}"


@pytest.mark.slow
def test_serve_lists_and_serves_the_plugin_workflow(tmp_path):
    from servers import free_port, ptynb_serve

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with ptynb_serve(port, env=dict(_env(), PTYNB_DATA_DIR=str(tmp_path)), timeout=90):
        index = urllib.request.urlopen(url + "/", timeout=30).read().decode()
        page = urllib.request.urlopen(url + "/toy", timeout=60)
        assert page.status == 200
        # a second server on the same port is refused with one clear line
        busy = _cli("serve", "--port", str(port), check=False)
        assert busy.returncode == 2 and "cannot listen on 127.0.0.1" in busy.stderr
    assert "bokeh" in index.lower()
