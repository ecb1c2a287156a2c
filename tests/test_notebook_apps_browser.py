"""Each notebook as an app, in headless Chromium with no network: ``panel serve notebooks/*.ipynb``
renders a correct layout on first load (every plot has a height, no two blocks overlap, nothing
is asked from outside 127.0.0.1, no error in the console about missing libraries)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import socket
import time
from pathlib import Path

import pytest

from test_jupyterlab_browser import MISSING, _free_port, offline_page  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("00_getting_started", "01_stereo_ptychography")
TITLES = {"00_getting_started": "Getting started with ptynb", "01_stereo_ptychography": "Stereo hard X-ray"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    for nb in NAMES:
        shutil.copy(NOTEBOOKS / f"{nb}.ipynb", root)
    port = _free_port()
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "panel", "serve", *[f"{nb}.ipynb" for nb in NAMES], "--address", "127.0.0.1",
         "--port", str(port), "--allow-websocket-origin", f"127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError("panel serve did not start:\n" + (root / "serve.log").read_text())
            time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


#: boxes of the top-level blocks of a served notebook (Panel lays the cells out in a column)
_BOXES = """() => {
  const boxes = [];
  function walk(root) {
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) walk(el.shadowRoot);
      const c = el.className && el.className.baseVal === undefined ? String(el.className) : '';
      if (/bk-panel-models-markup-HTML|bk-Figure|bk-GridPlot|bk-panel-models-layout-Column/.test(c)) {
        const r = el.getBoundingClientRect();
        boxes.push({cls: c.split(' ')[0], x: r.x, y: r.y + window.scrollY, w: r.width, h: r.height,
                    text: (el.textContent || '').slice(0, 40)});
      }
    }
  }
  walk(document);
  return boxes;
}"""


@pytest.mark.parametrize("name", NAMES)
def test_panel_serve_notebook_layout(served, offline_page, name):
    page = offline_page
    page.goto(f"{served}/{name}", timeout=240000)
    page.locator("canvas").first.wait_for(timeout=240000)
    page.get_by_text(re.compile(TITLES[name])).first.wait_for(timeout=30000)
    time.sleep(4)  # notebook_extension re-lays the page out 1 s and 3 s after load
    boxes = page.evaluate(_BOXES)
    figures = [b for b in boxes if b["cls"] in ("bk-Figure", "bk-GridPlot")]
    assert len(figures) >= 4, boxes
    assert all(b["h"] > 50 and b["w"] > 50 for b in figures), [b for b in figures if b["h"] <= 50]
    # markdown blocks (headings, prose) and figures must not overlap one another
    blocks = sorted([b for b in boxes if b["cls"] in ("bk-panel-models-markup-HTML", "bk-Figure", "bk-GridPlot")
                     and b["h"] > 0], key=lambda b: b["y"])
    overlaps = []
    for i, a in enumerate(blocks):
        for b in blocks[i + 1:]:
            if b["y"] >= a["y"] + a["h"] - 1:
                break
            inside = (b["x"] >= a["x"] - 1 and b["x"] + b["w"] <= a["x"] + a["w"] + 1 and
                      b["y"] + b["h"] <= a["y"] + a["h"] + 1)
            apart = b["x"] >= a["x"] + a["w"] - 1 or a["x"] >= b["x"] + b["w"] - 1
            if not inside and not apart:
                overlaps.append((a, b))
    assert not overlaps, overlaps[:3]
    assert not page.external, page.external[:5]
    assert not [e for e in page.errors if MISSING.search(e)], page.errors
