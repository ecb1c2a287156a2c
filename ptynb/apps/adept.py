"""ADePt app: simulate an integrated circuit and its laminographic projections, reconstruct it
with FBP, SIRT and the deep image prior from a fraction of the angles, watch the training live
(loss curve and depth slices of the current volume), look at the depth slices, cross-sections,
spectra and the BER/PCC per depth region, save the result tree. Served at ``/adept`` by
``ptynb serve``.

It is the generic :class:`~ptynb.apps._workflow.WorkflowApp` of the ``adept`` workflow; the
views are :func:`ptynb.viz.adept.views` (the same as the notebook's). The one addition: a live
view above the tabs while the network trains, drawn by :func:`ptynb.viz.adept.live` from the
workflow's ``callback``.

Threads: the callback runs in the worker thread and only stores the latest volume and history
under a lock; a periodic callback on the session's document (as :class:`~ptynb.apps._task.TaskRunner`
does for the progress bar) draws them at most once per :attr:`AdeptApp.live_period_ms` and
for at most :attr:`AdeptApp.live_budget` of the time, so widgets are only touched from the
server's own thread and drawing does not slow the training much.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import panel as pn
import xarray as xr

from ._workflow import WorkflowApp

__all__ = ["AdeptApp", "app"]


def _workflow():
    from ..workflows import get

    return get("adept")


class AdeptApp(WorkflowApp):
    """The ADePt workflow as a web app (one instance per browser session), with a live view
    of the training."""

    collapsed_groups = ("Acquisition", "Network", "Loss", "Training", "Baselines")
    result_stem = "adept"
    #: the live view is redrawn at most this often (ms) while the network trains, and never
    #: more than :attr:`live_budget` of the time (drawing shares the CPU with the training)
    live_period_ms = 1000
    live_budget = 0.2

    def __init__(self, settings=None, result: xr.DataTree | None = None, **params):
        self._live_lock = threading.Lock()
        self._live_state: dict | None = None  # latest (volume, history, iteration) from the worker
        self._live_seq = 0  # bumped by the worker on each callback
        self._live_drawn = 0  # the last seq drawn
        self._live_next = 0.0  # time.monotonic() before which nothing is drawn
        self._live_cb = None
        self._live_total = None
        self._live_coords = None
        self.live_status = pn.pane.Markdown("", css_classes=["ptynb-live-status"], margin=(0, 10))
        self.live_plot = pn.pane.HoloViews(None, linked_axes=False, css_classes=["ptynb-live-plot"])
        self.live = pn.Column(pn.pane.Markdown("### Training (live)", margin=(0, 10)), self.live_status,
                              self.live_plot, visible=False, css_classes=["ptynb-live"],
                              sizing_mode="stretch_width")
        super().__init__(_workflow(), settings=settings, result=result, **params)
        self.runner.param.watch(self._live_running, "running")

    # ------------------------------------------------------------------ hooks
    def run_inputs(self):
        inputs = super().run_inputs()
        if inputs is None:
            return None
        s = self.settings
        dx = float(s.voxel_size)
        # the grid of a simulation (centred voxels of voxel_size), as the workflow reconstructs on it
        self._live_coords = {d: (np.arange(int(n)) - int(n) // 2) * dx for d, n in zip("zyx", s.volume_shape)}
        self._live_total = int(s.iterations)
        with self._live_lock:
            self._live_state = None
            self._live_seq = 0
        self._live_drawn = 0
        self._live_next = 0.0
        return dict(inputs, callback=self._live_callback)

    # ------------------------------------------------------------------ live view
    def _live_callback(self, volume, history, iteration) -> None:
        """Worker thread: keep the latest state only (cheap; the drawing is on the server's thread)."""
        with self._live_lock:
            self._live_state = {"volume": volume, "history": history, "iteration": int(iteration)}
            self._live_seq += 1

    def _live_running(self, event) -> None:
        if event.new:
            self.live.visible = False
            self.live_status.object = ""
            self.live_plot.object = None
            if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
                self._live_cb = pn.state.add_periodic_callback(self._live_draw, period=self.live_period_ms)
        else:  # the run ended: the result's tabs (Training, Depth slices) take over
            if self._live_cb is not None:
                self._live_cb.stop()
                self._live_cb = None
            self.live.visible = False

    def _live_draw(self) -> None:
        """Server thread: draw the latest state if it is new."""
        from ..viz import adept as views

        with self._live_lock:
            st, seq = self._live_state, self._live_seq
        if st is None or seq == self._live_drawn or time.monotonic() < self._live_next:
            return
        self._live_drawn = seq
        t0 = time.monotonic()
        h = st["history"]
        loss = np.asarray(h.get("loss", []), float)
        it = st["iteration"]
        total = f" of {self._live_total}" if self._live_total else ""
        self.live_status.object = (f"training: iteration {it}{total}"
                                   + (f", loss {loss[-1]:.4g}" if loss.size else ""))
        coords = self._live_coords
        if coords is not None and any(len(coords[d]) != n for d, n in zip("zyx", np.shape(st["volume"]))):
            coords = None  # another grid (e.g. from the projections' attrs): voxel indices
        self.live_plot.object = views.live(st["volume"], h, it, coords=coords)
        self.live.visible = True
        took = time.monotonic() - t0
        self._live_next = t0 + took / self.live_budget if self.live_budget > 0 else 0.0

    # ------------------------------------------------------------------ layout
    def __panel__(self):
        return pn.Row(self.controls(), pn.Column(self.live, self.tabs, sizing_mode="stretch_width"),
                      sizing_mode="stretch_width")


def app():
    """A fresh ADePt app page (``ptynb serve`` calls this once per browser session)."""
    return AdeptApp().__panel__()
