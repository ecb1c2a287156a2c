"""Run py4DSTEM (0.14.x) multislice ptychography on one MSPT tilt written by ``benchmarks/mspt.py``.

Run with the py4DSTEM venv's python (``benchmarks/.venvs/py4dstem``, numpy < 2)::

    python py4dstem_mspt_run.py DATA.npz OUT.npz [--batch 64] [--step-size 0.5]

DATA.npz (written by ``benchmarks/mspt.py``):

* ``intensity`` (Ny, Nx, Q, Q) float32 counts, raster order (scan row = y slowest), detector
  centred (zero frequency at pixel Q // 2 on both axes, the first detector axis along y);
* ``positions_A`` (N, 2) probe centres (y, x) in Å;
* ``angular_sampling_mrad`` (detector pixel, mrad), ``energy_eV``, ``semiangle_mrad``,
  ``num_slices``, ``slice_thickness_A``, ``iterations``;
* ``probe`` (Q, Q) complex64, the initial probe at the entrance of the first slice, centred
  (beam axis at pixel Q // 2) on the object grid of pixel ``wavelength / (Q dtheta)``; it is
  moved to the corner (py4DSTEM's convention) and scaled so that ``sum |fft2(probe)|^2``
  equals the mean summed pattern (py4DSTEM's normalisation of its own probe).

The diffraction patterns are moved to the corner by exactly ``Q // 2`` pixels
(``force_com_shifts``: the detector centre is known, no fitted sub-pixel re-centring), with no
rotation or transpose between scan and detector (``force_com_rotation=0``,
``force_com_transpose=False``): the simulation has none.

An untimed 1-iteration run of the same setup comes first (``--no-warmup`` skips it).

OUT.npz gets ``object`` (T, Px, Py) complex64, ``positions_px`` (N, 2) probe centres in object
pixels, ``sampling_A`` (2,), ``setup_time`` (s: constructor + preprocess),
``reconstruct_time`` (s: the ``reconstruct`` call), ``iteration_time`` (s: reconstruct time
/ iterations), ``maxrss_MiB`` (this process's peak resident set, ``VmHWM``),
``maxrss_start_MiB`` (the same after the imports, before the data were read), ``version``.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import py4DSTEM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import maxrss_mb


def _rss_mib():
    return maxrss_mb()  # VmHWM (ru_maxrss carries the parent's size over fork + exec)


def main():
    rss0 = _rss_mib()
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=0, help="max_batch_size (0 = all patterns in one batch)")
    ap.add_argument("--step-size", type=float, default=0.5, help="gradient-descent step (py4DSTEM default 0.5)")
    ap.add_argument("--no-probe", action="store_true",
                    help="let py4DSTEM build its own probe (semi-angle, defocus_A) instead of the given one")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the untimed 1-iteration run (same setup) before the timed one")
    a = ap.parse_args()
    d = np.load(a.data)
    inten = np.asarray(d["intensity"], dtype=np.float32)
    ny, nx, q, q2 = inten.shape
    if q != q2:
        raise SystemExit(f"square detector expected, got {q} x {q2}")
    iters = int(d["iterations"])

    mean_sum = float(inten.sum(axis=(2, 3)).mean())
    kw = {}
    if not a.no_probe:
        p = np.fft.ifftshift(np.asarray(d["probe"], dtype=np.complex64))  # centre -> corner
        p *= np.sqrt(mean_sum / np.sum(np.abs(np.fft.fft2(p)) ** 2))
        kw["initial_probe_guess"] = p.astype(np.complex64)
    else:
        kw["defocus"] = float(d["defocus_A"])
    centre = np.full((ny, nx), float(q // 2), dtype=np.float32)

    def build():
        dc = py4DSTEM.DataCube(data=inten.copy())
        dc.calibration.set_Q_pixel_size(float(d["angular_sampling_mrad"]))
        dc.calibration.set_Q_pixel_units("mrad")
        dc.calibration.set_R_pixel_size(1.0)  # unused: the positions are given in Å
        dc.calibration.set_R_pixel_units("A")
        return py4DSTEM.process.phase.MultislicePtychography(
            datacube=dc,
            energy=float(d["energy_eV"]),
            num_slices=int(d["num_slices"]),
            slice_thicknesses=float(d["slice_thickness_A"]),
            semiangle_cutoff=float(d["semiangle_mrad"]),
            initial_scan_positions=np.asarray(d["positions_A"], dtype=np.float64),
            device="cpu",
            verbose=False,
            **kw,
        ).preprocess(
            plot_center_of_mass=False,
            plot_rotation=False,
            plot_probe_overlaps=False,
            force_com_rotation=0.0,
            force_com_transpose=False,
            force_com_shifts=(centre, centre),
            center_positions_in_fov=False,
        )

    def run(ptycho, n):
        ptycho.reconstruct(num_iter=n, max_batch_size=a.batch or None, step_size=a.step_size, reset=True,
                           progress_bar=False, seed_random=0)

    if not a.no_warmup:
        run(build(), 1)
    t0 = time.perf_counter()
    ptycho = build()
    t_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(ptycho, iters)
    t_rec = time.perf_counter() - t0
    obj = np.asarray(ptycho._object)
    np.savez(a.out, object=obj.astype(np.complex64),
             positions_px=np.asarray(ptycho._positions_px, dtype=np.float64),
             sampling_A=np.asarray(ptycho.sampling, dtype=np.float64),
             setup_time=t_setup, reconstruct_time=t_rec, iteration_time=t_rec / iters,
             maxrss_MiB=_rss_mib(), maxrss_start_MiB=rss0, version=py4DSTEM.__version__)
    print(f"py4DSTEM multislice: {iters} iterations in {t_rec:.2f} s (setup {t_setup:.2f} s)")


if __name__ == "__main__":
    main()
