"""Each notebook as an app, in headless Chromium with no network: ``panel serve notebooks/*.ipynb``
renders a correct layout on first load.

One test per ``notebooks/*.ipynb`` (found by name; each copy runs its ``PRESET = "ci"``), all
served by one ``panel serve``. On first load, with no resize: the notebook's title (its first
markdown heading) shows; every visible figure has a plot area of real size (a figure drawn
before its container had a size keeps a zero-size frame: a blank box with its axis labels
piled in a corner); no two visible blocks (headings, prose, figures, grids) overlap (the
contents of hidden tabs are left out); nothing is asked from outside 127.0.0.1 and no console
error says a library is missing.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from servers import copy_notebook, free_port, notebook_names, notebook_title, panel_serve
from test_jupyterlab_browser import MISSING, offline_page  # noqa: F401  (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: how long the first canvas may take to appear: the server runs the whole notebook first
LOAD_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    names = notebook_names()
    for name in names:
        copy_notebook(name, root)
    port = free_port()
    with panel_serve(names, root, port, env=dict(os.environ, PYTHONUNBUFFERED="1"), log=root / "serve.log"):
        yield f"http://127.0.0.1:{port}"


#: visible boxes of the blocks of a served notebook (Panel lays the cells out in a column), and
#: for every visible Bokeh plot the size of its plot area (frame)
_BOXES = """() => {
  const boxes = [];
  const visible = el => el.checkVisibility({checkVisibilityCSS: true, visibilityProperty: true,
                                            checkOpacity: false});
  function walk(root) {
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) walk(el.shadowRoot);
      const c = el.className && el.className.baseVal === undefined ? String(el.className) : '';
      if (/bk-panel-models-markup-HTML|bk-Figure|bk-GridPlot/.test(c) && visible(el)) {
        const r = el.getBoundingClientRect();
        boxes.push({cls: c.split(' ')[0], x: r.x, y: r.y + window.scrollY, w: r.width, h: r.height,
                    text: (el.textContent || '').slice(0, 40)});
      }
    }
  }
  walk(document);
  const frames = [];
  function views(v, seen) {
    if (!v || seen.has(v)) return;
    seen.add(v);
    if (v.frame && v.frame.bbox && v.el && v.el.isConnected && visible(v.el)) {
      const r = v.el.getBoundingClientRect();
      frames.push({title: String((v.model.title && v.model.title.text) || ''), fw: v.frame.bbox.width,
                   fh: v.frame.bbox.height, x: r.x, y: r.y + window.scrollY});
    }
    for (const c of (v.child_views || [])) views(c, seen);
  }
  const seen = new Set();
  const index = window.Bokeh && window.Bokeh.index;
  const roots = index ? (typeof index.values === 'function' && !Array.isArray(index) && index.size !== undefined
                         ? [...index.values()] : Object.values(index)) : [];
  for (const v of roots) views(v, seen);
  return {boxes, frames, bokeh_views: roots.length};
}"""


def _overlaps(boxes):
    blocks = sorted([b for b in boxes if b["h"] > 0], key=lambda b: b["y"])

    def within(p, q):  # box p inside box q (a figure of a grid, a grid in a grid)
        return (p["x"] >= q["x"] - 2 and p["x"] + p["w"] <= q["x"] + q["w"] + 2 and
                p["y"] >= q["y"] - 2 and p["y"] + p["h"] <= q["y"] + q["h"] + 2)

    out = []
    for i, a in enumerate(blocks):
        for b in blocks[i + 1:]:
            if b["y"] >= a["y"] + a["h"] - 1:
                break
            apart = b["x"] >= a["x"] + a["w"] - 1 or a["x"] >= b["x"] + b["w"] - 1
            if not (within(a, b) or within(b, a) or apart):
                out.append((a, b))
    return out


def _settled(page, timeout_s=60):
    """The page's layout once it stops changing (notebook_extension re-lays a served notebook out
    1, 3, 8 and 20 s after load): two equal measurements 2 s apart, or the last one."""
    last, deadline = None, time.time() + timeout_s
    while True:
        now = page.evaluate(_BOXES)
        key = [(round(b["y"]), round(b["h"])) for b in now["boxes"]]
        if key == last or time.time() > deadline:
            return now
        last = key
        time.sleep(2)


@pytest.mark.parametrize("name", notebook_names())
def test_panel_serve_notebook_layout(served, offline_page, name):  # noqa: F811 (the fixture)
    page = offline_page
    t0 = time.time()
    page.goto(f"{served}/{name}", timeout=LOAD_TIMEOUT_S * 1000)
    page.locator("canvas").first.wait_for(timeout=LOAD_TIMEOUT_S * 1000)
    print(f"{name} served: first canvas after {time.time() - t0:.0f} s")
    title = notebook_title(name)
    page.get_by_text(re.compile(re.escape(title[:30]))).first.wait_for(timeout=30000)
    time.sleep(8)  # the re-layouts at 1, 3 and 8 s; then until the boxes stop moving
    found = _settled(page)
    boxes, frames = found["boxes"], found["frames"]
    figures = [b for b in boxes if b["cls"] in ("bk-Figure", "bk-GridPlot")]
    assert figures, f"{name}: no visible figure"
    assert all(b["h"] > 50 and b["w"] > 50 for b in figures), [b for b in figures if b["h"] <= 50 or b["w"] <= 50]
    assert frames, f"{name}: no Bokeh plot views found (Bokeh.index: {found['bokeh_views']} roots)"
    blank = [f for f in frames if f["fw"] < 20 or f["fh"] < 20]
    overlaps = _overlaps(boxes)
    if overlaps or blank:
        page.screenshot(path=str(Path(os.environ.get("PTYNB_SHOT_DIR", "/tmp")) / f"served_{name}.png"))
    assert not blank, f"{name}: plots drawn with a zero-size plot area (blank): " + "; ".join(
        f"{f['title']!r} at ({f['x']:.0f}, {f['y']:.0f}) frame {f['fw']:.0f}x{f['fh']:.0f}" for f in blank[:5])
    assert not overlaps, [(f"{a['cls']} at ({a['x']:.0f}, {a['y']:.0f}) {a['w']:.0f}x{a['h']:.0f}",
                           f"{b['cls']} at ({b['x']:.0f}, {b['y']:.0f}) {b['w']:.0f}x{b['h']:.0f} {b['text']!r}")
                          for a, b in overlaps[:4]]
    assert not page.external, page.external[:5]
    assert not [e for e in page.errors if MISSING.search(e)], page.errors
