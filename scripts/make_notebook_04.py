"""Write notebooks/04_apt.ipynb (run: python scripts/make_notebook_04.py, then execute it in place:
jupyter nbconvert --to notebook --execute --inplace notebooks/04_apt.ipynb)."""
import nbformat as nbf

md = nbf.v4.new_markdown_cell
code = nbf.v4.new_code_cell
cells = [
    md("""# Attentional ptycho-tomography (APT)

Kang, Wu *et al.* reconstruct integrated circuits from **few tomographic angles N over a limited range ±θ**:
a cheap physics reconstruction (the *Approximant*) is refined by a **3D U-Net with a ResNet-like encoder and
axial self-attention**, trained with the negative Pearson correlation (NPCC). They find N\\* ≈ 29 angles and
θ\\* ≈ ±17° close to a 349-angle gold standard, beating FBP, SIRT and SART at the same angles.

ptynb trains the network from **simulated ICs** (random layouts, layer counts, feature sizes, materials), so no
gold standard is needed. This notebook uses the **shipped weights** (`ptynb/learn/weights/apt_small.pt`, made by
`ptynb train apt` on a CPU in about 11 minutes) on the **projections path**: phase projections (angle, y, x)
→ FBP Approximant → network (patches with 50 % lateral overlap, blended) → volume.

1. one held-out IC (a seed never used in training) at N = 29, ±17°: APT vs FBP, SIRT, SART vs truth;
2. the slices and the power spectra (the missing wedge about q_z);
3. small sweeps over N and θ, with the knee;
4. a tiny training run (seconds) with the same code as `ptynb train apt`."""),
    code("""# Parameters (papermill-style: this cell is tagged "parameters")
PRESET = "ci"        # "ci" (CI-small, seconds), "default" (a laptop) or "paper" (a GPU)
SEED = 0             # which held-out test IC""", metadata={"tags": ["parameters"]}),
    code("""import holoviews as hv
import numpy as np
import panel as pn

import ptynb

from ptynb.apps import as_panel
from ptynb.viz import apt as apt_views
from ptynb.workflows import apt

# Bokeh and Panel JavaScript inline, from the installed packages (works offline, no CDN);
# the line below this cell says whether the front end ran it
ptynb.apps.notebook_extension()
settings = apt.Settings()
settings.apply_preset(PRESET)
settings.seed = SEED
ptynb.apps.settings_editor(settings, ["nz", "n_lateral", "voxel_size", "n_angles", "angle_range",
                                     "source", "approximant", "sirt_iterations"])"""),
    md("""## One held-out IC at N = 29, ±17°

`apt.run` simulates the IC and its phase projections, computes the Approximant, runs the network and the
baselines, and scores everything against the truth (the truth never feeds a reconstruction)."""),
    code("""tree = apt.run(settings, progress=False)
pn.pane.Markdown(apt_views.metrics_table(tree))"""),
    code("""a = tree.attrs
assert a["status"] == "complete"
assert a["pcc_apt"] > max(a["pcc_fbp"], a["pcc_sirt"], a["pcc_sart"])"""),
    md("""## Slices and power spectra

Top: x-y slices at the metal layer with the most contrast; bottom: x-z slices (z is the beam at 0°, the
direction of the missing wedge). The PSD planes (q_y = 0) show the wedge about q_z that FBP leaves empty and
APT fills from its learned prior."""),
    code("""as_panel([apt_views.slices(tree), apt_views.spectra(tree)])"""),
    md("""## Sweeps over N (at ±70°) and θ (at N = 29)

A small version (one test IC, fewer points) of `benchmarks/RESULTS.md`'s sweep; the dashed line is the knee
(where the APT PCC reaches 90 % of the way from its lowest to its highest value)."""),
    code("""sw = apt.sweep(n_values=(5, 9, 15, 29, 61), theta_values=(5, 10, 17, 35, 70), seeds=(0,), settings=settings)
print("knee N =", round(sw.attrs["knee_n"], 1), " knee theta =", round(sw.attrs["knee_theta"], 1), "deg")
apt_views.sweep_curves(sw, "pcc")"""),
    md("""## A tiny training run

The same function as `ptynb train apt` (`apt.train_model`), on 2 volumes for 20 iterations: a few seconds
on a CPU. The shipped weights came from the default recipe (48 volumes x 2 angle sets, 600 iterations;
the recipe is stored in the file and in `ptynb/learn/weights/apt_small.json`)."""),
    code("""ts = apt.TrainSettings(n_train=2, n_val=1, draws=1, nz=16, n_lateral=32, width=0.0625, blocks=(1, 1, 1),
                       iterations=20, learning_rate=3e-3)
r = apt.train_model(ts, progress=False)
h = r["result"].history["loss"]
print(f"NPCC first 5: {np.mean(h[:5]):.3f}, last 5: {np.mean(h[-5:]):.3f}")
hv.Curve((r["result"].history["iteration"], h), "iteration", "NPCC loss").opts(frame_width=400)"""),
    md("""## The app

`ptynb serve` serves this workflow at `/apt`; below, the generic workflow app opens on this result."""),
    code("""from ptynb.apps._workflow import WorkflowApp

WorkflowApp("apt", settings=settings, result=tree)"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"}})
nbf.write(nb, "notebooks/04_apt.ipynb")
print("wrote notebooks/04_apt.ipynb")
