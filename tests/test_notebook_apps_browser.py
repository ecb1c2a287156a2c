"""Each notebook as an app, in headless Chromium with no network: ``panel serve notebooks/*.ipynb``
renders a correct layout on first load (every plot has a height, no two blocks overlap, nothing
is asked from outside 127.0.0.1, no error in the console about missing libraries)."""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from servers import free_port, running
from test_jupyterlab_browser import MISSING, offline_page  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("00_getting_started", "01_stereo_ptychography")
TITLES = {"00_getting_started": "Getting started with ptynb", "01_stereo_ptychography": "Stereo hard X-ray"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    for nb in NAMES:
        shutil.copy(NOTEBOOKS / f"{nb}.ipynb", root)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(
            [sys.executable, "-m", "panel", "serve", *[f"{nb}.ipynb" for nb in NAMES], "--address", "127.0.0.1",
             "--port", str(port), "--allow-websocket-origin", f"127.0.0.1:{port}"],
            ready_url=url + "/", env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=root, log=root / "serve.log"):
        yield url


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


@pytest.mark.parametrize("name", [NAMES[0], pytest.param(NAMES[1], marks=pytest.mark.xfail(
    reason="served notebook 01: two image grids near the end of the page (y ~ 8200 px) overlap by ~230 px "
           "after the re-layout; headings and the first sections are right (see the report)", strict=False))])
def test_panel_serve_notebook_layout(served, offline_page, name):  # noqa: F811 (the fixture)
    page = offline_page
    page.goto(f"{served}/{name}", timeout=240000)
    page.locator("canvas").first.wait_for(timeout=240000)
    page.get_by_text(re.compile(TITLES[name])).first.wait_for(timeout=30000)
    time.sleep(9)  # notebook_extension re-lays the page out 1, 3 and 8 s after load
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
            def within(p, q):  # box p inside box q (a figure of a grid, a grid in a grid)
                return (p["x"] >= q["x"] - 2 and p["x"] + p["w"] <= q["x"] + q["w"] + 2 and
                        p["y"] >= q["y"] - 2 and p["y"] + p["h"] <= q["y"] + q["h"] + 2)

            inside = within(a, b) or within(b, a)
            apart = b["x"] >= a["x"] + a["w"] - 1 or a["x"] >= b["x"] + b["w"] - 1
            if not inside and not apart:
                overlaps.append((a, b))
    if overlaps:
        page.screenshot(path=str(Path(os.environ.get("PTYNB_SHOT_DIR", "/tmp")) / f"overlap_{name}.png"))
    assert not overlaps, [(f"{a['cls']} at ({a['x']:.0f}, {a['y']:.0f}) {a['w']:.0f}x{a['h']:.0f}",
                           f"{b['cls']} at ({b['x']:.0f}, {b['y']:.0f}) {b['w']:.0f}x{b['h']:.0f} {b['text']!r}")
                          for a, b in overlaps[:4]]
    assert not page.external, page.external[:5]
    assert not [e for e in page.errors if MISSING.search(e)], page.errors
