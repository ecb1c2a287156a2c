"""Write notebooks/00_getting_started.ipynb (run: python scripts/make_notebook_00.py).

The notebook is stored without outputs, except the cells marked ``# NBVAL_CHECK_OUTPUT``:
their expected output is written here (``expect=``) and nbval compares it (after
``tests/nbval_sanitize.cfg``) in CI, so a changed number fails. Every other number the prose
claims is checked by an ``assert`` cell against the ground truth or an analytic value.
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
    md("""# Getting started with ptynb

This notebook simulates a small ptychography measurement with a known answer, saves and reloads it,
and explores it. It runs in about 10 s with the CI preset.

1. **Simulate a measurement**: probe, object, scan and Poisson-noisy diffraction patterns, with the
   ground truth alongside; the numbers are checked against physics.
2. **Save, reload, open lazily**: HDF5 and Zarr round trips; errors that name the problem.
3. **Explore**: click scan positions to see their patterns; probe and object as amplitude and phase.
4. **The same thing as an app**: the explorer app, embedded.

Everything in ptynb is an **xarray** object with named dims (`scan`, `qy`, `qx`, `slice`, `mode`, ...)
and SI units inside (metres, eV, radians). The next cell holds the parameters: one `PRESET` switch
(`"ci"`: what CI runs, `"laptop"`: a bigger detector and scan, `"paper"`: the same at full size)."""),
    code("""# Parameters (papermill-style: this cell is tagged "parameters")
PRESET = "ci"      # "ci" (10x10 positions, 64x64 px), "laptop" or "paper" (16x16 positions, 128x128 px)
KIND = "xray"      # "xray" (8 keV zone-plate probe) or "electron" (200 keV convergent probe)
SEED = 0""", metadata={"tags": ["parameters"]}),
    code("""import pathlib
import tempfile
import time

import holoviews as hv
import numpy as np
import panel as pn
import xarray as xr

import ptynb
from ptynb import viz

# Bokeh and Panel JavaScript inline, from the installed packages (works offline, no CDN);
# the line below this cell says whether the front end ran it
ptynb.apps.notebook_extension()
SIZE = {"ci": "small", "laptop": "medium", "paper": "medium"}[PRESET]"""),
    md("""## 1. Simulate a measurement

`ptynb.simulate.demo` builds a probe (zone plate or electron aperture), a smooth random object and a
jittered raster scan, then computes far-field patterns with Poisson noise. The ground truth is kept
alongside as `true_object` and `true_probe`."""),
    code("""t0 = time.perf_counter()
m = ptynb.simulate.demo(kind=KIND, size=SIZE, seed=SEED)
sim_s = time.perf_counter() - t0
a = m.attrs
rows = [("radiation", f"{a['radiation']} at {a['energy_eV'] / 1e3:.1f} keV"),
        ("wavelength", f"{a['wavelength'] * 1e12:.3f} pm"),
        ("patterns", f"{m.sizes['scan']} of {m.sizes['qy']} x {m.sizes['qx']} px"),
        ("reconstruction pixel", f"{a['pixel_size'] * 1e9:.3g} nm"),
        ("incident counts per pattern", f"{a['counts_per_pattern']:.3g}"),
        ("measured counts per pattern (mean)", f"{float(m.intensity.sum(('qy', 'qx')).mean()):.4g}")]
pn.pane.Markdown(viz.markdown_table(rows), width=500)"""),
    md("""The same summary as plain text, compared character by character in CI (`nbval`; run-dependent
parts such as the simulation time are masked by `tests/nbval_sanitize.cfg`):"""),
    code("""# NBVAL_CHECK_OUTPUT
for name, value in rows:
    print(f"{name:36s} {value}")
print(f"simulated in {sim_s:.2f} s")""", expect=(
        "radiation                            xray at 8.0 keV\n"
        "wavelength                           154.980 pm\n"
        "patterns                             100 of 64 x 64 px\n"
        "reconstruction pixel                 30 nm\n"
        "incident counts per pattern          1e+06\n"
        "measured counts per pattern (mean)   8.493e+05\n"
        "simulated in 0.74 s\n")),
    md("""The numbers are checked, not just printed: the wavelength is h c / E (X-rays) or the relativistic
de Broglie wavelength (electrons); the detector sampling is 1 / (n × pixel); every pattern's total
counts equal the incident counts times the object's transmitted intensity under the probe (ground
truth), to within Poisson noise and the rounding of the probe position to whole pixels (1.5 %)."""),
    code("""h, c, e, m_e = 6.62607015e-34, 299792458.0, 1.602176634e-19, 9.1093837015e-31
