"""Settings objects of the ptychography engines: defaults stated once, bounds, copy/equality,
flat dict round trip, merging with the flat keywords of reconstruct()."""
from __future__ import annotations

import json

import numpy as np
import param
import pytest
from test_ptycho_utils import xray_data

from ptynb.data import ValidationError
from ptynb.ptycho import (
    ComputeOptions,
    LSQMLOptions,
    ObjectConstraints,
    PIEOptions,
    PositionRefinement,
    ProbeConstraints,
    engines,
    options,
    reconstruct,
)


@pytest.fixture(scope="module")
def small():
    return xray_data(n=32, grid=4, counts=1e6)


def test_defaults_and_engine_defaults():
    assert LSQMLOptions().reg_object is None and LSQMLOptions().reg_probe == 0.01
    assert LSQMLOptions.reg_object_for("xray") == 0.3 and LSQMLOptions.reg_object_for("electron") == 0.01
    assert LSQMLOptions().max_step == 4.0 and PositionRefinement().max_step == 0.5
    assert LSQMLOptions().preconditioner == "scan" and LSQMLOptions().poisson_clip == 2.0
    assert PIEOptions.step_sizes("epie") == (1.0, 1.0)
    assert PIEOptions.step_sizes("rpie") == (0.25, 0.25)
    assert PIEOptions.step_sizes("rpie", alpha=0.5) == (0.5, 0.25)
    d = options.engine_defaults()
    assert d["reg_object"] is None and d["position_step"] == 0.5 and d["fused"] is True
    # the engines fill missing keys from the classes (no second literal in engines.py)
    pr = engines.Problem(xp=np, intensity=np.zeros((1, 4, 4), np.float32), mask=None,
                         upsample=1, kernel=None, noise="poisson", norm=1.0,
                         options={"reg_object": 0.7})
    assert pr.options["reg_object"] == 0.7 and pr.options["reg_probe"] == 0.01
    src = open(engines.__file__).read()
    for literal in ('"reg_object", 0.3', '"electron": 0.01', '"max_step", 4.0', '0.25 if regularized',
                    '"position_step", 0.5'):
        assert literal not in src


def test_reg_object_default_follows_the_radiation():
    """None takes the measurement's radiation default (recorded in the result's attrs); a
    given value wins; a Problem built without a radiation gets X-ray's."""
    from ptynb.simulate import demo

    for rad, expect in (("xray", 0.3), ("electron", 0.01)):
        ds = demo(rad, "small", seed=0).isel(scan=slice(0, 8))
        assert reconstruct(ds, iterations=1, progress=False).attrs["option_reg_object"] == expect
        assert reconstruct(ds, iterations=1, progress=False, reg_object=0.2).attrs["option_reg_object"] == 0.2
    pr = engines.Problem(xp=np, intensity=np.zeros((1, 4, 4), np.float32), mask=None, upsample=1,
                         kernel=None, noise="poisson", norm=1.0, options={})
    assert pr.options["reg_object"] is None


def test_amplitude_limit_default_follows_the_radiation():
    """Electrons: |O| <= 1 unless asked otherwise (recorded in attrs); math.inf lifts it;
    X-rays: no limit."""
    import math

    from ptynb.simulate import demo

    assert ObjectConstraints.amplitude_max_for("electron") == 1.0
    assert ObjectConstraints.amplitude_max_for("xray") is None and ObjectConstraints().amplitude_max is None
    ds = demo("electron", "small", seed=0).isel(scan=slice(0, 8))
    r = reconstruct(ds, iterations=2, progress=False)
    assert r.attrs["option_object_amplitude_max"] == 1.0
    assert float(np.abs(r["object"].values).max()) <= 1.0 + 1e-6
    free = reconstruct(ds, iterations=2, progress=False, object_amplitude_max=math.inf)
    assert float(np.abs(free["object"].values).max()) > 1.05  # measured 1.235
    x = demo("xray", "small", seed=0).isel(scan=slice(0, 8))
    assert reconstruct(x, iterations=1, progress=False).attrs.get("option_object_amplitude_max") is None


@pytest.mark.parametrize("cls, field, bad, bound", [
    (PIEOptions, "alpha", 0.0, "(0, 2]"), (PIEOptions, "beta", 2.5, "(0, 2]"),
    (LSQMLOptions, "momentum", 1.0, "[0, 1)"), (LSQMLOptions, "batch_size", 0, "[1, inf)"),
    (LSQMLOptions, "reg_wave", 0.0, "(0, 10]"),
    (PositionRefinement, "max_step", -1.0, "(0, 100]"),
    (ProbeConstraints, "update_start", -2, "[0, inf)"),
    (ComputeOptions, "threads", 0, "[1, 1024]")])
def test_out_of_bounds_names_setting_and_bound(cls, field, bad, bound):
    with pytest.raises(ValidationError) as ei:
        cls(**{field: bad})
    assert ei.value.variable == f"{cls.__name__}.{field}"
    assert bound in str(ei.value)
    obj = cls()
    with pytest.raises(ValidationError, match=f"{cls.__name__}.{field}"):
        setattr(obj, field, bad)
    assert getattr(obj, field) == cls.param[field].default  # unchanged


def test_non_numeric_checks():
    with pytest.raises(ValidationError, match="power"):
        ProbeConstraints(power=-3.0)
    assert ProbeConstraints(power="measured").power == "measured"
    with pytest.raises(ValidationError, match="amplitude_min"):
        ObjectConstraints(amplitude_min=2.0, amplitude_max=1.0)
    with pytest.raises(ValidationError, match="step_rule"):
        LSQMLOptions(step_rule="median")
    with pytest.raises(ValidationError, match="is not a field of LSQMLOptions; did you mean .reg_object."):
        LSQMLOptions(reg_objet=0.1)


