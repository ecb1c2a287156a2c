"""Views of the stereo workflow (:mod:`ptynb.workflows.stereo`), shared by its notebook and its app.

:func:`views` gives the app's tabs: "Beams" (probes, horizontal and vertical caustics, focus,
spot and NA), "Views and anaglyph" (a DynamicMap over the extra ``shift`` of the second view:
the red/cyan anaglyph and the difference image), "Layers" (recovered layers and their numbers),
"Depth numbers" (the paper's Eq. 1 and 2 and the layer shift), "FRC" and "Convergence". Every function
returns a HoloViews object or a markdown string; nothing here imports panel.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from ._core import DIFF_CMAP, FRAME_WIDTH, _hv, crop_to, dim, markdown_table
from .convergence import cost_curves
from .images import image, probe_view
from .spectra import frc_view as _frc_view

__all__ = ["views", "probes", "caustic", "caustic_summary", "beams", "anaglyph", "anaglyph_numbers",
           "anaglyph_caption", "layers", "layer_numbers", "frc", "frc_summary", "depth_numbers",
           "convergence", "DEPTH_ROWS", "TABS"]

#: the tabs of :func:`views`, in order
TABS = ("Beams", "Views and anaglyph", "Layers", "Depth numbers", "FRC", "Convergence")

#: Root attrs of a stereo result shown by :func:`depth_numbers`, in order: key -> (label,
#: scale, unit, format). A key that is absent is left out, so renamed attrs (what was assumed
#: vs measured) only need their label here. ``{material}`` is filled from the settings.
DEPTH_ROWS: dict[str, tuple[str, float, str, str]] = {
    "resolution": ("lateral resolution used", 1e9, "nm", ".1f"),
    "multislice_depth_limit": ("multislice depth limit (Eq. 1)", 1e6, "um", ".2f"),
    "stereo_depth_limit": ("stereo depth limit (Eq. 2)", 1e9, "nm", ".0f"),
    "layer_shift_m": ("layer shift 2 d tan(theta_s) for the assumed separation", 1e9, "nm", ".1f"),
    "measured_layer_shift_px": ("layer shift measured from the views (outer views)", 1.0, "px", ".2f"),
    "separation_measured": ("layer separation measured from the views", 1e9, "nm", ".0f"),
    "separation_assumed": ("layer separation assumed (settings)", 1e9, "nm", ".0f"),
    "separation_estimate": ("implied layer separation", 1e9, "nm", ".0f"),
    "mean_material_phase": ("mean phase of the material", 1.0, "rad", ".3f"),
    "thickness_from_phase": ("thickness from phase ({material})", 1e9, "nm", ".0f"),
}
#: how layer recovery got its shift (layers attr ``layer_shift_source``)
_SOURCE_TEXT = {"geometry": "from the geometry, sign from the data",
                "estimate": "estimated from the data", "value": "given in the settings"}
#: where the lateral resolution came from (root attr ``resolution_source`` if present)
_RESOLUTION_LABELS = {"frc": "lateral resolution (FRC half-bit, mean of the beams)",
                      "pixels": "lateral resolution assumed (two pixels)"}


def _node(tree, name) -> xr.Dataset | None:
    if tree is None or name not in tree:
        return None
    return tree[name].to_dataset()


def _settings_value(tree, settings, name, default=None):
    if settings is not None and hasattr(settings, name):
        return getattr(settings, name)
    return tree.attrs.get(f"setting_{name}", default) if tree is not None else default


# ----------------------------------------------------------------------------- beams
def probes(rec: xr.Dataset) -> list:
    """Amplitude and phase of each beam's retrieved probe (first mode)."""
    return [probe_view(rec["probe"].sel(beam=b), title=f"{b} probe") for b in rec["beam"].values]


