"""The workflow template: a settings base, declared steps, one pipeline runner.

A workflow is a :class:`Workflow`: a :class:`WorkflowSettings` subclass (its parameters with
their groups and presets), a tuple of :class:`Step` (each a function of the :class:`Run`
context returning an xarray object), an optional ``summarize`` that turns the step results
into root attrs, and names of its views (``ptynb.viz.<name>:views``) and app. The one runner,
:meth:`Workflow.run`, drives the steps with progress fractions, the cancel convention of
:mod:`ptynb.control`, status and provenance, and always leaves a result tree:

- complete: ``attrs["status"] == "complete"``;
- cancelled (the Event set, or Ctrl+C): the tree holds every finished step plus the
  cancelled step's partial result (if the step handed one over), ``status == "cancelled"``;
- error: the exception propagates with its type unchanged, and ``exc.partial_tree`` holds
  the tree of the finished steps with ``status == "error"``.

:meth:`Workflow.assemble` builds the same tree from results computed step by step (e.g. in a
notebook); :meth:`Workflow.run` ends in the same code, so the two cannot disagree. The
settings are stored in the root attrs as ``setting_<name>`` (nested option objects as
``setting_<name>.<field>``), and :meth:`WorkflowSettings.from_attrs` rebuilds them, so a
saved result can be re-run.
"""
from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import param
import xarray as xr

from ..control import (STATUS_CANCELLED, STATUS_COMPLETE, STATUS_ERROR, Cancelled, Reporter,
                       check_event, is_cancelled)
from ..data import ValidationError, provenance
from ..options import Options, copy_value, describe_bounds, describe_type, did_you_mean

__all__ = ["WorkflowSettings", "Step", "Run", "Workflow", "SETTING_PREFIX"]

SETTING_PREFIX = "setting_"


# ============================================================================ settings
def _jsonable(v):
    """A parameter value as a plain JSON-friendly value (None -> "None", tuples -> lists)."""
    if v is None:
        return "None"
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    return v


