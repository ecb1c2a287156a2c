"""Render docs/demo.png: a stereo result (probe, views, anaglyph, recovered layers).

Run: python scripts/make_readme_figure.py  (about a minute on 2 cores)
"""
import numpy as np
from PIL import Image, ImageDraw

from ptynb.viz import complex_to_rgb
from ptynb.workflows import stereo


def gray(a):
    lo, hi = np.percentile(a, [1, 99])
    g = np.clip((a - lo) / (hi - lo), 0, 1)
    return np.stack([g, g, g], -1)


def tile(rgb, size=220):
    im = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    return im.resize((size, size), Image.LANCZOS)


s = stereo.Settings(n_beams=2)
tree = stereo.run(s, progress=False)
rec = tree["reconstruction"].to_dataset()
views = tree["views"].to_dataset()
lay = tree["layers"].to_dataset()
ys, xs = np.nonzero(views.valid.values)
crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
panels = [
    ("probe (left beam, HSV)", complex_to_rgb(rec.probe.sel(beam="left").isel(mode=0).values)),
    ("left view: phase", gray(views.phase.sel(beam="left").values[crop])),
    ("anaglyph left/right", stereo.anaglyph(views.phase.values[0][crop], views.phase.values[1][crop])),
    (f"layer: {lay.attrs['layer_0_is']}", gray(lay.layers.values[0][crop])),
    (f"layer: {lay.attrs['layer_1_is']}", gray(lay.layers.values[1][crop])),
]
W, H, pad = 220, 220, 8
out = Image.new("RGB", (len(panels) * (W + pad) + pad, H + 34), "white")
draw = ImageDraw.Draw(out)
for i, (title, rgb) in enumerate(panels):
    x = pad + i * (W + pad)
    out.paste(tile(rgb, W), (x, 28))
    draw.text((x, 8), title, fill="black")
out.save("docs/demo.png")
print("wrote docs/demo.png", {k: round(v, 3) for k, v in lay.attrs.items() if k.startswith("pcc")})
