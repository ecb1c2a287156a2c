"""One web app for any registered workflow: :class:`WorkflowApp`.

The page: a link back to the index, the source (simulate, or a file under the data directory),
a preset, one card per settings group (number widgets labelled with their units), Run /
Cancel (with progress) / Save, an error Alert, a status line, and the tabs of the workflow's
views function (``Workflow.views``, default :func:`ptynb.viz.tree_views`). A workflow with no
``app`` of its own is served as ``WorkflowApp(workflow)``; one that needs more subclasses it
and overrides the hooks (see the class docstring).
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import ClassVar

import panel as pn
import param
import xarray as xr

from ._files import FILE_SUFFIXES, DataFilePicker, data_dir
from ._task import TaskRunner

__all__ = ["FROM_FILE", "SIMULATE", "SettingsEditor", "WorkflowApp", "app_for", "bounds_text", "display_unit", "save_path",
           "settings_editor", "unit_of", "with_widgets"]

SIMULATE = "simulated demo"
FROM_FILE = "file from the data directory"
SAVE_FORMATS = (".h5", ".zarr")

_UNIT_RE = re.compile(r"\((m|nm|um|mm|px|pixels?|eV|keV|degrees|deg|rad|s|1/m|counts)\s*[);,]")


#: how SI lengths are shown: the first (unit, factor) whose threshold exceeds the typical value
_LENGTH_DISPLAY = ((1e-6, "nm", 1e9), (1e-3, "um", 1e6), (1.0, "mm", 1e3))
_UNIT_NAMES = {"degrees": "deg", "degree": "deg", "pixels": "px", "pixel": "px"}
_FACTORS = {"nm": 1e9, "um": 1e6, "mm": 1e3, "m": 1.0}


def display_unit(settings_cls, name: str, overrides: dict | None = None) -> tuple[str | None, float]:
    """``(shown unit, factor)`` of a setting: the widget shows ``value * factor`` in that unit.

    SI lengths (unit "m") are shown in nm, um or mm after their default (or a bound) when it
    is small (8.1e-9 m -> 8.1 nm); ``overrides`` (``{name: "um"}``) chooses explicitly.
    Degrees are labelled "deg". Other units are shown as stored (factor 1).
    """
    unit = unit_of(settings_cls, name)
    unit = _UNIT_NAMES.get(unit, unit)
    if overrides and name in overrides:
        shown = overrides[name]
        if unit == "m" and shown in _FACTORS:
            return shown, _FACTORS[shown]
        return shown, 1.0
    if unit != "m":
        return unit, 1.0
    p = settings_cls.param[name]
    refs = [abs(v) for v in (p.default, *(getattr(p, "bounds", None) or ()))
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v]
    if not refs:  # no default or bound to go by (e.g. None = automatic): as the other lengths
        shown = [display_unit(settings_cls, k, overrides)[0] for k in settings_cls.param
                 if k not in ("name", name) and isinstance(settings_cls.param[k], param.Number)
                 and unit_of(settings_cls, k) == "m" and settings_cls.param[k].default]
        common = max(set(shown), key=shown.count) if shown else "m"
        return common, _FACTORS[common]
    ref = refs[0]
    for limit, shown, factor in _LENGTH_DISPLAY:
        if ref < limit:
            return shown, factor
    return "m", 1.0


def _num(v: float) -> float:
    """A converted value without binary noise (8.100000000000001 -> 8.1)."""
    return float(f"{v:.12g}")


def bounds_text(p: param.Parameter, factor: float = 1.0, unit: str | None = None) -> str:
    """``"[0.1, 1000] nm"``-style bounds of a number setting in its shown unit ('' if none)."""
    from ..options import interval

    text = interval(p, factor)
    return text + (f" {unit}" if unit and text else "")


def unit_of(settings_cls, name: str) -> str | None:
    """Unit of a setting: ``settings_cls.units[name]`` if declared, else parsed from its doc
    ("Distance between the two layers (m)" -> "m")."""
    declared = getattr(settings_cls, "units", None)
    if isinstance(declared, dict) and name in declared:
        return declared[name] or None
    doc = settings_cls.param[name].doc or ""
    m = _UNIT_RE.search(doc)
    return m.group(1) if m else None


def save_path(directory: Path, stem: str, suffix: str) -> Path:
    """``<directory>/<stem>_<YYYYmmdd-HHMMSS><suffix>``, never an existing path (a counter
    is appended when the same second is taken)."""
    if suffix not in SAVE_FORMATS:
        raise ValueError(f"save format must be one of {SAVE_FORMATS}, not {suffix!r}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = directory / f"{stem}_{stamp}{suffix}"
    k = 2
    while path.exists():
        path = directory / f"{stem}_{stamp}-{k}{suffix}"
        k += 1
    return path


def with_widgets(pane):
    """A HoloViews pane with its sliders (DynamicMap/HoloMap kdims): the pane's layout, or the
    pane itself for a static plot (a bare pane in a layout shows the plot only). The pane's
    ``widget_box``/``layout`` are only touched for objects with sliders: building them for a
    static plot that is then placed on its own breaks the plot's layout in the browser."""
    import holoviews as hv

    obj = pane.object
    if isinstance(obj, hv.core.Dimensioned) and obj.traverse(lambda x: x, [hv.HoloMap]):
        return pane.layout
    return pane


