"""WorkflowApp without a server (the TaskRunner then finishes synchronously): the stereo app
with its quick preset, and the generic app of a toy workflow (default views, cancel, errors
with a partial tree, timestamped saves)."""
from __future__ import annotations

import numpy as np
import param
import pytest
import xarray as xr

pn = pytest.importorskip("panel")

from ptynb.apps._workflow import SIMULATE, WorkflowApp, display_unit, save_path, unit_of  # noqa: E402
from ptynb.workflows import Step, Workflow, WorkflowSettings  # noqa: E402

QUICK = "quick look (seconds)"


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PTYNB_DATA_DIR", str(tmp_path))
    return tmp_path


def _render(app):
    from bokeh.document import Document

    return app.__panel__().get_root(Document())


# ----------------------------------------------------------------------------- a toy workflow
class ToySettings(WorkflowSettings):
    groups = {"Size": ["n", "pixel"], "Behaviour": ["fail", "cancel_after"]}
    presets = {"default": {}, "small": {"n": 8}}
    n = param.Integer(default=16, bounds=(4, 64), doc="Image size (px)")
    pixel = param.Number(default=10e-9, bounds=(1e-10, None), doc="Pixel size (m)")
    fail = param.Boolean(default=False, doc="Raise in the second step")
    cancel_after = param.Boolean(default=False, doc="Set the cancel event in the first step")


def _measure(run):
    s = run.settings
    y = np.arange(s.n) * s.pixel
    img = np.outer(np.sin(y / s.pixel / 3), np.cos(y / s.pixel / 5)).astype(np.float32)
    if s.cancel_after and run.cancel is not None:
        run.cancel.set()
    return xr.Dataset({"image": (("y", "x"), img)}, coords={"y": y, "x": y})


def _process(run):
    if run.settings.fail:
        raise RuntimeError("toy failure in process")
    run.check_cancel()
    m = run["measurement"]
    return xr.Dataset({"cost": (("iteration",), np.linspace(1.0, 0.1, 5))}, attrs={"mean": float(m.image.mean())})


TOY = Workflow(name="toy", title="Toy workflow", description="For the tests.", settings=ToySettings,
               steps=(Step("measurement", _measure, "making the image"), Step("process", _process, "processing")),
               summarize=lambda s, r: {"answer": 42.0})


def test_generic_app_runs_and_shows_default_views():
    app = WorkflowApp(TOY)
    assert app.preset == "default" and app.source == SIMULATE
    app.preset = "small"
    assert app.settings.n == 8
    assert app.run()
    assert app.message.object == "run complete" and not app.error.visible
    assert app.result.attrs["status"] == "complete" and app.result.attrs["setting_n"] == 8
    titles = list(app.tabs._names)
    assert titles[0] == "Summary" and {"measurement", "process"} <= set(titles)
    _render(app)


def _labels(card):
    return [getattr(w, "label", None) or w.name for w in card.select(pn.widgets.Widget)]


def test_number_widgets_are_labelled_with_units():
    assert unit_of(ToySettings, "pixel") == "m" and unit_of(ToySettings, "n") == "px"
    assert display_unit(ToySettings, "pixel") == ("nm", 1e9)  # 10e-9 m is shown as 10 nm
    app = WorkflowApp(TOY)
    cards = app.setting_cards()
    assert [c.title for c in cards] == ["Size", "Behaviour"]
    labels = _labels(cards[0])
    assert "Pixel (nm)" in labels and "N (px)" in labels, labels
    w = app._number_widgets["pixel"][0]
    assert w.value == 10.0 and "stored in m (1 nm = 1e-09 m)" in w.description
    assert "Allowed: [0.1, inf) nm" in w.description
    w.value = 2.5  # typed in nm, stored in m
    assert app.settings.pixel == pytest.approx(2.5e-9, rel=1e-15)
    app.settings.pixel = 30e-9  # a preset or code changing the setting updates the widget
    assert w.value == 30.0


def test_out_of_bounds_setting_shows_the_bound_instead_of_reverting_silently():
    app = WorkflowApp(TOY)
    app.setting_cards()
    w = app._number_widgets["n"][0]
    w.value = 100
    assert app.settings.n == 16 and w.value == 16
    assert app.setting_error.visible
    assert app.setting_error.object == "**N**: 100 px is not allowed; it must be in [4, 64] px. Kept 16 px."
    w.value = 32  # a good value clears the message
    assert app.settings.n == 32 and not app.setting_error.visible
    p = app._number_widgets["pixel"][0]
    p.value = 0.01  # nm: below the 0.1 nm bound
    assert "it must be in [0.1, inf) nm" in app.setting_error.object and app.settings.pixel == 10e-9


def test_busy_alert_is_cleared_when_the_run_ends():
    app = WorkflowApp(TOY)
    app.runner.running = True  # as while a served run is going on
    assert app.run_button.disabled
    assert not app.run()
    assert "a run is already in progress" in app.error.object and app.error.visible
    app.runner.running = False  # the run ends
    assert not app.error.visible and not app.run_button.disabled


