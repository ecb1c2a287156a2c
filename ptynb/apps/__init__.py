"""Panel web apps: one per registered workflow plus the getting-started explorer, with an index page.

The index and the routes read the workflow registry (:mod:`ptynb.workflows`): each workflow
gets a card and a route ``/<name>`` served by its ``app`` (``"module:function"``) or, if it has
none, by a generic :class:`~ptynb.apps._workflow.WorkflowApp`. ``EXTRA_APPS`` holds the apps
that are not workflows (the explorer). Every build function makes a fresh app per browser
session.
"""
from __future__ import annotations

import importlib

from ._resources import notebook_extension, use_inline_resources, use_server_resources  # no CDN

__all__ = ["EXTRA_APPS", "APPS", "app_entries", "index", "build", "routes", "as_panel",
           "settings_editor", "notebook_extension", "use_inline_resources", "use_server_resources"]

#: apps that are not workflows: slug -> (title, description, "module:function")
EXTRA_APPS: dict[str, tuple[str, str, str]] = {
    "explorer": (
        "Getting started: measurement explorer",
        ("Simulate the built-in X-ray or electron demo (or open a file), click scan positions to see "
         "their diffraction patterns, look at the probe and object as amplitude and phase."),
        "ptynb.apps.explorer:app",
    ),
}
_GENERIC = "ptynb.apps._workflow:app_for"


def app_entries() -> dict[str, tuple[str, str, str | None]]:
    """Slug -> (title, description, "module:function" or None for the generic WorkflowApp):
    the extra apps first, then every registered workflow."""
    from ..workflows import get, names

    out: dict[str, tuple[str, str, str | None]] = dict(EXTRA_APPS)
    for name in names():
        if name in out:
            continue
        try:
            wf = get(name)
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not take the index down
            out[name] = (name, f"(cannot load this workflow: {type(exc).__name__}: {exc})", None)
            continue
        out[name] = (wf.title, wf.description, wf.app)
    return out


def __getattr__(name):  # ``APPS`` (the old hard-coded dict) is now computed from the registry
    if name == "APPS":
        return app_entries()
    raise AttributeError(name)


def _load(path: str):
    mod, _, fn = path.partition(":")
    return getattr(importlib.import_module(mod), fn)


def build(slug: str):
    """Build the app served at ``/<slug>`` (a new object per call)."""
    entries = app_entries()
    if slug not in entries:
        raise KeyError(f"no app {slug!r}; available: {', '.join(entries)}")
    target = entries[slug][2]
    if target is None:
        return _load(_GENERIC)(slug)
    return _load(target)()


def index():
    """The index page: one card per app with a link."""
    import panel as pn

    from .. import __version__

    cards = []
    for slug, (title, text, _) in app_entries().items():
        cards.append(pn.pane.Markdown(f"### [{title}](./{slug})\n\n{text}\n\n`/{slug}`",
                                      css_classes=["ptynb-app-card"], width=420,
                                      styles={"border": "1px solid #ddd", "border-radius": "6px",
                                              "padding": "0 12px"}))
    return pn.Column(
        pn.pane.Markdown(f"# ptynb {__version__}\n3D ptychography workflows. Pick an app:"),
        pn.FlexBox(*cards),
    )


def routes() -> dict:
    """Slug -> function mapping for ``panel.serve`` (index at ``/``)."""
    out = {"/": index}
    for slug in app_entries():
        out[slug] = (lambda s=slug: build(s))
    return out


def as_panel(items, **column_kwargs):
    """A list of views (HoloViews objects and markdown strings, as a workflow's ``views``
    returns them for one tab) as one ``pn.Column`` (for notebooks)."""
    import panel as pn

    items = items if isinstance(items, (list, tuple)) else [items]
    return pn.Column(*[pn.pane.Markdown(o) if isinstance(o, str) else
                       (o if isinstance(o, pn.viewable.Viewable) else pn.panel(o, linked_axes=False))
                       for o in items], **column_kwargs)


def settings_editor(settings, names=None, *, display_units: dict | None = None, width: int | None = 350):
    """Typed, unit-labelled widgets editing ``settings`` in place, as in the apps: for a
    notebook's settings cell (see :class:`ptynb.apps._workflow.SettingsEditor`). ``names``: the
    settings shown, in order (default all); ``display_units``: ``{name: "nm"}`` overrides;
    ``width``: of the widgets in px (None: fill the cell)."""
    from ._workflow import settings_editor as _editor

    return _editor(settings, names, display_units=display_units, width=width)
