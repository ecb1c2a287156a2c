"""Every notebook in JupyterLab in headless Chromium, with no network: every figure renders.

One test per ``notebooks/*.ipynb`` (found by name: a new notebook is tested with no edit here).
JupyterLab runs on 127.0.0.1 (free port, token) on a temporary copy of the notebooks, each with
``PRESET = "ci"`` set in its parameters cell; each notebook is opened, run with "Run All
Cells" and the kernel waited for. Then:

- no cell raised;
- every output cell that carries a HoloViews/Panel view (mime
  ``application/vnd.holoviews_exec.v0+json``) contains rendered Bokeh views (a canvas or a
  widget);
- the status line of ``ptynb.apps.notebook_extension`` says the JavaScript loaded (a notebook
  that does not call it fails: its figures would be empty boxes offline);
- no console error says that Bokeh or Panel is missing, and the page asked for nothing outside
  127.0.0.1 (such requests are aborted, as CI has no CDN);
- a slider moves a plot: in the cell named in :data:`EXPECT` (``slider_cell``, a piece of its
  source), else in the first output with a slider and a plot, if there is one.

``PTYNB_RESOURCES=cdn`` (the old CDN loading) makes this test fail: every figure stays empty.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from servers import copy_notebook, free_port, notebook_names, running

pytestmark = [pytest.mark.browser, pytest.mark.slow]

VIEW_MIME = "application/vnd.holoviews_exec.v0+json"
MISSING = re.compile(r"Bokeh or Panel library is missing|BokehJS failed to load|Bokeh is not defined|"
                     r"Could not load|Failed to load resource: net::ERR_FAILED", re.I)
#: what counts as a rendered Bokeh view inside an output (Playwright CSS pierces shadow roots)
RENDERED = "canvas, .bk-input, .bk-btn, .noUi-target, .bk-panel-models-markup-HTML, table"

#: per-notebook expectations; a notebook not listed gets :data:`DEFAULT`
DEFAULT = {
    "timeout_s": 600,      # "Run All Cells" must finish within this (ci preset)
    "min_views": 1,        # at least this many cells with HoloViews/Panel outputs
    "slider_cell": None,   # source snippet of the cell whose slider must move its plot; None: the
                           # first output with a slider and a plot (if any)
    "slider_required": False,
}
EXPECT = {
    "00_getting_started": {"timeout_s": 120, "min_views": 4},
    "01_stereo_ptychography": {"timeout_s": 300, "slider_cell": "stereo_views.anaglyph(views)",
                               "slider_required": True},
}


def expect(name: str) -> dict:
    return {**DEFAULT, **EXPECT.get(name, {})}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    for name in notebook_names():
        copy_notebook(name, root)
    shutil.copytree(Path(__file__).resolve().parents[1] / "binder", root / "binder")
    settings = root / ".settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # every cell in the DOM (no windowing), so that cell i of the model is DOM cell i
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    # Panel's preview gives a notebook 60 s to run all its cells (a fixed default argument); on a
    # loaded test machine that is a timing, not a property of ptynb: 10 minutes here
    (root / "jupyter_server_config.py").write_text(
        "import panel.io.jupyter_server_extension as _ext\n"
        "_ext.PanelJupyterHandler._get_info.__defaults__ = (600,)\n")
    port, token = free_port(), "ptynb-test-token"
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(root / ".workspaces"), JUPYTER_RUNTIME_DIR=str(root / ".rt"),
               PYTHONUNBUFFERED="1")
    url = f"http://127.0.0.1:{port}"
    with running(
            [sys.executable, "-m", "jupyterlab", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
             f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
             f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
             "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             "--ServerApp.port_retries=0", "--ServerApp.allow_root=True",
             "--LabApp.extension_manager=readonly", f"--config={root / 'jupyter_server_config.py'}"],
            ready_url=f"{url}/api/status?token={token}", env=env, cwd=root, log=root / "jupyterlab.log"):
        yield {"url": url, "token": token, "root": root}


@pytest.fixture
def offline_page(page):
    """The page with console errors collected and every request outside 127.0.0.1 aborted."""
    errors, external = [], []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def route(r):
        host = urlparse(r.request.url).hostname
        if r.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            return r.continue_()
        external.append(r.request.url)
        return r.abort()

    page.route("**/*", route)
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.errors, page.external = errors, external
    return page


_KERNEL_IDLE = ("() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                " return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
                " && w.sessionContext.session.kernel.status === 'idle'; }")
#: run-all queues every cell; done when every code cell has an execution count (or one raised)
#: and the kernel is idle
_ALL_RUN = ("() => { const w = window.jupyterapp.shell.currentWidget; const m = w.content.model;"
            " const cells = [...Array(m.cells.length).keys()].map(i => m.cells.get(i)).filter(c => c.type === 'code');"
            " const failed = cells.some(c => [...Array(c.outputs.length).keys()].some(k => c.outputs.get(k).type === 'error'));"
            " return failed || (cells.every(c => c.executionCount !== null) && w.sessionContext.session.kernel.status === 'idle'); }")
_STATE = ("() => { const w = window.jupyterapp.shell.currentWidget; const m = w.content.model;"
          " return [[...Array(m.cells.length).keys()].map(i => m.cells.get(i).executionCount),"
          " w.sessionContext.session && w.sessionContext.session.kernel && w.sessionContext.session.kernel.status]; }")


def open_notebook(page, lab, name):
    """Open ``name`` (a file name) in its own JupyterLab workspace; wait for an idle kernel."""
    # a workspace of its own: JupyterLab does not restore another notebook's tab
    page.goto(f"{lab['url']}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={lab['token']}")
    page.wait_for_function(_KERNEL_IDLE, timeout=90000)


def run_notebook(page, lab, name, timeout_s):
    """Open ``name`` in JupyterLab, run all cells, wait for the kernel; return the cells' JSON."""
    open_notebook(page, lab, name)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    try:
        page.wait_for_function(_ALL_RUN, timeout=timeout_s * 1000, polling=500)
    except Exception as exc:  # noqa: BLE001 - say where it stopped
        raise AssertionError(f"{name}: cells did not all run in {timeout_s} s: {page.evaluate(_STATE)}") from exc
    return page.evaluate("() => window.jupyterapp.shell.currentWidget.content.model.toJSON().cells")