def test_progress_never_goes_backwards():
    from ptynb.apps._task import TaskRunner

    r = TaskRunner()
    seen = []

    def job(progress, cancel):
        for f in (0.1, 0.5, 0.3, 1.7, float("nan"), 0.9):
            progress(f, "x")
            seen.append(r._state["fraction"])
        return 1

    r.start(job)
    assert seen == [0.1, 0.5, 0.5, 1.0, 1.0, 1.0]
    assert r.status.object == "done"


def test_a_failing_result_display_is_an_error_not_done():
    from ptynb.apps._task import TaskRunner

    r = TaskRunner()
    errors = []

    def show(_result):
        raise ValueError("cannot draw this")

    r.start(lambda p, c: 1, on_done=show, on_error=errors.append)
    assert r.status.object == "**Error:** ValueError: cannot draw this"
    assert [str(e) for e in errors] == ["cannot draw this"]


def test_generic_app_cancel_gives_a_partial_tree():
    app = WorkflowApp(TOY)
    app.settings.cancel_after = True
    app.run()
    assert app.result.attrs["status"] == "cancelled"
    assert app.message.object == "run cancelled"
    assert app.partial.visible and "cancelled" in app.partial.object
    assert "measurement" in app.result and "process" not in app.result


def test_generic_app_error_shows_alert_and_partial_tree(data_dir):
    app = WorkflowApp(TOY)
    app.settings.fail = True
    app.run()
    assert app.error.visible and "RuntimeError: toy failure in process" in app.error.object
    assert app.result is not None and app.result.attrs["status"] == "error"
    assert app.partial.visible and not app.save_button.disabled
    assert app.save() is not None


def test_bad_file_source_shows_an_error(data_dir):
    (data_dir / "junk.h5").write_bytes(b"not hdf5")
    app = WorkflowApp(TOY)
    app.source = "file from the data directory"
    assert not app.run()
    assert "choose a measurement file" in app.error.object
    app.files.refresh()
    app.files.select.value = "junk.h5"
    assert not app.run()
    assert app.error.visible and "junk.h5" in app.error.object


def test_save_writes_a_new_timestamped_file_each_time(data_dir):
    import ptynb

    app = WorkflowApp(TOY)
    app.run()
    paths = [app.save() for _ in range(3)]
    assert len(set(paths)) == 3 and all(p.exists() and p.parent == data_dir for p in paths)
    assert all(p.name.startswith("toy_result_") and p.suffix == ".h5" for p in paths)
    app.save_format.value = ".zarr"
    z = app.save()
    assert z.suffix == ".zarr" and z.exists()
    back = ptynb.io.load(paths[0])
    assert back.attrs["answer"] == 42.0
    with pytest.raises(ValueError):
        save_path(data_dir, "x", ".txt")


# ----------------------------------------------------------------------------- stereo
def test_stereo_app_quick_preset_runs_and_shows_every_tab(data_dir):
    from ptynb.apps.stereo import StereoApp
    from ptynb.viz.stereo import TABS

    app = StereoApp()
    app.preset = QUICK
    assert app.settings.scan_grid == 8 and app.settings.n_beams == 2
    app.run()
    assert not app.error.visible, app.error.object
    assert app.message.object == "run complete"
    assert list(app.tabs._names) == list(TABS)
    assert "extra shift +0.0 px; difference rms" in app.anaglyph_caption.object
    before = app.anaglyph_caption.object
    app.shift_slider.value = 0.5
    assert "extra shift +0.5 px" in app.anaglyph_caption.object and app.anaglyph_caption.object != before
    numbers = [o for o in app.tabs[3].objects if "ptynb-numbers" in o.css_classes]
    assert numbers and "stereo depth limit" in numbers[0].object
    layers = [o for o in app.tabs[2].objects if "ptynb-layer-numbers" in o.css_classes]
    assert layers and "layer shift used by layer recovery" in layers[0].object
    frc_tab = app.tabs[list(app.tabs._names).index("FRC")]  # off by default: the tab says so
    texts = [o.object for o in frc_tab.objects if isinstance(o, pn.pane.Markdown)]
    assert texts and "enable `frc` in the Analysis settings" in texts[0]
    _render(app)
    p1, p2 = app.save(), app.save()
    assert p1 != p2 and p1.exists() and p2.exists()


def test_stereo_app_cancel_keeps_the_partial_reconstruction(data_dir):
    from ptynb.apps.stereo import StereoApp

    app = StereoApp()
    app.preset = QUICK
    runner = app.runner
    original = runner._progress

    def progress(fraction, message=""):  # cancel once the reconstruction is under way
        original(fraction, message)
        if "iteration" in message:
            runner._cancel.set()

    runner._progress = progress
    app.run()
    assert app.result.attrs["status"] == "cancelled"
    assert app.message.object == "run cancelled"
    assert "reconstruction" in app.result and "layers" not in app.result
    assert app.partial.visible
    assert app.save().exists()


