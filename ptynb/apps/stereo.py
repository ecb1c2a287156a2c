"""Stereo ptychography app: simulate or load a multi-beam measurement, reconstruct each beam,
characterise the beams, align the views, look at anaglyphs and difference images, and
separate the layers. Served at ``/stereo`` by ``ptynb serve``.
"""
from __future__ import annotations

import numpy as np
import panel as pn
import param
import xarray as xr

from ..workflows import stereo as wf
from ._task import TaskRunner
from ._files import FILE_SUFFIXES, DataFilePicker, data_dir
from .explorer import load_any

PRESETS = {
    "standard (about a minute)": {},
    "quick look (seconds)": dict(n_beams=2, scan_grid=8, epie_iterations=15, lsqml_iterations=5,
                                 layer_iterations=100),
}

SETTING_GROUPS = {
    "Sample and beams": ["sample", "n_beams", "theta_s", "separation", "n_layers", "astigmatism", "scan_grid", "seed"],
    "Reconstruction": ["epie_iterations", "lsqml_iterations", "position_refinement_start", "upsample"],
    "Analysis": ["reference_beam", "layer_shift_px", "subpixel", "frc"],
}


class StereoApp(pn.viewable.Viewer):
    """The stereo workflow as a web app (one instance per browser session)."""

    source = param.Selector(objects=["simulated demo", "file from the data directory"],
                            default="simulated demo")
    preset = param.Selector(objects=list(PRESETS), default=list(PRESETS)[0],
                            doc="Size of the run: standard, or a quick look with fewer positions and iterations")
    anaglyph_shift = param.Number(default=0.0, bounds=(-10.0, 10.0), step=0.1,
                                  doc="Extra horizontal shift (px) of the second view")
    left_view = param.Selector(objects=["left", "right"], default="left")
    right_view = param.Selector(objects=["left", "right"], default="right")

    def __init__(self, settings: wf.Settings | None = None, result: xr.DataTree | None = None, **params):
        super().__init__(**params)
        self.settings = settings or wf.Settings()
        self.result: xr.DataTree | None = None
        self.runner = TaskRunner()
        self.files = DataFilePicker()
        self.files.visible = False
        self._defaults = {k: v for k, v in self.settings.param.values().items() if k != "name"}
        self.run_button = pn.widgets.Button(name="Run", button_type="primary", width=100,
                                            css_classes=["ptynb-run"])
        self.run_button.on_click(self._run)
        self.save_button = pn.widgets.Button(name="Save result", width=160, disabled=True,
                                             css_classes=["ptynb-save"])
        self.save_button.on_click(self._save)
        self.save_format = pn.widgets.RadioButtonGroup(options=[".h5", ".zarr"], value=".h5", width=120)
        self.error = pn.pane.Alert("", alert_type="danger", visible=False, css_classes=["ptynb-error"])
        self.message = pn.pane.Markdown("", css_classes=["ptynb-message"])
        self.numbers = pn.pane.Markdown("", css_classes=["ptynb-numbers"])
        self.anaglyph_caption = pn.pane.Markdown("", css_classes=["ptynb-anaglyph-caption"])
        self.anaglyph_pane = pn.pane.HoloViews(None, css_classes=["ptynb-anaglyph"], linked_axes=False)
        self.probes_pane = pn.Column()
        self.layers_pane = pn.Column()
        self.frc_pane = pn.Column()
        self.param.watch(lambda e: setattr(self.files, "visible", e.new != "simulated demo"), "source")
        self.param.watch(self._apply_preset, "preset")
        self.param.watch(self._update_anaglyph, ["anaglyph_shift", "left_view", "right_view"])
        if result is not None:
            self._done(result)

    # ------------------------------------------------------------------ actions
    def _apply_preset(self, event):
        values = dict(self._defaults)
        values.update(PRESETS[event.new])
        self.settings.param.update(**values)
    def _show_error(self, exc):
        self.error.object = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
        self.error.visible = True

    def _run(self, _event=None):
        self.error.visible = False
        s = self.settings
        measurement = None
        if self.source != "simulated demo":
            try:
                path = self.files.path
                if path is None:
                    self._show_error(f"choose a stereo measurement file ({', '.join(FILE_SUFFIXES)}) "
                                     f"in {data_dir()}")
                    return
                measurement = load_any(path)
                wf.check_stereo_measurement(measurement)
            except Exception as exc:  # shown in the page; the app keeps working
                self._show_error(exc)
                return

        def job(progress, cancel):
            return wf.run(s, measurement, progress=False, report=progress, cancel=cancel)

        started = self.runner.start(job, on_done=self._done, on_error=self._show_error,
                                    message="starting...")
        if not started:
            self._show_error("a run is already in progress")

    def _save(self, _event=None):
        from .. import io

        if self.result is None:
            return
        path = data_dir() / f"stereo_result{self.save_format.value}"
        try:
            io.save(self.result, path)
            self.message.object = f"saved to `{path}`"
        except Exception as exc:
            self._show_error(exc)

    def _done(self, tree):
        self.result = tree
        status = tree.attrs.get("status", "?")
        self.message.object = f"run {status}"
        self.save_button.disabled = False
        self._render()

    # ------------------------------------------------------------------ views
    def _render(self):
        from .. import viz

        t = self.result
        if t is None:
            return
        if "reconstruction" in t:
            rec = t["reconstruction"].to_dataset()
            beams = [str(b) for b in rec["beam"].values]
            self.param.left_view.objects = beams
            self.param.right_view.objects = beams
            self.left_view, self.right_view = beams[0], beams[-1]
            probes = [pn.pane.HoloViews(viz.probe_view(rec["probe"].sel(beam=b), title=f"{b} probe"),
                                        linked_axes=False) for b in beams]
            if "caustics" in t:
                import holoviews as hv

                for b in beams:
                    c = t["caustics"][b].to_dataset()
                    z_mm = c.z.values * 1e3
                    x_um = c.px.values * 1e6
                    y_um = c.py.values * 1e6
                    h = hv.Image(c.horizontal.values.T[::-1], bounds=(z_mm[0], x_um[0], z_mm[-1], x_um[-1]),
                                 kdims=["z (mm)", "x (um)"]).opts(cmap="fire", title=f"{b}: horizontal caustic",
                                                                  frame_width=300, frame_height=150)
                    v = hv.Image(c.vertical.values.T[::-1], bounds=(z_mm[0], y_um[0], z_mm[-1], y_um[-1]),
                                 kdims=["z (mm)", "y (um)"]).opts(cmap="fire", title=f"{b}: vertical caustic",
                                                                  frame_width=300, frame_height=150)
                    a = c.attrs
                    probes.append(pn.Column(
                        pn.pane.HoloViews(h + v, linked_axes=False),
                        pn.pane.Markdown(
                            f"**{b}**: focus x {a['focus_x'] * 1e3:.3f} mm, y {a['focus_y'] * 1e3:.3f} mm "
                            f"(astigmatic offset {a['astigmatic_offset'] * 1e6:.1f} um); spot FWHM "
                            f"{a['focal_spot_x'] * 1e9:.0f} x {a['focal_spot_y'] * 1e9:.0f} nm; NA "
                            f"{a['numerical_aperture']:.2e}, depth of focus {a['depth_of_focus'] * 1e6:.0f} um")))
            self.probes_pane[:] = probes
        if "views" in t:
            self._update_anaglyph()
        if "layers" in t:
            lay = t["layers"].to_dataset()
            if "views" in t:  # show the area where the layers were recovered
                valid = t["views"].to_dataset()["valid"].values
                ys, xs = np.nonzero(valid)
                lay = lay.isel(y=slice(ys.min(), ys.max() + 1), x=slice(xs.min(), xs.max() + 1))
            imgs = [viz.image(lay["layers"].isel(layer=k), cmap="gray",
                              title=f"recovered layer {k} (z = {float(lay.layer_z[k]) * 1e9:.0f} nm)"
                                    + (f": {lay.attrs[f'layer_{k}_is']}" if f"layer_{k}_is" in lay.attrs else ""))
                    for k in range(lay.sizes["layer"])]
            a = lay.attrs
            lines = [f"layer shift between the outer views: **{a['layer_shift_px']:.2f} px**"
                     f" (from {a.get('layer_shift_source', 'value')})"]
            if "separation_estimate" in a:
                lines.append(f"implied layer separation: **{a['separation_estimate'] * 1e9:.0f} nm**")
            for k, v in a.items():
                if k.startswith("pcc_"):
                    lines.append(f"PCC with true layer {k[4:]}: {v:.3f} (cross-talk {a['crosstalk_' + k[4:]]:.3f})")
            self.layers_pane[:] = [pn.Row(*[pn.pane.HoloViews(i, linked_axes=False) for i in imgs]),
                                   pn.pane.Markdown("  \n".join(lines), css_classes=["ptynb-layer-numbers"])]
        if "frc" in t:
            import holoviews as hv

            fr = t["frc"].to_dataset()
            curves = [hv.Curve((fr.q.values * 1e-6, fr.frc.sel(beam=b).values), "q (1/um)", "FRC",
                               label=str(b)) for b in fr.beam.values]
            self.frc_pane[:] = [pn.pane.HoloViews(hv.Overlay(curves).opts(frame_width=400, title="FRC"),
                                                  linked_axes=False),
                                pn.pane.Markdown("  \n".join(
                                    f"{b}: {r * 1e9:.1f} nm (half-bit)" for b, r in
                                    zip(fr.beam.values, fr.resolution.values)))]
        a = t.attrs
        if "stereo_depth_limit" in a:
            rows = [
                ("lateral resolution used", f"{a['resolution'] * 1e9:.1f} nm"),
                ("multislice depth limit (Eq. 1)", f"{a['multislice_depth_limit'] * 1e6:.2f} um"),
                ("stereo depth limit (Eq. 2)", f"{a['stereo_depth_limit'] * 1e9:.0f} nm"),
                ("expected layer shift 2 d tan(theta_s)",
                 f"{a['layer_shift_m'] * 1e9:.1f} nm = {a['layer_shift_px']:.2f} px"),
                ("measured layer shift", f"{a['measured_layer_shift_px']:.2f} px"),
                ("mean phase of the material", f"{a['mean_material_phase']:.3f} rad"),
            ]
            if "thickness_from_phase" in a:
                rows.append((f"thickness from phase ({self.settings.material})",
                             f"{a['thickness_from_phase'] * 1e9:.0f} nm"))
            self.numbers.object = "| quantity | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)

    def _update_anaglyph(self, *_events):
        import holoviews as hv

        from ..workflows.stereo_steps import anaglyph, fourier_shift

        if self.result is None or "views" not in self.result:
            return
        v = self.result["views"].to_dataset()
        beams = [str(b) for b in v.beam.values]
        lv = self.left_view if self.left_view in beams else beams[0]
        rv = self.right_view if self.right_view in beams else beams[-1]
        ys, xs = np.nonzero(v["valid"].values)
        crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        a = v["phase"].sel(beam=lv).values[crop]
        b = v["phase"].sel(beam=rv).values[crop]
        sh = (0.0, float(self.anaglyph_shift))
        rgb = anaglyph(a, b, shift=sh)
        diff = a - np.real(fourier_shift(b, sh))
        border = int(np.ceil(abs(sh[1]))) + 1
        rms = float(np.sqrt(np.mean(diff[:, border:-border] ** 2)))
        ny, nx = a.shape
        px_nm = float(v.attrs["pixel_size"]) * 1e9
        bounds = (0, 0, nx * px_nm, ny * px_nm)
        fig = (hv.RGB(rgb[::-1], bounds=bounds, kdims=["x (nm)", "y (nm)"]).opts(
                   title=f"anaglyph: {lv} red, {rv} cyan", frame_width=320, aspect="equal")
               + hv.Image(diff[::-1], bounds=bounds, kdims=["x (nm)", "y (nm)"],
                          vdims=["difference (rad)"]).opts(
                   cmap="RdBu", symmetric=True, colorbar=True, title=f"{lv} - shifted {rv} (rad)",
                   frame_width=320, aspect="equal"))
        self.anaglyph_pane.object = fig
        self.anaglyph_caption.object = (f"views {lv} / {rv}; extra shift {sh[1]:+.1f} px; "
                                        f"difference rms {rms:.4f} rad")

    def __panel__(self):
        setting_cards = [pn.Card(pn.Param(self.settings.param, parameters=names, show_name=False),
                                 title=title, collapsed=(title != "Sample and beams"), width=330)
                         for title, names in SETTING_GROUPS.items()]
        controls = pn.Column(
            "## Stereo ptychography",
            pn.widgets.Select.from_param(self.param.source, css_classes=["ptynb-source"]),
            self.files,
            pn.widgets.Select.from_param(self.param.preset, css_classes=["ptynb-preset"]),
            *setting_cards,
            pn.Row(self.run_button, self.save_format), self.save_button,
            self.runner, self.error, self.message, width=350,
        )
        anaglyph_controls = pn.Row(
            pn.widgets.FloatSlider.from_param(self.param.anaglyph_shift, name="extra shift of the second view (px)",
                                              css_classes=["ptynb-shift"], width=300),
            pn.widgets.Select.from_param(self.param.left_view, name="red view", width=100),
            pn.widgets.Select.from_param(self.param.right_view, name="cyan view", width=100))
        tabs = pn.Tabs(
            ("Beams", self.probes_pane),
            ("Views and anaglyph", pn.Column(anaglyph_controls, self.anaglyph_pane, self.anaglyph_caption)),
            ("Layers", self.layers_pane),
            ("Depth numbers", self.numbers),
            ("FRC", self.frc_pane),
            dynamic=False,
        )
        return pn.Row(controls, tabs, sizing_mode="stretch_width")


def app():
    """A fresh stereo app for one browser session (CI-small defaults; press Run)."""
    return StereoApp().__panel__()
