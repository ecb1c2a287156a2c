"""ptynb.viz: every view builds and renders to a bokeh model; axes and colour bars carry units;
FRC views show the half-bit threshold and the resolution; tree_views on a synthetic tree;
the stereo views on a small synthetic stereo result (no reconstruction needed)."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

hv = pytest.importorskip("holoviews")
pytest.importorskip("bokeh")

from ptynb import viz  # noqa: E402
from ptynb.viz import stereo as vstereo  # noqa: E402


def render(obj):
    return hv.render(obj, backend="bokeh")


def figures(model):
    """Every bokeh figure in a rendered model."""
    from bokeh.models import Plot

    return list(model.select({"type": Plot}))


def axis_labels(model) -> set[str]:
    out = set()
    for f in figures(model):
        for ax in list(f.xaxis) + list(f.yaxis):
            if ax.axis_label:
                out.add(str(ax.axis_label))
    return out


def colorbar_titles(model) -> set[str]:
    from bokeh.models import ColorBar

    return {str(c.title) for c in model.select({"type": ColorBar}) if c.title}


def _img(ny=32, nx=40, complex_=False, d=10e-9):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(ny, nx)).astype(np.float32)
    if complex_:
        a = (np.exp(1j * a)).astype(np.complex64)
    return xr.DataArray(a, dims=("y", "x"), coords={"y": np.arange(ny) * d, "x": np.arange(nx) * d},
                        name="phase", attrs={"units": "rad"})


# ----------------------------------------------------------------------------- shared views
def test_public_names_still_exported():
    for name in ("image", "complex_image", "amplitude_phase", "probe_view", "object_view", "cost_curve",
                 "scan_explorer", "scan_points", "show", "complex_to_rgb", "PHASE_CMAP", "MAX_DISPLAY_PIXELS",
                 "tree_views", "orthoslices", "frc_view", "radial_power_spectrum", "cost_curves"):
        assert hasattr(viz, name), name
        assert name in viz.__all__, name


def test_viz_does_not_import_panel():
    import subprocess
    import sys

    code = ("import sys; import ptynb.viz, ptynb.viz.stereo, ptynb.viz.tree; "
            "sys.exit(1 if 'panel' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_image_axes_and_colourbar_have_units():
    m = render(viz.image(_img(), title="phase"))
    assert {"x (nm)", "y (nm)"} <= axis_labels(m)
    assert "phase (rad)" in colorbar_titles(m)


def test_image_without_coords_is_in_pixels():
    m = render(viz.image(np.ones((8, 8)), label="counts"))
    assert {"x (px)", "y (px)"} <= axis_labels(m)


def test_complex_views_render_amplitude_and_phase():
    z = _img(complex_=True)
    m = render(viz.complex_image(z, mode="both", title="object"))
    assert "phase (rad)" in colorbar_titles(m) and "amplitude" in colorbar_titles(m)
    assert {"x (nm)", "y (nm)"} <= axis_labels(m)
    render(viz.complex_image(z, mode="hsv"))
    with pytest.raises(TypeError):
        viz.image(z)


def test_probe_and_object_views():
    p = xr.DataArray(np.ones((2, 16, 16), np.complex64), dims=("mode", "py", "px"),
                     coords={"py": np.arange(16) * 1e-8, "px": np.arange(16) * 1e-8})
    m = render(viz.probe_view(p))
    assert {"x (nm)", "y (nm)"} <= axis_labels(m)
    render(viz.object_view(np.ones((2, 16, 16), np.complex64), mode="hsv"))


def test_orthoslices_of_a_volume():
    vol = xr.DataArray(np.random.default_rng(1).normal(size=(6, 12, 10)).astype(np.float32),
                       dims=("z", "y", "x"), coords={d: np.arange(n) * 5e-9 for d, n in
                                                     zip("zyx", (6, 12, 10))},
                       name="delta", attrs={"units": "1"})
    lay = viz.orthoslices(vol, title="volume")
    assert len(lay) == 3 and all(isinstance(o, hv.DynamicMap) for o in lay)
    assert [d.name for d in lay[0].kdims] == ["z_index", "y_index", "x_index"]
    m = render(lay)
    labels = axis_labels(m)
    assert {"x (nm)", "y (nm)", "z (nm)"} <= labels
    # another slice index gives another image
    a = lay[0][(1, 0, 0)].data
    b = lay[0][(4, 0, 0)].data
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_cost_curves_overlay_per_beam():
    cost = xr.DataArray(np.exp(-np.arange(20.0))[None, :] * np.array([[1.0], [2.0]]), dims=("beam", "iteration"),
                        coords={"beam": ["left", "right"], "iteration": np.arange(20)})
    ov = viz.cost_curves(cost)
    assert isinstance(ov, hv.Overlay) and len(ov) == 2
    m = render(ov)
    assert {"iteration", "cost"} <= axis_labels(m)
    render(viz.cost_curve(np.array([3.0, 2.0, 1.0])))


def test_frc_view_has_threshold_and_resolution_marker():
    from ptynb.metrics import frc

    rng = np.random.default_rng(2)
    base = rng.normal(size=(64, 64))
    from scipy.ndimage import gaussian_filter

    base = gaussian_filter(base, 2)
    c = frc(base + 0.05 * rng.normal(size=base.shape), base + 0.05 * rng.normal(size=base.shape),
            pixel_size=10e-9)
    res = c.attrs["resolution_half_bit"]
    assert np.isfinite(res)
    ov = viz.frc_view(c)
    labels = [el.label for el in ov]
    assert any("half-bit" in lab for lab in labels)
    vlines = [el for el in ov if isinstance(el, hv.VLine)]
    assert len(vlines) == 1
    assert vlines[0].data == pytest.approx(1 / (res * 1e9))
    texts = [el.text for el in ov if isinstance(el, hv.Text)]
    assert any(f"{res * 1e9:.1f} nm" in t for t in texts)
    m = render(ov)
    assert {"spatial frequency q (1/nm)", "FRC"} <= axis_labels(m)


def test_power_spectrum_view():
    ps = viz.radial_power_spectrum(_img(64, 64))
    assert ps.dims == ("q",) and ps["q"].attrs["units"] == "1/m"
    m = render(viz.power_spectrum_view(_img(64, 64)))
    assert "spatial frequency q (1/nm)" in axis_labels(m)


def test_scan_explorer_renders():
    import ptynb

    m = ptynb.simulate.demo(kind="xray", scan_grid=4) if "scan_grid" in \
        ptynb.simulate.demo.__code__.co_varnames else ptynb.simulate.demo(kind="xray")
    ds = m.isel({d: 0 for d in ("beam", "angle") if d in m["intensity"].dims})
    model = render(viz.scan_explorer(ds))
    assert {"x (nm)", "y (nm)"} <= axis_labels(model)


def _synthetic_tree():
    rng = np.random.default_rng(3)
    n = 16
    coords = {"y": np.arange(n) * 1e-8, "x": np.arange(n) * 1e-8}
    rec = xr.Dataset(
        {"object": (("slice", "y", "x"), np.exp(1j * rng.normal(size=(1, n, n))).astype(np.complex64)),
         "cost": (("iteration",), np.linspace(1, 0.1, 10))},
        coords=coords, attrs={"kind": "reconstruction", "pixel_size": 1e-8})
    vol = xr.Dataset({"delta": (("z", "y", "x"), rng.normal(size=(5, n, n)).astype(np.float32))},
                     coords={"z": np.arange(5) * 1e-8, **coords})
    tree = xr.DataTree(dataset=xr.Dataset(attrs={"status": "complete", "setting_n": 3, "answer": 42.0}))
    tree["reconstruction"] = xr.DataTree(rec)
    tree["tomogram"] = xr.DataTree(vol)
    tree["nested/image"] = xr.DataTree(xr.Dataset({"img": (("y", "x"), rng.normal(size=(n, n)))}, coords=coords))
    return tree


def test_tree_views_on_a_synthetic_tree():
    tabs = viz.tree_views(_synthetic_tree())
    titles = [t for t, _ in tabs]
    assert titles[0] == "Summary"
    assert {"reconstruction", "tomogram", "nested/image"} <= set(titles)
    summary = "\n".join(tabs[0][1])
    assert "answer" in summary and "| `n` | 3 |" in summary
    kinds = {}
    for title, items in tabs:
        for it in items:
            if isinstance(it, str):
                continue
            render(it)
            kinds.setdefault(title, []).append(type(it).__name__)
    assert "Layout" in kinds["tomogram"]  # orthogonal slices
    assert "Curve" in kinds["reconstruction: curves"]  # convergence, in a tab of its own
    assert "Layout" in kinds["reconstruction"]  # complex object as amplitude + phase


def test_show_picks_a_view():
    t = _synthetic_tree()
    render(viz.show(t["reconstruction"].to_dataset()))
    render(viz.show(_img()))
    render(viz.show(t))


# ----------------------------------------------------------------------------- stereo
def synthetic_stereo_tree(beams=("left", "right"), with_frc=True, attrs_extra=None):
    """A small stereo-like result tree (the node and attr names of the workflow)."""
    rng = np.random.default_rng(4)
    n, npx = 48, 16
    coords = {"y": np.arange(n) * 8e-9, "x": np.arange(n) * 8e-9}
    pc = {"py": (np.arange(npx) - npx / 2) * 8e-9, "px": (np.arange(npx) - npx / 2) * 8e-9}
    nb = len(beams)
    probe = np.exp(1j * rng.normal(size=(nb, 1, npx, npx))).astype(np.complex64)
    rec = xr.Dataset({"probe": (("beam", "mode", "py", "px"), probe),
                      "cost": (("beam", "iteration"), np.exp(-np.arange(12.0))[None].repeat(nb, 0))},
                     coords={"beam": list(beams), **pc, "iteration": np.arange(12)},
                     attrs={"pixel_size": 8e-9})
    base = rng.normal(size=(n, n)).astype(np.float32)
    phase = np.stack([np.roll(base, k, axis=1) for k in range(nb)])
    valid = np.zeros((n, n), bool)
    valid[6:-6, 6:-6] = True
    views = xr.Dataset({"phase": (("beam", "y", "x"), phase), "valid": (("y", "x"), valid)},
                       coords={"beam": list(beams), "beam_tilt": ("beam", np.linspace(-1.5, 1.5, nb)), **coords},
                       attrs={"pixel_size": 8e-9, "reference_beam": beams[0]})
    layers = xr.Dataset({"layers": (("layer", "y", "x"), rng.normal(size=(2, n, n)).astype(np.float32))},
                        coords={"layer": [0, 1], "layer_z": ("layer", [0.0, 480e-9]), **coords},
                        attrs={"layer_shift_px": -3.1, "layer_shift_source": "geometry", "separation_estimate": 4.8e-7,
                               "pcc_particles": 0.9, "crosstalk_particles": 0.05, "layer_0_is": "particles",
                               "layer_1_is": "zone_plate"})
    z = np.linspace(20e-6, 220e-6, 9)
    caustics = {}
    for b in beams:
        caustics[b] = xr.DataTree(xr.Dataset(
            {"horizontal": (("z", "px"), rng.random((z.size, npx)).astype(np.float32)),
             "vertical": (("z", "py"), rng.random((z.size, npx)).astype(np.float32))},
            coords={"z": z, **pc},
            attrs={"focus_x": 1.2e-4, "focus_y": 1.21e-4, "focal_spot_x": 5.7e-8, "focal_spot_y": 5.8e-8,
                   "astigmatic_offset": 1e-6, "numerical_aperture": 1.3e-3, "depth_of_focus": 4.3e-5}))
    attrs = {"status": "complete", "resolution": 16.2e-9, "multislice_depth_limit": 9e-6,
             "stereo_depth_limit": 3.1e-7, "layer_shift_m": 2.51e-8, "layer_shift_px": 3.1,
             "measured_layer_shift_px": -3.1, "mean_material_phase": -0.61, "thickness_from_phase": 3.1e-7,
             "setting_material": "Au"}
    attrs.update(attrs_extra or {})
    tree = xr.DataTree(dataset=xr.Dataset(attrs=attrs))
    tree["reconstruction"] = xr.DataTree(rec)
    tree["caustics"] = xr.DataTree(children=caustics)
    tree["views"] = xr.DataTree(views)
    tree["layers"] = xr.DataTree(layers)
    if with_frc:
        q = np.arange(20) * 1e6
        fr = xr.Dataset({"frc": (("beam", "q"), np.clip(1 - q[None] / 1.2e7, -0.1, 1).repeat(nb, 0)),
                         "resolution": ("beam", np.full(nb, 1 / 8e6))},
                        coords={"beam": list(beams), "q": ("q", q, {"units": "1/m"})})
        tree["frc"] = xr.DataTree(fr)
    return tree


def _render_tabs(tabs):
    for _title, items in tabs:
        for it in items if isinstance(items, list) else [items]:
            if not isinstance(it, str):
                render(it)


def test_stereo_views_have_the_app_tabs_and_render():
    tabs = vstereo.views(synthetic_stereo_tree())
    assert [t for t, _ in tabs] == list(vstereo.TABS)
    _render_tabs(tabs)
    beams_tab = dict(tabs)["Beams"]
    md = [x for x in beams_tab if isinstance(x, str)]
    assert len(md) == 2 and "focus x 0.120 mm" in md[0] and "NA 1.30e-03" in md[0]


def test_stereo_caustics_horizontal_and_vertical_with_units():
    t = synthetic_stereo_tree()
    lay = vstereo.caustic(t["caustics"]["left"].to_dataset(), "left")
    m = render(lay)
    labels = axis_labels(m)
    assert {"z from the sample (mm)", "x (um)", "y (um)"} <= labels
    assert "intensity (a.u.)" in colorbar_titles(m)


def test_stereo_anaglyph_is_a_dynamicmap_over_shift():
    v = synthetic_stereo_tree(beams=("left", "center", "right"))["views"].to_dataset()
    lay = vstereo.anaglyph(v)
    assert all(isinstance(o, hv.DynamicMap) for o in lay)
    assert [d.name for d in lay[1].kdims] == ["shift", "red", "cyan"]
    m = render(lay)
    assert "difference (rad)" in colorbar_titles(m)
    assert {"x (nm)", "y (nm)"} <= axis_labels(m)
    d0 = lay[1][(0.0, "left", "right")]
    d1 = lay[1][(0.5, "left", "right")]
    assert not np.allclose(d0.data, d1.data)
    c0, c1 = vstereo.anaglyph_caption(v, 0.0), vstereo.anaglyph_caption(v, 0.5)
    assert "extra shift +0.0 px; difference rms" in c0 and "extra shift +0.5 px" in c1
    assert c0 != c1


def test_stereo_numbers_tables_show_present_keys_with_labels():
    t = synthetic_stereo_tree()
    md = vstereo.depth_numbers(t.attrs)
    assert md.startswith("| quantity | value |")
    assert "| stereo depth limit (Eq. 2) | 310 nm |" in md
    assert "| multislice depth limit (Eq. 1) | 9.00 um |" in md
    assert "25.1 nm = 3.10 px" in md and "thickness from phase (Au)" in md
    # the formula's shift is labelled as assumed; a measured shift shows with its uncertainty;
    # absent keys are left out
    assert "for the assumed separation" in md
    attrs = dict(t.attrs, measured_layer_shift_px=3.2, measured_layer_shift_uncertainty_px=0.18)
    md2 = vstereo.depth_numbers(attrs)
    assert "| layer shift measured from the views (outer views) | 3.20 ± 0.18 px |" in md2
    attrs.pop("measured_layer_shift_px")
    assert "measured from the views" not in vstereo.depth_numbers(attrs)
    ln = vstereo.layer_numbers(t["layers"].to_dataset())
    assert "-3.10 px" in ln and "480 nm" in ln and "PCC with true layer particles | 0.900 (cross-talk 0.050)" in ln


def test_stereo_frc_has_threshold_and_marker():
    fr = synthetic_stereo_tree()["frc"].to_dataset()
    ov = vstereo.frc(fr)
    assert any("half-bit" in el.label for el in ov)
    assert len([el for el in ov if isinstance(el, hv.VLine)]) == 2
    assert "125.0 nm" in vstereo.frc_summary(fr)
    render(ov)


def test_stereo_views_of_a_partial_tree():
    t = synthetic_stereo_tree(with_frc=False)
    del t["layers"]
    del t["views"]
    tabs = dict(vstereo.views(t))
    assert "not computed" in tabs["Views and anaglyph"][0]
    assert "not computed" in tabs["FRC"][0]
    _render_tabs(list(tabs.items()))