def test_stereo_app_opens_on_a_given_result():
    from ptynb.apps.stereo import StereoApp
    from test_viz import synthetic_stereo_tree

    from ptynb.workflows import get

    s = get("stereo").settings()
    app = StereoApp(settings=s, result=synthetic_stereo_tree())
    assert app.settings is s and app.result is not None
    assert "Depth numbers" in list(app.tabs._names)
    # without settings: those stored in the result
    tree = synthetic_stereo_tree(attrs_extra={"setting_n_beams": 2, "setting_scan_grid": 5})
    app = StereoApp(result=tree)
    assert app.settings.n_beams == 2 and app.settings.scan_grid == 5


def test_index_and_routes_read_the_registry():
    from ptynb import apps
    from ptynb.workflows import names, register

    register(TOY, replace=True)
    try:
        r = apps.routes()
        assert "explorer" in r and all(n in r for n in names())
        assert "toy" in r
        page = apps.build("toy")
        assert isinstance(page, pn.layout.Row)
        idx = apps.index()
        text = " ".join(str(getattr(o, "object", "")) for o in idx.objects[1].objects)
        assert "Toy workflow" in text and "Stereo hard X-ray ptychography" in text
    finally:
        from ptynb.workflows import _REGISTRY

        _REGISTRY.pop("toy", None)


def test_missing_views_module_falls_back_to_tree_views():
    import dataclasses

    wf = dataclasses.replace(TOY, views="ptynb.viz.no_such_module:views")
    app = WorkflowApp(wf)
    app.run()
    assert not app.error.visible and list(app.tabs._names)[0] == "Summary"


def test_a_result_that_cannot_be_drawn_leaves_no_stale_tabs(data_dir):
    app = WorkflowApp(TOY)
    app.run()
    assert "Summary" in list(app.tabs._names)

    def broken(tree):
        raise KeyError("no such view")

    app.views = broken
    app.run()
    assert app.error.visible and "the result could not be drawn (KeyError" in app.error.object
    assert list(app.tabs._names) == ["Result"] and app.message.object == "run complete; drawing the result failed"
    assert app.save().exists()  # the result is kept


def test_lengths_without_a_default_are_shown_like_the_others():
    class S(WorkflowSettings):
        step = param.Number(default=2e-10, doc="Scan step (m)")
        radius = param.Number(default=5e-10, doc="Probe radius (m)")
        thickness = param.Number(default=None, allow_None=True, doc="Slice thickness (m; None: automatic)")
        far = param.Number(default=2.0, doc="Detector distance (m)")

    assert display_unit(S, "thickness") == ("nm", 1e9)  # as step and radius, not as far
    assert display_unit(S, "far") == ("m", 1.0)
    assert display_unit(S, "far", {"far": "mm"}) == ("mm", 1e3)


def test_settings_editor_for_notebooks_shows_small_numbers_exactly():
    """The notebooks' settings cells: typed inputs in display units, never sliders that show a
    bounded 480e-9 m or a 2e-4 learning rate as "0" (pn.Param's default)."""
    from bokeh.models import Slider, Spinner

    from ptynb.apps import settings_editor
    from ptynb.workflows import adept, stereo

    s = stereo.Settings()
    ed = settings_editor(s, ["separation", "theta_s", "n_beams"])
    model = pn.panel(ed).get_root()
    assert not list(model.select({"type": Slider}))
    spinners = {m.title: m for m in model.select({"type": Spinner})}
    assert spinners["Separation (nm)"].value == pytest.approx(480.0)
    assert spinners["Separation (nm)"].format is None  # shown as typed: "480", not "0"
    ed.number_widgets["separation"][0].value = 300.0
    assert s.separation == pytest.approx(300e-9)
    a = adept.Settings()
    a.apply_preset("paper")
    ed = settings_editor(a, ["learning_rate", "voxel_size"])
    assert ed.number_widgets["learning_rate"][0].value == pytest.approx(2e-4)
    assert ed.number_widgets["voxel_size"][0].value == pytest.approx(27.2)
    ed.number_widgets["learning_rate"][0].value = 2.0  # out of (0, 1]: refused, with the bound shown
    assert a.learning_rate == pytest.approx(2e-4) and ed.error.visible and "(0, 1]" in ed.error.object


@pytest.mark.parametrize("name", ["stereo", "mspt", "adept", "apt"])
def test_settings_editor_of_every_workflow_serialises(name):
    """Every setting of every workflow gets a widget whose Bokeh model can be sent to a browser
    (a slider over a None-default number cannot: served notebook 04 hung on that)."""
    from bokeh.document import Document

    from ptynb.apps import settings_editor
    from ptynb.workflows import get

    s = get(name).settings()
    doc = Document()
    doc.add_root(pn.panel(settings_editor(s)).get_root(doc))
    doc.to_json()  # raises UnsetValueError for a model with a property left unset
