"""Views of the ADePt workflow (:mod:`ptynb.workflows.adept`), shared by its notebook and app.

:func:`views` gives the tabs "Depth slices" (truth, dense reference, FBP, SIRT and ADePt side
by side at several depths), "Cross-sections" (y-z cuts), "Training" (loss per iteration),
"Spectra" (log10 PSD planes k_y-k_z and k_x-k_y per method), "Projections" and "Numbers"
(BER/PCC per method and depth region). :func:`live` draws the loss curve and depth slices of a
running training (the workflow's ``callback``). Every function returns a HoloViews object or a
markdown string; nothing here imports panel. Lengths are shown in nm.
"""
from __future__ import annotations

import itertools

import numpy as np

__all__ = [
    "TABS",
    "cross_sections",
    "live",
    "numbers",
    "projections",
    "slices",
    "spectra",
    "training",
    "views",
]

TABS = ("Depth slices", "Cross-sections", "Training", "Spectra", "Projections", "Numbers")
_NM = 1e-9
_ORDER = ("truth", "reference", "fbp", "sirt", "adept")
_TITLES = {"truth": "truth", "reference": "FBP, dense angles", "fbp": "FBP", "sirt": "SIRT (positivity)",
           "adept": "ADePt"}


def _hv():
    from ._core import _hv as hv

    return hv()


def _volumes(tree) -> dict:
    from ._core import tree_volumes

    return tree_volumes(tree, _ORDER, "volume")


def _img(a, x, y, title, xlabel="x (nm)", ylabel="y (nm)", cmap="gray", width=170):
    hv = _hv()
    a = np.asarray(a, np.float32)
    dx = float(x[1] - x[0]) / _NM if len(x) > 1 else 1.0
    dy = float(y[1] - y[0]) / _NM if len(y) > 1 else 1.0
    b = (x[0] / _NM - dx / 2, y[0] / _NM - dy / 2, x[-1] / _NM + dx / 2, y[-1] / _NM + dy / 2)
    lo, hi = (float(np.nanpercentile(a, 1)), float(np.nanpercentile(a, 99.5))) if a.size else (0, 1)
    if hi <= lo and a.size:  # sparse metal (a via in a dielectric slice): the full range, not black
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if hi <= lo:
        hi = lo + 1e-12
    return hv.Image(a[::-1], bounds=b, kdims=[xlabel, ylabel], vdims=["value"]).opts(
        cmap=cmap, aspect="equal", frame_width=width, title=title, clim=(lo, hi), xaxis=None, yaxis=None,
        fontsize={"title": "9pt"})  # "SIRT (positivity), z=-190 nm" fits over a 170 px frame


def slices(tree, depths: int = 4) -> object:
    """(y, x) slices at ``depths`` depths (rows) for truth, reference, FBP, SIRT, ADePt (columns).

    The depths: one per equal band of z, the slice of the truth (else of the first volume) with
    the largest spread of values in that band."""
    hv = _hv()
    vols = _volumes(tree)
    if not vols:
        return "no volumes yet"
    ref = vols.get("truth", next(iter(vols.values())))
    nz = ref.sizes["z"]
    # one depth per equal band of z: the slice with the most structure in the band (an IC's wiring
    # sits in layers; evenly spaced depths can all fall in the dielectric between them)
    std = np.nanstd(np.asarray(ref.values, np.float64).reshape(nz, -1), axis=1)
    edges = np.linspace(0, nz, min(depths, nz) + 1).round().astype(int)
    ks = [lo + int(np.argmax(std[lo:hi])) for lo, hi in itertools.pairwise(edges) if hi > lo]
    panels = []
    for k in ks:
        for name, v in vols.items():
            z = float(v["z"].values[k]) / _NM
            panels.append(_img(v.values[k], v["x"].values, v["y"].values, f"{_TITLES[name]}, z={z:.0f} nm"))
    return hv.Layout(panels).cols(min(5, len(vols)))


def cross_sections(tree) -> object:
    """(z, y) cuts through the centre of each volume (the layer stack; missing cone along z)."""
    hv = _hv()
    vols = _volumes(tree)
    if not vols:
        return "no volumes yet"
    out = []
    for name, v in vols.items():
        c = v.sizes["x"] // 2
        out.append(_img(v.values[:, :, c], v["y"].values, v["z"].values, _TITLES[name], "y (nm)", "z (nm)",
                        width=220))
    return hv.Layout(out).cols(min(3, len(out)))


def training(tree) -> object:
    """Loss per iteration (total, data term, TV term; log scale)."""
    if tree is None or "training" not in tree.children:
        return "no training yet"
    t = tree["training"].to_dataset()
    if t.sizes.get("iteration", 0) == 0:
        return "no iterations yet"
    return loss_curve({k: t[k].values for k in ("iteration", "loss", "data", "tv") if k in t})


def loss_curve(history: dict) -> object:
    """A log-scale loss curve from a history dict (``iteration``, ``loss``, ``data``, ``tv`` arrays)."""
    hv = _hv()
    it = np.asarray(history.get("iteration", []), float)
    curves = []
    for k, label in (("loss", "loss"), ("data", "data term"), ("tv", "TV term")):
        if k in history and len(history[k]) == len(it) and len(it):
            yv = np.maximum(np.asarray(history[k], float), 1e-12)
            curves.append(hv.Curve((it, yv), "iteration", "loss", label=label))
    if not curves:
        return "no iterations yet"
    return hv.Overlay(curves).opts(logy=True, frame_width=420, frame_height=220, title="training loss",
                                   legend_position="top_right")