@pytest.mark.parametrize("cls", options.OPTION_CLASSES)
def test_copy_equality_and_flat_round_trip(cls):
    obj = cls()
    assert obj == cls() and obj.copy() == obj and obj.copy() is not obj
    d = obj.as_dict()
    assert json.loads(json.dumps(d)) == d  # JSON friendly, flat
    assert cls.from_dict(json.loads(json.dumps(d))) == obj


def test_copy_changes_and_nesting_in_settings():
    a = ObjectConstraints(phase_range=(-1.0, 0.5), pure_phase=True)
    assert ObjectConstraints.from_dict(json.loads(json.dumps(a.as_dict()))) == a
    b = a.copy(pure_phase=False)
    assert b != a and b.phase_range == (-1.0, 0.5) and a.pure_phase is True
    assert PIEOptions(alpha=0.5) != LSQMLOptions()

    class Settings(param.Parameterized):
        ptycho = param.ClassSelector(class_=PIEOptions, default=PIEOptions(alpha=0.5))

    s = Settings()
    assert s.ptycho == PIEOptions(alpha=0.5) and repr(s.ptycho) == "PIEOptions(alpha=0.5)"


def test_docstring_generated_from_classes():
    doc = reconstruct.__doc__
    assert "<<OPTIONS>>" not in doc
    for cls in options.OPTION_CLASSES:
        for field in cls.fields():
            kw = cls._keywords[field]
            default = cls.param[field].default
            shown = f"{default:g}" if isinstance(default, float) else repr(default)
            assert f"``{kw}`` ({field}, default {shown}" in doc, (cls, field)
    assert "(None: ePIE 1, rPIE 0.25)" in doc and "(None: 16;" in doc


def test_resolve_keywords_objects_conflicts():
    r = options.resolve([PIEOptions(alpha=0.5), LSQMLOptions(momentum=0.5)],
                        {"alpha": 0.5, "reg_object": 0.2}, position_refinement={"max_step": 1.0})
    assert r[PIEOptions].alpha == 0.5 and r[LSQMLOptions].reg_object == 0.2
    assert r[LSQMLOptions].momentum == 0.5
    assert r[PositionRefinement].start == 0 and r[PositionRefinement].max_step == 1.0
    # a keyword overrides a field the object leaves at its default
    assert options.resolve(PIEOptions(beta=0.3), {"alpha": 0.7})[PIEOptions].alpha == 0.7
    with pytest.raises(ValidationError, match="alpha: 0.6 conflicts with PIEOptions.alpha=0.5"):
        options.resolve(PIEOptions(alpha=0.5), {"alpha": 0.6})
    with pytest.raises(ValidationError, match="given twice"):
        options.resolve([PIEOptions(alpha=0.5), PIEOptions(alpha=0.6)])
    with pytest.raises(ValidationError, match="options"):
        options.resolve([{"alpha": 0.5}])
    with pytest.raises(ValidationError, match="position_refinement"):
        options.resolve(None, {}, position_refinement={"begin": 3})
    user = PIEOptions(alpha=0.5)
    options.resolve(user, {"beta": 0.1})
    assert user.beta is None  # the caller's object is not modified


def test_objects_equal_keywords_bit_for_bit(small):
    kw = dict(engine=[("rpie", 2), ("lsqml", 2)], progress=False)
    a = reconstruct(small, alpha=0.5, reg_object=0.2, momentum=0.3, probe_update_start=1,
                    position_refinement=1, **kw)
    b = reconstruct(small, options=[PIEOptions(alpha=0.5),
                                    LSQMLOptions(reg_object=0.2, momentum=0.3),
                                    ProbeConstraints(update_start=1),
                                    PositionRefinement(start=1)], **kw)
    c = reconstruct(small, **kw)
    np.testing.assert_array_equal(a["object"].values, b["object"].values)
    np.testing.assert_array_equal(a["cost"].values, b["cost"].values)
    assert not np.array_equal(a["cost"].values, c["cost"].values)  # the options matter
    assert a.attrs["option_reg_object"] == 0.2 and c.attrs["option_reg_object"] == 0.3
    with pytest.raises(ValidationError, match="conflicts"):
        reconstruct(small, alpha=0.6, options=PIEOptions(alpha=0.5), **kw)
    with pytest.raises(ValidationError, match="PIEOptions.alpha"):
        reconstruct(small, alpha=3.0, **kw)


def test_default_engine_chain_by_radiation():
    """engine=None runs the radiation's chain (X-ray: rPIE sweeps, then LSQ-ML; electron:
    LSQ-ML), cut to the iterations asked for; the result says what ran."""
    from ptynb.ptycho import default_engine
    from ptynb.simulate import demo

    assert default_engine("xray", 100) == [("rpie", 3), ("lsqml", 97)]
    assert default_engine("xray", 2) == [("rpie", 2)]
    assert default_engine(None, 5) == [("rpie", 3), ("lsqml", 2)]
    assert default_engine("electron", 40) == [("lsqml", 40)]
    for rad, expect in (("xray", "rpie:3,lsqml:2"), ("electron", "lsqml:5")):
        ds = demo(rad, "small", seed=0).isel(scan=slice(0, 8))
        assert reconstruct(ds, iterations=5, progress=False).attrs["engine"] == expect
    with pytest.raises(ValidationError, match="iterations"):
        reconstruct(ds, iterations=2.5, progress=False)