def _coerce(p: param.Parameter, value, name: str):
    """Turn an attr value (possibly numpy, int for bool, "None") back into ``p``'s type."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str) and value == "None":
        return None
    if isinstance(p, param.Boolean):
        return bool(value)
    if isinstance(p, param.Integer):
        return int(value)
    if isinstance(p, param.Number):
        return float(value)
    if isinstance(p, param.Selector):
        for obj in p.objects:
            if obj == value or str(obj) == str(value):
                return obj
        return value
    if isinstance(p, param.Tuple):
        return tuple(value)
    if isinstance(p, param.List):
        return list(value)
    return value


def parse_value(p: param.Parameter, text: str, name: str):
    """Parse a command-line/text value for parameter ``p`` (JSON first, then as a string).

    Raises
    ------
    ValidationError
        If the text is not a value of the parameter's type, naming the setting, its type and
        its bounds.
    """
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if value is None:
        return None
    try:
        if isinstance(p, param.Boolean):
            if isinstance(value, str) and value.lower() in ("true", "yes", "on", "false", "no", "off"):
                return value.lower() in ("true", "yes", "on")
            if not isinstance(value, (bool, int)) or value not in (0, 1, True, False):
                raise TypeError
            return bool(value)
        if isinstance(p, param.Integer):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
                raise TypeError
            return int(value)
        if isinstance(p, param.Number):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            return float(value)
        if isinstance(p, param.Selector):
            return _coerce(p, value, name)
    except (TypeError, ValueError):
        raise ValidationError(name, f"{text!r} is not {describe_type(p)}{describe_bounds(p)}") from None
    return value


class WorkflowSettings(Options):
    """Base of every workflow's ``Settings`` (a :class:`param.Parameterized`).

    Subclasses declare their parameters (SI units in the docs: metres, eV; angles in
    degrees) and two class attributes:

    ``groups``
        ``{card title: [parameter names]}``: how apps and ``ptynb run --help`` group them.
        Parameters not named in any group go to a last group "Other".
    ``presets``
        ``{preset name: {parameter: value}}``: named sets of changes from the defaults; the
        first one is the default run (usually ``{}``).
    ``units``
        ``{parameter: unit}`` of the stored (SI) value, for labels in apps and help texts.

    A parameter whose value is itself a :class:`param.Parameterized` (an options object of
    the library, e.g. ``ptynb.ptycho`` option classes, declared with
    :class:`param.ClassSelector`) is stored flat as ``setting_<name>.<field>`` and set from
    text as ``<name>.<field>=value``.
    """

    groups: ClassVar[dict[str, list[str]]] = {}
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: ``{parameter: unit}`` of the stored value (SI, e.g. "m", "eV", "deg", "px", "counts"),
    #: read by apps and help texts; parameters missing here fall back to a "(unit)" in their doc
    units: ClassVar[dict[str, str]] = {}

    # ------------------------------------------------------------ introspection
    @classmethod
    def parameter_names(cls) -> list[str]:
        """Names of the settings (declaration order, without param's ``name``)."""
        return cls.fields()

    @classmethod
    def grouped(cls) -> dict[str, list[str]]:
        """``groups`` completed with an "Other" group for ungrouped parameters (checked)."""
        names = cls.parameter_names()
        out: dict[str, list[str]] = {}
        seen = set()
        for title, members in cls.groups.items():
            for m in members:
                if m not in names:
                    raise ValueError(f"{cls.__name__}.groups[{title!r}] names unknown setting {m!r}")
            out[title] = list(members)
            seen.update(members)
        rest = [n for n in names if n not in seen]
        if rest:
            out["Other"] = rest
        return out

    # ------------------------------------------------------------ copies, presets
    def copy(self, **changes) -> "WorkflowSettings":
        """A new settings object with the same values (nested options copied) and ``changes``
        (dotted names like ``ptycho.alpha`` allowed)."""
        out = Options.copy(self)
        out.update(**changes)
        return out

    def update(self, **changes) -> "WorkflowSettings":
        """Set several settings; unknown names raise a ValidationError with a suggestion.

        Dotted names (``ptycho.alpha``) set a field of a nested options object.
        """
        for key, value in changes.items():
            self.set(key, value)
        return self

    def set(self, key: str, value) -> None:
        """Set one setting (``name`` or ``name.field``) with a clear error on a bad name/value."""
        head, _, tail = key.partition(".")
        if head not in self.parameter_names():
            raise ValidationError(key, f"unknown setting{_suggest(head, self.parameter_names())}")
        target, attr = (self, head)
        if tail:
            target = getattr(self, head)
            if not isinstance(target, param.Parameterized) or tail not in target.param:
                raise ValidationError(key, f"{head!r} has no field {tail!r}")
            attr = tail
        try:
            setattr(target, attr, value)
        except (ValueError, TypeError):
            p = target.param[attr]
            raise ValidationError(key, f"{value!r} rejected: must be {describe_type(p)}"
                                  f"{describe_bounds(p)}") from None

    def set_text(self, key: str, text: str) -> None:
        """Set one setting from text (``ptynb run --set key=text``), type-checked."""
        head, _, tail = key.partition(".")
        if head not in self.parameter_names():
            raise ValidationError(key, f"unknown setting{_suggest(head, self.parameter_names())}")
        p = self.param[head]
        if tail:
            target = getattr(self, head)
            if not isinstance(target, param.Parameterized) or tail not in target.param:
                raise ValidationError(key, f"{head!r} has no field {tail!r}")
            p = target.param[tail]
        self.set(key, parse_value(p, text, key))

    def apply_preset(self, name: str) -> None:
        """Reset every setting to its default, then apply the preset ``name``."""
        if name not in self.presets:
            raise ValidationError("preset", f"unknown preset {name!r}; choose from {list(self.presets)}")
        d = {k: copy_value(v) for k, v in self.defaults().items()}
        self.param.update(**d)
        self.update(**self.presets[name])

    # ------------------------------------------------------------ attrs round trip
    def as_attrs(self) -> dict[str, Any]:
        """Settings as JSON-friendly attrs: ``setting_<name>`` (nested: ``setting_<name>.<field>``)."""
        out = {}
        for k, v in self.values().items():
            if isinstance(v, param.Parameterized):
                out[f"{SETTING_PREFIX}{k}"] = type(v).__name__
                for sub, sv in v.param.values().items():
                    if sub != "name":
                        out[f"{SETTING_PREFIX}{k}.{sub}"] = _jsonable(sv)
            else:
                out[f"{SETTING_PREFIX}{k}"] = _jsonable(v)
        return out

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], *, strict: bool = False) -> "WorkflowSettings":
        """Rebuild settings from a result's root attrs (``setting_*``), e.g. to re-run it.

        Settings missing from ``attrs`` keep their defaults; unknown ``setting_*`` keys (from
        another version) are ignored with a warning, or raise with ``strict=True``.
        """
        out = cls()
        names = set(cls.parameter_names())
        unknown = []
        for key, value in attrs.items():
            if not str(key).startswith(SETTING_PREFIX):
                continue
            name = str(key)[len(SETTING_PREFIX):]
            head, _, tail = name.partition(".")
            if head not in names:
                unknown.append(name)
                continue
            p = cls.param[head]
            current = getattr(out, head)
            if isinstance(current, param.Parameterized):
                if not tail or tail not in current.param:
                    continue  # the class-name marker, or a field this version does not have
                setattr(current, tail, _coerce(current.param[tail], value, name))
            elif not tail:
                out.set(head, _coerce(p, value, name))
        if unknown:
            msg = f"{cls.__module__}.{cls.__name__}.from_attrs: ignoring unknown settings {unknown}"
            if strict:
                raise ValidationError("attrs", msg)
            warnings.warn(msg, stacklevel=2)
        return out

    @classmethod
    def describe(cls) -> list[tuple[str, str, str, str]]:
        """Rows ``(group, name, "type, default, bounds", doc)`` for help texts."""
        rows = []
        for title, members in cls.grouped().items():
            for n in members:
                p = cls.param[n]
                default = p.default
                unit = cls.units.get(n)
                text = (f"{describe_type(p)}, default {default!r}{describe_bounds(p)}"
                        + (f", unit {unit}" if unit else ""))
                rows.append((title, n, text, p.doc or ""))
        return rows