def caustic(c: xr.Dataset, beam: str = ""):
    """Horizontal (z, x) and vertical (z, y) caustic of one beam, the foci marked."""
    hv = _hv()
    z_mm = c.z.values * 1e3
    a = c.attrs
    out = []
    for var, ax, focus in (("horizontal", "px", "focus_x"), ("vertical", "py", "focus_y")):
        t_um = c[ax].values * 1e6
        dz = (z_mm[1] - z_mm[0]) / 2 if z_mm.size > 1 else 0.5
        dt = (t_um[1] - t_um[0]) / 2 if t_um.size > 1 else 0.5
        name = "x" if ax == "px" else "y"
        vals = np.asarray(c[var].values, np.float32).T[::-1]
        peak = float(np.nanmax(vals)) if vals.size and np.nanmax(vals) > 0 else 1.0
        img = hv.Image(vals / peak,  # relative to the peak: short colour-bar ticks, same in every beam
                       bounds=(z_mm[0] - dz, t_um[0] - dt, z_mm[-1] + dz, t_um[-1] + dt),
                       kdims=[dim("z", "mm", "z from the sample"), dim(name, "um")],
                       vdims=[dim("intensity", "a.u.")])  # 1 = the peak
        img = img.opts(cmap="fire", colorbar=True, title=f"{beam}: {var} caustic".strip(": "), clim=(0, 1),
                       frame_width=FRAME_WIDTH - 30, frame_height=150, tools=["hover"], fontsize={"title": 10})
        if focus in a and np.isfinite(a[focus]):
            img = img * hv.VLine(float(a[focus]) * 1e3).opts(color="cyan", line_dash="dashed", line_width=1)
        out.append(img)
    return hv.Layout(out).cols(2)


def caustic_summary(c: xr.Dataset, beam: str) -> str:
    """One line of focus, spot size, NA and depth of focus of a beam (markdown)."""
    a = c.attrs
    return (f"**{beam}**: focus x {a['focus_x'] * 1e3:.3f} mm, y {a['focus_y'] * 1e3:.3f} mm "
            f"(astigmatic offset {a['astigmatic_offset'] * 1e6:.1f} um); spot FWHM "
            f"{a['focal_spot_x'] * 1e9:.0f} x {a['focal_spot_y'] * 1e9:.0f} nm; NA "
            f"{a['numerical_aperture']:.2e}, depth of focus {a['depth_of_focus'] * 1e6:.0f} um")


def beams(tree) -> list:
    """The "Beams" tab: each probe, then each beam's caustics with its summary line."""
    rec = _node(tree, "reconstruction")
    if rec is None:
        return ["*no reconstruction in this result*"]
    out = probes(rec)
    if "caustics" in tree:
        for b in rec["beam"].values:
            if str(b) in tree["caustics"]:
                c = tree["caustics"][str(b)].to_dataset()
                out += [caustic(c, str(b)), caustic_summary(c, str(b))]
    return out


def convergence(rec: xr.Dataset):
    """Cost of every beam's reconstruction, overlaid."""
    return cost_curves(rec["cost"], over="beam", title="convergence (ePIE, then LSQ-ML)")


# ----------------------------------------------------------------------------- anaglyph
class _Pair:
    """The cropped aligned phase images of a result's views (cached per anaglyph)."""

    def __init__(self, v: xr.Dataset):
        self.beams = [str(b) for b in v["beam"].values]
        self.crop = crop_to(v["valid"].values)
        self.phase = {b: np.asarray(v["phase"].sel(beam=b).values[self.crop], np.float64) for b in self.beams}
        self.px_nm = float(v.attrs.get("pixel_size", 1e-9)) * 1e9
        ny, nx = next(iter(self.phase.values())).shape
        self.bounds = (0, 0, nx * self.px_nm, ny * self.px_nm)

    def compare(self, red, cyan, shift):
        from ..imaging import shift_image
        from ..workflows.stereo_steps import anaglyph as _anaglyph

        a, b = self.phase[red], self.phase[cyan]
        sh = (0.0, float(shift))
        rgb = _anaglyph(a, b, shift=sh)
        diff = a - np.real(np.asarray(shift_image(b, sh)))
        border = int(np.ceil(abs(sh[1]))) + 1
        inner = diff[:, border:-border] if diff.shape[1] > 2 * border else diff
        return rgb, diff, float(np.sqrt(np.mean(inner ** 2)))


