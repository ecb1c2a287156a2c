"""The one base of every settings object in ptynb: checked values, defaults stated once.

:class:`Options` is a :class:`param.Parameterized` whose fields are declared once, with their
default, bounds and doc. It adds what the library's option classes
(:mod:`ptynb.ptycho.options`, :class:`ptynb.tomo.JointRefinementOptions`) and the workflow
settings (:class:`ptynb.workflows.WorkflowSettings`) all need:

- checked construction and assignment: an unknown name or a bad value raises
  :class:`~ptynb.data.ValidationError` naming the field, with its type and bounds (never a
  param traceback), and a subclass hook :meth:`Options._check` for cross-field rules;
- introspection: :meth:`fields`, :meth:`defaults`, :meth:`values`, :meth:`changed`;
- copies and comparison: :meth:`copy` (nested options objects copied, not shared), ``==``,
  a short ``repr`` of the changed fields; flat JSON-friendly :meth:`as_dict` / :meth:`from_dict`.
"""
from __future__ import annotations

import difflib
from typing import Any, ClassVar

import numpy as np
import param

from .data import ValidationError

__all__ = ["Options", "copy_value", "describe_type", "describe_bounds", "did_you_mean", "interval"]


def describe_type(p: param.Parameter) -> str:
    """Short type of a parameter with its article, for help texts and errors ("an integer")."""
    if isinstance(p, param.Boolean):
        return "a boolean (true/false)"
    if isinstance(p, param.Integer):
        return "an integer"
    if isinstance(p, param.Number):
        return "a number"
    if isinstance(p, param.Selector):
        return "a choice"
    if isinstance(p, param.ClassSelector):
        return "an options object"
    return "a " + type(p).__name__.lower()


def interval(p: param.Parameter, factor: float = 1.0) -> str:
    """A number parameter's bounds as ``"[lo, hi)"`` (open and closed ends marked), each bound
    times ``factor`` (e.g. 1e9 to show metres in nm); ``""`` when it has none."""
    b = getattr(p, "bounds", None)
    if not b or all(v is None for v in b):
        return ""

    def num(v):
        return f"{float(f'{v * factor:.12g}'):g}"  # no binary noise (8.100000000000001 -> 8.1)

    inc = getattr(p, "inclusive_bounds", (True, True))
    lo = "(-inf" if b[0] is None else ("[" if inc[0] else "(") + num(b[0])
    hi = "inf)" if b[1] is None else num(b[1]) + ("]" if inc[1] else ")")
    return f"{lo}, {hi}"


def describe_bounds(p: param.Parameter) -> str:
    """``" in [lo, hi)"`` (open and closed ends), ``" (one of: ...)"`` or ``""``."""
    if isinstance(p, param.Selector):
        return f" (one of: {', '.join(map(str, p.objects))})"
    text = interval(p)
    return f" in {text}" if text else ""


def did_you_mean(name: str, choices) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, else ``""``."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _fields_of(obj: param.Parameterized) -> dict[str, Any]:
    return {k: v for k, v in obj.param.values().items() if k != "name"}


def copy_value(v):
    """A value copied so that settings objects never share nested option objects."""
    if isinstance(v, Options):
        return v.copy()
    if isinstance(v, param.Parameterized):
        return type(v)(**{k: copy_value(x) for k, x in _fields_of(v).items()})
    return v


