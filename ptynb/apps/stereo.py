"""Stereo ptychography app: simulate or load a multi-beam measurement, reconstruct each beam,
characterise the beams, align the views, look at anaglyphs and difference images, and
separate the layers. Served at ``/stereo`` by ``ptynb serve``.

It is the generic :class:`~ptynb.apps._workflow.WorkflowApp` of the ``stereo`` workflow; the
views are :func:`ptynb.viz.stereo.views` (the same as the notebook's). The only additions:
the anaglyph's sliders and its caption, and CSS classes on the number tables.
"""
from __future__ import annotations

from typing import ClassVar

import holoviews as hv
import panel as pn
import xarray as xr

from ._workflow import WorkflowApp, with_widgets

__all__ = ["StereoApp", "app"]


def _workflow():
    from ..workflows import get

    return get("stereo")


def __getattr__(name):  # the presets and groups live on the settings class now
    if name == "PRESETS":
        return _workflow().settings.presets
    if name == "SETTING_GROUPS":
        return _workflow().settings.groups
    raise AttributeError(name)


class StereoApp(WorkflowApp):
    """The stereo workflow as a web app (one instance per browser session).

    ``StereoApp(settings=..., result=tree)`` opens on a notebook's results.
    """

    collapsed_groups = ("Scan and detector", "Reconstruction", "Analysis")
    #: shown units (astigmatism: line-foci distances are microns; the default is 0 m) and the
    #: units of settings whose docs name none
    display_units: ClassVar[dict[str, str]] = {"astigmatism": "um", "detector": "px per side", "scan_grid": "points per side",
                     "overlap": "fraction", "jitter": "fraction of the step",
                     "counts_per_pattern": "counts"}

    def __init__(self, settings=None, result: xr.DataTree | None = None, **params):
        self.shift_slider = pn.widgets.FloatSlider(name="extra shift of the second view (px)", start=-10.0,
                                                   end=10.0, step=0.1, value=0.0, width=300, format="0.0",
                                                   css_classes=["ptynb-shift"])
        self.red_view = pn.widgets.Select(name="red view", options=["left", "right"], value="left", width=100)
        self.cyan_view = pn.widgets.Select(name="cyan view", options=["left", "right"], value="right", width=100)
        self.anaglyph_caption = pn.pane.Markdown("", css_classes=["ptynb-anaglyph-caption"])
        for w in (self.shift_slider, self.red_view, self.cyan_view):
            w.param.watch(self._update_caption, "value")
        super().__init__(_workflow(), settings=settings, result=result, **params)

    # ------------------------------------------------------------------ hooks
    def make_pane(self, tab, obj):
        if tab == "Views and anaglyph" and isinstance(obj, hv.Layout) and \
                all(isinstance(o, hv.DynamicMap) for o in obj):
            return with_widgets(pn.pane.HoloViews(
                obj, linked_axes=False, css_classes=["ptynb-anaglyph"], widget_location="top_left",
                widgets={"shift": self.shift_slider, "red": self.red_view, "cyan": self.cyan_view}))
        if tab == "Views and anaglyph" and isinstance(obj, str):
            self._update_caption()
            return self.anaglyph_caption
        if tab == "Depth numbers" and isinstance(obj, str):
            return pn.pane.Markdown(obj, css_classes=["ptynb-numbers"])
        if tab == "Layers" and isinstance(obj, str):
            return pn.pane.Markdown(obj, css_classes=["ptynb-layer-numbers"])
        return super().make_pane(tab, obj)

    def show_result(self, tree):
        if "views" in tree:
            beams = [str(b) for b in tree["views"]["beam"].values]
            for w, v in ((self.red_view, beams[0]), (self.cyan_view, beams[-1])):
                w.options = beams
                w.value = v
        super().show_result(tree)

    def _update_caption(self, *_events):
        from ..viz import stereo as vs

        if self.result is None or "views" not in self.result:
            self.anaglyph_caption.object = ""
            return
        v = self.result["views"].to_dataset()
        self.anaglyph_caption.object = vs.anaglyph_caption(v, self.shift_slider.value, self.red_view.value,
                                                           self.cyan_view.value)


def app():
    """A fresh stereo app for one browser session (CI-small defaults; press Run)."""
    return StereoApp().__panel__()
