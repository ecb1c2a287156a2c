"""A toy workflow built on the template (used by tests/test_workflow_template.py).

Settings + two steps + a view, registered in a fresh process through
``PTYNB_WORKFLOWS=toy_workflow:WORKFLOW`` (with ``tests/`` on ``PYTHONPATH``): the same path a
real workflow takes. The physics is deliberately simple and has a known answer: a Gaussian
spot of standard deviation ``sigma`` (m) with Poisson noise; the second step measures the
spot's width from the image by iterated second moments, so a test can compare the measured
width with the simulated one.
"""
from __future__ import annotations

import numpy as np
import param
import xarray as xr

from ptynb.workflows import Step, Workflow, WorkflowSettings


class Settings(WorkflowSettings):
    """Toy settings (SI units)."""

    size = param.Integer(default=64, bounds=(16, 512), doc="Image pixels per side")
    pixel_size = param.Number(default=10e-9, bounds=(1e-12, 1e-3), doc="Pixel size (m)")
    sigma = param.Number(default=80e-9, bounds=(1e-10, None), doc="Standard deviation of the spot (m)")
    counts = param.Number(default=1e5, bounds=(1.0, None), doc="Expected total counts in the image")
    iterations = param.Integer(default=20, bounds=(1, 10_000), doc="Moment iterations")
    seed = param.Integer(default=0, bounds=(0, None), doc="Random seed of the noise")

    groups = {"Sample": ["size", "pixel_size", "sigma", "counts", "seed"], "Analysis": ["iterations"]}
    presets = {"default": {}, "small": {"size": 32, "iterations": 5}}


def _simulate(run):
    s = run.settings
    m = run.inputs.get("measurement")
    if m is not None:
        return m
    n = int(s.size)
    x = (np.arange(n) - n / 2) * s.pixel_size
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * s.sigma ** 2))
    rng = np.random.default_rng(int(s.seed))
    img = rng.poisson(g / g.sum() * s.counts).astype(np.float32)
    return xr.Dataset({"image": (("y", "x"), img, {"units": "counts"})},
                      coords={"y": ("y", x, {"units": "m"}), "x": ("x", x, {"units": "m"})})


def _measure(run):
    s = run.settings
    img = run["measurement"]["image"].values.astype(float)
    x = run["measurement"]["x"].values
    xx, yy = np.meshgrid(x, x)
    w = np.ones_like(img)
    history = []
    sig = float(np.ptp(x)) / 4  # start from a broad window (the truth is not used)
    for it in range(int(s.iterations)):
        run.check_cancel(partial=xr.Dataset({"width": ("iteration", np.asarray(history))}))
        w = np.exp(-(xx ** 2 + yy ** 2) / (2 * (2 * sig) ** 2))  # a window 2x the current width
        p = img * w
        var = float((p * (xx ** 2 + yy ** 2)).sum() / p.sum() / 2)
        # undo the window's narrowing: 1/s_obs^2 = 1/s^2 + 1/(2 s_prev)^2
        sig = float(np.sqrt(1.0 / max(1.0 / var - 1.0 / (2 * sig) ** 2, 1e-300)))
        history.append(sig)
        run.report((it + 1) / int(s.iterations), f"iteration {it + 1}/{int(s.iterations)}")
    return xr.Dataset({"width": ("iteration", np.asarray(history), {"units": "m"})},
                      attrs={"measured_sigma": history[-1]})


def summarize(settings, results):
    est = results.get("estimate")
    if est is None or "measured_sigma" not in est.attrs:
        return {}
    return {"measured_sigma": float(est.attrs["measured_sigma"])}


def views(tree, settings=None):
    """Tabs: the image and the measured width."""
    from ptynb import viz

    out = [("Image", viz.image(tree["measurement"].to_dataset()["image"], title="toy image"))]
    if "measured_sigma" in tree.attrs:
        out.append(("Width", f"measured sigma: **{tree.attrs['measured_sigma'] * 1e9:.1f} nm**"))
    return out


WORKFLOW = Workflow(
    name="toy",
    title="Toy workflow (template test)",
    description="A Gaussian spot with Poisson noise; its width measured by iterated moments.",
    settings=Settings,
    steps=(Step("measurement", _simulate, "simulating", weight=1),
           Step("estimate", _measure, "measuring the width", weight=3)),
    summarize=summarize,
    views="toy_workflow:views",
    summary_keys=(("measured_sigma", "measured sigma", 1e9, "nm"),),
)
