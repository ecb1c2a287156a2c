"""Simulator throughput next to this machine's FFT rate, measured in the same run.

Usage::

    python benchmarks/simulate.py [--device cpu|gpu] [--positions 256] [--repeats 5]

Prints, for a 128 x 128 detector and 1 probe mode, the patterns per second of
``ptynb.simulate.ptychography`` (Poisson noise, sub-pixel positions, full Dataset built) with 1 and
5 slices, the batched complex64 128 x 128 FFT rate of ``ptynb.backend.fft2`` (the machine's limit
for this FFT-bound model), their ratio, and the FFT efficiency: the simulator needs
``2 * S`` FFTs of the window per pattern (1 sub-pixel probe shift, 2 per inter-slice
propagation, 1 to the far field), so ``efficiency = patterns/s * 2 S / FFT rate``.
All numbers are medians of ``--repeats`` runs after a warm-up (FFT plans).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ptynb import backend, physics, simulate


def _median_time(fn, repeats, xp):
    fn()  # warm-up: FFT plans, kernel cache
    backend.synchronize(xp)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        backend.synchronize(xp)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--positions", type=int, default=256, help="scan positions per run")
    ap.add_argument("--detector", type=int, default=128, help="detector / window pixels")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=None,
                    help="simulator batch size (default: the simulator's own)")
    args = ap.parse_args(argv)
    xp = backend.get_xp(args.device)
    n = args.detector
    npos = args.positions

    # --- machine limit: batched complex64 n x n FFTs with ptynb.backend.fft2
    # (the best of batches of 64 and 256, so the limit is not understated)
    rng = np.random.default_rng(0)
    fft_rate, b = 0.0, 0
    for batch in (64, 256):
        x = xp.asarray((rng.standard_normal((batch, n, n))
                        + 1j * rng.standard_normal((batch, n, n))).astype(np.complex64))
        rate = batch / _median_time(lambda x=x: backend.fft2(x), args.repeats, xp)
        if rate > fft_rate:
            fft_rate, b = rate, batch

    # --- simulator
    dx = 10e-9
    grid = int(round(np.sqrt(npos)))
    step_px = 8
    margin = n // 2 + step_px
    size = 2 * margin + (grid - 1) * step_px
    obj2 = simulate.smooth_random_object((size, size), seed=0)
    probe = physics.gaussian_probe(n, dx, n * dx / 6)
    sy, sx = physics.raster_scan(grid, grid, step_px * dx, jitter=0.3, seed=0,
                                 origin=(margin * dx, margin * dx))
    rows = []
    for n_slices in (1, 5):
        obj = np.stack([obj2] * n_slices) if n_slices > 1 else obj2

        def run(obj=obj, n_slices=n_slices):
            return simulate.ptychography(
                obj, probe, sy, sx, pixel_size=dx, radiation="xray", energy_eV=8000.0,
                slice_thickness=50e-9 if n_slices > 1 else None, counts_per_pattern=1e6,
                seed=1, progress=False, batch_size=args.batch, device=args.device,
                validate=False)

        t = _median_time(run, args.repeats, xp)
        rate = sy.size / t
        ffts = 2 * n_slices
        rows.append((n_slices, rate, ffts, rate / fft_rate, rate * ffts / fft_rate))

    print(f"ptynb simulator benchmark  ({platform.node()}, {platform.processor() or platform.machine()}, "
          f"{backend.cpu_workers()} CPU workers, device={args.device}, "
          f"FFT backend={backend.fft_backend() if args.device == 'cpu' else 'cupy'})")
    print(f"detector {n}x{n}, 1 probe mode, {sy.size} positions (sub-pixel), Poisson noise, "
          f"median of {args.repeats}")
    print(f"machine FFT rate (batched complex64 {n}x{n}, ptynb.backend.fft2, batch {b}): "
          f"{fft_rate:,.0f} FFTs/s")
    print()
    print(f"{'slices':>6} | {'patterns/s':>12} | {'FFTs/pattern':>12} | {'patterns/FFT':>12} | "
          f"{'FFT efficiency':>14}")
    print("-" * 70)
    for n_slices, rate, ffts, ratio, eff in rows:
        print(f"{n_slices:>6} | {rate:>12,.0f} | {ffts:>12} | {ratio:>12.4f} | {eff:>13.0%}")
    return rows, fft_rate


if __name__ == "__main__":
    main()