def _same(a, b) -> bool:
    if isinstance(a, param.Parameterized) or isinstance(b, param.Parameterized):
        return (type(a) is type(b) and set(_fields_of(a)) == set(_fields_of(b))
                and all(_same(x, _fields_of(b)[k]) for k, x in _fields_of(a).items()))
    if hasattr(a, "shape") or hasattr(b, "shape"):
        return hasattr(a, "shape") and hasattr(b, "shape") and bool(np.array_equal(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - incomparable values differ
        return a is b


class Options(param.Parameterized):
    """Base of every settings object (see the module docstring).

    Class attributes a subclass may set: ``_owner`` (what the fields belong to, used in the
    unknown-name error, default the class name) and ``_prefix_errors`` (name a bad field as
    ``Class.field`` instead of ``field``).
    """

    _owner: ClassVar[str | None] = None
    _prefix_errors: ClassVar[bool] = False

    def __init__(self, **values):
        type(self)._check_names(values)
        try:
            super().__init__(**values)
        except (ValueError, TypeError) as e:
            raise self._error(values, e) from None
        self._check()
        object.__setattr__(self, "_ready", True)

    def __setattr__(self, key, value):
        if key != "name" and key in type(self).param:
            try:
                super().__setattr__(key, value)
            except (ValueError, TypeError) as e:
                raise self._error({key: value}, e) from None
            if getattr(self, "_ready", False):
                self._check()
        else:
            super().__setattr__(key, value)

    @classmethod
    def resolve(cls, options, overrides: dict):
        """``options`` (an instance of this class; None: the defaults) with the keyword
        ``overrides`` applied, as a new object: how a function taking ``options=`` and
        ``**overrides`` reads its settings."""
        if options is not None and not isinstance(options, cls):
            raise ValidationError("options", f"must be a {cls.__name__}, got {type(options).__name__}")
        cls._check_names(overrides)
        return (options or cls()).copy(**overrides)

    # ------------------------------------------------------------ checks
    @classmethod
    def _check_names(cls, values) -> None:
        names = cls.fields()
        for k in values:
            if k not in names:
                owner = cls._owner or cls.__name__
                raise ValidationError(k, f"is not a field of {owner}{did_you_mean(k, names)} "
                                         f"(fields: {', '.join(names)})")

    @classmethod
    def _field_label(cls, k: str) -> str:
        return f"{cls.__name__}.{k}" if cls._prefix_errors else k

    @classmethod
    def _error(cls, values, err) -> ValidationError:
        for k, v in values.items():
            p = cls.param[k] if k in cls.param else None
            if p is None:
                continue
            try:
                p._validate(v)
            except (ValueError, TypeError):
                return ValidationError(cls._field_label(k),
                                       f"{v!r} rejected: must be {describe_type(p)}{describe_bounds(p)}")
        return ValidationError(cls.__name__, str(err))

    def _check(self) -> None:
        """Cross-field checks of a subclass; raise ValidationError."""

    # ------------------------------------------------------------ introspection
    @classmethod
    def fields(cls) -> list[str]:
        """Field names in declaration order (without param's ``name``)."""
        return [k for k in cls.param if k != "name"]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``{field: default}``: the single statement of the defaults."""
        return {k: cls.param[k].default for k in cls.fields()}

    def values(self) -> dict[str, Any]:
        """``{field: current value}``."""
        return {k: getattr(self, k) for k in self.fields()}

    def changed(self) -> dict[str, Any]:
        """The fields whose value differs from the default."""
        d = self.defaults()
        return {k: v for k, v in self.values().items() if not _same(v, d[k])}

    # ------------------------------------------------------------ copies, dicts
    def copy(self, **changes) -> "Options":
        """A new object with the same values (nested options copied too) and ``changes``."""
        vals = {k: copy_value(v) for k, v in self.values().items()}
        out = type(self)(**vals)
        for k, v in changes.items():
            type(out)._check_names({k: v})
            setattr(out, k, v)
        return out

    def as_dict(self) -> dict[str, Any]:
        """Flat JSON-friendly ``{field: value}`` (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.values().items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Options":
        """Inverse of :meth:`as_dict` (lists become tuples where the field is a tuple)."""
        vals = {}
        for k, v in dict(d).items():
            if k in cls.param and isinstance(cls.param[k], param.Tuple) and isinstance(v, list):
                v = tuple(v)
            vals[k] = v
        return cls(**vals)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(getattr(self, k), getattr(other, k)) for k in self.fields())

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None

    def __repr__(self):
        ch = ", ".join(f"{k}={v!r}" for k, v in self.changed().items())
        return f"{type(self).__name__}({ch})"

    __str__ = __repr__