def anaglyph_numbers(views_ds: xr.Dataset, shift: float = 0.0, red: str | None = None,
                     cyan: str | None = None) -> dict:
    """The red and cyan views used and the rms of the difference image (rad) for an extra shift."""
    p = _Pair(views_ds)
    red = red if red in p.beams else p.beams[0]
    cyan = cyan if cyan in p.beams else p.beams[-1]
    _, _, rms = p.compare(red, cyan, shift)
    return {"red": red, "cyan": cyan, "shift": float(shift), "rms": rms}


def anaglyph_caption(views_ds: xr.Dataset, shift: float = 0.0, red: str | None = None,
                     cyan: str | None = None) -> str:
    """``views left / right; extra shift +0.0 px; difference rms 0.0123 rad``."""
    n = anaglyph_numbers(views_ds, shift, red, cyan)
    return (f"views {n['red']} / {n['cyan']}; extra shift {n['shift']:+.1f} px; "
            f"difference rms {n['rms']:.4f} rad")


def anaglyph(views_ds: xr.Dataset, *, max_shift: float = 10.0, step: float = 0.1, shift: float = 0.0):
    """Red/cyan anaglyph and difference image of two aligned views for an extra shift.

    A ``DynamicMap`` over the kdims ``shift`` (px, applied to the cyan view along x), ``red``
    and ``cyan`` (which views), so the sliders work in a notebook and in a Panel pane alike.
    At the right extra shift the difference image loses one layer and shows the contours of
    the other.
    """
    hv = _hv()
    p = _Pair(views_ds)
    # the unit goes into the label: Panel matches its slider to the dimension by label, and a
    # separate unit would make them differ (the slider then sends no value)
    kd = [hv.Dimension("shift", label="extra shift of the second view (px)", range=(-max_shift, max_shift),
                       step=step, default=float(shift)),
          hv.Dimension("red", label="red view", values=p.beams, default=p.beams[0]),
          hv.Dimension("cyan", label="cyan view", values=p.beams, default=p.beams[-1])]
    xd, yd = dim("x", "nm"), dim("y", "nm")

    def render(shift, red, cyan):
        rgb, diff, rms = p.compare(red, cyan, shift)
        left = hv.RGB(rgb[::-1], bounds=p.bounds, kdims=[xd, yd]).opts(
            title=f"anaglyph: {red} red, {cyan} cyan", frame_width=FRAME_WIDTH, aspect="equal",
            fontsize={"title": 10})
        right = hv.Image(diff[::-1].astype(np.float32), bounds=p.bounds, kdims=[xd, yd],
                         vdims=[dim("difference", "rad")]).opts(
            cmap=DIFF_CMAP, symmetric=True, colorbar=True, frame_width=FRAME_WIDTH, aspect="equal",
            title=f"{red} - {cyan} shifted {shift:+.1f} px (rms {rms:.4f} rad)", fontsize={"title": 10},
            tools=["hover"])
        return left + right

    # a DynamicMap must return one element or overlay: one DynamicMap per panel, same kdims
    def left_panel(shift, red, cyan):
        return render(shift, red, cyan)[0]

    def right_panel(shift, red, cyan):
        return render(shift, red, cyan)[1]

    return hv.Layout([hv.DynamicMap(left_panel, kdims=kd), hv.DynamicMap(right_panel, kdims=kd)]).cols(2).opts(
        title="")


