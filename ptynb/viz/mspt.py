"""Views of the MSPT workflow (:mod:`ptynb.workflows.mspt`), shared by its notebook and its app.

:func:`views` gives the tabs "Tilts" (per-tilt phase projections, raw and denoised, with a
slider over the angle), "Volume" (orthogonal slices), "Alignment" (per-tilt shifts and Euler
angles, with the truth when known), "Resolution" (spectra projected on each axis with the
resolution marked, the denoising power spectra, the FSC of half series), "Atoms" (found
maxima and missing Co sites over slices of the volume) and "Numbers". Every function returns a
HoloViews object or a markdown string; nothing here imports panel.
"""
from __future__ import annotations

import numpy as np

__all__ = ["views", "tilts", "volume", "alignment", "resolution", "atoms", "numbers", "TABS"]

#: the tabs of :func:`views`, in order
TABS = ("Tilts", "Volume", "Alignment", "Resolution", "Atoms", "Numbers")
_A = 1e-10


def _hv():
    from ._core import _hv as hv

    return hv()


def _node(tree, name):
    if tree is None or name not in tree.children:
        return None
    return tree[name].to_dataset()


def _img(a, x, y, title, cmap="viridis", clim=None):
    hv = _hv()
    a = np.asarray(a, np.float32)
    dx = float(x[1] - x[0]) / _A
    b = (x[0] / _A - dx / 2, y[0] / _A - dx / 2, x[-1] / _A + dx / 2, y[-1] / _A + dx / 2)
    im = hv.Image(a[::-1], bounds=b, kdims=["x (Å)", "y (Å)"], vdims=["value"])
    return im.opts(cmap=cmap, colorbar=True, aspect="equal", frame_width=220, title=title,
                   clim=clim if clim is not None else (float(np.nanmin(a)), float(np.nanmax(a))), tools=["hover"])


def tilts(tree) -> object:
    """Per-tilt phase projections (rad), raw and denoised, with a slider over the angle."""
    hv = _hv()
    p = _node(tree, "projections")
    if p is None:
        return "no projections yet"
    P = p["projections"]
    d = _node(tree, "denoised")
    y, x = P["y"].values, P["x"].values
    clim = (float(P.min()), float(P.max()))
    frames = {}
    n = P.sizes["angle"]
    for k in np.unique(np.linspace(0, n - 1, min(n, 12)).round().astype(int)):  # at most 12 frames
        a = float(P["angle"].values[k])
        lay = _img(P.values[k], x, y, f"phase at {a:.1f}°", clim=clim)
        if d is not None:
            lay = lay + _img(d["denoised"].values[k], x, y, "denoised", clim=clim)
        frames[float(a)] = lay
    return hv.HoloMap(frames, kdims=["tilt (deg)"]).collate()