E = a["energy_eV"]
lam = h * c / (E * e) if a["radiation"] == "xray" else \\
    h / np.sqrt(2 * m_e * E * e * (1 + E * e / (2 * m_e * c**2)))
assert np.isclose(a["wavelength"], lam, rtol=1e-9, atol=0), (a["wavelength"], lam)
n = m.sizes["qy"]
assert np.isclose(m.qy.values[1] - m.qy.values[0], 1 / (n * a["pixel_size"]), rtol=1e-9, atol=0)
# expected total per pattern: incident counts x probe-weighted |object|^2 under the probe
P = np.abs(m.true_probe.isel(mode=0).values) ** 2
T = np.abs(m.true_object.isel(slice=0).values) ** 2
expected = []
for sy, sx in zip(m.scan_y.values, m.scan_x.values):
    iy, ix = int(np.argmin(abs(m.y.values - sy))), int(np.argmin(abs(m.x.values - sx)))
    expected.append((P * T[iy - n // 2:iy + n // 2, ix - n // 2:ix + n // 2]).sum() / P.sum())
expected = np.array(expected) * a["counts_per_pattern"]
totals = m.intensity.sum(("qy", "qx")).values
assert np.corrcoef(expected, totals)[0, 1] > 0.99
assert np.max(np.abs(totals / expected - 1)) < 0.015, np.max(np.abs(totals / expected - 1))
ptynb.data.validate(m);  # raises on bad data; the ; keeps the dataset from being printed again"""),
    md("""## 2. Save, reload, open lazily

HDF5 (`.h5`, via h5netcdf) and Zarr v3 (`.zarr`, sharded so one pattern is one small read) round-trip
exactly, complex values included. Saves are atomic. `lazy=True` opens a file without reading the
patterns (they arrive as dask arrays)."""),
    code("""workdir = pathlib.Path(tempfile.mkdtemp(prefix="ptynb-"))
h5 = ptynb.io.save(m, workdir / "demo.h5")
zr = ptynb.io.save(m, workdir / "demo.zarr")
xr.testing.assert_identical(ptynb.io.load(h5), m)
xr.testing.assert_identical(ptynb.io.load(zr), m)
lazy = ptynb.io.load(h5, lazy=True)
print("lazy intensity:", type(lazy.intensity.data).__name__, "of chunks", lazy.intensity.data.chunksize)"""),
    code("""import dask.array as da

assert isinstance(lazy.intensity.data, da.Array)
np.testing.assert_array_equal(lazy.intensity.isel(scan=3).values, m.intensity.isel(scan=3).values)"""),
    md("""Bad input is rejected with a message that names the variable and the problem, and data are
never changed silently:"""),
    code("""# NBVAL_CHECK_OUTPUT
bad = m.copy(deep=True)
bad.intensity.values[0, 0, 0] = -1
try:
    ptynb.data.validate(bad)
except ptynb.data.ValidationError as err:
    message = str(err)
print(message)""", expect="intensity: has 1 negative value(s) (min -1); counts must be >= 0\n"),
    md("""## 3. Explore

Scan positions are points: **click one** to see its diffraction pattern (log scale)."""),
    code("""viz.scan_explorer(m)"""),
    md("""Complex images are never plotted raw: amplitude in grey and phase on a colour map whose range
fits the phases present (diverging around zero for small phases, cyclic only where they wrap), or
an HSV composite (hue = phase, brightness = amplitude)."""),
    code("""viz.probe_view(m.true_probe, title="probe")"""),
    code("""obj = m.true_object.isel(slice=0)
viz.complex_image(obj, mode="both", title="object")"""),
    code("""viz.complex_image(obj, mode="hsv", title="object")"""),
    md("""The brightest pattern is where the probe crosses the least absorbing part of the object: the
total counts across the scan follow the object's transmitted intensity under the probe (checked in
section 1, correlation > 0.99)."""),
    code("""viz.counts_map(m)"""),
    md("""## 4. The same thing as an app

The explorer app below is what `ptynb serve` shows at `/explorer` (there the controls sit left of the
views; here above them, to fit the notebook column): pick the demo or a file from your data
directory, and explore."""),
    code("""app = ptynb.apps.build("explorer")  # a Row: the controls, then the views
pn.Column(*app.objects)  # in a notebook column: the controls above the views"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"}})
nbf.write(nb, "notebooks/00_getting_started.ipynb")
print("wrote notebooks/00_getting_started.ipynb")
