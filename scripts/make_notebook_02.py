"""Write notebooks/02_mspt.ipynb (run: python scripts/make_notebook_02.py)."""
import nbformat as nbf

md = nbf.v4.new_markdown_cell
code = nbf.v4.new_code_cell
cells = [
    md("""# Multislice electron ptychographic tomography (MSPT)

Romanov *et al.* (J. Phys. Mater. 8, 015005, 2025) recorded a 4D-STEM scan of a Co₃O₄ nanocube at each of
36 tilts, reconstructed every tilt by **multislice ptychography** (5 slices of 3 nm), summed the phases of
the slices into one projection per tilt, denoised the projections (BM3D, then a Fourier-sparsity
constraint) and reconstructed the volume **jointly with a rigid pose per tilt** (translations at 10 % of
full resolution, rotations at 20 %, everything at full scale with a σ = 0.5 voxel blur). The 3D spectrum
gave 0.7 Å across and 2.04 Å along the missing wedge, 13.5 times better axially than multislice
ptychography alone, and a fitted spinel lattice located 80 % of the Co sites.

This notebook runs the same chain on a simulated cube with a known answer:
1. simulate the tilt series (nuisance shifts and Euler angles kept apart as ground truth);
2. multislice ptychography at every tilt (checkpointed per tilt);
3. summed-slice phase projections and their denoising;
4. joint tomography and alignment;
5. resolution from the spectra, FSC of half series;
6. atoms: local maxima and the registered spinel lattice.

Every figure comes from `ptynb.viz.mspt` (imported as `mspt_views`), the views the app shows too.
`PRESET = "ci"` is a one-cell cube with 9 tilts (about a minute on 2 cores); `"laptop"` is the 2-cell cube
with 36 tilts (many minutes); `"paper"` has the paper's sizes (a cluster's work)."""),
    code("""# Parameters (papermill-style: this cell is tagged "parameters")
PRESET = "ci"      # "ci", "laptop" or "paper"
SEED = 0
RUN_DIR = None     # a folder for per-tilt results: a stopped run resumes there""", metadata={"tags": ["parameters"]}),
    code("""import holoviews as hv
import numpy as np
import panel as pn

import ptynb
from ptynb.apps import as_panel
from ptynb.viz import mspt as mspt_views
from ptynb.workflows import mspt

# Bokeh and Panel JavaScript inline, from the installed packages (works offline, no CDN);
# the line below this cell says whether the front end ran it
ptynb.apps.notebook_extension()

settings = mspt.Settings()
settings.apply_preset(PRESET)
settings.seed = SEED
settings.run_dir = RUN_DIR
ptynb.apps.settings_editor(settings, ["cube_cells", "n_tilts", "tilt_range", "shift_rms", "euler_rms", "semiangle",
                                     "defocus", "dose", "n_slices", "iterations", "denoise"])"""),
    md("""## 1. The simulated tilt series

A spinel Co₃O₄ cube (a = 8.08 Å; Co on the tetrahedral 8a and octahedral 16d sites, O on 32e) is tilted
about the y axis. Each tilt also gets a random translation and small Euler-angle errors, the nuisance
the tomography has to find. The measurement carries only what a microscopist knows (energy,
semi-angle, nominal defocus, scan step, detector sampling); the nuisance and the atoms are in `truth`."""),
    code("""sim = mspt.simulate(settings)
measurement = sim["measurement"].to_dataset()
truth = sim["truth"].to_dataset()
a = measurement.attrs
print(f"{measurement.sizes['angle']} tilts, {measurement.sizes['scan']} patterns of "
      f"{measurement.sizes['qy']}x{measurement.sizes['qx']} per tilt; missing wedge {a['missing_wedge_deg']:.0f} deg")
print(f"{a['energy_eV'] / 1e3:.0f} keV, semi-angle {a['convergence_semiangle'] * 1e3:.0f} mrad, "
      f"nominal defocus {a['nominal_defocus'] * 1e10:.0f} A, step {a['scan_step'] * 1e10:.2f} A, dose {a['dose_e_per_A2']:.0e} e/A^2")"""),
    code("""assert not [v for v in measurement.variables if str(v).startswith("true")]
assert measurement.attrs["missing_wedge_deg"] == 180 - 2 * settings.tilt_range"""),
    md("""## 2. Multislice ptychography at every tilt

`reconstruct_tilts` fans the tilts out with `ptynb.parallel.map_blocks` (serially here; `parallel=True`
uses a dask cluster). With a `run_dir`, each finished tilt is written there and read back by the next
run instead of recomputed."""),
    code("""ptycho = mspt.reconstruct_tilts(measurement, settings)
projections = mspt.projections_from(ptycho)
print(f"{ptycho.attrs['tilts_done']} tilts, {settings.n_slices} slices of {settings.slice_dz() * 1e10:.1f} A")"""),
    code("""cc = [np.corrcoef(projections.values[k].ravel(), truth["true_projection"].values[k].ravel())[0, 1]
      for k in range(projections.sizes["angle"])]
print("correlation with the true projections:", np.round(cc, 2))
assert ptycho.attrs["tilts_done"] == settings.n_tilts
assert min(cc) > 0.6"""),
    md("""## 3. Denoising: BM3D (or a Gaussian for the quick preset) and the Fourier-sparsity constraint"""),
    code("""denoised = mspt.denoise(projections, settings)
print("denoiser:", denoised.attrs["denoiser"])"""),
    md("""## 4. Joint tomography and alignment

`ptynb.tomo.joint_refinement` on the MSPT schedule. The poses use the `ptynb.tomo.geometry`
convention: Euler angles (rx, ry, rz) extrinsic about the lab axes after the nominal tilt; shifts are
the object's displacement in each projection. A global rotation/translation is invisible in the data and
removed from the estimates."""),
    code("""tomo = mspt.tomography(denoised["denoised"].assign_attrs(projections.attrs), settings)
from ptynb.tomo import shift_image

dx = settings.pixel_size
corr = -np.stack([tomo["alignment"]["shift_y"].values, tomo["alignment"]["shift_x"].values], 1) / dx
tomo["aligned_raw"] = projections.copy(data=np.real(shift_image(projections.values.astype(float), corr)))"""),
    md("""## 5. Resolution and 6. atoms

For the paper's comparison with multislice ptychography *alone*, the tilt nearest 0° is reconstructed
once more with thin slices (four pixels); the median width along z of its atomic columns is compared with
the width along z of the atoms in the MSPT volume (the same estimator on both)."""),
    code("""single = mspt.single_tilt_stack(measurement, settings)
res = mspt.resolution(tomo["volume"], aligned=tomo["aligned_raw"], ptycho=ptycho, fsc=settings.fsc,
                      energy_eV=measurement.attrs["energy_eV"], semiangle=measurement.attrs["convergence_semiangle"],
                      single_tilt=single)
atoms = mspt.find_atoms(tomo["volume"], settings)
tree = mspt.assemble(settings, measurement=measurement, truth=truth, ptychography=ptycho, single_tilt=single,
                     projections=projections,
                     denoised=denoised, tomography=tomo, volume=tomo["volume"], alignment=tomo["alignment"],
                     resolution=res, atoms=atoms)
pn.pane.Markdown(mspt_views.numbers(tree))"""),
    code("""a = tree.attrs
assert a["shift_error_rms_px_vs_truth"] < a["injected_shift_rms_px"]
assert np.isfinite(a["resolution_across_wedge"]) and a["resolution_across_wedge"] >= 1.9 * settings.pixel_size
assert a["axial_ratio"] > 1
assert 0 <= a["atoms_found_fraction"] <= 1"""),
    md("""## The views

The same tabs as the app: per-tilt phases (raw and denoised), orthogonal slices of the volume, the
alignment against the truth, the spectra, the atoms over slices."""),
    code("""as_panel([view for _, view in mspt_views.views(tree)])"""),
    md("""## The app

`ptynb serve` serves this at `/mspt`. Below, the app opens on this notebook's results; press **Run** to
recompute with the settings in the app."""),
    code("""from ptynb.apps.mspt import MsptApp

app = MsptApp(settings=settings, result=tree)
app.tabs.dynamic = True  # only the shown tab is drawn (a served notebook left hidden tabs' grids blank)
pn.Column(app.controls(), app.tabs)  # in a notebook column: the controls above the tabs"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"}})
nbf.write(nb, "notebooks/02_mspt.ipynb")
print("wrote notebooks/02_mspt.ipynb")