def _suggest(name: str, choices) -> str:
    return did_you_mean(name, choices) or f"; known: {', '.join(choices)}"


# ============================================================================ steps
@dataclass(frozen=True)
class Step:
    """One step of a workflow.

    Attributes
    ----------
    name : str
        Key of its result in :attr:`Run.results` and node name in the result tree.
    func : callable(Run) -> Dataset | DataArray | DataTree | dict | None
        Does the work. It reads earlier results from ``run.results``, reports progress through
        ``run.report(fraction, message)`` (its own 0..1), polls ``run.check_cancel()`` at safe
        points and may raise :class:`ptynb.control.Cancelled` with its partial result.
    label : str
        Progress message shown when the step starts ("reconstructing each beam").
    weight : float
        Its share of the progress bar (relative to the other enabled steps).
    when : callable(Run) -> bool, optional
        The step runs only when this returns True (e.g. an optional FRC step).
    node : bool
        Whether the result becomes a node of the tree (False: kept in ``run.results`` only).
    """

    name: str
    func: Callable[["Run"], Any]
    label: str = ""
    weight: float = 1.0
    when: Callable[["Run"], bool] | None = None
    node: bool = True


@dataclass
class Run:
    """What a step sees: the settings, the inputs, earlier results, progress and cancel."""

    settings: WorkflowSettings
    inputs: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    cancel: threading.Event | None = None
    report: Reporter = field(default_factory=Reporter)

    def check_cancel(self, partial: Any = None) -> None:
        """Raise :class:`Cancelled` (carrying ``partial``) if the run's cancel event is set."""
        if is_cancelled(self.cancel):
            raise Cancelled("cancelled", partial=partial)

    @property
    def cancelled(self) -> bool:
        return is_cancelled(self.cancel)

    def __getitem__(self, name: str):
        return self.results[name]

    def get(self, name: str, default=None):
        return self.results.get(name, default)