# ----------------------------------------------------------------------------- layers
def layers(lay: xr.Dataset, views_ds: xr.Dataset | None = None) -> list:
    """Recovered layer phases (cropped to where they were recovered), one image per layer."""
    if views_ds is not None:
        ys, xs = crop_to(views_ds["valid"].values)
        lay = lay.isel(y=ys, x=xs)
    out = []
    for k in range(lay.sizes["layer"]):
        what = lay.attrs.get(f"layer_{k}_is")
        z = float(lay.layer_z[k]) * 1e9 if "layer_z" in lay.coords else float("nan")
        title = f"layer {k} (z = {z:.0f} nm)" + (f": {what}" if what else "")
        out.append(image(lay["layers"].isel(layer=k), cmap="gray", title=title, label="phase", value_unit="rad"))
    return out


def _pm(a: dict, key: str, scale: float, unit: str, fmt: str) -> str:
    """``value +- uncertainty unit`` of attr ``key`` (uncertainty from ``<key>_uncertainty``)."""
    v = float(a[key])
    if not np.isfinite(v):
        return "not measured"
    u = a.get(key + "_uncertainty", a.get(key.replace("_px", "_uncertainty_px")))
    err = f" ± {float(u) * scale:{fmt}}" if u is not None and np.isfinite(float(u)) else ""
    return f"{v * scale:{fmt}}{err} {unit}"


def layer_numbers(lay: xr.Dataset) -> str:
    """Layer shift and separation (measured from the views, with their uncertainty, and/or
    assumed from the settings), and with the truth PCC and cross-talk, as a markdown table.
    Keys that are absent are left out (older results: ``separation_estimate``)."""
    a = lay.attrs
    source = a.get("layer_shift_source", "value")
    source_text = _SOURCE_TEXT.get(source, source)
    rows = [("layer shift used by layer recovery", f"**{a['layer_shift_px']:.2f} px** ({source_text})")]
    if "measured_layer_shift_px" in a:
        rows.append(("layer shift measured from the views (1 sigma)",
                     _pm(a, "measured_layer_shift_px", 1.0, "px", ".2f")))
    if "separation_measured" in a:
        rows.append(("layer separation measured from the views (1 sigma)",
                     "**" + _pm(a, "separation_measured", 1e9, "nm", ".0f") + "**"))
    if "measurement_reliable" in a and not int(a["measurement_reliable"]):
        rows.append(("measurement", f"not reliable: {a.get('measurement_note', '')}"))
    if "assumed_layer_shift_px" in a:
        rows.append(("layer shift assumed (settings)", f"{a['assumed_layer_shift_px']:.2f} px"))
    if "separation_assumed" in a:
        rows.append(("layer separation assumed (settings)", f"{a['separation_assumed'] * 1e9:.0f} nm"))
    if "separation_estimate" in a:
        rows.append(("implied layer separation", f"**{a['separation_estimate'] * 1e9:.0f} nm**"))
    if "residual_rms" in a:
        rows.append(("residual rms of the layer model", f"{a['residual_rms']:.4f} rad"))
    for k, v in a.items():
        if k.startswith("pcc_"):
            name = k[4:]
            ct = a.get("crosstalk_" + name)
            rows.append((f"PCC with true layer {name}", f"{v:.3f}" + (f" (cross-talk {ct:.3f})" if ct is not None else "")))
    return markdown_table(rows)


# ----------------------------------------------------------------------------- FRC
def frc(fr: xr.Dataset):
    """FRC of the half-data reconstructions of each beam, the half-bit threshold, the resolutions."""
    res = {str(b): float(r) for b, r in zip(fr["beam"].values, fr["resolution"].values)}
    curves = fr["frc"].assign_attrs(kind="frc")
    for c in ("threshold_half_bit", "n_voxels"):
        if c in fr:
            curves = curves.assign_coords({c: ("q", np.asarray(fr[c].values).reshape(-1)[:fr.sizes["q"]])})
    return _frc_view(curves, resolution=res, title="FRC of half-data reconstructions")


