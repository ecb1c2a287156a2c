"""The notebooks in JupyterLab in headless Chromium, with no network: every figure renders.

JupyterLab runs on 127.0.0.1 (free port, token) on a temporary copy of ``notebooks/``; each
notebook is opened, run with "Run All Cells" and the kernel waited for. Then every output that
carries a HoloViews/Panel view (mime ``application/vnd.holoviews_exec.v0+json``) must contain
rendered Bokeh views (a canvas or widget); the status line of ``ptynb.apps.notebook_extension``
must say the JavaScript loaded; no console error may say that Bokeh or Panel is missing; the
page may request nothing from outside 127.0.0.1 (such requests are aborted, as CI has no CDN).
In notebook 01 the anaglyph slider is moved and the difference image must change.

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
from servers import free_port, running

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
VIEW_MIME = "application/vnd.holoviews_exec.v0+json"
MISSING = re.compile(r"Bokeh or Panel library is missing|BokehJS failed to load|Bokeh is not defined|"
                     r"Could not load|Failed to load resource: net::ERR_FAILED", re.I)
#: what counts as a rendered Bokeh view inside an output (Playwright CSS pierces shadow roots)
RENDERED = "canvas, .bk-input, .bk-btn, .noUi-target, .bk-panel-models-markup-HTML, table"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    for nb in NOTEBOOKS.glob("*.ipynb"):
        shutil.copy(nb, root / nb.name)
    settings = root / ".settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # every cell in the DOM (no windowing), so that cell i of the model is DOM cell i
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
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
             "--LabApp.extension_manager=readonly"],
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


def run_notebook(page, lab, name, timeout_s):
    """Open ``name`` in JupyterLab, run all cells, wait for the kernel; return the cells' JSON."""
    # a workspace of its own: JupyterLab does not restore the other notebook's tab
    page.goto(f"{lab['url']}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={lab['token']}")
    page.wait_for_function(
        "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
        " && w.sessionContext.session.kernel.status === 'idle'; }", timeout=60000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # run-all queues every cell; done when the last cell has an execution count and the kernel is idle
    state = ("() => { const w = window.jupyterapp.shell.currentWidget; const m = w.content.model;"
             " return [[...Array(m.cells.length).keys()].map(i => m.cells.get(i).executionCount),"
             " w.sessionContext.session && w.sessionContext.session.kernel && w.sessionContext.session.kernel.status]; }")
    try:
        _wait_all_run(page, timeout_s)
    except Exception as exc:  # noqa: BLE001 - say where it stopped
        raise AssertionError(f"{name}: cells did not all run in {timeout_s} s: {page.evaluate(state)}") from exc
    return page.evaluate("() => window.jupyterapp.shell.currentWidget.content.model.toJSON().cells")


def _wait_all_run(page, timeout_s):
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget; const m = w.content.model;"
        " const cells = [...Array(m.cells.length).keys()].map(i => m.cells.get(i)).filter(c => c.type === 'code');"
        " const failed = cells.some(c => [...Array(c.outputs.length).keys()].some(k => c.outputs.get(k).type === 'error'));"
        " return failed || (cells.every(c => c.executionCount !== null) && w.sessionContext.session.kernel.status === 'idle'); }",
        timeout=timeout_s * 1000, polling=500)


def check_rendered(page, cells, name):
    """Every output with a HoloViews/Panel view has rendered Bokeh views; no error outputs."""
    errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(cells) if c["cell_type"] == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{name}: cells raised {errors}"
    problems = []
    with_views = [i for i, c in enumerate(cells) if c["cell_type"] == "code"
                  and "notebook_extension(" not in "".join(c["source"])  # loads JS, shows no view
                  and any(VIEW_MIME in o.get("data", {}) for o in c.get("outputs", []))]
    assert with_views, f"{name}: no cell has a HoloViews/Panel output"
    dom_cells = page.locator(".jp-Notebook .jp-Cell")
    empty = []
    for k, i in enumerate(with_views):
        cell = dom_cells.nth(i)
        cell.scroll_into_view_if_needed()
        out = cell.locator(".jp-OutputArea-output").locator(RENDERED)
        try:  # the first one may wait for the JS to load; then they are there or not
            out.first.wait_for(state="attached", timeout=15000 if k == 0 else 3000)
        except Exception:  # noqa: BLE001 - collected and reported below
            empty.append(i)
    if empty:
        problems.append(f"outputs of cells {empty} (of {with_views}) rendered no Bokeh view")
    status = page.locator(".ptynb-js-status").first
    try:
        page.wait_for_function("() => document.querySelector('.ptynb-js-status').dataset.loaded !== undefined",
                               timeout=30000)
    except Exception:  # noqa: BLE001
        pass
    if "JavaScript loaded" not in (status.text_content() or ""):
        problems.append(f"status line: {status.text_content()!r}")
    missing = [e for e in page.errors if MISSING.search(e)]
    if missing:
        problems.append(f"console: {missing[:3]}")
    if page.external:
        problems.append(f"requests outside 127.0.0.1: {page.external[:3]}")
    assert not problems, f"{name}: " + "; ".join(problems)
    return with_views


def shutdown_kernel(page):
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")


def test_notebook_00_renders_offline(lab, offline_page):
    cells = run_notebook(offline_page, lab, "00_getting_started.ipynb", timeout_s=120)
    views = check_rendered(offline_page, cells, "00")
    assert len(views) >= 4
    shutdown_kernel(offline_page)


def test_notebook_01_renders_offline_and_slider_moves_plot(lab, offline_page):
    page = offline_page
    cells = run_notebook(page, lab, "01_stereo_ptychography.ipynb", timeout_s=200)
    check_rendered(page, cells, "01")
    # the anaglyph cell: its slider changes the difference image
    i = next(i for i, c in enumerate(cells) if c["cell_type"] == "code"
             and "stereo_views.anaglyph(views)" in "".join(c["source"]))
    cell = page.locator(".jp-Notebook .jp-Cell").nth(i)
    cell.scroll_into_view_if_needed()
    plots = cell.locator(".jp-OutputArea-output canvas")
    plots.first.wait_for(timeout=20000)
    time.sleep(0.5)
    area = cell.locator(".jp-OutputArea")
    before = area.screenshot()
    handle = cell.locator(".noUi-handle").first
    handle.focus()
    for _ in range(5):
        handle.press("ArrowRight")
    deadline = time.time() + 20
    while time.time() < deadline:
        time.sleep(0.5)
        if area.screenshot() != before:
            break
    else:
        pytest.fail("moving the anaglyph slider did not change the plot")
    shutdown_kernel(page)