def _load_any(path):
    from ..io import load_any

    return load_any(path)


class SettingsEditor(pn.viewable.Viewer):
    """Widgets that edit a settings object in place, for the apps and the notebooks alike.

    Numbers get a typed input labelled with the unit they are shown in (SI lengths in nm/um
    where sensible, with the conversion in the tooltip) and no browser-side clamping or
    rounding (a slider would show 480 nm as "0" and round 2e-4 to 0): a value outside the
    bounds is refused with a message that shows the bounds (:attr:`error`), never silently
    reverted. Other settings use ``pn.Param``.

    Parameters
    ----------
    settings : param.Parameterized (e.g. a workflow's ``Settings``)
        Edited in place; changes made in code show in the widgets.
    names : list of str, optional
        The settings shown by ``__panel__`` (default: all but ``name``); their widgets are
        made at once (:attr:`number_widgets`). :meth:`widgets` makes more (the apps' cards).
    display_units : dict, optional
        ``{setting: shown unit}`` for SI lengths ("nm", "um", "mm", "m"; :func:`display_unit`).
    width : int, optional
        Widget width in px (a notebook cell); None: fill the container (the apps' cards).
    """

    def __init__(self, settings, names=None, *, display_units: dict | None = None, width: int | None = None,
                 **params):
        super().__init__(**params)
        self.settings = settings
        #: fixed widget width (px), or None: as wide as the container (the apps' cards)
        self.width = width
        self.names = list(names) if names is not None else [k for k in settings.param if k != "name"]
        self.display_units = dict(display_units or {})
        self.error = pn.pane.Alert("", alert_type="warning", visible=False, css_classes=["ptynb-setting-error"])
        self.number_widgets: dict[str, tuple] = {}
        self._syncing = False
        self._layout = pn.Column(self.widgets(self.names), self.error,
                                 **(self._size() if width else {"sizing_mode": "stretch_width"}))

    def _size(self) -> dict:
        return {"width": int(self.width)} if self.width else {"sizing_mode": "stretch_width"}

    def __panel__(self):
        return self._layout

    def widgets(self, names: list[str]):
        """The widgets of some settings, in order, as one ``pn.Column``.

        Numbers get a typed input labelled with the unit they are shown in (SI lengths in
        nm/um where sensible, with the conversion in the tooltip) and without browser-side
        clamping: a value outside the bounds is refused with a message that shows the bounds
        (:attr:`error`), never silently reverted. Other settings use ``pn.Param``.
        """
        cls = type(self.settings)
        items, others = [], []

        def flush():
            if others:
                items.append(pn.Param(self.settings.param, parameters=list(others), show_name=False,
                                      **self._size()))
                others.clear()

        for n in names:
            if isinstance(cls.param[n], param.Number):
                flush()
                items.append(self._number_widget(n))
            else:
                others.append(n)
        flush()
        return pn.Column(*items, margin=0, **self._size())

    def _number_widget(self, name: str):
        cls = type(self.settings)
        p = cls.param[name]
        unit, factor = display_unit(cls, name, self.display_units)
        stored = unit_of(cls, name)
        is_int = isinstance(p, param.Integer)
        label = p.label
        if unit and label.lower().endswith(" " + unit.lower()):  # "Energy eV" -> "Energy (eV)"
            label = label[: -len(unit) - 1]
        label = f"{label} ({unit})" if unit else label
        tip = [p.doc or ""]
        b = bounds_text(p, factor, unit)
        if b:
            tip.append(f"Allowed: {b}.")
        if factor != 1.0:
            tip.append(f"Shown in {unit}, stored in {stored} (1 {unit} = {1 / factor:g} {stored}).")
        value = getattr(self.settings, name)
        shown = None if value is None else (int(value) if is_int else _num(value * factor))
        kind = pn.widgets.IntInput if is_int else pn.widgets.FloatInput
        w = kind(label=label, value=shown, description=" ".join(t for t in tip if t),
                 css_classes=["ptynb-setting", f"ptynb-setting-{name}"], **self._size())
        self.number_widgets[name] = (w, factor, unit, is_int)
        w.param.watch(lambda e, n=name: self._number_typed(n, e.new), "value")
        self.settings.param.watch(self._setting_changed, [name])
        return w

    def _number_typed(self, name: str, shown) -> None:
        from ..data import ValidationError

        if self._syncing:
            return
        _w, factor, unit, is_int = self.number_widgets[name]
        p = type(self.settings).param[name]
        value = None if shown is None else (int(shown) if is_int else float(shown) / factor)
        try:
            if value is None and not p.allow_None:
                raise ValidationError(name, "needs a value")
            self.settings.set(name, value)
        except ValidationError:
            b = bounds_text(p, factor, unit)
            current = getattr(self.settings, name)
            kept = "none" if current is None else f"{_num(current * factor):g}" + (f" {unit}" if unit else "")
            what = "no value" if shown is None else f"{shown:g}" + (f" {unit}" if unit else "")
            self.error.object = (f"**{p.label}**: {what} is not allowed"
                                         + (f"; it must be in {b}" if b else "") + f". Kept {kept}.")
            self.error.visible = True
            self._show_number(name, current)
            return
        self.error.visible = False

    def _show_number(self, name: str, value) -> None:
        w, factor, _unit, is_int = self.number_widgets[name]
        self._syncing = True
        try:
            w.value = None if value is None else (int(value) if is_int else _num(value * factor))
        finally:
            self._syncing = False

    def _setting_changed(self, *events) -> None:
        for e in events:
            if e.name in self.number_widgets:
                self._show_number(e.name, e.new)


