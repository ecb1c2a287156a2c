"""Getting-started explorer app: simulate or open a measurement and look at it.

Scan positions are points (tap one to see its diffraction pattern); the probe is shown as
amplitude + phase; the object (ground truth for simulated data) as amplitude + phase.
"""
from __future__ import annotations

from pathlib import Path

import panel as pn
import param
import xarray as xr

from ..io import load_any  # moved to ptynb.io; stays importable from here for now
from ._files import FILE_SUFFIXES, DataFilePicker, data_dir  # noqa: F401  (re-exported)
from ._task import TaskRunner

DEMOS = {"X-ray demo (8 keV, zone-plate probe)": "xray", "Electron demo (200 keV, 4D-STEM)": "electron"}

class Explorer(pn.viewable.Viewer):
    """Simulate a demo dataset or open a file, then explore patterns, probe and object."""

    source = param.Selector(objects=list(DEMOS) + ["file from the data directory"],
                            default=list(DEMOS)[0], doc="Where the measurement comes from")
    seed = param.Integer(default=0, bounds=(0, None), doc="Random seed of the demo simulation")
    phase_view = param.Selector(objects=["both", "hsv", "phase", "amplitude"], default="both",
                                doc="How complex images are drawn")

    def __init__(self, **params):
        super().__init__(**params)
        self.measurement: xr.Dataset | None = None
        self.runner = TaskRunner()
        self.files = DataFilePicker()
        self.files.visible = False
        self.load_button = pn.widgets.Button(name="Load", button_type="primary", width=100,
                                             css_classes=["ptynb-load"])
        self.load_button.on_click(self._load)
        self.error = pn.pane.Alert("", alert_type="danger", visible=False, css_classes=["ptynb-error"])
        self.info = pn.pane.Markdown("", css_classes=["ptynb-info"])
        self.views = pn.Column(sizing_mode="stretch_width")
        self.param.watch(self._source_changed, "source")
        self.param.watch(lambda _e: self._render(), "phase_view")

    def _source_changed(self, _event=None):
        self.files.visible = self.source not in DEMOS

    def _load(self, _event=None):
        self.error.visible = False
        source, seed = self.source, self.seed
        if source in DEMOS:
            kind = DEMOS[source]

            def job(progress, cancel):
                from .. import simulate

                progress(0.1, f"simulating the {kind} demo...")
                return simulate.demo(kind=kind, seed=seed, progress=False)
        else:
            path = self.files.path
            if path is None:
                self._show_error(f"choose a file (one of {', '.join(FILE_SUFFIXES)}) in {data_dir()}")
                return

            def job(progress, cancel):
                progress(0.1, f"loading {Path(path).name}...")
                ds = load_any(path)
                from ..data import validate

                validate(ds)
                return ds

        self.runner.start(job, on_done=self._loaded, on_error=self._show_error, message="working...")

    def _show_error(self, exc):
        self.error.object = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
        self.error.visible = True

    def _loaded(self, ds):
        self.measurement = ds
        self._render()

    def _render(self):
        ds = self.measurement
        if ds is None:
            return
        from .. import viz

        d = ds
        for dim in ("beam", "angle"):
            if dim in d["intensity"].dims:
                d = d.isel({dim: 0})
        a = ds.attrs
        n = d.sizes["scan"]
        lines = [
            f"**{a.get('radiation', '?')}** at **{a.get('energy_eV', float('nan')) / 1e3:.1f} keV**, "
            f"wavelength {a.get('wavelength', float('nan')) * 1e12:.3g} pm",
            f"{n} positions, detector {d.sizes['qy']} x {d.sizes['qx']} px, "
            f"reconstruction pixel {a.get('pixel_size', float('nan')) * 1e9:.3g} nm",
            f"total counts per pattern (mean): {float(d['intensity'].mean('scan').sum()):.4g}",
        ]
        self.info.object = "  \n".join(lines)
        panes = [pn.pane.HoloViews(viz.scan_explorer(d), linked_axes=False, css_classes=["ptynb-scan"])]
        if "true_probe" in ds:
            panes.append(pn.pane.HoloViews(viz.probe_view(ds["true_probe"], title="probe (true)")))
        if "true_object" in ds:
            obj = ds["true_object"]
            obj = obj.isel({dim: 0 for dim in obj.dims[:-2]})
            panes.append(pn.pane.HoloViews(viz.complex_image(obj, mode=self.phase_view,
                                                             title="object (true)")))
        self.views[:] = panes

    def __panel__(self):
        controls = pn.Column(
            pn.pane.Markdown("[&larr; all apps](./)", css_classes=["ptynb-home"], margin=(0, 10)),
            "## Measurement explorer",
            pn.Param(self.param, parameters=["source", "seed", "phase_view"], show_name=False,
                     widgets={"source": {"type": pn.widgets.Select, "css_classes": ["ptynb-source"]}}),
            self.files, self.load_button, self.runner, self.error, self.info,
            width=340,
        )
        return pn.Row(controls, self.views, sizing_mode="stretch_width")


def app():
    """A fresh explorer (one per browser session), loaded with the X-ray demo.

    In a served session the demo is simulated once the page has connected (``pn.state.onload``):
    a job that finished while the page was still connecting could have its views dropped.
    """
    ex = Explorer()
    if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
        pn.state.onload(ex._load)
    else:
        ex._load()
    return ex.__panel__()