def frc_summary(fr: xr.Dataset, pixel_size: float | None = None) -> str:
    """Each beam's half-bit resolution (markdown)."""
    rows = []
    for b, r in zip(fr["beam"].values, fr["resolution"].values):
        px = f" ({r / pixel_size:.1f} px)" if pixel_size else ""
        rows.append((str(b), f"{r * 1e9:.1f} nm{px} (half-bit)" if np.isfinite(r) else "not reached (curve above the threshold)"))
    return markdown_table(rows, header=("beam", "resolution"))


# ----------------------------------------------------------------------------- numbers
def depth_numbers(attrs: dict, settings=None, *, layer_attrs: dict | None = None,
                  resolution_source: str | None = None) -> str:
    """The depth numbers of a result's root attrs as a markdown table (see :data:`DEPTH_ROWS`).

    ``resolution_source`` ("frc" or "pixels"; default the ``resolution_source`` attr) says
    whether the lateral resolution was measured or assumed; ``layer_attrs`` (the layers
    node's attrs) add the implied separation and how the layer shift was obtained.
    """
    material = getattr(settings, "material", None) or attrs.get("setting_material", "material")
    rows = []
    merged = dict(attrs)
    src = (layer_attrs or {}).get("layer_shift_source")
    source = f" ({_SOURCE_TEXT.get(src, src)})" if src else ""
    for k in ("separation_measured", "separation_measured_uncertainty", "separation_assumed",
              "separation_estimate"):
        if layer_attrs and k in layer_attrs and k not in merged:
            merged[k] = layer_attrs[k]
    for key, (label, scale, unit, fmt) in DEPTH_ROWS.items():
        if key not in merged:
            continue
        v = merged[key]
        src_res = merged.get("resolution_source", resolution_source)
        if key == "resolution" and src_res is not None:
            label = _RESOLUTION_LABELS.get(str(src_res), label)
        if key == "layer_shift_m" and "layer_shift_px" in merged:
            text = f"{v * scale:{fmt}} {unit} = {merged['layer_shift_px']:.2f} px"
        elif key in ("separation_measured", "measured_layer_shift_px"):
            text = _pm(merged, key, scale, unit, fmt)
            if key == "separation_measured" and not merged.get("separation_measurement_reliable", 1):
                text += " (flagged unreliable)"
        else:
            text = f"{v * scale:{fmt}} {unit}"
        rows.append((label.format(material=material, source=source), text))
    if not rows:
        return "*no depth numbers in this result*"
    return markdown_table(rows)


# ----------------------------------------------------------------------------- all tabs
def views(tree, settings=None) -> list[tuple[str, object]]:
    """The stereo result as tabs ``[(title, view or [views]), ...]`` (see :data:`TABS`).

    Works on partial trees (a cancelled run): tabs whose data is missing say so.
    """
    pending = "*not computed in this run{}*"
    rec, v, lay, fr = (_node(tree, n) for n in ("reconstruction", "views", "layers", "frc"))
    tabs = [("Beams", beams(tree))]
    tabs.append(("Views and anaglyph", [anaglyph(v), anaglyph_caption(v)] if v is not None else [pending.format("")]))
    tabs.append(("Layers", [_hv().Layout(layers(lay, v)).cols(2), layer_numbers(lay)] if lay is not None
                 else [pending.format("")]))
    tabs.append(("Depth numbers", depth_numbers(tree.attrs, settings, layer_attrs=lay.attrs if lay is not None else None,
                                                resolution_source="frc" if fr is not None else "pixels")))
    if fr is not None:
        px = float(rec.attrs["pixel_size"]) if rec is not None and "pixel_size" in rec.attrs else None
        tabs.append(("FRC", [frc(fr), frc_summary(fr, px)]))
    else:
        tabs.append(("FRC", [pending.format(" (enable `frc` in the Analysis settings)")]))
    # a tab of its own: in a Panel page, a curve plot in the same column as the image grids
    # breaks their layout (bokeh 3.9 / panel 1.9)
    if rec is not None and "cost" in rec and rec["cost"].ndim == 2:
        tabs.append(("Convergence", [convergence(rec)]))
    else:
        tabs.append(("Convergence", [pending.format("")]))
    return tabs
