"""Where the apps' and notebooks' JavaScript comes from: the installed packages, never a CDN.

Beamline and microscope PCs (and CI) often have no internet. By default HoloViews and Panel
load BokehJS and Panel's JavaScript in a notebook from ``cdn.bokeh.org``/``cdn.holoviz.org``,
so every plot is an empty box there. ptynb therefore loads them *inline* (the bundles of the
installed bokeh and panel packages are put into the notebook's output, so the saved notebook
and its HTML export carry them too):

- :func:`notebook_extension` (the first code cell of every notebook):
  ``hv.extension("bokeh", inline=True)`` + ``pn.extension(inline=True)``, then a status line
  that says in text whether the front end ran them;
- :func:`use_inline_resources`: ``pn.config.inline = True`` and the stylesheets of views
  updated later from the Panel Jupyter server extension (see there);
- :func:`use_server_resources` (``ptynb serve`` and ``panel serve`` of a notebook): Bokeh's
  ``server`` resources, every file from the app server (``BOKEH_RESOURCES=server``).

Setting ``PTYNB_RESOURCES=cdn`` in the environment restores the CDN (smaller notebooks where
the internet is at hand).
"""
from __future__ import annotations

import json
import os

__all__ = ["notebook_extension", "use_inline_resources", "use_server_resources", "inline_enabled",
           "JS_STATUS_CLASS"]

#: CSS class of the status line printed by :func:`notebook_extension`
JS_STATUS_CLASS = "ptynb-js-status"

_NOT_RUN = ("ptynb: the JavaScript of Bokeh and Panel has not run in this front end, so plots and "
            "widgets below stay empty. In JupyterLab/Notebook trust the notebook (File > Trust) "
            "and re-run this cell; in VS Code install jupyter_bokeh; a static viewer (GitHub, "
            "nbviewer) shows no interactive output.")


def inline_enabled() -> bool:
    """True unless ``PTYNB_RESOURCES=cdn``."""
    return os.environ.get("PTYNB_RESOURCES", "inline").strip().lower() != "cdn"


def use_inline_resources() -> bool:
    """Make Bokeh and Panel carry their JavaScript and CSS from the installed packages, never a
    CDN. Returns whether that is on (see ``PTYNB_RESOURCES``).

    - Notebook outputs: ``pn.config.inline = True`` (BokehJS, Panel and extension bundles are
      put into the output once by :func:`notebook_extension`; the first render of every view
      inlines its stylesheets, an HTML export carries them). Views that Panel adds or updates
      later (a DynamicMap frame, an app's new tab) would ask for their stylesheets from
      ``cdn.holoviz.org``: they are pointed at the Panel Jupyter server extension instead
      (``<base_url>panel-preview/static/extensions/panel/``, served from the installed package).
    - Served apps (``ptynb serve``, ``panel serve``): Bokeh's ``server`` resources (the app
      server serves every file from the installed packages; ``BOKEH_RESOURCES=server``). Not
      ``inline``: with it Panel 1.9 points the served components' stylesheets at the CDN.
    """
    if not inline_enabled():
        return False
    import panel as pn

    pn.config.inline = True
    _local_panel_stylesheets()
    return True


def use_server_resources() -> bool:
    """For a served app: every JS/CSS file from the app server itself (no CDN)."""
    if not inline_enabled():
        return False
    os.environ["BOKEH_RESOURCES"] = "server"
    import bokeh.settings

    bokeh.settings.settings.resources = "server"
    return True


def _relayout_when_loaded() -> None:
    """Panel's EditableTemplate places a served notebook's cells before their plots have their
    final heights (headings overlap, plots collapse until the window is resized): tell the page
    it was resized once the views are in, and again a little later."""
    try:
        import panel as pn
        from panel.io.handlers import display
    except ImportError:  # pragma: no cover
        return
    js = ("[1000, 3000, 8000, 20000].forEach(t => setTimeout(() => "
          "window.dispatchEvent(new Event('resize')), t))")
    display(pn.pane.HTML(f'<img src="data:," alt="" style="display:none" onerror="{js}">',
                         width=0, height=0, margin=0, sizing_mode="fixed"))


