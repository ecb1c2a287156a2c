"""Write notebooks/01_stereo_ptychography.ipynb (run: python scripts/make_notebook_01.py).

Stored without outputs except the ``# NBVAL_CHECK_OUTPUT`` cells (their expected output is
written here as ``expect=``; nbval compares it in CI after ``tests/nbval_sanitize.cfg``). Every
number the prose claims is checked by an ``assert`` cell against the paper, the ground truth or
an analytic value, with the tolerance stated next to it.
"""
import nbformat as nbf

md = nbf.v4.new_markdown_cell


def code(source, expect=None, **kw):
    cell = nbf.v4.new_code_cell(source, **kw)
    if expect is not None:
        cell.outputs = [nbf.v4.new_output("stream", name="stdout", text=expect)]
        cell.execution_count = 1  # nbval compares only cells that were run
    return cell


cells = [
    md("""# Stereo hard X-ray ptychography

Two or three nanofocused X-ray beams cross the sample at the same time: a central beam and two beams
deflected by ±θ<sub>s</sub> (1.5° in the paper). Each beam records its own ptychogram, so each view is
reconstructed like an ordinary scan. Because the outer beams are inclined, a feature at depth *d* appears
shifted by *d* tan θ in each view, so the two outer views disagree by **2 d tan θ<sub>s</sub>**. That shift is
what resolves depth, well below the multislice limit of a single view.

This notebook walks through the workflow on a simulated version of the paper's two-layer sample: Au
nanoparticles on one side of a 200 nm Si₃N₄ membrane and zone-plate structures on the other, about
480 nm apart. Its sections:

1. **The simulated experiment** (a measurement with a `beam` dim) and the true layers.
2. **Depth limits**: the paper's Eq. 1 and 2.
3. **Reconstruct every beam** (ePIE, then the LSQ-ML parallel update) and its convergence.
4. **The beams**: probes, horizontal and vertical caustics, focus and spot size.
5. **Align the views**: anaglyph and difference images, with a slider.
6. **Separate the layers** (Eq. 3, sub-pixel shifts) and measure their separation from the views.
7. **Resolution**: FRC from half datasets, with the half-bit threshold.
8. **The same workflow as an app**, opened on these results.

Every figure comes from `ptynb.viz.stereo` (imported as `stereo_views`), the views the app shows too,
and every number the text claims is checked by an `assert` cell. With `PRESET = "ci"` the notebook
runs in 20-45 s on 2 cores (measured: 20 s idle, 45 s on a busy machine); `"laptop"` takes a few minutes, `"paper"` (the paper's iteration
counts) much longer."""),
    code("""# Parameters (papermill-style: this cell is tagged "parameters")
PRESET = "ci"          # "ci" (20-45 s), "laptop" (minutes) or "paper" (the paper's iterations)
N_BEAMS = 3            # 2 (left, right) or 3 (left, center, right)
THETA_S = 1.5          # deflection of each outer beam (degrees)
SEPARATION = 480e-9    # distance between the two layers (m)
SEED = 0
PRESETS = {  # scan points per side, detector px, ePIE + LSQ-ML iterations, FRC half-data iterations
    "ci": dict(SCAN_GRID=14, DETECTOR=64, EPIE=100, LSQML=50, FRC_ITERATIONS=(30, 10)),
    "laptop": dict(SCAN_GRID=20, DETECTOR=64, EPIE=300, LSQML=100, FRC_ITERATIONS=(100, 30)),
    "paper": dict(SCAN_GRID=24, DETECTOR=128, EPIE=900, LSQML=100, FRC_ITERATIONS=(300, 100)),
}
globals().update(PRESETS[PRESET])""", metadata={"tags": ["parameters"]}),
    code("""import holoviews as hv
import numpy as np
import panel as pn

import ptynb
from ptynb import viz
from ptynb.apps import as_panel
from ptynb.viz import stereo as stereo_views
from ptynb.workflows import stereo

# Bokeh and Panel JavaScript inline, from the installed packages (works offline, no CDN);
# the line below this cell says whether the front end ran it
ptynb.apps.notebook_extension()

settings = stereo.Settings(n_beams=N_BEAMS, theta_s=THETA_S, separation=SEPARATION, scan_grid=SCAN_GRID,
                           detector=DETECTOR, epie_iterations=EPIE, lsqml_iterations=LSQML, seed=SEED)
ptynb.apps.settings_editor(settings, ["sample", "n_beams", "theta_s", "separation",
                                     "astigmatism", "epie_iterations", "lsqml_iterations", "upsample"])"""),
    md("""## 1. The simulated experiment

The sample is a two-slice multislice object. Each beam is a zone-plate probe (D = 74.9 µm,
dr = 60 nm, 25 µm central stop) 120 µm upstream of its focus. The tilted beams propagate through the
480 nm gap at their angle, so they see the second layer shifted."""),
    code("""m = stereo.simulate(settings)
truth = m.true_layers
rows = [(str(b), f"{float(t):+.1f} deg", f"{m.sizes['scan']} positions, {m.sizes['qy']} x {m.sizes['qx']} px")
        for b, t in zip(m.beam.values, m.beam_tilt.values)]
display(pn.pane.Markdown(viz.markdown_table(rows, header=("beam", "tilt", "ptychogram")), width=500))
(viz.image(truth.sel(layer="particles"), title="true layer 1: Au particles", cmap="gray", label="phase",
           value_unit="rad")
 + viz.image(truth.sel(layer="zone_plate"), title="true layer 2: zone-plate structures", cmap="gray",
             label="phase", value_unit="rad"))"""),
    md("""## 2. Depth limits

The paper's Eq. 1 gives the multislice depth limit of a single view, 5.2 δ²/λ, and Eq. 2 the
stereo limit, δ/(2θ<sub>s</sub>). At the paper's resolutions they come out at ~7 µm and ~9 µm for
multislice, against ~300 nm for stereo. The 480 nm gap lies between the two, so stereo resolves it and
multislice cannot. The printed table is compared in CI (nbval)."""),
    code("""# NBVAL_CHECK_OUTPUT
lam = ptynb.physics.wavelength(settings.energy_eV, "xray")
n14 = stereo.depth_numbers(settings, resolution=14e-9)
n16 = stereo.depth_numbers(settings, resolution=16.2e-9, mean_phase=-0.61)
rows = [("multislice limit, delta = 14 nm (Eq. 1)", f"{n14['multislice_depth_limit'] * 1e6:.1f} um"),
        ("multislice limit, delta = 16.2 nm", f"{n16['multislice_depth_limit'] * 1e6:.1f} um"),
        ("stereo limit, delta = 16.2 nm, 1.5 deg (Eq. 2)", f"{n16['stereo_depth_limit'] * 1e9:.0f} nm"),
        ("layer shift 2 d tan(theta_s), d = 480 nm", f"{n16['layer_shift_m'] * 1e9:.1f} nm = {n16['layer_shift_px']:.2f} px"),
        ("Au thickness from a mean phase of -0.61 rad", f"{n16['thickness_from_phase'] * 1e9:.0f} nm")]
for name, value in rows:
    print(f"{name:46s} {value}")""", expect=(
        "multislice limit, delta = 14 nm (Eq. 1)        6.6 um\n"
        "multislice limit, delta = 16.2 nm              8.8 um\n"
        "stereo limit, delta = 16.2 nm, 1.5 deg (Eq. 2) 309 nm\n"
        "layer shift 2 d tan(theta_s), d = 480 nm       25.1 nm = 3.10 px\n"
        "Au thickness from a mean phase of -0.61 rad    318 nm\n")),
    code("""# the paper's numbers, and the formulas evaluated here independently
assert abs(n14["multislice_depth_limit"] - 7e-6) < 0.7e-6
assert abs(n16["multislice_depth_limit"] - 9e-6) < 0.45e-6
assert np.isclose(n16["multislice_depth_limit"], 5.2 * 16.2e-9**2 / lam, rtol=1e-6)
assert abs(n16["stereo_depth_limit"] - 300e-9) < 15e-9
assert np.isclose(n16["stereo_depth_limit"], 16.2e-9 / (2 * np.deg2rad(1.5)), rtol=1e-3)
assert np.isclose(n16["layer_shift_m"], 2 * 480e-9 * np.tan(np.deg2rad(1.5)), rtol=1e-9)
assert abs(n16["layer_shift_px"] - 3.1) < 0.05
assert abs(n16["thickness_from_phase"] - 310e-9) < 0.05 * 310e-9
assert abs(ptynb.physics.zone_plate_focal_length(74.9e-6, 60e-9, lam) - 29e-3) < 0.3e-3
pn.pane.Markdown(viz.markdown_table(rows), width=600)"""),
    md("""## 3. Reconstruct every beam

The paper's recipe: ePIE, then a parallel update (LSQ-ML), optionally with position refinement and
upsampling. The beams are independent, so `settings.parallel = True` sends them to a dask cluster.
Each beam's cost falls by more than an order of magnitude (checked below)."""),
    code("""rec = stereo.reconstruct_beams(m, settings)
stereo_views.convergence(rec)"""),
    code("""cost = rec.cost.values
assert np.all(np.isfinite(cost)) and np.all(cost[:, -1] < 0.1 * cost[:, 0]), cost[:, [0, -1]]
viz.complex_image(rec.object.sel(beam=rec.beam.values[0]).isel(slice=0), mode="both",
                  title=f"{rec.beam.values[0]} view")"""),
    md("""## 4. The beams: probes, caustics, focus

Each retrieved probe is propagated along z to find its focus. The horizontal and vertical caustics
show astigmatism: set `astigmatism` in the settings to see the two line foci separate. Each focus lies
about 120 µm downstream of the sample and the spot (FWHM) is about 58 nm, close to the zone plate's
0.97 dr with its central stop."""),
    code("""caustics = stereo.characterise_beams(rec, settings)
as_panel([view for b in rec.beam.values
          for view in (stereo_views.caustic(caustics[str(b)].to_dataset(), str(b)),
                       stereo_views.caustic_summary(caustics[str(b)].to_dataset(), str(b)))])"""),
    code("""for b in rec.beam.values:
    a = caustics[str(b)].to_dataset().attrs
    # focus 120 um downstream (within 25 um, ~half the depth of focus); spot 58 nm (40-80 nm)
    assert abs(0.5 * (a["focus_x"] + a["focus_y"]) - 120e-6) < 25e-6, a["focus_x"]
    assert 40e-9 < 0.5 * (a["focal_spot_x"] + a["focal_spot_y"]) < 80e-9
viz.probe_view(rec.probe.sel(beam=rec.beam.values[0]), title=f"{rec.beam.values[0]} probe")"""),
    md("""## 5. Align the views; anaglyph and difference images

The views are aligned by sub-pixel phase cross-correlation, which locks onto the dominant layer.
In the red/cyan anaglyph the other layer shows colour fringes. Move the slider: at the right extra
shift the difference image loses one layer and shows the contours of the other (compare Fig. 9e/f
of the paper)."""),
    code("""views = stereo.align_views(rec, settings)
rows = [(str(b), f"{float(sy):+.2f}", f"{float(sx):+.2f}")
        for b, sy, sx in zip(views.beam.values, views.shift_y.values, views.shift_x.values)]
display(pn.pane.Markdown(viz.markdown_table(rows, header=("view", "shift y (px)", "shift x (px)")), width=400))
print(stereo_views.anaglyph_caption(views, 0.0, "left", "right"))
pn.panel(stereo_views.anaglyph(views), widget_location="top_left", linked_axes=False)  # sliders above the plots"""),
    md("""## 6. Separate the layers

The two-layer model: one layer is identical in both aligned views, the other shifted by *s*. The
layer shift is **measured from the views alone** (with its uncertainty), and the separation follows
from it as *s* × pixel / (tan θ<sub>right</sub> − tan θ<sub>left</sub>); the geometry
(2 d tan θ<sub>s</sub> = 3.1 px for the true 480 nm) is only used to check it. The sign-constrained
convex problem is solved with sub-pixel shifts. The paper's original algorithm had to round to whole
pixels; the same solver with an integer shift is shown for comparison."""),
    code("""layers = stereo.separate_layers(views, settings, truth=truth)
s_int = settings.copy() if hasattr(settings, "copy") else stereo.Settings(
    **{k: v for k, v in settings.param.values().items() if k != "name"})
s_int.layer_shift_px, s_int.subpixel = float(np.round(layers.attrs["layer_shift_px"])), False
layers_int = stereo.separate_layers(views, s_int, truth=truth)
a, ai = layers.attrs, layers_int.attrs
rows = [(name, f"{a['pcc_' + name]:.3f} ({a['crosstalk_' + name]:.3f})",
         f"{ai['pcc_' + name]:.3f} ({ai['crosstalk_' + name]:.3f})") for name in ("particles", "zone_plate")]
display(pn.pane.Markdown(viz.markdown_table(rows, header=("true layer", "PCC sub-pixel (cross-talk)",
                                                          f"PCC integer {ai['layer_shift_px']:+.0f} px")), width=600))
as_panel([hv.Layout(stereo_views.layers(layers, views)).cols(2), stereo_views.layer_numbers(layers)])"""),
    code("""# both layers recovered (PCC with the truth >= 0.8); sub-pixel beats the integer shift
assert a["pcc_particles"] >= 0.8 and a["pcc_zone_plate"] >= 0.8, (a["pcc_particles"], a["pcc_zone_plate"])
assert (a["crosstalk_particles"] + a["crosstalk_zone_plate"] < ai["crosstalk_particles"] + ai["crosstalk_zone_plate"]
        or a["pcc_particles"] + a["pcc_zone_plate"] > ai["pcc_particles"] + ai["pcc_zone_plate"])
# the separation measured from the views: the true 480 nm within 15 %, and within 3 sigma
sep = a.get("separation_measured", a.get("separation_estimate"))
sep_err = a.get("separation_measured_uncertainty", float("nan"))
assert abs(sep - SEPARATION) < 0.15 * SEPARATION, (sep, SEPARATION)
if np.isfinite(sep_err):
    assert abs(sep - SEPARATION) < 3 * sep_err + 0.05 * SEPARATION, (sep, sep_err)
print(f"measured separation {sep * 1e9:.0f} nm" + (f" +- {sep_err * 1e9:.0f} nm" if np.isfinite(sep_err) else "")
      + f" (true {SEPARATION * 1e9:.0f} nm)")"""),
    md("""## 7. Resolution: FRC from half datasets

Each beam's scan is split into two interleaved halves. Each half is reconstructed independently, and
the Fourier ring correlation of the two results gives the resolution where it crosses the half-bit
threshold (marked). Here it lies between 1 and 20 reconstruction pixels."""),
    code("""s_frc = stereo.Settings(**{k: v for k, v in settings.param.values().items() if k != "name"})
s_frc.epie_iterations, s_frc.lsqml_iterations = FRC_ITERATIONS
outer = m.sel(beam=["left", "right"])
frc = stereo.frc_per_beam(outer, s_frc, progress=False)
as_panel([stereo_views.frc(frc), stereo_views.frc_summary(frc, settings.pixel_size)])"""),
    code("""assert np.all(np.isfinite(frc.resolution.values))
assert np.all((frc.resolution.values > settings.pixel_size) & (frc.resolution.values < 20 * settings.pixel_size))"""),
    md("""## 8. The same workflow as an app

`ptynb serve` serves this at `/stereo`. Below, the app opens on this notebook's results: its tabs
are the same `ptynb.viz.stereo` views as above (`stereo_views.views(tree)`). Press **Run** to
recompute with the settings in the app (served, the controls sit left of the tabs; here above them,
to fit the notebook column)."""),
    code("""tree = stereo.assemble(settings, measurement=m, reconstruction=rec, caustics=caustics, views=views,
                       layers=layers, frc=frc)
from ptynb.apps.stereo import StereoApp

app = StereoApp(settings=settings, result=tree)
# only the shown tab is drawn: served as an app (panel serve), a curve plot in a hidden tab
# left the image grids of the shown tab blank (bokeh 3.9 / panel 1.9)
app.tabs.dynamic = True
pn.Column(app.controls(), app.tabs)  # in a notebook column: the controls above the tabs"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"}})
nbf.write(nb, "notebooks/01_stereo_ptychography.ipynb")
print("wrote notebooks/01_stereo_ptychography.ipynb")
