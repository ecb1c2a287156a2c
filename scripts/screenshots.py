"""Screenshots of each notebook in JupyterLab and served as an app (``panel serve``), offline.

Run: python scripts/screenshots.py [OUTDIR [NOTEBOOK.ipynb ...]]   (every ``notebooks/*.ipynb``
by default, each with ``PRESET = "ci"``; default OUTDIR /tmp/ptynb-screenshots; ``--docs`` as
OUTDIR writes ``docs/notebook_NN_jupyterlab.png`` and ``docs/notebook_NN_app.png``). Uses
Debian's Chromium through Playwright, like the browser tests; requests outside 127.0.0.1 are
aborted (no CDN). Writes ``<notebook>_lab.png`` (the top of the notebook after "Run All
Cells", 1400 px window with the file browser open) and ``<notebook>_served.png`` (the notebook
as an app, first load), as PNGs at half resolution (small files).
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import chromium_path  # noqa: E402
from servers import copy_notebook  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

RUN_ALL_DONE = ("() => { const w = window.jupyterapp.shell.currentWidget; const m = w.content.model;"
                " const c = [...Array(m.cells.length).keys()].map(i => m.cells.get(i)).filter(c => c.type === 'code');"
                " return c.every(x => x.executionCount !== null) && w.sessionContext.session.kernel.status === 'idle'; }")


#: window height (px) of the screenshots: whole notebooks in one image
TALL = int(__import__("os").environ.get("PTYNB_SHOT_HEIGHT", "3000"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, proc, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def wait_port(port, proc, timeout=60):
    """Until the server accepts connections (its page may take a minute: it runs the notebook)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.3)
    raise RuntimeError(f"nothing listens on port {port}")


def offline(page):
    page.route("**/*", lambda r: r.continue_() if urlparse(r.request.url).hostname in ("127.0.0.1", None)
               or r.request.url.startswith(("data:", "blob:")) else r.abort())


def lab_shots(browser, work, out, names):
    settings = work / ".settings" / "@jupyterlab"
    (settings / "apputils-extension").mkdir(parents=True)
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    (settings / "notebook-extension").mkdir(parents=True)
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port = free_port()
    env = {**__import__("os").environ, "JUPYTERLAB_SETTINGS_DIR": str(work / ".settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(work / ".ws")}
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                             "--IdentityProvider.token=shots", "--ServerApp.open_browser=False",
                             f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True",
                             "--ServerApp.allow_root=True"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/status?token=shots", proc)
        for name in names:
            # a window as tall as the notebook: JupyterLab scrolls inside its panel, not the page
            page = browser.new_page(viewport={"width": 1400, "height": TALL})
            offline(page)
            page.goto(f"http://127.0.0.1:{port}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token=shots")
            page.wait_for_function("() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                                   " return w && w.sessionContext && w.sessionContext.session &&"
                                   " w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle'; }",
                                   timeout=60000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function(RUN_ALL_DONE, timeout=400000, polling=1000)
            time.sleep(3)
            # the notebook panel as one tall image: scroll each cell into view once (lazy plots)
            cells = page.locator(".jp-Notebook .jp-Cell")
            for i in range(cells.count()):
                cells.nth(i).scroll_into_view_if_needed()
            time.sleep(3)
            cells.nth(0).scroll_into_view_if_needed()
            time.sleep(1)
            page.screenshot(path=str(out / f"{Path(name).stem}_lab.png"))
            page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
            page.close()
            print("wrote", out / f"{Path(name).stem}_lab.png", flush=True)
    finally:
        proc.terminate()


def served_shots(browser, work, out, names):
    for name in names:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "panel", "serve", Path(name).name, "--address", "127.0.0.1", "--port",
                                 str(port), "--allow-websocket-origin", f"127.0.0.1:{port}"], cwd=work,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_port(port, proc)
            page = browser.new_page(viewport={"width": 1400, "height": TALL})
            offline(page)
            t0 = time.time()
            page.goto(f"http://127.0.0.1:{port}/{Path(name).stem}", timeout=400000)
            page.locator("canvas").first.wait_for(timeout=400000)
            print(f"{name} as an app: first canvas after {time.time() - t0:.0f} s", flush=True)
            time.sleep(12)  # notebook_extension re-lays the page out 1, 3 and 8 s after load
            page.screenshot(path=str(out / f"{Path(name).stem}_served.png"))
            page.close()
            print("wrote", out / f"{Path(name).stem}_served.png", flush=True)
        finally:
            proc.terminate()


def shrink(path: Path, max_height: int = 3000) -> None:
    """Half resolution, at most ``max_height`` px tall (cut at the bottom), 8-bit palette PNG."""
    from PIL import Image

    im = Image.open(path).convert("RGB")
    im = im.crop((0, 0, im.width, min(im.height, 2 * max_height)))
    im = im.resize((im.width // 2, im.height // 2), Image.LANCZOS)
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def to_docs(out: Path, names) -> None:
    """``docs/notebook_NN_jupyterlab.png`` and ``docs/notebook_NN_app.png`` from the shots."""
    for n in names:
        stem = Path(n).stem
        nn = stem.split("_")[0]
        for kind, doc in (("lab", "jupyterlab"), ("served", "app")):
            src = out / f"{stem}_{kind}.png"
            if src.exists():
                shutil.copy(src, ROOT / "docs" / f"notebook_{nn}_{doc}.png")
                print("copied", src, "->", ROOT / "docs" / f"notebook_{nn}_{doc}.png", flush=True)


def main():
    args = sys.argv[1:]
    docs = bool(args) and args[0] == "--docs"
    out = Path("/tmp/ptynb-screenshots" if docs or not args else args[0])
    out.mkdir(parents=True, exist_ok=True)
    names = args[1:] or sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    with tempfile.TemporaryDirectory(prefix="ptynb-shots-") as tmp:
        work = Path(tmp)
        for n in names:
            copy_notebook(Path(n).stem, work)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
            lab_shots(browser, work, out, names)
            served_shots(browser, work, out, names)
            browser.close()
    for f in out.glob("*.png"):
        shrink(f)
    if docs:
        to_docs(out, names)


if __name__ == "__main__":
    main()