def volume(tree) -> object:
    """Orthogonal slices through the centre of the volume (V)."""
    hv = _hv()
    v = _node(tree, "volume")
    if v is None:
        return "no volume yet"
    V = v["volume"]
    c = {d: V.sizes[d] // 2 for d in V.dims}
    z, y, x = (V[d].values for d in ("z", "y", "x"))
    return hv.Layout([_img(V.isel(z=c["z"]).values, x, y, "z slice (y, x)"),
                      _img(V.isel(y=c["y"]).values, x, z, "y slice (z, x)"),
                      _img(V.isel(x=c["x"]).values, y, z, "x slice (z, y)")]).cols(3)


def alignment(tree) -> object:
    """Shifts (Å) and Euler angles (degrees) per tilt, estimates (lines) and truth (points)."""
    hv = _hv()
    al = _node(tree, "alignment")
    if al is None:
        return "no alignment yet"
    tr = _node(tree, "truth")
    ang = al["angle"].values
    sh, eu = [], []
    for k in ("shift_y", "shift_x"):
        sh.append(hv.Curve((ang, al[k].values / _A), "tilt (deg)", "shift (Å)", label=k))
        if tr is not None and k in tr:
            t = tr[k].sel(angle=ang, method="nearest").values
            sh.append(hv.Scatter((ang, t / _A), "tilt (deg)", "shift (Å)", label=f"{k} truth"))
    for k in ("rx", "ry", "rz"):
        eu.append(hv.Curve((ang, al[k].values), "tilt (deg)", "Euler angle (deg)", label=k))
        if tr is not None and k in tr:
            eu.append(hv.Scatter((ang, tr[k].sel(angle=ang, method="nearest").values), "tilt (deg)",
                                 "Euler angle (deg)", label=f"{k} truth"))
    o = dict(frame_width=320, frame_height=200, legend_position="right", show_grid=True)
    return (hv.Overlay(sh).opts(title="shifts (gauge free)", **o) +
            hv.Overlay(eu).opts(title="Euler angles, extrinsic x-y-z after the tilt", **o)).cols(1)


def resolution(tree) -> object:
    """Spectral amplitude projected on each axis (resolution marked), denoising spectra, FSC."""
    hv = _hv()
    r = _node(tree, "resolution")
    if r is None:
        return "no resolution yet"
    parts = []
    curves = []
    for ax in ("z", "y", "x"):
        key = "profile_q" + ax
        if key in r:
            q = r[key]["q" + ax].values * _A
            curves.append(hv.Curve((q, r[key].values), "q (1/Å)", "projected |F|", label=ax))
            res = r.attrs.get(f"resolution_{ax}")
            if res is not None and np.isfinite(res):
                curves.append(hv.VLine(_A / res).opts(line_dash="dashed"))
    if curves:
        parts.append(hv.Overlay(curves).opts(title="spectrum projected on each axis (z: along the wedge)",
                                             logy=True, frame_width=320, frame_height=200, legend_position="right"))
    d = _node(tree, "denoised")
    if d is not None:
        q = d["q"].values * _A
        parts.append(hv.Overlay([hv.Curve((q[1:], d["spectrum_before"].values[1:]), "q (1/Å)", "power", label="before"),
                                 hv.Curve((q[1:], d["spectrum_after"].values[1:]), "q (1/Å)", "power", label="after")])
                     .opts(title=f"projection power spectra ({d.attrs.get('denoiser')})", logy=True,
                           frame_width=320, frame_height=200))
    if "fsc" in r:
        q = r["q_fsc"].values * _A
        o = [hv.Curve((q, r["fsc"].values), "q (1/Å)", "FSC", label="even/odd tilts")]
        if "fsc_threshold" in r:
            o.append(hv.Curve((q, r["fsc_threshold"].values), "q (1/Å)", "FSC", label="half bit").opts(line_dash="dotted"))
        parts.append(hv.Overlay(o).opts(title="FSC of half tilt series", frame_width=320, frame_height=200))
    return hv.Layout(parts).cols(1) if parts else "no spectra"


def atoms(tree) -> object:
    """Slices of the volume (z, thickness one Co layer) with found maxima (+) and missing
    Co sites (x) of the registered lattice, a slider over z."""
    hv = _hv()
    v, at = _node(tree, "volume"), _node(tree, "atoms")
    if v is None or at is None:
        return "no atoms yet"
    V = v["volume"]
    z, y, x = (V[d].values for d in ("z", "y", "x"))
    dz = float(z[1] - z[0])
    pk = at["peaks"].values
    st = at["sites"].values
    found = at["found"].values.astype(bool)
    frames = {}
    for k in np.unique(np.linspace(len(z) // 6, len(z) - 1 - len(z) // 6, 8).round().astype(int)):
        sel_p = np.abs(pk[:, 2] - z[k]) < dz
        sel_m = (np.abs(st[:, 2] - z[k]) < dz) & ~found
        im = _img(V.values[k], x, y, f"z = {z[k] / _A:.1f} Å")
        pts = hv.Points((pk[sel_p, 0] / _A, pk[sel_p, 1] / _A), ["x (Å)", "y (Å)"], label="found").opts(
            marker="+", size=10, color="white")
        miss = hv.Points((st[sel_m, 0] / _A, st[sel_m, 1] / _A), ["x (Å)", "y (Å)"], label="missing Co").opts(
            marker="x", size=10, color="red")
        frames[round(float(z[k]) / _A, 2)] = im * pts * miss
    return hv.HoloMap(frames, kdims=["z (Å)"])


_ROWS = (("resolution_across_wedge", "resolution across the missing wedge", 1 / _A, "Å"),
         ("resolution_along_wedge", "resolution along the missing wedge", 1 / _A, "Å"),
         ("resolution_fsc", "FSC resolution (half-bit, half series)", 1 / _A, "Å"),
         ("axial_resolution_single_tilt_assumed", "single-tilt multislice axial resolution (assumed)", 1 / _A, "Å"),
         ("axial_ratio", "axial gain of MSPT over single-tilt multislice", 1.0, "x"),
         ("atoms_found_fraction", "Co sites found", 100.0, "%"),
         ("atoms_n_missing", "Co sites missing", 1.0, ""),
         ("atoms_mean_displacement", "mean displacement of the found Co", 1 / _A, "Å"),
         ("alignment_atomic_misfit_relative", "atomic model misfit, relative (its poses used when <= 0.25)", 1.0, ""),
         ("alignment_atomic_n_atoms", "atoms in the atomic model", 1.0, ""),
         ("shift_error_rms_px_vs_truth", "shift error vs truth (rms)", 1.0, "px"),
         ("angle_error_rms_deg_vs_truth", "Euler-angle error vs truth (rms)", 1.0, "deg"),
         ("atoms_found_fraction_vs_truth", "true Co atoms found", 100.0, "%"))


def numbers(tree) -> str:
    """The summary numbers of the result (root attrs) as a markdown table."""
    from ._core import markdown_table

    rows = []
    if tree is not None and "alignment_pose_model" in tree.attrs:
        rows.append(("poses from", f"the {tree.attrs['alignment_pose_model']} model"))
    for key, label, scale, unit in _ROWS:
        v = tree.attrs.get(key) if tree is not None else None
        if v is None or not np.isfinite(float(v)):
            continue
        rows.append((label, f"{float(v) * scale:.3g} {unit}".strip()))
    return markdown_table(rows) if rows else "no numbers yet"


def views(tree, settings=None) -> list:
    """``[(tab title, HoloViews object or markdown)]`` for a (possibly partial) MSPT tree."""
    if tree is None:
        return [("Numbers", "no result yet")]
    return [("Tilts", tilts(tree)), ("Volume", volume(tree)), ("Alignment", alignment(tree)),
            ("Resolution", resolution(tree)), ("Atoms", atoms(tree)), ("Numbers", numbers(tree))]
