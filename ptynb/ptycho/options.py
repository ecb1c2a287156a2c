"""Settings objects of the ptychography engines (``param.Parameterized``), defaults stated once.

Every engine knob of :func:`ptynb.ptycho.reconstruct` lives in exactly one of these small
classes; its default, bounds and documentation are declared here and nowhere else (the
engines read the default from the class, the docstring of ``reconstruct`` is generated from
the classes at import):

=======================  ===================================================================
:class:`PIEOptions`        ePIE/rPIE step sizes ``alpha``, ``beta`` (per-engine defaults)
:class:`LSQMLOptions`      LSQ-ML preconditioner, step limit, momentum, step rule, batch size
:class:`PositionRefinement` when and how far positions move, affine part, sub-pixel shifts
:class:`ProbeConstraints`  probe update start, support, power
:class:`ObjectConstraints` amplitude limits, phase range, pure phase
:class:`MultisliceOptions` beam tilt of the multislice propagator
:class:`ComputeOptions`    device, FFT threads/planning, compiled kernels, memory check
=======================  ===================================================================

``reconstruct(..., options=PIEOptions(alpha=0.5))`` or ``options=[PIEOptions(...),
LSQMLOptions(...)]``; the flat keywords of earlier versions (``alpha=0.5``) keep working and
map onto the same fields (:data:`KEYWORDS`). Each class supports ``copy()``, ``==`` (same
class and values) and a flat, JSON-friendly round trip ``as_dict()`` / ``from_dict()``, so a
workflow can nest them (``param.ClassSelector(class_=PIEOptions)``) and store them in attrs.
Values outside a bound raise :class:`ptynb.data.ValidationError` naming the setting and the
bound.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

import param

from ..backend import _DEVICE_ALIASES, FFTW_EFFORTS
from ..data import ValidationError
from ..options import Options, interval

__all__ = [
    "KEYWORDS",
    "OPTION_CLASSES",
    "ComputeOptions",
    "LSQMLOptions",
    "MultisliceOptions",
    "ObjectConstraints",
    "OptionsBase",
    "PIEOptions",
    "PositionRefinement",
    "ProbeConstraints",
    "engine_defaults",
    "options_doc",
]


def _bound_text(p: param.Parameter) -> str:
    """``"[lo, hi)"`` of a parameter (empty when unbounded), for the generated docstrings."""
    return interval(p)


class OptionsBase(Options):
    """The engines' option classes: :class:`ptynb.options.Options` (checked values, defaults
    once, copy, equality, flat dicts) plus the mapping to ``reconstruct``'s flat keywords.

    Subclasses declare their fields as ``param`` parameters and ``_keywords``: ``{field:
    flat keyword of reconstruct}`` (the same name where it is unambiguous, e.g. ``alpha``;
    prefixed otherwise, e.g. ``probe_support`` for :attr:`ProbeConstraints.support`) and
    ``_engine_keys``: ``{field: key in the engines' option dict}`` where it differs from the
    keyword.
    """

    _prefix_errors: ClassVar[bool] = True
    _keywords: ClassVar[dict[str, str]] = {}
    _engine_keys: ClassVar[dict[str, str]] = {}

    def engine_items(self) -> dict[str, Any]:
        """``{engine option key: value}`` as the engines read them."""
        return {self._engine_keys.get(k, self._keywords.get(k, k)): v
                for k, v in self.values().items()}

    @classmethod
    def field_doc(cls, field: str) -> str:
        """The documentation of ``field`` with the class constants filled in."""
        consts = {k: getattr(cls, k) for k in dir(cls) if k.isupper()}
        return (cls.param[field].doc or "").format(**consts)


class PIEOptions(OptionsBase):
    """Step sizes of the sequential engines ePIE and rPIE (dimensionless).

    ``None`` (default) takes the engine's own value from :attr:`ENGINE_DEFAULTS`; a number
    applies to every PIE engine of a chain.
    """

    #: per-engine defaults of ``alpha``/``beta`` (stated here only)
    ENGINE_DEFAULTS: ClassVar[dict[str, dict[str, float]]] = {
        "epie": {"alpha": 1.0, "beta": 1.0}, "rpie": {"alpha": 0.25, "beta": 0.25}}

    alpha = param.Number(default=None, allow_None=True, bounds=(0.0, 2.0),
                         inclusive_bounds=(False, True),
                         doc="object step size (None: ePIE {ENGINE_DEFAULTS[epie][alpha]:g}, "
                             "rPIE {ENGINE_DEFAULTS[rpie][alpha]:g})")
    beta = param.Number(default=None, allow_None=True, bounds=(0.0, 2.0),
                        inclusive_bounds=(False, True),
                        doc="probe step size (None: ePIE {ENGINE_DEFAULTS[epie][beta]:g}, "
                            "rPIE {ENGINE_DEFAULTS[rpie][beta]:g})")
    _keywords = {"alpha": "alpha", "beta": "beta"}

    @classmethod
    def step_sizes(cls, engine: str, alpha=None, beta=None) -> tuple[float, float]:
        """``(alpha, beta)`` for ``engine`` ("epie" or "rpie"), ``None`` -> its default."""
        d = cls.ENGINE_DEFAULTS[engine]
        return (float(d["alpha"] if alpha is None else alpha),
                float(d["beta"] if beta is None else beta))


class LSQMLOptions(OptionsBase):
    """LSQ-ML (batched maximum-likelihood) settings."""

    reg_object = param.Number(default=None, allow_None=True, bounds=(0.0, 10.0),
                              doc="object preconditioner regularisation, fraction of the "
                                  "maximum probe intensity (None: by the measurement's "
                                  "radiation, {REG_OBJECT})")
    reg_probe = param.Number(default=0.01, bounds=(0.0, 10.0),
                             doc="probe preconditioner regularisation, fraction of the "
                                 "maximum object intensity")
    max_step = param.Number(default=4.0, bounds=(0.0, 100.0), inclusive_bounds=(False, True),
                            doc="limit of the optimal step lengths (with the \"scan\" "
                                "preconditioner a damping: the batch's own optimum would fit "
                                "its patterns fully)")
    momentum = param.Number(default=0.0, bounds=(0.0, 1.0), inclusive_bounds=(True, False),
                            doc="heavy-ball factor between iterations (0: off)")
    step_rule = param.Selector(default="global", objects=["global", "mean"],
                               doc="step lengths from the batch's summed normal equations "
                                   "(\"global\") or their per-pattern mean (\"mean\")")
    batch_size = param.Integer(default=None, allow_None=True, bounds=(1, None),
                               doc="patterns per batch (None: {DEFAULT_BATCH}; sequential engines: 1)")
    preconditioner = param.Selector(
        default="scan", objects=["scan", "batch"],
        doc="object preconditioner: the probe intensity summed over every scan position "
            "(\"scan\", computed at the start of each iteration; damped as "
            "sqrt(w^2 + (reg_object max w)^2)) or over the batch's positions (\"batch\", "
            "w + reg_object max w; every batch then fits its own patterns fully, which leaves "
            "a mini-batch noise floor); multislice always uses \"batch\"")
    poisson_clip = param.Number(default=2.0, bounds=(1.0, 1e6),
                                doc="Poisson noise: lower limit -poisson_clip of the likelihood "
                                    "gradient 1 - I/I_model per pixel (a model amplitude grows "
                                    "at most by 1 + poisson_clip per update; 1 biases the fit "
                                    "of low counts)")
    reg_wave = param.Number(
        default=0.3, bounds=(0.0, 10.0), inclusive_bounds=(False, True),
        doc="multislice: damping of the wave update carried back through each slice, fraction "
            "of the patch's maximum |O|^2: the incident wave changes by conj(O) chi / (|O|^2 + "
            "reg_wave max |O|^2) per pixel (dividing by max |O|^2 instead, as ePIE does, "
            "shrank the update at every slice where |O| had grown above 1, so the first "
            "slices starved)")
    _keywords = {k: k for k in ("reg_object", "reg_probe", "max_step", "momentum", "step_rule",
                                "batch_size", "preconditioner", "poisson_clip", "reg_wave")}

    #: patterns per batch when ``batch_size`` is None
    DEFAULT_BATCH: ClassVar[int] = 16
    #: ``reg_object`` when None, by radiation (stated here only). Electron probes are small
    #: next to the scan step, so the illumination summed over the scan is far below its
    #: maximum between probe positions and a damping of 0.3 of the maximum held those parts
    #: back (4-slice SrTiO3, 10 iterations: phase PCC 0.43 at 0.3, 0.69 at 0.01); X-ray
    #: probes overlap smoothly and 0.3 separates multislice layers better.
    REG_OBJECT: ClassVar[dict[str, float]] = {"xray": 0.3, "electron": 0.01}

    @classmethod
    def reg_object_for(cls, radiation) -> float:
        """The default ``reg_object`` for ``radiation`` ("xray"/"electron"; other: X-ray's)."""
        return float(cls.REG_OBJECT.get(str(radiation or "xray").lower(), cls.REG_OBJECT["xray"]))


class PositionRefinement(OptionsBase):
    """Position refinement and sub-pixel positioning.

    The flat keyword ``position_refinement`` of :func:`reconstruct` takes an int (``start``),
    True (``start=0``), a dict of these fields or this object.
    """

    start = param.Integer(default=None, allow_None=True, bounds=(0, None),
                          doc="iteration from which positions are refined (None: never)")
    max_step = param.Number(default=0.5, bounds=(0.0, 100.0), inclusive_bounds=(False, True),
                            doc="largest move of a position per iteration (pixels)")
    affine = param.Boolean(default=False,
                           doc="keep the affine part of the updates (global scale/rotation/"
                               "shear, which trades off against the probe's defocus)")
    subpixel = param.Selector(default="auto", objects=["auto", True, False, "fourier", "round",
                                                       "none"],
                              doc="Fourier sub-pixel shifts of the probe (\"auto\": when a "
                                  "position is fractional or refinement is on)")
    _keywords = {"start": "position_refinement.start",
                 "max_step": "position_refinement.max_step",
                 "affine": "position_refinement.affine", "subpixel": "subpixel"}
    _engine_keys = {"start": "position_start", "max_step": "position_step",
                    "affine": "position_affine", "subpixel": "subpixel"}


class ProbeConstraints(OptionsBase):
    """Constraints on the probe, applied after every iteration."""

    update_start = param.Integer(default=0, bounds=(0, None),
                                 doc="first iteration that updates the probe")
    support = param.Number(default=None, allow_None=True, bounds=(0.0, 2.0),
                           inclusive_bounds=(False, True),
                           doc="circular support radius, fraction of half the window "
                               "(None: none)")
    power = param.Parameter(default=None,
                            doc="total probe power: None (free), \"measured\" (mean counts per "
                                "pattern) or a positive number of counts")
    _keywords = {"update_start": "probe_update_start", "support": "probe_support",
                 "power": "probe_power"}

    def _check(self):
        p = self.power
        if p is None or p == "measured":
            return
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not math.isfinite(p) or p <= 0:
            raise ValidationError("ProbeConstraints.power",
                                  f"{p!r} rejected: must be None, 'measured' or a positive number")


class ObjectConstraints(OptionsBase):
    """Constraints on the object (transmission), applied after every iteration."""

    amplitude_max = param.Number(default=None, allow_None=True, bounds=(0.0, None),
                                 inclusive_bounds=(False, True),
                                 doc="upper limit of |O| (None: by the measurement's radiation, "
                                     "{AMPLITUDE_MAX}; math.inf: no limit)")
    amplitude_min = param.Number(default=None, allow_None=True, bounds=(0.0, None),
                                 doc="lower limit of |O|")
    phase_range = param.Range(default=None, allow_None=True, bounds=(-math.pi, math.pi),
                              doc="(min, max) phase limits (rad)")
    pure_phase = param.Boolean(default=False, doc="force |O| = 1")
    _keywords = {"amplitude_max": "object_amplitude_max", "amplitude_min": "object_amplitude_min",
                 "phase_range": "object_phase_range", "pure_phase": "pure_phase"}

    #: ``amplitude_max`` when None, by radiation (stated here only; None: no limit). A thin
    #: electron specimen transmits at most what falls on it, and without the limit multislice
    #: fits grew |O| to 1.7-2 in the last slices, which took the phase from the first ones
    #: (7.8 nm SrTiO3 in 4 slices, 10 iterations: summed-phase slope 0.44 -> 0.58 with it).
    AMPLITUDE_MAX: ClassVar[dict[str, float | None]] = {"xray": None, "electron": 1.0}

    @classmethod
    def amplitude_max_for(cls, radiation) -> float | None:
        """The default ``amplitude_max`` for ``radiation`` ("xray"/"electron"; other: X-ray's)."""
        return cls.AMPLITUDE_MAX.get(str(radiation or "xray").lower(), cls.AMPLITUDE_MAX["xray"])

    def _check(self):
        lo, hi = self.amplitude_min, self.amplitude_max
        if lo is not None and hi is not None and lo > hi:
            raise ValidationError("ObjectConstraints.amplitude_min",
                                  f"{lo!r} exceeds amplitude_max={hi!r}")
        pr = self.phase_range
        if pr is not None and pr[0] > pr[1]:
            raise ValidationError("ObjectConstraints.phase_range",
                                  f"{pr!r} rejected: min must be <= max")


class MultisliceOptions(OptionsBase):
    """Settings of the multislice propagator (used when ``slices > 1``)."""

    tilt = param.NumericTuple(default=(0.0, 0.0), length=2,
                              doc="beam tilt (ty, tx) of the propagator (rad), each in "
                                  "(-pi/2, pi/2)")
    _keywords = {"tilt": "tilt"}

    def _check(self):
        if any(not (abs(float(t)) < math.pi / 2) for t in self.tilt):
            raise ValidationError("MultisliceOptions.tilt",
                                  f"{self.tilt!r} rejected: each in (-pi/2, pi/2)")


class ComputeOptions(OptionsBase):
    """Where and how the arithmetic runs, and the memory check."""

    device = param.Selector(default=None, objects=[None, *_DEVICE_ALIASES],
                            doc="compute device (None: ptynb's default)")
    threads = param.Integer(default=None, allow_None=True, bounds=(1, 1024),
                            doc="FFTW threads of the batched transforms (None: ptynb's default)")
    fftw_effort = param.Selector(default=None, objects=[None, *FFTW_EFFORTS],
                                 doc="FFTW planning of the single-pattern transforms (None: "
                                     "\"patient\" for runs of at least PATIENT_TRANSFORMS of "
                                     "them, else \"measure\")")
    fused = param.Boolean(default=True,
                          doc="compiled CPU kernels where they apply (False: generic numpy)")
    workers = param.Integer(default=None, allow_None=True, bounds=(1, 64),
                            doc="CPU threads that share LSQ-ML's compiled one-slice batches, "
                                "each taking its own patterns (None: the usable cores, at most "
                                "{MAX_WORKERS}); 1: the calling thread alone")
    allow_exceeding = param.Boolean(default=False,
                                    doc="run even if the memory forecast exceeds the free "
                                        "memory (a warning instead of InsufficientMemoryError)")
    MAX_WORKERS: ClassVar[int] = 8
    _keywords = {k: k for k in ("device", "threads", "fftw_effort", "fused", "workers",
                                "allow_exceeding")}


#: every option class, in the order of the generated documentation
OPTION_CLASSES = (PIEOptions, LSQMLOptions, PositionRefinement, ProbeConstraints,
                  ObjectConstraints, MultisliceOptions, ComputeOptions)

#: flat keyword of reconstruct -> (class, field); ``position_refinement.*`` are nested
KEYWORDS: dict[str, tuple[type, str]] = {
    kw: (cls, field) for cls in OPTION_CLASSES for field, kw in cls._keywords.items()
    if "." not in kw}


def engine_defaults() -> dict[str, Any]:
    """``{engine option key: default}`` of every option, from the classes."""
    out: dict[str, Any] = {}
    for cls in OPTION_CLASSES:
        out.update(cls().engine_items())
    return out


def _fmt(v) -> str:
    return repr(v) if not isinstance(v, float) else f"{v:g}"


def options_doc(indent: str = "        ") -> str:
    """numpydoc text listing every option (class, keyword, default, bounds, meaning)."""
    lines = []
    for cls in OPTION_CLASSES:
        lines.append(f":class:`~ptynb.ptycho.options.{cls.__name__}` -- "
                     f"{(cls.__doc__ or '').strip().splitlines()[0]}")
        for field in cls.fields():
            p = cls.param[field]
            kw = cls._keywords.get(field, field)
            b = _bound_text(p)
            extra = f", in {b}" if b else ""
            if isinstance(p, param.Selector):
                extra = f", one of {[o for o in p.objects]}"
            lines.append(f"  ``{kw}`` ({field}, default {_fmt(p.default)}{extra}): "
                         f"{cls.field_doc(field)}")
    return "\n".join(indent + ln for ln in lines)


def _parse_refinement(value) -> dict[str, Any]:
    """The ``position_refinement`` keyword as PositionRefinement fields."""
    if value is None:
        return {}
    if value is False:
        return {"start": None}
    if value is True:
        return {"start": 0}
    if isinstance(value, dict):
        d = dict(value)
        bad = [k for k in d if k not in PositionRefinement.fields()]
        if bad:
            raise ValidationError("position_refinement", f"unknown key(s) {bad}; keys: "
                                  f"{', '.join(PositionRefinement.fields())}")
        d.setdefault("start", 0)
        return d
    if isinstance(value, (int,)) or (hasattr(value, "__index__") and not isinstance(value, float)):
        return {"start": int(value)}
    raise ValidationError("position_refinement", "must be None, False, True, an iteration "
                          f"number, a dict or a PositionRefinement, got {value!r}")


def resolve(options=None, keywords: dict[str, Any] | None = None,
            position_refinement=None) -> dict[type, OptionsBase]:
    """Merge option objects and flat keywords into one object per class.

    Parameters
    ----------
    options : OptionsBase, list/tuple of them, or None
        At most one object per class.
    keywords : dict
        Flat keywords of :func:`reconstruct` that were given (see :data:`KEYWORDS`).
    position_refinement : None, bool, int, dict or PositionRefinement
        The ``position_refinement`` keyword.

    Returns
    -------
    dict
        ``{class: object}`` for every class of :data:`OPTION_CLASSES` (new objects; the
        caller's are not modified).

    Raises
    ------
    ValidationError
        ``options`` of a wrong type or a class given twice; a keyword conflicting with a
        non-default value of an object; a value out of bounds.
    """
    objs: dict[type, OptionsBase] = {}
    given = [] if options is None else (list(options) if isinstance(options, (list, tuple))
                                        else [options])
    if isinstance(position_refinement, PositionRefinement):
        given.append(position_refinement)
        position_refinement = None
    for o in given:
        if not isinstance(o, OptionsBase):
            raise ValidationError("options", f"must be option objects of ptynb.ptycho "
                                  f"({', '.join(c.__name__ for c in OPTION_CLASSES)}) or a list "
                                  f"of them, got {type(o).__name__}")
        if type(o) in objs:
            if o != objs[type(o)]:
                raise ValidationError("options", f"{type(o).__name__} given twice with "
                                      f"different values ({objs[type(o)]!r}, {o!r})")
            continue
        objs[type(o)] = o
    changes: dict[type, dict[str, Any]] = {}
    items = [(KEYWORDS[k], k, v) for k, v in (keywords or {}).items()]
    items += [((PositionRefinement, f), "position_refinement", v)
              for f, v in _parse_refinement(position_refinement).items()]
    for (cls, field), kw, value in items:
        if field in ("fftw_effort", "device") and isinstance(value, str):
            value = value.strip().lower()
        if field == "tilt" and value is not None:
            value = tuple(float(t) for t in value)
        if field == "phase_range" and value is not None:
            value = tuple(value)
        obj = objs.get(cls)
        if obj is not None:
            cur, default = getattr(obj, field), cls.param[field].default
            if cur != default and cur != value:
                raise ValidationError(kw, f"{value!r} conflicts with {cls.__name__}.{field}="
                                      f"{cur!r} given in options")
        changes.setdefault(cls, {})[field] = value
    out = {}
    for cls in OPTION_CLASSES:
        base = objs.get(cls)
        ch = changes.get(cls, {})
        out[cls] = (base.copy(**ch) if base is not None else cls(**ch))
    return out
