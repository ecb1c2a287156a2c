"""Run a PtyLab (0.3.x) reconstruction on a benchmark data file; run with the PtyLab venv's python.

Usage::

    python ptylab_run.py DATA.h5 OUT.npz --engine ePIE --iterations 50 [--seed 0]

DATA.h5 is PtyLab's CPM input format (written by ``benchmarks/ptycho.py``): ``ptychogram``
(N, Nd, Nd) float32 counts (detector centred), ``encoder`` (N, 2) probe-centre positions in m
(row, column) relative to the scan centre, ``wavelength``, ``dxd``, ``zo`` (m), plus
``initial_probe`` (Nd, Nd) complex64, the initial guess every package gets.

OUT.npz gets ``object`` (No, No) complex64 (PtyLab's object grid: pixel p sits at encoder
coordinate ``(p - No // 2) * dxo``), ``probe``, ``dxo``, ``No``, ``total_time`` and the snapshot
record of ``_common.py``: ``snapshots`` (K, 1, No, No) after ``snap_iters``, ``snap_times``,
``iteration_times`` (s, one per iteration, the first with the set-up inside ``reconstruct``
split off as described there), ``setup_time``, ``maxrss_mb``.
"""
import argparse
import os
import sys
import time

T_START = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Recorder, snapshot_iterations, snapshot_record

os.environ.setdefault("MPLBACKEND", "Agg")

import h5py
import numpy as np
import PtyLab
from PtyLab import Engines, ExperimentalData, Params, Reconstruction
from PtyLab.Monitor.Monitor import DummyMonitor


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--engine", default="ePIE", choices=["ePIE", "mPIE"])
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--snapshots", type=int, default=60, help="at most this many object snapshots")
    a = ap.parse_args()
    np.random.seed(a.seed)  # PtyLab's random position order uses numpy's global RNG

    data = ExperimentalData(a.data, operationMode="CPM")
    params = Params()
    params.gpuSwitch = False
    params.positionOrder = "random"
    params.propagatorType = "Fraunhofer"
    params.fftshiftSwitch = False
    params.intensityConstraint = "standard"
    params.probePowerCorrectionSwitch = True
    params.comStabilizationSwitch = False
    params.orthogonalizationSwitch = False
    rec = Reconstruction(data, params)  # copies the geometry, sizes the object grid
    rec.npsm = 1
    rec.nosm = 1
    rec.nslice = 1
    rec.initialProbe = "circ"
    rec.initialObject = "ones"
    rec.initializeObjectProbe()
    with h5py.File(a.data, "r") as f:
        p0 = f["initial_probe"][()].astype(np.complex64)
    rec.probe = p0.reshape(rec.probe.shape).copy()
    rec.initialGuessProbe = rec.probe.copy()

    engine_cls = getattr(Engines, a.engine)
    engine = engine_cls(rec, data, params, DummyMonitor())
    engine.numIterations = a.iterations

    orig = engine.showReconstruction
    snap = Recorder(a.iterations, snapshot_iterations(a.iterations, a.snapshots))

    def stamped(*args, **kw):
        out = orig(*args, **kw)
        snap.tick(lambda: np.asarray(rec.object).reshape(-1, rec.No, rec.No)[:1])
        return out

    engine.showReconstruction = stamped
    setup = time.perf_counter() - T_START
    t0 = time.perf_counter()
    snap.start()
    engine.reconstruct()
    total = time.perf_counter() - t0
    obj = np.asarray(rec.object).reshape(-1, rec.No, rec.No)[0]
    probe = np.asarray(rec.probe).reshape(-1, rec.Np, rec.Np)[0]
    np.savez(a.out, object=obj.astype(np.complex64), probe=probe.astype(np.complex64),
             dxo=float(rec.dxo), No=int(rec.No), Np=int(rec.Np),
             total_time=total, version=getattr(PtyLab, "__version__", "0.3"),
             **snapshot_record(snap, setup))
    print(f"PtyLab {a.engine}: {len(snap.iteration_times)} iterations in {total:.2f} s")


if __name__ == "__main__":
    main()