def _no_web_fonts() -> None:
    """A notebook served as an app is laid out by Panel's EditableTemplate, which asks
    fonts.googleapis.com for the Lato font: left out (the page uses the system font)."""
    try:
        from panel.template import EditableTemplate
    except ImportError:  # pragma: no cover
        return
    res = dict(EditableTemplate._resources)
    res["css"] = {k: v for k, v in res.get("css", {}).items() if "fonts.googleapis.com" not in str(v)}
    EditableTemplate._resources = res


def _local_panel_stylesheets() -> None:
    """Stylesheets of views rendered after the first display: local, not ``cdn.holoviz.org``."""
    try:
        import panel.reactive
        import panel.theme.base
    except ImportError:  # pragma: no cover
        return
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/").rstrip("/") + "/"
    local = f"{prefix}panel-preview/static/extensions/panel/"
    # Panel uses the module constant CDN_DIST as the default ``dist_url`` of notebook documents
    for mod in (panel.reactive, panel.theme.base):
        if hasattr(mod, "CDN_DIST"):
            mod.CDN_DIST = local


def _status_html(inline: bool) -> str:
    where = "inline, from the installed packages" if inline else "from the CDN (PTYNB_RESOURCES=cdn)"
    import bokeh
    import panel

    ok = (f"ptynb: Bokeh {bokeh.__version__} and Panel {panel.__version__} JavaScript loaded ({where}).")
    missing = ("ptynb: Bokeh/Panel JavaScript is missing in this page (" + where + "): plots and "
               "widgets below stay empty. Re-run this cell; if it stays, see the browser console.")
    # the text is there without JavaScript; the script replaces it once BokehJS and Panel are
    # found (or says that they are missing after a timeout)
    return f"""<div class="{JS_STATUS_CLASS}" style="font-size:11px;color:#a00">{_NOT_RUN}</div>
<script>
(function() {{
  const el = document.currentScript && document.currentScript.previousElementSibling;
  const t0 = Date.now();
  function check() {{
    const B = window.Bokeh;
    const ok = B && (B.Panel || (B.versions && [...B.versions.values()].some(v => v.Panel)));
    if (ok) {{ if (el) {{ el.textContent = {json.dumps(ok)}; el.style.color = "#666"; el.dataset.loaded = "1"; }} return; }}
    if (Date.now() - t0 > 20000) {{ if (el) {{ el.textContent = {json.dumps(missing)}; el.dataset.loaded = "0"; }} return; }}
    setTimeout(check, 100);
  }}
  check();
}})();
</script>"""


def notebook_extension(*extensions, logo: bool = False, **kwargs) -> None:
    """Load HoloViews (bokeh backend) and Panel into a notebook with inline JavaScript.

    Call it once in the first code cell (instead of ``hv.extension("bokeh")`` and
    ``pn.extension()``). ``extensions`` and ``kwargs`` go to ``pn.extension`` (e.g.
    ``"tabulator"``). Below the cell a status line says whether the front end ran Bokeh's and
    Panel's JavaScript, in plain text where it did not.
    """
    import holoviews as hv
    import panel as pn

    if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
        # the notebook served as an app (``panel serve``, panel-preview): the server's resources
        use_server_resources()
        _no_web_fonts()
        # every cell output is a figure of its own, as in JupyterLab: on one served page Panel
        # would link the x/y ranges of all plots sharing a dimension name (the probe image of
        # notebook 00 took the 4 um range of the scan plot and shrank to a corner)
        pn.pane.HoloViews.param.linked_axes.default = False
        hv.extension("bokeh", logo=logo)
        pn.extension(*extensions, **kwargs)
        _relayout_when_loaded()
        return
    inline = use_inline_resources()
    hv.extension("bokeh", logo=logo, inline=inline)
    pn.extension(*extensions, inline=inline, **kwargs)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython ships with the notebook stack
        return
    if get_ipython() is None or not hasattr(get_ipython(), "kernel"):
        return
    display({"text/html": _status_html(inline),
             "text/plain": "ptynb: Bokeh and Panel JavaScript "
                           + ("inlined from the installed packages" if inline else "from the CDN")},
            raw=True)
