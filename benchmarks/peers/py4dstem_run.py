"""Run a py4DSTEM (0.14.x) multislice ptychography on a benchmark data file.

Run with the py4DSTEM venv's python::

    python py4dstem_run.py DATA.npz OUT.npz --iterations 10 [--batch 256]

DATA.npz (written by ``benchmarks/ptycho.py``): ``intensity`` (Ny, Nx, Qy, Qx) float32 counts
(raster order, detector centred), ``positions_A`` (N, 2) probe centres (row, column) in Å,
``energy_eV``, ``angular_sampling_mrad`` (detector pixel), ``semiangle_mrad``, ``defocus_A``
(= -C10, positive underfocus), ``num_slices``, ``slice_thickness_A``.

OUT.npz gets ``object`` (T, Px, Py) complex64, ``positions_px`` (N, 2) probe centres in object
pixels, ``sampling_A``, ``iteration_time`` (s, total reconstruct time / iterations),
``total_time``, and the snapshot record of ``_common.py`` (``snapshots`` (K, T, Px, Py) after
``snap_iters``, ``snap_times``, ``iteration_times``, ``setup_time``, ``maxrss_mb``), taken at
the end of each iteration's constraints step (wrapped ``_constraints``; its result is copied).
"""
import argparse
import os
import sys
import time

T_START = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Recorder, snapshot_iterations, snapshot_record

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import py4DSTEM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--batch", type=int, default=0, help="max_batch_size (0 = all patterns)")
    ap.add_argument("--step-size", type=float, default=0.5)
    ap.add_argument("--snapshots", type=int, default=60, help="at most this many object snapshots")
    a = ap.parse_args()
    d = np.load(a.data)
    dc = py4DSTEM.DataCube(data=d["intensity"].astype(np.float32))
    dc.calibration.set_Q_pixel_size(float(d["angular_sampling_mrad"]))
    dc.calibration.set_Q_pixel_units("mrad")
    dc.calibration.set_R_pixel_size(1.0)
    dc.calibration.set_R_pixel_units("A")

    t_pre = time.perf_counter()
    ptycho = py4DSTEM.process.phase.MultislicePtychography(
        datacube=dc,
        energy=float(d["energy_eV"]),
        num_slices=int(d["num_slices"]),
        slice_thicknesses=float(d["slice_thickness_A"]),
        semiangle_cutoff=float(d["semiangle_mrad"]),
        defocus=float(d["defocus_A"]),
        initial_scan_positions=np.asarray(d["positions_A"], dtype=np.float64),
        device="cpu",
        verbose=False,
    ).preprocess(
        plot_center_of_mass=False,
        plot_rotation=False,
        plot_probe_overlaps=False,
        force_com_rotation=0.0,
        force_com_transpose=False,
        center_positions_in_fov=False,
    )
    t_pre = time.perf_counter() - t_pre
    snap = Recorder(a.iterations, snapshot_iterations(a.iterations, a.snapshots))
    orig_constraints = ptycho._constraints

    def constraints(*args, **kw):
        out = orig_constraints(*args, **kw)
        snap.tick(lambda: np.asarray(out[0]))
        return out

    ptycho._constraints = constraints
    setup = time.perf_counter() - T_START
    t0 = time.perf_counter()
    snap.start()
    ptycho.reconstruct(
        num_iter=a.iterations,
        max_batch_size=a.batch or None,
        step_size=a.step_size,
        reset=True,
        progress_bar=False,
        seed_random=0,
    )
    total = time.perf_counter() - t0
    obj = np.asarray(ptycho._object)
    np.savez(a.out, object=obj.astype(np.complex64),
             positions_px=np.asarray(ptycho._positions_px, dtype=np.float64),
             sampling_A=np.asarray(ptycho.sampling, dtype=np.float64),
             iteration_time=total / a.iterations, total_time=total, preprocess_time=t_pre,
             version=py4DSTEM.__version__, **snapshot_record(snap, setup))
    print(f"py4DSTEM multislice: {a.iterations} iterations in {total:.2f} s "
          f"(preprocess {t_pre:.2f} s)")


if __name__ == "__main__":
    main()
