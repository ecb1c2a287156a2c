"""Getting-started explorer app: simulate or open a measurement and look at it.

Scan positions are points (tap one to see its diffraction pattern); the probe is shown as
amplitude + phase; the object (ground truth for simulated data) as amplitude + phase.
"""
from __future__ import annotations

from pathlib import Path

import panel as pn
import param
import xarray as xr

from ..io import load_any
from ._files import FILE_SUFFIXES, DataFilePicker, data_dir  # noqa: F401  (re-exported)
from ._task import TaskRunner

DEMOS = {"X-ray demo (8 keV, zone-plate probe)": "xray", "Electron demo (200 keV, 4D-STEM)": "electron"}

class Explorer(pn.viewable.Viewer):
    """Simulate a demo dataset or open a file, then explore patterns, probe and object."""

    source = param.Selector(objects=list(DEMOS) + ["file from the data directory"],
                            default=list(DEMOS)[0], doc="Where the measurement comes from")
    # no widget-side bounds: a negative seed typed in the page is refused with a message on Load
    # (a bounded widget would silently put the old value back)
    seed = param.Integer(default=0, doc="Random seed of the demo simulation (>= 0)")
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
        self.warning = pn.pane.Alert("", alert_type="warning", visible=False, css_classes=["ptynb-warning"])
        self.info = pn.pane.Markdown("", css_classes=["ptynb-info"])
        self.views = pn.Column(sizing_mode="stretch_width")
        self.param.watch(self._source_changed, "source")
        self.param.watch(lambda _e: self._render(), "phase_view")

    def _source_changed(self, _event=None):
        self.files.visible = self.source not in DEMOS

    def _load(self, _event=None):
        self.error.visible = False
        self.warning.visible = False
        source, seed = self.source, self.seed
        if self.runner.running:
            self._show_error("still loading the previous measurement: wait for it or press Cancel")
            return
        if source in DEMOS:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                self._show_error(f"seed: must be an integer >= 0 (in [0, inf)), got {seed!r}")
                return
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
                return load_any(path)  # checked in _loaded (on the server thread, with warnings)

        self.runner.start(job, on_done=self._loaded, on_error=self._show_error, message="working...")

    def _show_error(self, exc):
        self.error.object = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
        self.error.visible = True
        if isinstance(exc, BaseException):  # a failed load: no stale plots of the previous one
            self.measurement = None
            self.info.object = "Nothing loaded (see the error above)."
            self.views[:] = []

    def _loaded(self, ds):
        """Check the measurement (errors and warnings shown in the page), then draw it."""
        import warnings

        from ..data import validate

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            validate(ds)  # a ValidationError goes to the runner: error shown, never "done"
        msgs = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
        self.measurement = ds
        self._render()
        notes = self._notes(ds) + msgs
        self.warning.object = "  \n".join(f"**Note:** {m}" for m in notes)
        self.warning.visible = bool(notes)

    @staticmethod
    def _notes(ds) -> list[str]:
        """What the page does not show of a multi-beam / multi-angle measurement."""
        out = []
        inten = ds["intensity"]
        for dim, what in (("beam", "beams"), ("angle", "angles")):
            if dim in inten.dims and inten.sizes[dim] > 1:
                vals = [str(v) for v in ds[dim].values] if dim in ds.coords else list(map(str, range(inten.sizes[dim])))
                unit = " deg" if dim == "angle" else ""
                listed = ", ".join(vals[:6]) + (", ..." if len(vals) > 6 else "")
                app = "the stereo app (/stereo)" if dim == "beam" else "a tomography workflow"
                out.append(f"this measurement has {inten.sizes[dim]} {what} ({listed}{unit}); only "
                           + f"{dim} {vals[0]}{unit} is shown here. Use {app} to reconstruct them all.")
        return out

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
            probe = ds["true_probe"]
            probe = probe.isel({dim: 0 for dim in ("beam", "angle") if dim in probe.dims})  # as shown above
            panes.append(pn.pane.HoloViews(viz.probe_view(probe, title="probe (true)")))
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
            self.files, self.load_button, self.runner, self.error, self.warning, self.info,
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
