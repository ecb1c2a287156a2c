"""Cancel and progress: the one convention used everywhere in ptynb.

**Cancel.** Every long-running function takes ``cancel: threading.Event | None``. Code polls
it at safe points (between iterations, blocks, angles, steps). What happens when it is set
depends on the level:

- *engines and solvers* (``ptycho.reconstruct``, ``tomo.sirt``/``sart``/``gradient``,
  ``tomo.align``, ``tomo.joint_refinement``, ``parallel.map_blocks``) stop after the current
  iteration or block and **return** what they have, marked ``status="cancelled"`` in the
  attrs (never raise);
- *workflow steps* raise :class:`Cancelled` (optionally carrying the partial result), and the
  workflow runner (:mod:`ptynb.workflows._base`) turns that into a partial result tree with
  ``status="cancelled"``, saveable like a complete one.

Pass anything with an ``is_set()`` method (a :class:`threading.Event`, a
``multiprocessing.Event``); anything else is refused with a clear error by
:func:`check_event`.

**Progress.** Apps pass ``report(fraction, message)`` callables with ``fraction`` in [0, 1];
:class:`Reporter` maps a sub-task's own 0..1 onto a slice of its parent's bar, clips, never
goes backwards, and swallows nothing (exceptions from ``report`` propagate). Text bars in
notebooks and terminals are tqdm's (:func:`progress_bar`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Cancelled", "check_event", "is_cancelled", "raise_if_cancelled", "Reporter",
           "progress_bar", "tqdm_class", "STATUS_COMPLETE", "STATUS_CANCELLED", "STATUS_ERROR"]

STATUS_COMPLETE = "complete"
STATUS_CANCELLED = "cancelled"
STATUS_ERROR = "error"


class Cancelled(Exception):
    """Raised by a workflow step when its cancel event is set.

    ``partial`` optionally carries the step's unfinished result (e.g. a reconstruction that
    stopped after some iterations), which the workflow runner keeps in the partial tree.
    """

    def __init__(self, message: str = "cancelled", partial: Any = None):
        super().__init__(message)
        self.partial = partial


def check_event(cancel, name: str = "cancel"):
    """Return ``cancel`` if it is None or event-like (has ``is_set()``), else raise TypeError."""
    if cancel is None or callable(getattr(cancel, "is_set", None)):
        return cancel
    raise TypeError(f"{name} must be a threading.Event (or None), got {type(cancel).__name__}; "
                    "create one with threading.Event() and call .set() on it to stop the run")


def is_cancelled(cancel) -> bool:
    """True when ``cancel`` (a threading.Event or None) is set."""
    return cancel is not None and bool(cancel.is_set())


def raise_if_cancelled(cancel, partial: Any = None, message: str = "cancelled") -> None:
    """Raise :class:`Cancelled` (carrying ``partial``) when ``cancel`` is set."""
    if is_cancelled(cancel):
        raise Cancelled(message, partial=partial)


def _noop(fraction: float, message: str = "") -> None:
    return None


class Reporter:
    """A monotone progress callback over a slice ``[start, stop]`` of a parent's bar.

    ``Reporter(report)(0.5, "half way")`` calls ``report(0.5, "half way")``;
    ``Reporter(report).span(0.2, 0.6)`` is a child whose 0..1 maps onto 0.2..0.6 of the
    parent. Fractions are clipped to [0, 1] and never go backwards (a later, smaller value
    is shown as the largest so far), so a bar never jumps back or shows more than 100 %.
    """

    def __init__(self, report: Callable[[float, str], Any] | None = None, start: float = 0.0,
                 stop: float = 1.0, _root: "Reporter | None" = None):
        if report is not None and not callable(report):
            raise TypeError(f"report must be callable(fraction, message), got {type(report).__name__}")
        self._report = report or _noop
        self.start, self.stop = float(start), float(stop)
        self._root = _root
        self._last = 0.0

    def __call__(self, fraction: float, message: str = "") -> None:
        f = min(max(float(fraction), 0.0), 1.0)
        value = self.start + (self.stop - self.start) * f
        root = self._root or self
        value = max(value, root._last)
        root._last = value
        root._report(value, message)

    def span(self, start: float, stop: float) -> "Reporter":
        """A child reporter for the fraction ``[start, stop]`` of this one."""
        a = self.start + (self.stop - self.start) * float(start)
        b = self.start + (self.stop - self.start) * float(stop)
        return Reporter(None, a, b, _root=self._root or self)

    @property
    def last(self) -> float:
        """The largest fraction reported so far (of the root bar)."""
        return (self._root or self)._last


def tqdm_class():
    """The tqdm bar class for where the code runs: the notebook widget in a notebook, the text bar
    in a terminal, and the text bar in a notebook served as an app (``panel serve``, Panel's
    Jupyter preview), where a widget bar closed at its end (``leave=False``) is rendered after it
    lost its comm and the page fails ("'NoneType' object has no attribute 'comm_id'")."""
    import sys

    pn = sys.modules.get("panel")
    if pn is not None:
        try:
            doc = pn.state.curdoc
            served = doc is not None and doc.session_context is not None
        except Exception:  # noqa: BLE001 - no Panel state: not served
            served = False
        if served:
            from tqdm.std import tqdm

            return tqdm
    from tqdm.auto import tqdm

    return tqdm


def progress_bar(total: int | None, enabled: bool = True, desc: str = "", **kwargs):
    """A tqdm bar (:func:`tqdm_class`) or None when ``enabled`` is False."""
    if not enabled:
        return None
    return tqdm_class()(total=total, desc=desc, **kwargs)