def settings_editor(settings, names=None, *, display_units: dict | None = None,
                    width: int | None = 350) -> SettingsEditor:
    """Typed, unit-labelled widgets for ``settings`` (see :class:`SettingsEditor`); display it
    in a notebook cell. ``names``: which settings, in order (default all); ``width`` (px) of
    the widgets, None to fill the container."""
    return SettingsEditor(settings, names, display_units=display_units, width=width)


class WorkflowApp(pn.viewable.Viewer):
    """A registered workflow as a web app (one instance per browser session).

    Parameters
    ----------
    workflow : Workflow or str
        The workflow (or its registered name).
    settings : WorkflowSettings, optional
        Start from these settings (default: those stored in ``result``, else the first preset).
    result : DataTree, optional
        Show this result at once (e.g. a notebook's results).

    Hooks a subclass may override
    -----------------------------
    ``load_measurement(path)``
        Read and check the user's file (default: ``ptynb.io.load_any`` then
        ``workflow.check_measurement``).
    ``run_inputs()``
        Keyword inputs of ``workflow.run`` besides settings (default: ``measurement``).
    ``views(tree)``
        ``[(tab title, view or [views])]`` (default: the workflow's views function).
    ``make_pane(tab, obj)``
        Turn one view (HoloViews object or markdown string) into a Panel object.
    ``extra_controls()``
        More widgets below the settings cards.
    ``on_result(tree)``
        Called after a (complete, cancelled or partial-error) result is shown.
    Class attributes ``collapsed_groups`` (card titles to start collapsed; default all but
    the first) and ``result_stem`` (saved file names).
    """

    source = param.Selector(objects=[SIMULATE, FROM_FILE], default=SIMULATE,
                            doc="Simulate the workflow's demo measurement, or read one from the data directory")
    preset = param.Selector(objects=[], default=None, doc="Named set of settings (the first is the default)")

    collapsed_groups: tuple[str, ...] | None = None
    result_stem: str | None = None
    width_controls = 350
    #: ``{setting: shown unit}`` for SI lengths ("nm", "um", "mm", "m"; see :func:`display_unit`)
    display_units: ClassVar[dict[str, str]] = {}

    def __init__(self, workflow=None, *, settings=None, result: xr.DataTree | None = None, **params):
        from ..workflows import get

        wf = get(workflow) if isinstance(workflow, str) else workflow
        if wf is None:
            raise TypeError("WorkflowApp needs a workflow (a Workflow or a registered name)")
        presets = list(getattr(wf.settings, "presets", {}) or {})
        super().__init__(**params)
        self.workflow = wf
        self.param.preset.objects = presets
        if settings is None and result is not None and hasattr(wf.settings, "from_attrs"):
            import warnings

            with warnings.catch_warnings():  # settings of another version: keep what matches
                warnings.simplefilter("ignore")
                settings = wf.settings.from_attrs(result.attrs)  # the settings the result was made with
        self.settings = settings if settings is not None else wf.settings()
        if presets:
            with param.discard_events(self):
                self.preset = presets[0]
            if settings is None:
                self.settings.apply_preset(presets[0])
        self.result: xr.DataTree | None = None
        self.saved: list[Path] = []
        self.runner = TaskRunner()
        self.files = DataFilePicker()
        self.files.visible = False
        self.run_button = pn.widgets.Button(name="Run", button_type="primary", width=100,
                                            css_classes=["ptynb-run"])
        self.run_button.on_click(self.run)
        self.save_button = pn.widgets.Button(name="Save result", width=160, disabled=True,
                                             css_classes=["ptynb-save"])
        self.save_button.on_click(self.save)
        self.save_format = pn.widgets.RadioButtonGroup(options=list(SAVE_FORMATS), value=SAVE_FORMATS[0],
                                                       width=120, css_classes=["ptynb-save-format"])
        self.error = pn.pane.Alert("", alert_type="danger", visible=False, css_classes=["ptynb-error"])
        self._busy_alert = False  # the error alert shows "a run is already in progress"
        self.editor = SettingsEditor(self.settings, (), display_units=self.display_units)  # cards: below
        self.setting_error = self.editor.error
        self.warning = pn.pane.Alert("", alert_type="warning", visible=False, css_classes=["ptynb-warning"])
        self._number_widgets = self.editor.number_widgets
        self.partial = pn.pane.Alert("", alert_type="warning", visible=False, css_classes=["ptynb-partial"])
        self.message = pn.pane.Markdown("", css_classes=["ptynb-message"])
        self.tabs = pn.Tabs(("Result", pn.pane.Markdown("Choose the settings and press **Run**.")),
                            dynamic=False, css_classes=["ptynb-tabs"], sizing_mode="stretch_width")
        self.runner.param.watch(self._running_changed, "running")
        self.param.watch(lambda e: setattr(self.files, "visible", e.new != SIMULATE), "source")
        self.param.watch(self._apply_preset, "preset")
        if result is not None:
            self.show_result(result)

    # ------------------------------------------------------------------ hooks
    def load_measurement(self, path: Path) -> xr.Dataset:
        """Read the user's file and check it with the workflow's ``check_measurement``."""
        m = _load_any(path)
        if self.workflow.check_measurement is not None:
            m = self.workflow.check_measurement(m) or m
        return m

    def run_inputs(self) -> dict | None:
        """Inputs of the run besides the settings; None when an error was shown instead."""
        if self.source == SIMULATE:
            return {"measurement": None}
        path = self.files.path
        if path is None:
            self.show_error(f"choose a measurement file ({', '.join(FILE_SUFFIXES)}) in {data_dir()}")
            return None
        return {"measurement": self.load_measurement(path)}

    def views(self, tree: xr.DataTree) -> list:
        """The tabs of a result: the workflow's views function (default ``viz.tree_views``)."""
        from ..viz import tree_views

        fn = tree_views
        if getattr(self.workflow, "views", None):
            try:
                fn = self.workflow.views_function()
            except (ImportError, AttributeError):  # its viz module is not written yet
                fn = tree_views
        return fn(tree, self.settings)

    def make_pane(self, tab: str, obj):
        """One view as a Panel object: markdown strings as Markdown, the rest as HoloViews."""
        if isinstance(obj, str):
            return pn.pane.Markdown(obj, css_classes=["ptynb-view-text"])
        if isinstance(obj, pn.viewable.Viewable):
            return obj
        return with_widgets(pn.pane.HoloViews(obj, linked_axes=False, css_classes=["ptynb-view"]))

    def extra_controls(self) -> list:
        return []

    def on_result(self, tree: xr.DataTree) -> None:
        pass

    # ------------------------------------------------------------------ settings
    def setting_widgets(self, names: list[str]):
        """The widgets of some settings, in order, as one ``pn.Column`` (see :class:`SettingsEditor`)."""
        return self.editor.widgets(names)

    def setting_cards(self) -> list:
        groups = (type(self.settings).grouped() if hasattr(type(self.settings), "grouped")
                  else {"Settings": [k for k in self.settings.param if k != "name"]})
        cards = []
        for i, (title, names) in enumerate(groups.items()):
            collapsed = (title in self.collapsed_groups) if self.collapsed_groups is not None else i > 0
            cards.append(pn.Card(self.setting_widgets(names), title=title, collapsed=collapsed,
                                 width=self.width_controls - 20, css_classes=["ptynb-settings"]))
        return cards

    def _apply_preset(self, event):
        if event.new is not None:
            self.settings.apply_preset(event.new)

    # ------------------------------------------------------------------ actions
    def show_error(self, exc) -> None:
        self._busy_alert = False
        self.error.object = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
        self.error.visible = True

    def show_warnings(self, messages) -> None:
        """Show warnings (e.g. from checking the user's file) above the results; none: hide."""
        messages = list(dict.fromkeys(str(m) for m in messages))
        self.warning.object = "  \n".join(f"**Warning:** {m}" for m in messages)
        self.warning.visible = bool(messages)

    def _running_changed(self, event) -> None:
        self.run_button.disabled = bool(event.new)
        if not event.new and self._busy_alert:  # the run that made it busy has ended
            self.error.visible = False
            self._busy_alert = False

    def run(self, _event=None) -> bool:
        """Start a run with the current settings and source (synchronous without a server)."""
        import warnings

        if self.runner.running:
            self.show_error("a run is already in progress: wait for it or press Cancel")
            self._busy_alert = True
            return False
        self.error.visible = False
        self.show_warnings([])
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                inputs = self.run_inputs()
        except Exception as exc:  # noqa: BLE001 - shown in the page; the app keeps working
            self.show_error(exc)
            self._mark_failed()
            return False
        self.show_warnings(w.message for w in caught
                           if issubclass(w.category, UserWarning) and not issubclass(w.category, DeprecationWarning))
        if inputs is None:
            self._mark_failed()
            return False
        s = self.settings.copy() if hasattr(self.settings, "copy") else self.settings
        wf = self.workflow

        def job(progress, cancel):
            return wf.run(s, progress=False, report=progress, cancel=cancel, **inputs)

        started = self.runner.start(job, on_done=self.show_result, on_error=self._failed, message="starting...")
        if not started:  # pragma: no cover - checked above
            self.show_error("a run is already in progress: wait for it or press Cancel")
            self._busy_alert = True
        else:
            self.message.object = "running..." if self.runner.running else self.message.object
        return started

    def cancel(self) -> None:
        self.runner.cancel()

    def _failed(self, exc) -> None:
        self.show_error(exc)
        partial = getattr(exc, "partial_tree", None)
        if isinstance(partial, xr.DataTree):
            self.show_result(partial)
        else:
            self._mark_failed()

    def _mark_failed(self) -> None:
        """The status line after a run that gave no result: never the last run's "complete"."""
        self.message.object = ("run failed (see the error above)"
                               + ("; the tabs still show the previous result" if self.result is not None else ""))

    def save(self, _event=None) -> Path | None:
        """Save the shown result under the data directory with a timestamped name."""
        from .. import io

        if self.result is None:
            return None
        try:
            path = save_path(data_dir(), self.result_stem or f"{self.workflow.name}_result", self.save_format.value)
            io.save(self.result, path)
        except Exception as exc:  # noqa: BLE001 - shown in the page
            self.show_error(exc)
            return None
        self.saved.append(path)
        self.message.object = f"saved to `{path}`"
        return path

    # ------------------------------------------------------------------ result
    def show_result(self, tree: xr.DataTree) -> None:
        """Show a result tree (complete, cancelled or partial) in the tabs."""
        self.result = tree
        status = tree.attrs.get("status", "?")
        self.message.object = f"run {status}"
        self.save_button.disabled = False
        if status != "complete":
            done = tree.attrs.get("steps_done", [])
            done = [done] if isinstance(done, str) else list(done)
            self.partial.object = (f"**Partial result** (status: {status}); steps done: "
                                   f"{', '.join(map(str, done)) or 'none'}. It can be saved.")
            self.partial.visible = True
        else:
            self.partial.visible = False
        try:
            tabs = self.views(tree)
            panes = []
            for title, content in tabs:
                items = content if isinstance(content, list) else [content]
                panes.append((title, pn.Column(*[self.make_pane(title, o) for o in items],
                                               sizing_mode="stretch_width")))
        except Exception as exc:  # noqa: BLE001 - a view bug must not lose the result
            self.show_error(f"the result could not be drawn ({type(exc).__name__}: {exc}); it is kept "
                            "and can be saved")
            # no stale tabs of an earlier result under this run's status line
            self.tabs[:] = [("Result", pn.pane.Markdown(
                "This result could not be drawn (see the error). **Save result** keeps it for a "
                "notebook.", css_classes=["ptynb-view-text"]))]
            self.message.object = f"run {status}; drawing the result failed"
            return
        active = self.tabs.active
        old = list(getattr(self.tabs, "_names", []))
        self.tabs[:] = panes
        titles = [t for t, _ in panes]
        if old and 0 <= active < len(old) and old[active] in titles:
            self.tabs.active = titles.index(old[active])
        self.on_result(tree)

    # ------------------------------------------------------------------ layout
    def controls(self):
        wf = self.workflow
        return pn.Column(
            pn.pane.Markdown("[&larr; all apps](./)", css_classes=["ptynb-home"], margin=(0, 10)),
            f"## {wf.title}",
            pn.widgets.Select.from_param(self.param.source, css_classes=["ptynb-source"]),
            self.files,
            pn.widgets.Select.from_param(self.param.preset, css_classes=["ptynb-preset"]),
            *self.setting_cards(),
            self.setting_error,
            *self.extra_controls(),
            pn.Row(self.run_button, self.save_format), self.save_button,
            self.runner, self.error, self.warning, self.partial, self.message, width=self.width_controls,
        )

    def __panel__(self):
        return pn.Row(self.controls(), self.tabs, sizing_mode="stretch_width")


def app_for(name: str):
    """A fresh :class:`WorkflowApp` page for the registered workflow ``name``."""
    return WorkflowApp(name).__panel__()
