"""Views of the APT workflow (:mod:`ptynb.workflows.apt`), shared by its notebook and its app.

:func:`views` gives the tabs "Slices" (one x-y slice and one x-z slice of the truth, the
Approximant, APT, FBP, SIRT and SART, each on its own colour range), "PSD" (central qz-qx
planes of the log power spectra: the missing wedge about qz and how much of it each method
fills), "Metrics" (PCC, MS-SSIM, DSC, BER per method) and "Numbers". :func:`sweep_curves`
draws the fidelity-vs-N and fidelity-vs-theta curves of :func:`ptynb.workflows.apt.sweep`.
Every function returns a HoloViews object or a markdown string; nothing here imports panel.
"""
from __future__ import annotations

import numpy as np

__all__ = ["TABS", "metrics_table", "numbers", "slices", "spectra", "sweep_curves", "views"]

TABS = ("Slices", "PSD", "Metrics", "Numbers")
_ORDER = ("truth", "approximant", "apt", "fbp", "sirt", "sart")
_NM = 1e-9


def _hv():
    from ._core import _hv as hv

    return hv()


def _volumes(tree) -> dict:
    from ._core import tree_volumes

    return tree_volumes(tree, _ORDER, "q")


def _img(a, h, v, title, kd):
    hv = _hv()
    a = np.asarray(a, np.float32)
    dh, dv = float(h[1] - h[0]) / _NM, float(v[1] - v[0]) / _NM
    b = (h[0] / _NM - dh / 2, v[0] / _NM - dv / 2, h[-1] / _NM + dh / 2, v[-1] / _NM + dv / 2)
    lo, hi = np.percentile(a, [1, 99.5])
    im = hv.Image(a[::-1], bounds=b, kdims=kd, vdims=["value"])
    return im.opts(cmap="gray", colorbar=False, aspect="equal", frame_width=200, title=title,
                   clim=(float(lo), float(hi) if hi > lo else float(lo) + 1), tools=["hover"])


def slices(tree, z_index=None, y_index=None):
    """x-y slices (at ``z_index``, default the metal layer with most contrast) and x-z slices
    (at ``y_index``, default the centre) of every volume in the tree, nm axes."""
    hv = _hv()
    vols = _volumes(tree)
    if not vols:
        return "no volumes yet"
    ref = vols.get("truth", next(iter(vols.values())))
    if z_index is None:
        z_index = int(np.argmax(np.asarray(ref.values).std(axis=(1, 2))))
    y_index = ref.sizes["y"] // 2 if y_index is None else int(y_index)
    x, y, z = ref["x"].values, ref["y"].values, ref["z"].values
    top = [_img(v.values[z_index], x, y, f"{k}: x-y at z={z[z_index] / _NM:.0f} nm", ["x (nm)", "y (nm)"])
           for k, v in vols.items()]
    bot = [_img(v.values[:, y_index, :], x, z, f"{k}: x-z", ["x (nm)", "z (nm)"]) for k, v in vols.items()]
    return hv.Layout(top + bot).cols(min(3, len(top)))


def spectra(tree):
    """log10 PSD on the central qz-qx plane (qy = 0) per volume: the missing wedge about qz."""
    from .. import metrics

    hv = _hv()
    vols = _volumes(tree)
    if not vols:
        return "no volumes yet"
    items = []
    for k, v in vols.items():
        P = metrics.psd_cuts(v, planes=True, log=True, subtract_mean=True)["psd_qz_qx"]
        qx, qz = P["qx"].values * 1e-6, P["qz"].values * 1e-6  # 1/um
        dq, dz = qx[1] - qx[0], qz[1] - qz[0]
        b = (qx[0] - dq / 2, qz[0] - dz / 2, qx[-1] + dq / 2, qz[-1] + dz / 2)
        a = np.asarray(P.values, np.float32)
        lo, hi = np.percentile(a, [5, 99.9])
        items.append(hv.Image(a[::-1], bounds=b, kdims=["qx (1/µm)", "qz (1/µm)"], vdims=["log10 PSD"]).opts(
            cmap="magma", frame_width=200, aspect="equal", title=f"{k}: PSD (qy = 0)", clim=(float(lo), float(hi))))
    return hv.Layout(items).cols(min(3, len(items)))


def metrics_table(tree):
    """Markdown table of PCC, MS-SSIM, DSC (higher better) and BER (lower better) per method."""
    if tree is None or "metrics" not in tree.children:
        return "no metrics (no truth known)"
    m = tree["metrics"].to_dataset()
    rows = ["| method | PCC | MS-SSIM | DSC | BER |", "|---|---|---|---|---|"]
    for meth in m["method"].values:
        r = m.sel({"method": meth})
        rows.append(f"| {meth} | {float(r['pcc']):.3f} | {float(r['ms_ssim']):.3f} | {float(r['dsc']):.3f} | "
                    f"{float(r['ber']):.4f} |")
    return "\n".join(rows)


def numbers(tree):
    """Markdown of the root attrs that are numbers (angles, timings, metrics)."""
    if tree is None:
        return "no result yet"
    rows = ["| quantity | value |", "|---|---|"]
    for k, v in tree.attrs.items():
        if isinstance(v, (int, float, np.floating, np.integer)) and not str(k).startswith("setting_"):
            rows.append(f"| {k} | {float(v):.4g} |")
    rows.append(f"| status | {tree.attrs.get('status')} |")
    return "\n".join(rows)


def sweep_curves(sweep, metric: str = "pcc"):
    """Fidelity curves of a sweep Dataset: ``metric`` vs N and vs theta, one line per method,
    the APT knee marked."""
    hv = _hv()
    curves_n, curves_t = [], []
    for meth in sweep["method"].values:
        curves_n.append(hv.Curve((sweep["n"].values, sweep[f"{metric}_n"].sel({"method": meth}).values),
                                 "N (angles)", metric, label=str(meth)).opts(tools=["hover"]))
        curves_t.append(hv.Curve((sweep["theta"].values, sweep[f"{metric}_theta"].sel({"method": meth}).values),
                                 "theta (± deg)", metric, label=str(meth)).opts(tools=["hover"]))
    kn = hv.VLine(float(sweep.attrs["knee_n"])).opts(color="gray", line_dash="dashed")
    kt = hv.VLine(float(sweep.attrs["knee_theta"])).opts(color="gray", line_dash="dashed")
    a = (hv.Overlay(curves_n) * kn).opts(title=f"{metric} vs N at ±{sweep.attrs['n_theta']:g}°", frame_width=320,
                                          legend_position="bottom_right")
    b = (hv.Overlay(curves_t) * kt).opts(title=f"{metric} vs theta at N = {sweep.attrs['theta_n']}",
                                          frame_width=320, legend_position="bottom_right")
    return a + b


def views(tree, settings=None) -> list:
    """``[(tab title, HoloViews object or markdown)]`` for a (possibly partial) APT tree."""
    if tree is None:
        return [("Numbers", "no result yet")]
    return [("Slices", slices(tree)), ("PSD", spectra(tree)), ("Metrics", metrics_table(tree)),
            ("Numbers", numbers(tree))]