def view_cells(cells) -> list[int]:
    """Indices of the code cells whose outputs carry a HoloViews/Panel view."""
    return [i for i, c in enumerate(cells) if c["cell_type"] == "code"
            and "notebook_extension(" not in "".join(c["source"])  # loads JS, shows no view
            and any(VIEW_MIME in o.get("data", {}) for o in c.get("outputs", []))]


def check_rendered(page, cells, name, min_views=1):
    """Every output with a HoloViews/Panel view has rendered Bokeh views; no error outputs."""
    errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(cells) if c["cell_type"] == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{name}: cells raised {errors}"
    problems = []
    with_views = view_cells(cells)
    assert len(with_views) >= min_views, f"{name}: {len(with_views)} cells with HoloViews/Panel output, " \
                                         f"expected >= {min_views}"
    dom_cells = page.locator(".jp-Notebook .jp-Cell")
    empty = []
    for k, i in enumerate(with_views):
        cell = dom_cells.nth(i)
        cell.scroll_into_view_if_needed()
        out = cell.locator(".jp-OutputArea-output").locator(RENDERED)
        try:  # the first one may wait for the JS to load; then they are there or not
            out.first.wait_for(state="attached", timeout=30000 if k == 0 else 5000)
        except Exception:  # noqa: BLE001 - collected and reported below
            empty.append(i)
    if empty:
        problems.append(f"outputs of cells {empty} (of {with_views}) rendered no Bokeh view")
    status = page.locator(".ptynb-js-status")
    if status.count() == 0:
        problems.append("no status line: the notebook does not call ptynb.apps.notebook_extension() "
                        "(its figures are empty boxes without internet)")
    else:
        try:
            page.wait_for_function(
                "() => document.querySelector('.ptynb-js-status').dataset.loaded !== undefined", timeout=30000)
        except Exception:  # noqa: BLE001 - the text below says what it shows
            pass
        text = status.first.text_content() or ""
        if "JavaScript loaded" not in text:
            problems.append(f"status line: {text!r}")
    missing = [e for e in page.errors if MISSING.search(e)]
    if missing:
        problems.append(f"console: {missing[:3]}")
    if page.external:
        problems.append(f"requests outside 127.0.0.1: {page.external[:3]}")
    assert not problems, f"{name}: " + "; ".join(problems)
    return with_views