def spectra(tree) -> object:
    """log10 PSD planes k_y-k_z (at k_x = 0) and k_x-k_y (at k_z = 0) per method (as images)."""
    hv = _hv()
    if tree is None or "psd" not in tree.children:
        return "no spectra yet"
    ds = tree["psd"].to_dataset()
    panels = []
    for name in _ORDER:
        for cut, dims in (("kykz", ("qy", "qz")), ("kxky", ("qx", "qy"))):
            key = f"{name}_{cut}"
            if key not in ds:
                continue
            P = ds[key]
            q0, q1 = P[P.dims[1]].values * _NM, P[P.dims[0]].values * _NM
            a = np.asarray(P.values, np.float32)
            b = (q0[0], q1[0], q0[-1], q1[-1])
            panels.append(hv.Image(a[::-1], bounds=b, kdims=[f"{dims[0]} (1/nm)", f"{dims[1]} (1/nm)"]).opts(
                cmap="inferno", frame_width=170, aspect="equal", title=f"{_TITLES[name]}: {cut[:2]}-{cut[2:]}",
                xaxis=None, yaxis=None))
    return hv.Layout(panels).cols(4) if panels else "no spectra yet"


def projections(tree) -> object:
    """The projections used (rad), a few angles."""
    hv = _hv()
    if tree is None or "projections" not in tree.children:
        return "no projections yet"
    P = tree["projections"].to_dataset()["projections"]
    n = P.sizes["angle"]
    ks = np.unique(np.linspace(0, n - 1, min(n, 4)).round().astype(int))
    return hv.Layout([_img(P.values[k], P["x"].values, P["y"].values, f"{float(P.angle[k]):.1f}°", cmap="viridis")
                      for k in ks]).cols(4)


def numbers(tree) -> str:
    """BER and PCC per method and depth region as a markdown table (needs a truth)."""
    if tree is None or "metrics" not in tree.children:
        n = tree.attrs.get("n_angles_used") if tree is not None else None
        return f"angles used: {n}; no truth, no metrics" if n else "no numbers yet"
    m = tree["metrics"].to_dataset()
    regs = [str(r) for r in m["region"].values]
    head = "| method | " + " | ".join(f"BER {r}" for r in regs) + " | " + " | ".join(f"PCC {r}" for r in regs) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(regs))]
    for meth in m["method"].values:
        b = [f"{float(m['ber'].sel({'method': meth, 'region': r})):.4f}" for r in regs]
        p = [f"{float(m['pcc'].sel({'method': meth, 'region': r})):.3f}" for r in regs]
        lines.append(f"| {_TITLES.get(str(meth), meth)} | " + " | ".join(b + p) + " |")
    n = tree.attrs.get("n_angles_used")
    fd = m.attrs.get("fine_depth")
    note = f"\n\n{n} angles used; fine layers at z >= {float(fd) / _NM:.0f} nm." if n and fd is not None else ""
    return "\n".join(lines) + note


def live(volume, history, iteration, *, coords=None) -> object:
    """Live view of a running training: loss curve and three depth slices of the estimate.

    Parameters
    ----------
    volume : array (z, y, x)
        Current estimate (rad/m).
    history : dict of arrays
        ``iteration``, ``loss``, ... so far.
    iteration : int
    coords : dict, optional
        ``z``, ``y``, ``x`` coordinates (m); default voxel indices times 1 nm. Coordinates of
        another length than the volume's axes give their spacing only (centred grid).
    """
    hv = _hv()
    v = np.asarray(volume)
    nz = v.shape[0]
    c = coords or {d: np.arange(n) * _NM for d, n in zip("zyx", v.shape)}
    if any(len(c[d]) != n for d, n in zip("zyx", v.shape)):  # another grid (e.g. from a measurement)
        step = {d: float(c[d][1] - c[d][0]) if len(c[d]) > 1 else _NM for d in "zyx"}
        c = {d: (np.arange(n) - n // 2) * step[d] for d, n in zip("zyx", v.shape)}
    ks = np.unique(np.linspace(1, nz - 2, 3).round().astype(int))
    imgs = [_img(v[k], c["x"], c["y"], f"z = {float(c['z'][k]) / _NM:.0f} nm", width=150) for k in ks]
    curve = loss_curve(history)
    if isinstance(curve, str):
        curve = hv.Curve([], "iteration", "loss")
    curve = curve.opts(frame_width=300, frame_height=200, title=f"training loss (iteration {iteration})")
    # 2 x 2 (loss and a slice, two slices): about 600 px wide, inside a JupyterLab column
    return hv.Layout([curve] + imgs).cols(2)


def views(tree, settings=None) -> list:
    """``[(tab title, HoloViews object or markdown)]`` for a (possibly partial) ADePt tree."""
    if tree is None:
        return [("Numbers", "no result yet")]
    return [("Depth slices", slices(tree)), ("Cross-sections", cross_sections(tree)), ("Training", training(tree)),
            ("Spectra", spectra(tree)), ("Projections", projections(tree)), ("Numbers", numbers(tree))]
