"""Run long work off the UI thread with a progress bar, a cancel button and error display.

A :class:`TaskRunner` runs ``func(progress, cancel)`` in a worker thread. ``progress(fraction,
message)`` may be called from the worker; ``cancel`` is a :class:`threading.Event` the worker
polls. A periodic callback on the session's document copies the worker's state into the
widgets, so widgets are only touched from the server's own thread.
"""
from __future__ import annotations

import math
import threading
import traceback
from typing import Any, Callable

import panel as pn
import param


class TaskRunner(param.Parameterized):
    """Progress bar + cancel button + status line for one background job at a time."""

    running = param.Boolean(default=False, doc="True while a job runs")
    fraction = param.Number(default=0.0, bounds=(0, 1))
    message = param.String(default="idle")

    def __init__(self, **params):
        super().__init__(**params)
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {}
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_done: Callable[[Any], None] | None = None
        self._on_error: Callable[[BaseException], None] | None = None
        self.progress_bar = pn.indicators.Progress(value=0, max=1000, width=300, visible=False,
                                                   bar_color="primary", name="progress",
                                                   css_classes=["ptynb-progress"])
        self.cancel_button = pn.widgets.Button(name="Cancel", button_type="warning", disabled=True,
                                               width=100, css_classes=["ptynb-cancel"])
        self.cancel_button.on_click(lambda _e: self.cancel())
        self.status = pn.pane.Markdown("", css_classes=["ptynb-status"], margin=(0, 10))
        self._cb = None

    # ---------------------------------------------------------------- worker side
    def _progress(self, fraction: float, message: str = "") -> None:
        f = float(fraction)
        f = 0.0 if math.isnan(f) else min(max(f, 0.0), 1.0)  # NaN -> 0, clipped to [0, 1]
        with self._lock:
            # never backwards within a job (the bar shows the largest fraction so far)
            self._state["fraction"] = max(f, self._state.get("fraction", 0.0))
            if message:
                self._state["message"] = message

    def _run(self, func):
        try:
            result = func(self._progress, self._cancel)
            with self._lock:
                self._state["result"] = result
                self._state["done"] = True
        except BaseException as exc:  # noqa: BLE001 - reported in the UI
            with self._lock:
                self._state["error"] = exc
                self._state["traceback"] = traceback.format_exc()
                self._state["done"] = True

    # ---------------------------------------------------------------- UI side
    def start(self, func, *, on_done=None, on_error=None, message="running...") -> bool:
        """Start ``func(progress, cancel)``; returns False if a job is already running."""
        if self.running:
            return False
        self._cancel.clear()
        self._state = {"fraction": 0.0, "message": message}
        self._on_done, self._on_error = on_done, on_error
        self.running = True
        self.progress_bar.value = 0
        self.progress_bar.visible = True
        self.cancel_button.disabled = False
        self.status.object = message
        self._thread = threading.Thread(target=self._run, args=(func,), daemon=True)
        self._thread.start()
        if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
            self._cb = pn.state.add_periodic_callback(self._poll, period=200)
        else:  # no server (tests, plain Python): finish synchronously
            self._thread.join()
            self._poll()
        return True

    def cancel(self) -> None:
        """Ask the running job to stop (it returns its partial result)."""
        if self.running:
            self._cancel.set()
            self.status.object = "cancelling..."

    def wait(self, timeout=None) -> None:
        """Block until the worker thread ends (for scripts and tests)."""
        if self._thread is not None:
            self._thread.join(timeout)
        self._poll()

    def _poll(self):
        with self._lock:
            st = dict(self._state)
        self.fraction = st.get("fraction", 0.0)
        self.progress_bar.value = int(1000 * self.fraction)
        if st.get("message"):
            self.message = st["message"]
            if not self._cancel.is_set():
                self.status.object = st["message"]
        if not st.get("done"):
            return
        if self._cb is not None:
            self._cb.stop()
            self._cb = None
        self.running = False
        self.progress_bar.visible = False
        self.cancel_button.disabled = True
        with self._lock:
            self._state["done"] = False  # deliver once
        if "error" in st:
            self._report_error(st["error"])
            return
        cancelled = self._cancel.is_set()
        if self._on_done:
            try:  # showing the result can fail too (a bad file, a view bug): never "done" then
                self._on_done(st.get("result"))
            except Exception as exc:  # noqa: BLE001 - reported in the UI
                self._report_error(exc)
                return
        self.status.object = "cancelled (partial result shown)" if cancelled else "done"

    def _report_error(self, exc: BaseException) -> None:
        self.status.object = f"**Error:** {type(exc).__name__}: {exc}"
        if self._on_error:
            self._on_error(exc)

    def __panel__(self):
        return pn.Row(self.progress_bar, self.cancel_button, self.status)