def slider_cell(page, cells, name, snippet):
    """Index of the cell whose slider is moved: the one whose source holds ``snippet``, else the
    first cell with a HoloViews/Panel output holding a slider handle and a canvas (or None)."""
    if snippet is not None:
        found = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and snippet in "".join(c["source"])]
        assert found, f"{name}: no cell contains {snippet!r} (update EXPECT in {Path(__file__).name})"
        return found[0]
    dom_cells = page.locator(".jp-Notebook .jp-Cell")
    for i in view_cells(cells):
        out = dom_cells.nth(i).locator(".jp-OutputArea-output")
        if out.locator(".noUi-handle").count() and out.locator("canvas").count():
            return i
    return None


def check_slider_moves_plot(page, i, name):
    cell = page.locator(".jp-Notebook .jp-Cell").nth(i)
    cell.scroll_into_view_if_needed()
    cell.locator(".jp-OutputArea-output canvas").first.wait_for(timeout=30000)
    area = cell.locator(".jp-OutputArea")
    # wait until the output has stopped changing (plots drawn), then move the slider
    before, deadline = area.screenshot(), time.time() + 30
    while time.time() < deadline:
        time.sleep(0.5)
        now = area.screenshot()
        if now == before:
            break
        before = now
    handle = cell.locator(".noUi-handle").first
    handle.focus()
    for _ in range(5):
        handle.press("ArrowRight")
    deadline = time.time() + 30
    while time.time() < deadline:
        time.sleep(0.5)
        if area.screenshot() != before:
            return
    pytest.fail(f"{name}: moving the slider of cell {i} did not change its plot")


def shutdown_kernel(page):
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")


@pytest.mark.parametrize("name", notebook_names())
def test_notebook_renders_offline_in_jupyterlab(lab, offline_page, name):
    page, exp = offline_page, expect(name)
    t0 = time.time()
    cells = run_notebook(page, lab, f"{name}.ipynb", timeout_s=exp["timeout_s"])
    print(f"{name}: run all cells in JupyterLab {time.time() - t0:.0f} s")
    check_rendered(page, cells, name, exp["min_views"])
    i = slider_cell(page, cells, name, exp["slider_cell"])
    if i is None:
        assert not exp["slider_required"], f"{name}: no output with a slider and a plot"
    else:
        check_slider_moves_plot(page, i, name)
    shutdown_kernel(page)


#: Binder's way to an app: Panel's Jupyter server extension renders binder/app.py?app=<name>
#: and notebook 00 (what the README links); each must show its heading and live Bokeh views, offline
PREVIEW = {"": "ptynb apps", "explorer": "Measurement explorer", "stereo": "Stereo",
           "00_getting_started.ipynb": "Getting started with ptynb",  # notebooks as apps, as the README says
           "01_stereo_ptychography.ipynb": "Stereo hard X-ray ptychography"}


@pytest.mark.parametrize("app", list(PREVIEW))
def test_binder_preview_shows_the_app(lab, offline_page, app):
    page = offline_page
    path = app if app.endswith(".ipynb") else f"binder/app.py?app={app}"  # notebooks: copied to the root
    sep = "&" if "?" in path else "?"
    page.goto(f"{lab['url']}/panel-preview/render/{path}{sep}token={lab['token']}", timeout=600000)
    assert "Kernel Error" not in (page.title() or ""), page.locator("body").inner_text()[:500]
    page.get_by_text(PREVIEW[app], exact=False).first.wait_for(timeout=60000)
    page.locator(RENDERED).first.wait_for(state="attached", timeout=30000)
    missing = [e for e in page.errors if MISSING.search(e)]
    assert not missing and not page.external, (missing[:3], page.external[:3])
