"""Shared input/output format of the benchmark peer runners (any python >= 3.10 with numpy).

The input ``.npz`` (written by ``benchmarks/ptycho.py``, function ``write_peer_input``):

* ``intensity`` (N, n, n) float32: counts, detector centred (DC at pixel n // 2);
* ``pos_px`` (N, 2) float64: probe centres (row, column) in object pixels of the benchmark's
  truth grid: probe-window pixel ``n // 2`` sits on truth pixel ``pos_px``;
* ``object_shape`` (2,) int: lateral size of the truth grid (it holds every probe window);
* ``probe`` (M, n, n) complex64: the initial probe every package gets, in ptynb's convention
  (orthonormal FFT: ``sum |P|^2`` = mean counts per pattern);
* ``pixel_size_m``, ``wavelength_m``, ``energy_eV``, ``n_slices``, ``slice_thickness_m``
  (m; 0 for one slice), ``radiation`` ("xray" or "electron"), ``grid`` (scan rows, columns),
  ``semiangle_rad``, ``defocus_m`` (electron only, positive = underfocus; NaN otherwise).

The output ``.npz`` (written by :func:`save_result`): ``snapshots`` (K, S, H, W) complex64
objects after iterations ``snap_iters`` (K,), ``snap_times`` (K,) seconds of iterating up to
then (start-up and the snapshot copies excluded), ``iteration_times`` (s, one per iteration),
``setup_time`` (s: import, data loading and model building before the first iteration),
``offset`` (2,) int: truth-grid pixel of reconstruction pixel (0, 0), ``maxrss_mb`` (peak
resident memory of the process, MB: ``VmHWM``, see :func:`maxrss_mb`; read before the snapshots, spooled to disk one at a time
during the run, are loaded back), ``version``, ``note``.

Start-up inside a package's reconstruct call (planning, compilation, lazy allocation) cannot
be told apart from its first iteration from outside, so every runner is treated the same way:
the first iteration's time is taken as the median of the others (``iteration_times[0]`` is
set to it) and the excess goes to ``setup_time``; ``snap_times`` are shifted accordingly.
"""
from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time

import numpy as np


def snapshot_iterations(total: int, count: int = 60) -> list[int]:
    """Iterations (1-based) after which the object is recorded: every one if ``total <= count``,
    else ~``count`` spread geometrically over the run, always including 1, 2 and ``total``."""
    if total <= count:
        return list(range(1, total + 1))
    its = set(np.unique(np.round(np.geomspace(1, total, count)).astype(int)).tolist())
    its |= {1, min(2, total), total}
    return sorted(i for i in its if 1 <= i <= total)


def set_threads(n: int | None) -> None:
    """Limit BLAS/OpenMP threads (call before importing numpy-heavy packages)."""
    if n:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                  "NUMEXPR_NUM_THREADS", "PTYNB_FFT_WORKERS"):
            os.environ[k] = str(n)


class Recorder:
    """Wall clock of the iterations with the snapshot copies taken out.

    Call :meth:`start` just before the first iteration and :meth:`tick` after each
    iteration with a function returning the current object (S, H, W); it is called (and
    its cost excluded from the clock) only at the snapshot iterations.
    """

    def __init__(self, total: int, snaps: list[int]):
        self.total = total
        self.snaps = set(snaps)
        self.iters, self.times, self.objects, self.iteration_times = [], [], [], []
        self._excluded = 0.0
        self._t0 = self._last = None
        self._spool = None
        self.it = 0

    def start(self):
        self._t0 = self._last = time.perf_counter()

    def tick(self, get_object):
        now = time.perf_counter()
        self.it += 1
        self.iteration_times.append(now - self._last)
        if self.it in self.snaps:
            t = now - self._t0 - self._excluded
            o = np.array(get_object(), dtype=np.complex64, copy=True)
            if o.ndim == 2:
                o = o[None]
            self.iters.append(self.it)
            self.times.append(t)
            # spooled to disk, so that the snapshots do not count in the peak memory
            if self._spool is None:
                self._spool = tempfile.mkdtemp(prefix="snapshots_", dir=".")
            path = os.path.join(self._spool, f"{self.it}.npy")
            np.save(path, o)
            self.objects.append(path)
            del o
            self._excluded += time.perf_counter() - now
        self._last = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0 - self._excluded


def maxrss_mb() -> float:
    """Peak resident memory of this process, MB: Linux ``VmHWM`` of ``/proc/self/status``
    (the high-water mark of this program's address space). ``ru_maxrss`` is the fallback
    only: on Linux it carries over from the parent across fork + exec, so a small runner
    started by a big benchmark process would report the parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def snapshot_record(rec: Recorder, setup_time: float) -> dict:
    """The snapshot arrays of the output format, the first iteration's excess moved to the
    set-up (see the module docstring). The peak memory is read before the spooled snapshots
    are loaded back."""
    peak = maxrss_mb()
    objects = [np.load(p) for p in rec.objects]
    if rec._spool is not None:
        shutil.rmtree(rec._spool, ignore_errors=True)
    shapes = {o.shape for o in objects}
    if len(shapes) != 1:
        raise RuntimeError(f"snapshots of different shapes {shapes}")
    it_times = np.asarray(rec.iteration_times, dtype=np.float64)
    snap_times = np.asarray(rec.times, dtype=np.float64)
    extra = 0.0
    if it_times.size > 1:
        extra = max(float(it_times[0] - np.median(it_times[1:])), 0.0)
        it_times[0] -= extra
        snap_times = snap_times - extra
    return {"snapshots": np.stack(objects), "snap_iters": np.asarray(rec.iters),
            "snap_times": snap_times, "iteration_times": it_times,
            "setup_time": float(setup_time) + extra, "first_iteration_extra": extra,
            "maxrss_mb": peak}


def save_result(path, rec: Recorder, *, setup_time: float, offset, version: str, note: str = "",
                **extra):
    """Write the output ``.npz`` (format in the module docstring; ``extra`` arrays added)."""
    np.savez(path, offset=np.asarray(offset, dtype=int), version=str(version), note=str(note),
             **snapshot_record(rec, setup_time), **extra)