# ============================================================================ the workflow
def _as_tree(value, name: str) -> xr.DataTree | None:
    if value is None:
        return None
    if isinstance(value, xr.DataTree):
        return value
    if isinstance(value, xr.Dataset):
        return xr.DataTree(dataset=value)
    if isinstance(value, xr.DataArray):
        return xr.DataTree(dataset=value.to_dataset(name=value.name or name))
    if isinstance(value, Mapping):
        children = {str(k): t for k, v in value.items() if (t := _as_tree(v, str(k))) is not None}
        return xr.DataTree(children=children)
    raise TypeError(f"step {name!r} returned {type(value).__name__}; expected an xarray object or a dict")


@dataclass(frozen=True)
class Workflow:
    """A registered workflow: settings, steps, summary, views and app.

    Attributes
    ----------
    name, title, description : str
        Registry key (CLI ``ptynb run <name>``, URL ``/<name>``), human title, one paragraph.
    settings : type[WorkflowSettings]
        Its settings class.
    steps : tuple of Step
        In order. The first step usually produces ``"measurement"`` (simulated when the run
        is given none, else checked).
    summarize : callable(settings, results: dict) -> dict, optional
        Root attrs (numbers) from whatever results exist; also called for partial trees.
    check_measurement : callable(Dataset) -> Dataset, optional
        Validates a user's measurement (raises ptynb.data.ValidationError).
    views : str, optional
        ``"module:function"`` of ``views(tree, settings) -> [(tab title, view), ...]``
        (default: :func:`ptynb.viz.tree_views`).
    app : str, optional
        ``"module:function"`` building its Panel app (default: a generic WorkflowApp).
    summary_keys : tuple of (attr, label, scale, unit)
        Root attrs printed by ``ptynb run`` after a run (value times ``scale`` in ``unit``).
    inputs : tuple of str
        Extra keyword inputs :meth:`run` accepts besides ``measurement`` (e.g. ``projections``).
    """

    name: str
    title: str
    description: str
    settings: type
    steps: tuple[Step, ...]
    summarize: Callable[[WorkflowSettings, dict], dict] | None = None
    check_measurement: Callable[[xr.Dataset], xr.Dataset] | None = None
    views: str | None = None
    app: str | None = None
    summary_keys: tuple[tuple[str, str, float, str], ...] = ()
    inputs: tuple[str, ...] = ()

    def __post_init__(self):
        if not (isinstance(self.settings, type) and issubclass(self.settings, WorkflowSettings)):
            raise TypeError(f"workflow {self.name!r}: settings must be a WorkflowSettings subclass")
        seen = set()
        for st in self.steps:
            if st.name in seen:
                raise ValueError(f"workflow {self.name!r}: duplicate step {st.name!r}")
            seen.add(st.name)

    # ------------------------------------------------------------ running
    def _settings(self, settings) -> WorkflowSettings:
        if settings is None:
            return self.settings()
        if not isinstance(settings, self.settings):
            raise ValidationError("settings", f"expected {self.settings.__module__}.{self.settings.__name__}, "
                                  f"got {type(settings).__name__}")
        return settings

    def run(self, settings: WorkflowSettings | None = None, measurement: xr.Dataset | None = None, *,
            progress: bool = True, report: Callable[[float, str], Any] | None = None,
            cancel: threading.Event | None = None, **inputs) -> xr.DataTree:
        """Run every enabled step and return the result tree (see the module docstring).

        Parameters
        ----------
        settings : WorkflowSettings, optional
            Default: ``self.settings()`` (the CI-small defaults).
        measurement : Dataset, optional
            The user's measurement; default: the workflow simulates one.
        progress : bool
            tqdm bars inside the steps.
        report : callable(fraction, message), optional
            Progress for apps: ``fraction`` in [0, 1], never decreasing.
        cancel : threading.Event, optional
            Set it to stop at the next safe point; the partial tree has status "cancelled".
        **inputs
            Extra inputs named in :attr:`inputs`.
        """
        s = self._settings(settings)
        check_event(cancel)
        bad = set(inputs) - set(self.inputs)
        if bad:
            raise ValidationError(", ".join(sorted(bad)), f"unknown input of workflow {self.name!r}; "
                                  f"it accepts: measurement{''.join(', ' + i for i in self.inputs)}")
        root = Reporter(report)
        ctx = Run(settings=s, inputs=dict(inputs, measurement=measurement), progress=bool(progress),
                  cancel=cancel)
        enabled = [st for st in self.steps if st.when is None or st.when(ctx)]
        total = sum(max(st.weight, 0.0) for st in enabled) or 1.0
        done, status = 0.0, STATUS_COMPLETE
        try:
            for st in enabled:
                ctx.check_cancel()
                a, b = done / total, (done + max(st.weight, 0.0)) / total
                ctx.report = root.span(a, b)
                ctx.report(0.0, st.label or st.name)
                try:
                    result = st.func(ctx)
                except Cancelled as exc:
                    if exc.partial is not None:
                        ctx.results[st.name] = exc.partial
                    raise
                ctx.results[st.name] = result
                done += max(st.weight, 0.0)
            root(1.0, "done")
        except (Cancelled, KeyboardInterrupt):
            status = STATUS_CANCELLED
            root(1.0, "cancelled")
        except BaseException as exc:
            status = STATUS_ERROR
            tree = self._tree(s, ctx.results, status, enabled, error=exc)
            try:
                exc.partial_tree = tree
            except AttributeError:  # pragma: no cover - exceptions without a __dict__
                pass
            raise
        return self._tree(s, ctx.results, status, enabled)

    def assemble(self, settings: WorkflowSettings | None = None, *, status: str = STATUS_COMPLETE,
                 **results) -> xr.DataTree:
        """The result tree from step results computed one by one (same code as :meth:`run`).

        ``results`` are keyed by step name, e.g. ``assemble(s, measurement=m, reconstruction=rec)``.
        """
        s = self._settings(settings)
        known = {st.name for st in self.steps}
        bad = set(results) - known
        if bad:
            raise ValidationError(", ".join(sorted(bad)), f"not a step of workflow {self.name!r}; "
                                  f"steps: {', '.join(st.name for st in self.steps)}")
        return self._tree(s, {k: v for k, v in results.items() if v is not None}, status, self.steps)

    def _tree(self, s, results, status, steps, error: BaseException | None = None) -> xr.DataTree:
        attrs = provenance(kind=f"{self.name}_result", workflow=self.name, **s.as_attrs())
        tree = xr.DataTree(dataset=xr.Dataset(attrs=attrs))
        order = [st for st in steps if st.name in results]
        for st in order:
            if not st.node:
                continue
            node = _as_tree(results[st.name], st.name)
            if node is not None:
                tree[st.name] = node
        if self.summarize is not None:
            try:
                tree.attrs.update(self.summarize(s, dict(results)))
            except Exception as exc:  # noqa: BLE001 - a partial tree must still come back
                if status == STATUS_COMPLETE:
                    raise
                tree.attrs["summary_error"] = f"{type(exc).__name__}: {exc}"
        tree.attrs["steps_done"] = [st.name for st in order]
        tree.attrs["status"] = status
        if error is not None:
            tree.attrs["error"] = f"{type(error).__name__}: {error}"
        return tree

    # ------------------------------------------------------------ front ends
    def views_function(self) -> Callable:
        """The workflow's ``views(tree, settings)`` function (default: ``ptynb.viz.tree_views``)."""
        return _load(self.views or "ptynb.viz:tree_views")


def _load(path: str):
    import importlib

    mod, _, attr = path.partition(":")
    obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
