"""Panel web apps: one per workflow plus the getting-started explorer, with an index page.

``APPS`` maps a URL slug to ``(title, description, module:function)``; the function builds a
fresh app for each browser session. Workflow issues add their entries here.
"""
from __future__ import annotations

import importlib

__all__ = ["APPS", "index", "build", "routes"]

APPS: dict[str, tuple[str, str, str]] = {
    "explorer": (
        "Getting started: measurement explorer",
        "Simulate the built-in X-ray or electron demo (or open a file), click scan positions to see "
        "their diffraction patterns, look at the probe and object as amplitude and phase.",
        "ptynb.apps.explorer:app",
    ),
    "stereo": (
        "Stereo hard X-ray ptychography",
        "Two or three inclined nanobeams scan the sample at once: reconstruct each beam, characterise "
        "the beams (caustics, focus, astigmatism), align the views, look at anaglyphs, and separate "
        "layers that are closer than the multislice depth limit.",
        "ptynb.apps.stereo:app",
    ),
}


def build(slug: str):
    """Build the app registered under ``slug`` (a new object per call)."""
    if slug not in APPS:
        raise KeyError(f"no app {slug!r}; available: {', '.join(APPS)}")
    mod, _, fn = APPS[slug][2].partition(":")
    return getattr(importlib.import_module(mod), fn)()


def index():
    """The index page: one card per app with a link."""
    import panel as pn

    from .. import __version__

    cards = []
    for slug, (title, text, _) in APPS.items():
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
    for slug in APPS:
        out[slug] = (lambda s=slug: build(s))
    return out
