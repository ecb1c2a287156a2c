"""Write notebooks/03_adept.ipynb (run: python scripts/make_notebook_03.py, then execute it with
jupyter nbconvert --to notebook --execute --inplace notebooks/03_adept.ipynb)."""
import nbformat as nbf

md = nbf.v4.new_markdown_cell
code = nbf.v4.new_code_cell
cells = [
    md("""# ADePt: deep self-supervised ptycho-laminography from few angles

Kang *et al.* (Optica, 2023) imaged an integrated circuit by ptycho-laminography at 6.2 keV (LamNI, 61.108°
between rotation axis and beam, 2000 angles) and reconstructed it from **1/8 and 1/16 of the angles** with a
*deep image prior*: a 3D U-Net fed with fixed noise whose weights are fitted so that the laminographic
projections of its output match **wavelet-high-passed** projections, with a **depth-dependent total
variation**. Filtered backprojection (FBP) on the same angles fails; ADePt beats it in bit-error ratio (BER)
and Pearson correlation (PCC), most clearly in the layers with fine wiring.

This notebook runs that reconstruction on a simulated IC with a known answer:
1. simulate an IC (coarse wiring below, finer wiring in the top layers) and its dense projections;
2. keep every 16th angle; FBP and SIRT (positivity) on those angles, FBP of the dense set as reference;
3. train the deep image prior with a live loss curve and depth slices, **stop it, and resume from the
   checkpoint**;
4. BER and PCC per depth region, depth slices side by side, power-spectral-density cuts.

Every figure comes from `ptynb.viz.adept`, the views the app shows too. `PRESET = "ci"` takes well under a
minute on 2 cores; the default preset is larger (minutes); `"paper"` has the paper's sizes (a GPU's work).
The truth is only read by the scores."""),
    code("""# Parameters (papermill-style: this cell is tagged "parameters")
PRESET = "ci"        # "ci", "default" or "paper"
STOP_AT = 100        # the first training pass is stopped here, then resumed from the checkpoint
CHECKPOINT = "adept_notebook.ckpt\"""", metadata={"tags": ["parameters"]}),
    code("""import os
import threading

import holoviews as hv
import numpy as np
import panel as pn

import ptynb

from ptynb.apps import as_panel
from ptynb.viz import adept as adept_views
from ptynb.workflows import adept

# Bokeh and Panel JavaScript inline, from the installed packages (works offline, no CDN);
# the line below this cell says whether the front end ran it
ptynb.apps.notebook_extension()

settings = adept.Settings()
settings.apply_preset(PRESET)
settings.checkpoint = CHECKPOINT
if os.path.exists(CHECKPOINT):
    os.remove(CHECKPOINT)  # a fresh start for this notebook
ptynb.apps.settings_editor(settings, ["volume_shape", "n_angles", "subsample", "width",
                                     "iterations", "learning_rate", "hpf_boost", "tv_weight"])"""),
    md("""## 1. The simulated IC and its projections

Two `ic_volume` phantoms stacked along z: Cu wiring on a pitch of 8 voxels below, 4 voxels in the top 35 %
of the depth, vias in between, in SiO2; the contrast is the phase per unit length k (δ − δ_SiO2) at 6.2 keV.
Projections over 360° at 61.108° with 2 % Gaussian noise; the ptychography per angle is not simulated here
(the projections path of the workflow)."""),
    code("""sim = adept.simulate(settings)
dense = sim["projections"]["projections"]
truth = sim["truth"].to_dataset()
projections = adept.subsample(dense, settings.subsample)
print(f"volume {truth['volume'].shape} voxels of {settings.voxel_size * 1e9:.1f} nm; "
      f"{dense.sizes['angle']} dense angles, {projections.sizes['angle']} used; "
      f"fine layers from z = {truth.attrs['fine_depth'] * 1e9:.0f} nm")
assert "truth" not in projections.attrs and projections.attrs["tilt"] == 61.108"""),
    md("""## 2. Baselines on the same angles"""),
    code("""from ptynb import tomo

reference = tomo.fbp(dense).rename("reference")
base = adept.baselines(projections, settings)"""),
    md("""## 3. The deep image prior, live; stopped and resumed

`adept.reconstruct` trains with `ptynb.learn.train` (Adam, step decay, checkpoints of weights, optimiser,
scheduler and random states). The callback draws the loss and three depth slices; at `STOP_AT` it sets the
cancel event: training stops after that iteration and the checkpoint stays. The second call resumes from it
and ends where an uninterrupted run would (bit for bit on a CPU; tested in `tests/test_adept.py`)."""),
    code("""live = pn.pane.HoloViews(adept_views.live(np.zeros(truth["volume"].shape), {}, 0))
stop = threading.Event()
coords = {d: truth[d].values for d in "zyx"}


def show(volume, history, iteration):
    live.object = adept_views.live(volume, history, iteration, coords=coords)
    if iteration >= STOP_AT:
        stop.set()


live"""),
    code("""vol, training, status = adept.reconstruct(projections, settings, scale_volume=base["sirt"],
                                          cancel=stop, callback=show)
print(status, "after", vol.attrs["iterations_done"], "iterations; checkpoint kept:", os.path.exists(CHECKPOINT))
assert status == "cancelled" and os.path.exists(CHECKPOINT)"""),
    code("""vol, training, status = adept.reconstruct(projections, settings, scale_volume=base["sirt"],
                                          callback=show)
print(status, "resumed from", vol.attrs["resumed_from"], "to", vol.attrs["iterations_done"])
assert status == "complete" and vol.attrs["resumed_from"] >= STOP_AT"""),
    md("""## 4. Scores, slices and spectra

BER: the truth's metal mask against each volume binarised by EM + Bayes' rule with the truth's class
priors (`ptynb.metrics.ber`); PCC against the true phase volume; per depth region (all, coarse, fine)."""),
    code("""metrics = adept.score({"reference": reference, **base, "adept": vol}, truth)
psd = adept.psd_planes({"reference": reference, **base, "adept": vol, "truth": truth["volume"]})
tree = adept.assemble(settings, truth=truth, projections=projections, reference=reference, fbp=base["fbp"],
                      sirt=base["sirt"], adept=vol, training=training, metrics=metrics, psd=psd)
pn.pane.Markdown(adept_views.numbers(tree))"""),
    code("""a = tree.attrs
assert a["ber_adept_all"] < a["ber_fbp_all"] and a["pcc_adept_all"] > a["pcc_fbp_all"]"""),
    code("""as_panel([view for _, view in adept_views.views(tree)])"""),
    md("""## The app

`ptynb serve` serves the workflow at `/adept` (the generic workflow app with these views); `ptynb run adept
out.h5 --preset ci` runs it from the command line."""),
    code("""os.remove(CHECKPOINT)"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"}})
nbf.write(nb, "notebooks/03_adept.ipynb")
print("wrote notebooks/03_adept.ipynb")
