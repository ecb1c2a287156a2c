"""Write notebooks/00_getting_started.ipynb (run: python scripts/make_notebook_00.py)."""
import nbformat as nbf

md = nbf.v4.new_markdown_cell
code = nbf.v4.new_code_cell
cells = [
    md("""# Getting started with ptynb

This notebook simulates a small ptychography measurement with a known answer, saves and reloads it,
and explores it: scan positions, diffraction patterns, probe and object.

Everything in ptynb is an **xarray** object with named dims (`scan`, `qy`, `qx`, `slice`, `mode`, ...)
and SI units inside (metres, eV, radians). The first cell holds the parameters: CI runs it small, you
can run it big."""),
    code("""# Parameters (papermill-style: this cell is tagged "parameters")
KIND = "xray"      # "xray" (8 keV zone-plate probe) or "electron" (200 keV convergent probe)
SIZE = "small"     # "small": 10x10 positions, 64x64 detector; "medium": 16x16, 128x128
SEED = 0""", metadata={"tags": ["parameters"]}),
    code("""import pathlib
import tempfile

import holoviews as hv
import numpy as np
import panel as pn
import xarray as xr

import ptynb
from ptynb import viz

hv.extension("bokeh", logo=False)
pn.extension()"""),
    md("""## 1. Simulate a measurement

`ptynb.simulate.demo` builds a probe (zone plate or electron aperture), a smooth random object and a
jittered raster scan, then computes far-field patterns with Poisson noise. The ground truth is kept
alongside as `true_object` and `true_probe`."""),
    code("""m = ptynb.simulate.demo(kind=KIND, size=SIZE, seed=SEED)
m"""),
    code("""a = m.attrs
print(f"{a['radiation']} at {a['energy_eV'] / 1e3:.1f} keV, wavelength {a['wavelength'] * 1e12:.3f} pm")
print(f"{m.sizes['scan']} patterns of {m.sizes['qy']} x {m.sizes['qx']} px; "
      f"reconstruction pixel {a['pixel_size'] * 1e9:.3g} nm")
print(f"mean counts per pattern: {float(m.intensity.sum(('qy', 'qx')).mean()):.4g}")"""),
    md("""The numbers are checked, not just printed: the wavelength follows from the energy, the pixel size
from the detector sampling, and the mean counts per pattern match the stated dose within Poisson error."""),
    code("""lam = ptynb.physics.wavelength(a["energy_eV"], a["radiation"])
assert np.isclose(a["wavelength"], lam, rtol=1e-12, atol=0)
n = m.sizes["qy"]
assert np.isclose(m.qy.values[1] - m.qy.values[0], 1 / (n * a["pixel_size"]), rtol=1e-9, atol=0)
totals = m.intensity.sum(("qy", "qx")).values
expected = float(a["counts_per_pattern"])
# the sample absorbs a little, so the mean sits at or below the incident counts
assert 0.6 * expected < totals.mean() <= expected * (1 + 5 / np.sqrt(expected * len(totals)))
ptynb.data.validate(m)"""),
    md("""## 2. Save, reload, open lazily

HDF5 (`.h5`, via h5netcdf) and Zarr v3 (`.zarr`, sharded so one pattern is one small read) round-trip
exactly, complex values included. Saves are atomic. `lazy=True` opens a file without reading the
patterns (they arrive as dask arrays)."""),
    code("""workdir = pathlib.Path(tempfile.mkdtemp(prefix="ptynb-"))
h5 = ptynb.io.save(m, workdir / "demo.h5")
zr = ptynb.io.save(m, workdir / "demo.zarr")
back = ptynb.io.load(h5)
xr.testing.assert_identical(back, m)
xr.testing.assert_identical(ptynb.io.load(zr), m)
lazy = ptynb.io.load(h5, lazy=True)
print(type(lazy.intensity.data).__name__, lazy.intensity.data.chunksize)"""),
    code("""import dask.array as da

assert isinstance(lazy.intensity.data, da.Array)
np.testing.assert_array_equal(lazy.intensity.isel(scan=3).values, m.intensity.isel(scan=3).values)"""),
    md("""Bad input is rejected with a message that names the variable and the problem, and data are
never changed silently:"""),
    code("""bad = m.copy(deep=True)
bad.intensity.values[0, 0, 0] = -1
try:
    ptynb.data.validate(bad)
except ptynb.data.ValidationError as err:
    message = str(err)
print(message)
assert message.startswith("intensity: has 1 negative value")"""),
    md("""## 3. Explore

Scan positions are points: **click one** to see its diffraction pattern (log scale)."""),
    code("""viz.scan_explorer(m)"""),
    md("""Complex images are never plotted raw: amplitude in grey, phase on a cyclic colour map, or an
HSV composite (hue = phase, brightness = amplitude)."""),
    code("""viz.probe_view(m.true_probe, title="probe")"""),
    code("""obj = m.true_object.isel(slice=0)
viz.complex_image(obj, mode="both", title="object") + viz.complex_image(obj, mode="hsv", title="object (HSV)")"""),
    md("""The brightest pattern is where the probe crosses the least absorbing part of the object; the
total counts across the scan follow the object's amplitude under the probe."""),
    code("""totals = m.intensity.sum(("qy", "qx"))
pts = hv.Points((m.scan_x.values * 1e9, m.scan_y.values * 1e9, totals.values),
                kdims=["x (nm)", "y (nm)"], vdims=["counts"])
pts.opts(color="counts", cmap="viridis", size=8, colorbar=True, invert_yaxis=True,
         title="total counts per position", frame_width=300, aspect="equal", tools=["hover"])"""),
    md("""## 4. The same thing as an app

The explorer app below is what `ptynb serve` shows at `/explorer`: pick the demo or a file from your
data directory, and explore."""),
    code("""app = ptynb.apps.build("explorer")
app"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"}})
nbf.write(nb, "notebooks/00_getting_started.ipynb")
print("wrote notebooks/00_getting_started.ipynb")
