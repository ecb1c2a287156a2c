"""Write notebooks/01_stereo_ptychography.ipynb (run: python scripts/make_notebook_01.py)."""
import nbformat as nbf

md = nbf.v4.new_markdown_cell
code = nbf.v4.new_code_cell
cells = [
    md("""# Stereo hard X-ray ptychography

Two or three nanofocused X-ray beams cross the sample at the same time: a central beam and two beams
deflected by ±θ<sub>s</sub> (1.5° in the paper). Each beam records its own ptychogram, so each view is
reconstructed like an ordinary scan. Because the outer beams are inclined, a feature at depth *d* appears
shifted by *d* tan θ in each view, so the two outer views disagree by **2 d tan θ<sub>s</sub>**. That shift is
what resolves depth, well below the multislice limit of a single view.

This notebook walks through the workflow on a simulated version of the paper's two-layer sample: Au
nanoparticles on one side of a 200 nm Si₃N₄ membrane and zone-plate structures on the other, about
480 nm apart.
1. Simulate the measurement (`beam` dim).
2. Reconstruct each beam (ePIE, then LSQ-ML parallel update).
3. Characterise the beams (caustics, focus, spot size).
4. Align the views; anaglyph and difference images.
5. Compute the depth limits (the paper's Eq. 1 and 2).
6. Separate the layers (Eq. 3, with sub-pixel shifts).
7. Measure FRC resolution from half datasets.

Every figure comes from `ptynb.viz.stereo` (imported as `stereo_views`), the views the app shows too.
The parameters below are CI-small (about a minute on 2 cores). Raise `SCAN_GRID`, `DETECTOR` and the
iteration counts for real work."""),
    code("""# Parameters (papermill-style: this cell is tagged "parameters")
N_BEAMS = 3            # 2 (left, right) or 3 (left, center, right)
THETA_S = 1.5          # deflection of each outer beam (degrees)
SEPARATION = 480e-9    # distance between the two layers (m)
SCAN_GRID = 14         # raster points per side
DETECTOR = 64          # detector pixels per side
EPIE, LSQML = 100, 50  # iterations (the paper: 900 ePIE + 100 parallel update)
FRC_ITERATIONS = (30, 10)
SEED = 0""", metadata={"tags": ["parameters"]}),
    code("""import holoviews as hv
import numpy as np
import panel as pn

import ptynb
from ptynb import viz
from ptynb.apps import as_panel
from ptynb.viz import stereo as stereo_views
from ptynb.workflows import stereo

hv.extension("bokeh", logo=False)
pn.extension()

settings = stereo.Settings(n_beams=N_BEAMS, theta_s=THETA_S, separation=SEPARATION, scan_grid=SCAN_GRID,
                           detector=DETECTOR, epie_iterations=EPIE, lsqml_iterations=LSQML, seed=SEED)
pn.Param(settings.param, parameters=["sample", "n_beams", "theta_s", "separation", "astigmatism",
                                     "epie_iterations", "lsqml_iterations", "upsample"],
         show_name=False, width=350)"""),
    md("""## 1. The simulated experiment

The sample is a two-slice multislice object. Each beam is a zone-plate probe (D = 74.9 µm,
dr = 60 nm, 25 µm central stop) 120 µm upstream of its focus. The tilted beams propagate through the
480 nm gap at their angle, so they see the second layer shifted."""),
    code("""m = stereo.simulate(settings)
print(dict(m.sizes))
print("beams:", list(m.beam.values), "tilts (deg):", m.beam_tilt.values)
truth = m.true_layers
(viz.image(truth.sel(layer="particles"), title="true layer 1: Au particles", cmap="gray", label="phase", value_unit="rad")
 + viz.image(truth.sel(layer="zone_plate"), title="true layer 2: zone-plate structures", cmap="gray", label="phase",
             value_unit="rad"))"""),
    md("""## 2. Depth limits

The paper's Eq. 1 gives the multislice depth limit of a single view, 5.2 δ²/λ, and Eq. 2 the
stereo limit, δ/(2θ<sub>s</sub>). At the paper's resolutions they come out at ~7 µm and ~9 µm for
multislice, against ~300 nm for stereo. The 480 nm gap lies between the two, so stereo resolves it and
multislice cannot."""),
    code("""lam = ptynb.physics.wavelength(settings.energy_eV, "xray")
n14 = stereo.depth_numbers(settings, resolution=14e-9)
n16 = stereo.depth_numbers(settings, resolution=16.2e-9, mean_phase=-0.61)
rows = [("multislice limit, delta = 14 nm (Eq. 1)", f"{n14['multislice_depth_limit'] * 1e6:.1f} um"),
        ("multislice limit, delta = 16.2 nm", f"{n16['multislice_depth_limit'] * 1e6:.1f} um"),
        ("stereo limit, delta = 16.2 nm, 1.5 deg (Eq. 2)", f"{n16['stereo_depth_limit'] * 1e9:.0f} nm"),
        ("layer shift 2 d tan(theta_s), d = 480 nm", f"{n16['layer_shift_m'] * 1e9:.1f} nm = {n16['layer_shift_px']:.2f} px"),
        ("Au thickness from a mean phase of -0.61 rad", f"{n16['thickness_from_phase'] * 1e9:.0f} nm")]
pn.pane.Markdown(viz.markdown_table(rows))"""),
    code("""# the paper's numbers
assert abs(n14["multislice_depth_limit"] - 7e-6) < 0.7e-6
assert abs(n16["multislice_depth_limit"] - 9e-6) < 0.45e-6
assert abs(n16["stereo_depth_limit"] - 300e-9) < 15e-9
assert abs(n16["layer_shift_m"] - 25.1e-9) < 0.1e-9 and abs(n16["layer_shift_px"] - 3.1) < 0.05
assert abs(n16["thickness_from_phase"] - 310e-9) < 0.05 * 310e-9
assert abs(ptynb.physics.zone_plate_focal_length(74.9e-6, 60e-9, lam) - 29e-3) < 0.3e-3"""),
    md("""## 3. Reconstruct every beam

The paper's recipe: ePIE, then a parallel update (LSQ-ML), optionally with position refinement and
upsampling. The beams are independent, so `settings.parallel = True` sends them to a dask cluster."""),
    code("""rec = stereo.reconstruct_beams(m, settings)
stereo_views.convergence(rec)"""),
    code("""viz.complex_image(rec.object.sel(beam=rec.beam.values[0]).isel(slice=0), mode="both",
                  title=f"{rec.beam.values[0]} view")"""),
    md("""## 4. The beams: probes, caustics, focus

Each retrieved probe is propagated along z to find its focus. The horizontal and vertical caustics
show astigmatism: set `astigmatism` in the settings to see the two line foci separate."""),
    code("""caustics = stereo.characterise_beams(rec, settings)
as_panel([view for b in rec.beam.values
          for view in (stereo_views.caustic(caustics[str(b)].to_dataset(), str(b)),
                       stereo_views.caustic_summary(caustics[str(b)].to_dataset(), str(b)))])"""),
    code("""for b in rec.beam.values:
    a = caustics[str(b)].to_dataset().attrs
    # focus ~120 um downstream; spot of a zone plate with central stop ~ 0.97 dr ~ 58 nm
    assert abs(0.5 * (a["focus_x"] + a["focus_y"]) - 120e-6) < 25e-6, a["focus_x"]
    assert 40e-9 < 0.5 * (a["focal_spot_x"] + a["focal_spot_y"]) < 80e-9
viz.probe_view(rec.probe.sel(beam=rec.beam.values[0]), title=f"{rec.beam.values[0]} probe")"""),
    md("""## 5. Align the views; anaglyph and difference images

The views are aligned by sub-pixel phase cross-correlation, which locks onto the dominant layer.
In the red/cyan anaglyph the other layer shows colour fringes. Move the slider: at the right extra
shift the difference image loses one layer and shows the contours of the other (compare Fig. 9e/f
of the paper)."""),
    code("""views = stereo.align_views(rec, settings)
print("alignment shifts (px):", dict(zip(views.beam.values, zip(views.shift_y.values.round(2), views.shift_x.values.round(2)))))
print(stereo_views.anaglyph_caption(views, 0.0, "left", "right"))
stereo_views.anaglyph(views)"""),
    md("""## 6. Separate the layers

The two-layer model: one layer is identical in both aligned views, the other shifted by *s*. The
geometry gives the size of *s* (2 d tan θ<sub>s</sub> = 3.1 px); the data decide which layer moves. The
sign-constrained convex problem is solved with sub-pixel shifts. The paper's original algorithm had to
round to 3 px; the same solver with an integer shift is shown for comparison."""),
    code("""layers = stereo.separate_layers(views, settings, truth=truth)
s_int = stereo.Settings(**{k: v for k, v in settings.param.values().items() if k != "name"})
s_int.layer_shift_px, s_int.subpixel = float(np.round(layers.attrs["layer_shift_px"])), False
layers_int = stereo.separate_layers(views, s_int, truth=truth)
a, ai = layers.attrs, layers_int.attrs
print(f"layer shift {a['layer_shift_px']:+.2f} px -> implied separation {a['separation_estimate'] * 1e9:.0f} nm")
for name in ("particles", "zone_plate"):
    print(f"{name:11s} PCC sub-pixel {a['pcc_' + name]:.3f} (cross-talk {a['crosstalk_' + name]:.3f}) | "
          f"integer {ai['pcc_' + name]:.3f} ({ai['crosstalk_' + name]:.3f})")
as_panel([hv.Layout(stereo_views.layers(layers, views)).cols(2), stereo_views.layer_numbers(layers)])"""),
    code("""assert a["pcc_particles"] >= 0.8 and a["pcc_zone_plate"] >= 0.8
assert (a["crosstalk_particles"] + a["crosstalk_zone_plate"] < ai["crosstalk_particles"] + ai["crosstalk_zone_plate"]
        or a["pcc_particles"] + a["pcc_zone_plate"] > ai["pcc_particles"] + ai["pcc_zone_plate"])"""),
    md("""## 7. Resolution: FRC from half datasets

Each beam's scan is split into two interleaved halves. Each half is reconstructed independently, and
the Fourier ring correlation of the two results gives the resolution (half-bit threshold)."""),
    code("""s_frc = stereo.Settings(**{k: v for k, v in settings.param.values().items() if k != "name"})
s_frc.epie_iterations, s_frc.lsqml_iterations = FRC_ITERATIONS
outer = m.sel(beam=["left", "right"])
frc = stereo.frc_per_beam(outer, s_frc, progress=False)
for b, r in zip(frc.beam.values, frc.resolution.values):
    print(f"{b}: {r * 1e9:.1f} nm ({r / settings.pixel_size:.1f} px)")
as_panel([stereo_views.frc(frc), stereo_views.frc_summary(frc, settings.pixel_size)])"""),
    code("""assert np.all(np.isfinite(frc.resolution.values))
assert np.all(frc.resolution.values < 20 * settings.pixel_size)"""),
    md("""## 8. The same workflow as an app

`ptynb serve` serves this at `/stereo`. Below, the app opens on this notebook's results: its tabs
are the same `ptynb.viz.stereo` views as above (`stereo_views.views(tree)`). Press **Run** to
recompute with the settings in the app."""),
    code("""tree = stereo.assemble(settings, measurement=m, reconstruction=rec, caustics=caustics, views=views,
                       layers=layers, frc=frc)
from ptynb.apps.stereo import StereoApp

StereoApp(settings=settings, result=tree)"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"}})
nbf.write(nb, "notebooks/01_stereo_ptychography.ipynb")
print("wrote notebooks/01_stereo_ptychography.ipynb")
