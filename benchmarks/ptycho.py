"""Ptychography benchmark: ptynb throughput vs the machine's FFT bound, and vs four peers.

Run from the repository root (one command runs everything; the first run creates the peer
venvs, several GB and minutes)::

    python benchmarks/ptycho.py              # full run (about an hour on 2 shared cores)
    python benchmarks/ptycho.py --quick      # small sizes, smoke test (minutes)
    python benchmarks/ptycho.py --only xray --only electron --peers ptychi,ptyrad
    python benchmarks/ptycho.py --no-peers   # ptynb and FFT only
    python benchmarks/ptycho.py --gpu        # also time ptynb on the GPU (cupy)

Parts (``--only``, repeatable): ``fft``, ``throughput``, ``xray``, ``electron``, ``abtem``,
``siemens``.

What it measures
----------------
1. FFT rates: batched complex64 2D transforms (batch 32) of 64, 128, 256 px with numpy.fft,
   scipy.fft (workers = number of cores) and a planned pyfftw (FFTW_MEASURE, in place,
   execute only; 1 thread and one thread per core), in FFTs per second, called in turn.
2. ptynb throughput: diffraction patterns processed per second per iteration (median over
   iterations, the first iteration excluded) for engines ePIE and LSQ-ML at 64/128/256 px
   detectors, 1 and 5 slices, 1 and 3 probe modes, next to the FFT-bound rate
   ``best FFTs/s / (2 * slices * modes)`` measured in the same run, and their ratio.
3. Time to quality, three cases, the same data and iteration count for every package and
   the same initial probe (ptynb's :func:`~ptynb.ptycho.initial_probe` from the nominal
   optics) for all but py4DSTEM, which builds its own from the same nominal optics
   (semi-angle, nominal defocus):

   * ``xray``: far field, 400 patterns of 128^2 (``xray_data``), 30 iterations: ptynb LSQ-ML,
     its default chain (``engine=None``), ePIE and ePIE with PtyLab's algorithm (whole-pixel shifts, amplitude constraint);
     PtyLab 0.3 ePIE and mPIE; pty-chi 2.2 LSQ-ML; PtyRAD 1.0 (Adam) at its default learning
     rates and at :data:`PTYRAD_XRAY_LR_SCALE` times them.
   * ``electron``: 4D-STEM of SrTiO3 simulated by ptynb (``electron_data``: 1024 patterns of
     96^2, 7.8 nm thick), reconstructed with 4 slices, 10 iterations: ptynb LSQ-ML, py4DSTEM
     0.14.18 (gradient descent), pty-chi LSQ-ML, PtyRAD.
   * ``abtem``: 4D-STEM of SrTiO3 simulated by abTEM 1.0.11 (``peers/abtem_sim.py``: 400
     patterns of 96^2 (20 x 20 scan, 1.9 A steps), 4.7 nm thick, 300 keV, 21.4 mrad, 100 A
     underfocus, Poisson dose 1e5 e/A^2; cached in ``benchmarks/.cache/``), reconstructed the
     same way; the truth is abTEM's projected potential (phase ``sigma V``).

   Every package runs in its own process (ptynb too, ``peers/ptynb_run.py``, so its peak
   memory is measured the same way), the peers in virtual environments under
   ``benchmarks/.venvs/`` that this script creates (``python -m venv`` + pip): ``ptylab``,
   ``py4dstem`` (numpy < 2), ``abtem``, and one ``torchpeers`` venv shared by pty-chi and PtyRAD
   (their requirements agree: torch >= 2.4 and torchvision; torch 2.14.1 and torchvision
   0.29.1 are installed first and pinned by a constraints file, so the peers cannot change
   them). PtyRAD 1.0.0 needs Python >= 3.12 for one f-string in ``plotting/basic.py``; the venv
   is Python 3.11, so this script rewrites that line in the installed copy (printed when it
   does; :data:`PTYRAD_PATCH`). Runners (``benchmarks/peers/*_run.py``) record the object at up
   to 60 iterations with wall-clock times (start-up and the copies excluded, see
   ``peers/_common.py``); this script scores every snapshot in this process the same way:

   * X-ray: NRMSE of the complex object over the well-illuminated area (illumination
     ``sum_j |P(r - r_j)|^2`` above 25 % of its maximum), after removing a global complex
     factor (phase offset and amplitude scale) and a linear phase ramp, best over integer
     shifts of up to 3 px (grid conventions differ between packages).
   * Electron: Pearson correlation of the summed phase of the slices (each unwrapped first,
     :func:`summed_phase`) with the true total phase (proportional to the projected
     potential) over the scanned area, after removing a fitted plane from the reconstructed
     phase, best over integer shifts of up to 3 px; beside it the final phase slope (the
     fitted gain, 1 for the right magnitude).

   and prints per case, as Markdown: start-up time, s/iteration (median), final quality, time
   to reach the target (the best peer's final quality; "not reached"), quality at equal wall
   time (budget: the fastest peer's time for the common iterations, ``--budget-rule slowest``
   the slowest package's, or ``--budget`` seconds; packages that finished before 80 % of it
   are run again with enough iterations to fill it, at most ``--max-extend`` times the common
   count; the others are read at the budget from their snapshots), and peak memory
   (``VmHWM``, the peak resident set, of each package's process). All packages get ``--threads`` threads (default 1: OpenMP, BLAS, torch,
   ptynb's FFT workers); ``--repeats`` rounds alternate the order.

4. Measured data (``siemens``): Tike's siemens-star-small (516 patterns of 128^2, read by
   ``benchmarks/siemens_star.py`` from ``benchmarks/.cache/``), ptynb and pty-chi LSQ-ML from
   the same initial probe, 30 iterations, scored by that module's misfit measures (R-factor,
   Poisson cost, squared and absolute amplitude misfit) of each final object and probe.

   A peer that cannot be installed or run prints its reason in the table; no number is
   made up. These machines are noisy and shared: compare the ratios measured side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VENVS = HERE / ".venvs"
CACHE = HERE / ".cache"
PEERS = {
    "ptylab": {"spec": ["ptylab>=0.3.7,<0.4"], "module": "PtyLab", "label": "PtyLab",
               "venv": "ptylab"},
    "py4dstem": {"spec": ["py4dstem==0.14.18"], "module": "py4DSTEM", "label": "py4DSTEM",
                 "venv": "py4dstem"},
    # pty-chi and PtyRAD both want torch >= 2.4 and torchvision: one venv, torch pinned first
    "ptychi": {"spec": ["ptychi==2.2.0"], "module": "ptychi", "label": "pty-chi",
               "venv": "torchpeers", "pin": ["torch==2.14.1", "torchvision==0.29.1"]},
    "ptyrad": {"spec": ["ptyrad==1.0.0"], "module": "ptyrad", "label": "PtyRAD",
               "venv": "torchpeers", "pin": ["torch==2.14.1", "torchvision==0.29.1"]},
    # the simulator of the third case (not a reconstruction peer)
    "abtem": {"spec": ["abtem==1.0.11"], "module": "abtem", "label": "abTEM", "venv": "abtem"},
}
#: PtyRAD's learning rates are tuned for electrons (phases of ~0.1 rad per slice); on the X-ray
#: case it also runs with them scaled by this factor (chosen on the --quick X-ray case: x10
#: reached NRMSE 0.089 and x40 0.029 after 20 iterations, default 0.148)
PTYRAD_XRAY_LR_SCALE = 40.0
#: PtyRAD 1.0.0 has one f-string that nests the same quotes (valid from Python 3.12 only); the
#: venv is Python 3.11 (like ptynb), so that line is rewritten in the installed copy
PTYRAD_PATCH = ("ptyrad/plotting/basic.py", "{lr_iters['niter'][-1]}", '{lr_iters["niter"][-1]}')


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ============================================================================ FFT rates
def fft_rates(n: int, batch: int = 32, min_time: float = 0.5) -> dict[str, float]:
    """FFTs per second of batched complex64 (batch, n, n) forward 2D transforms.

    Returns ``{"numpy": r, "scipy": r, "pyfftw1": r, "pyfftw<cores>": r, "pyfftw1-patient": r,
    "single-patient": r}`` (pyfftw planned in place with FFTW_MEASURE, 1 thread and one per
    core; FFTW_PATIENT with 1 thread, batched and one transform at a time; libraries that
    fail are left out).
    Each rate is ``batch / median(time per call)``; the libraries are called in turn (round
    robin) for about ``min_time`` s each, so they share the same machine load.
    """
    from ptynb.backend import cpu_workers

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((batch, n, n)) + 1j * rng.standard_normal((batch, n, n))).astype(np.complex64)
    workers = cpu_workers()
    fns = {}
    fns["numpy"] = lambda: np.fft.fft2(x)
    try:
        import scipy.fft

        fns["scipy"] = lambda: scipy.fft.fft2(x, workers=workers)
    except ImportError:  # pragma: no cover
        pass
    try:
        import pyfftw

        from ptynb.backend import fftw_plan

        for th in sorted({1, workers}):
            a = pyfftw.empty_aligned(x.shape, dtype=np.complex64)
            plan = pyfftw.FFTW(a, a, axes=(-2, -1), flags=("FFTW_MEASURE",), threads=th)
            a[...] = x
            fns[f"pyfftw{th}"] = plan.execute
        # FFTW_PATIENT plans (what ptynb's long sequential runs use; planned once per machine
        # and kept in the wisdom file), batched and for a single transform (batch 1, the
        # sequential engines' case), one thread: multi-threaded patient planning takes minutes
        a = pyfftw.empty_aligned(x.shape, dtype=np.complex64)
        plan_p = fftw_plan(a, a, threads=1, effort="patient")
        a[...] = x
        fns["pyfftw1-patient"] = plan_p.execute
        a1 = pyfftw.empty_aligned(x.shape[1:], dtype=np.complex64)
        plan_1 = fftw_plan(a1, a1, threads=1, effort="patient")
        a1[...] = x[0]
        fns["single-patient"] = lambda: [plan_1.execute() for _ in range(batch)]
    except ImportError:  # pragma: no cover
        pass
    for fn in fns.values():
        fn()  # warm up
    # round-robin, so that every library sees the same (shared, noisy) machine
    times = {name: [] for name in fns}
    t_end = time.perf_counter() + min_time * len(fns)
    while time.perf_counter() < t_end or min(len(v) for v in times.values()) < 5:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    out = {name: batch / float(np.median(v)) for name, v in times.items()}
    return out


def fft_rate_gpu(n: int, batch: int = 32, min_time: float = 0.5) -> float:
    """FFTs per second of batched complex64 (batch, n, n) 2D transforms with cupy (cuFFT)."""
    import cupy

    x = cupy.ones((batch, n, n), dtype=cupy.complex64)
    cupy.fft.fft2(x)
    cupy.cuda.Device().synchronize()
    times = []
    t_end = time.perf_counter() + min_time
    while time.perf_counter() < t_end or len(times) < 5:
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        cupy.fft.fft2(x)
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) * 1e-3)
    return batch / float(np.median(times))


# ============================================================================ data
def xray_data(n_det=128, grid=20, seed=0, counts=1e6, noise="poisson"):
    """X-ray far-field ptychography: zone-plate probe, jittered raster (~70 % overlap).

    8 keV, Fresnel zone plate D = 74.9 um, dr = 60 nm, 25 um central stop, defocused so the
    probe spans about 40 % of the 30 nm x n_det window; ``grid x grid`` raster, step 30 % of
    the probe diameter with 20 % jitter; smooth random object (phase -0.6..0.4 rad, amplitude
    0.85..1); ``counts`` incident photons per pattern with Poisson noise; detector at 5 m.
    """
    from ptynb.physics.probes import zone_plate_probe
    from ptynb.physics.scan import raster_scan
    from ptynb.simulate import ptychography, smooth_random_object

    dx = 30e-9
    defocus = 0.3e-3 * n_det / 64
    probe = zone_plate_probe(n_det, dx, 8000.0, diameter=74.9e-6, outer_zone_width=60e-9,
                             central_stop_diameter=25e-6, defocus=defocus, check_window=False)
    lam = float(probe.attrs.get("wavelength", 1.5498e-10))
    na = lam / (2 * 60e-9)
    diameter_px = 2 * na * defocus / dx
    step_px = max(2, int(round(0.3 * diameter_px)))
    margin = n_det // 2 + step_px
    size = 2 * margin + (grid - 1) * step_px
    obj = smooth_random_object((size, size), seed=seed, correlation=3.0,
                               phase_range=(-0.6, 0.4), amplitude_range=(0.85, 1.0))
    sy, sx = raster_scan(grid, grid, step_px * dx, jitter=0.2, seed=seed,
                         origin=(margin * dx, margin * dx))
    ds = ptychography(obj, probe, sy, sx, pixel_size=dx, radiation="xray", energy_eV=8000.0,
                      detector_distance=5.0, counts_per_pattern=counts, noise=noise, seed=seed,
                      progress=False)
    ds.attrs["benchmark_case"] = (f"xray {grid * grid} patterns {n_det}x{n_det}, step "
                                  f"{step_px} px, probe ~{diameter_px:.0f} px")
    return ds


def electron_data(n_det=96, grid=32, seed=0, n_sim_slices=20, dose_e_per_A2=1e5,
                  cells_thick=20):
    """4D-STEM of a SrTiO3-like [001] crystal, 300 keV, 21.4 mrad, 10 nm underfocus.

    Cubic perovskite a = 3.905 A, ``cells_thick`` unit cells thick (20 cells = 7.8 nm),
    lateral extent covering the scan (about 7.8 nm for a 32 x 32 scan); 20 pm pixels,
    ``grid x grid`` raster with 1.9 A steps. Simulated with one slice per unit cell
    (``n_sim_slices``), reconstructed with fewer; Poisson noise at ``dose_e_per_A2``.
    """
    from ptynb.physics.atoms import projected_potential
    from ptynb.physics.multislice import electron_transmission
    from ptynb.physics.probes import electron_probe
    from ptynb.physics.scan import raster_scan
    from ptynb.simulate import ptychography

    dx = 20e-12
    a = 3.905e-10
    energy = 300e3
    semi = 21.4e-3
    defocus = 100e-10
    step = 1.9e-10
    step_px = step / dx
    margin = n_det // 2 + 4
    size = int(np.ceil(2 * margin + (grid - 1) * step_px))
    ext = size * dx
    nc = int(np.ceil(ext / a)) + 1
    basis = [("Sr", (0, 0, 0)), ("Ti", (0.5, 0.5, 0.5)), ("O", (0.5, 0.5, 0)),
             ("O", (0.5, 0, 0.5)), ("O", (0, 0.5, 0.5))]
    pos, num = [], []
    ii, jj, kk = np.meshgrid(np.arange(nc), np.arange(nc), np.arange(cells_thick), indexing="ij")
    cells = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], 1).astype(float)
    for el, f in basis:
        p = (cells + np.asarray(f)) * a
        pos.append(p)
        num += [el] * len(p)
    pos = np.concatenate(pos)
    pos[:, :2] -= 0.25 * a  # columns off the pixel grid edges
    thick = cells_thick * a
    dz = thick / n_sim_slices
    v = projected_potential(pos, num, (size, size), dx, slice_thickness=dz, n_slices=n_sim_slices,
                            z_origin=0.0, origin=(0.0, 0.0), periodic=False)
    obj = electron_transmission(np.asarray(v), energy)
    probe = electron_probe(n_det, dx, energy, semi, defocus=defocus)
    sy, sx = raster_scan(grid, grid, step, origin=(margin * dx, margin * dx))
    ds = ptychography(obj, probe, sy, sx, pixel_size=dx, radiation="electron", energy_eV=energy,
                      slice_thickness=dz, dose=dose_e_per_A2 * 1e20, noise="poisson", seed=seed,
                      progress=False, convergence_semiangle=semi, defocus=defocus)
    ds.attrs["benchmark_case"] = (f"electron {grid * grid} patterns {n_det}x{n_det}, "
                                  f"{thick * 1e9:.1f} nm thick, {ext * 1e9:.1f} nm wide")
    return ds


# ============================================================================ metrics
def _truth(ds):
    t = ds["true_object"]
    return (np.asarray(t.values), float(t["y"].values[0]), float(t["x"].values[0]))


def illumination_mask(ds, frac=0.25):
    """Well-illuminated area on the truth grid: sum of |true probe|^2 over positions."""
    obj, y0, x0 = _truth(ds)
    dx = float(ds.attrs["pixel_size"])
    p = np.asarray(ds["true_probe"].values)
    p2 = (np.abs(p) ** 2).sum(0) if p.ndim == 3 else np.abs(p) ** 2
    n = p2.shape[-1]
    ill = np.zeros(obj.shape[-2:], np.float64)
    cy = np.rint((ds["scan_y"].values - y0) / dx).astype(int) - n // 2
    cx = np.rint((ds["scan_x"].values - x0) / dx).astype(int) - n // 2
    for y, x in zip(cy, cx):
        ys, xs = max(y, 0), max(x, 0)
        ye, xe = min(y + n, ill.shape[0]), min(x + n, ill.shape[1])
        ill[ys:ye, xs:xe] += p2[ys - y:ye - y, xs - x:xe - x]
    return ill > frac * ill.max()


def scanned_mask(ds, pad_px=0):
    """Area spanned by the probe centres (plus ``pad_px``) on the truth grid."""
    obj, y0, x0 = _truth(ds)
    dx = float(ds.attrs["pixel_size"])
    yy = (ds["scan_y"].values - y0) / dx
    xx = (ds["scan_x"].values - x0) / dx
    m = np.zeros(obj.shape[-2:], bool)
    m[int(np.floor(yy.min())) - pad_px:int(np.ceil(yy.max())) + pad_px + 1,
      int(np.floor(xx.min())) - pad_px:int(np.ceil(xx.max())) + pad_px + 1] = True
    return m


def _place(recon, offset, shape, fill=np.nan):
    """Put ``recon`` (2D) onto a grid of ``shape`` with recon pixel (0,0) at truth ``offset``."""
    out = np.full(shape, fill, dtype=recon.dtype if np.iscomplexobj(recon) else np.float64)
    if np.iscomplexobj(recon):
        out = np.full(shape, np.nan + 0j, dtype=np.complex128)
    oy, ox = offset
    ys, xs = max(oy, 0), max(ox, 0)
    ye, xe = min(oy + recon.shape[0], shape[0]), min(ox + recon.shape[1], shape[1])
    if ye > ys and xe > xs:
        out[ys:ye, xs:xe] = recon[ys - oy:ye - oy, xs - ox:xe - ox]
    return out


def complex_nrmse(recon, truth, mask):
    """NRMSE of ``recon`` vs ``truth`` over ``mask`` after removing a global complex factor
    and a linear phase ramp: ``||g r e^{i(ay+bx)} - t|| / ||t||``."""
    m = mask & np.isfinite(recon)
    if m.sum() < 10:
        return np.inf
    c = np.where(m, truth * np.conj(np.nan_to_num(recon)), 0)
    my = m[1:, :] & m[:-1, :]
    mx = m[:, 1:] & m[:, :-1]
    gy = np.angle(np.sum(np.where(my, c[1:, :] * np.conj(c[:-1, :]), 0)))
    gx = np.angle(np.sum(np.where(mx, c[:, 1:] * np.conj(c[:, :-1]), 0)))
    yy, xx = np.mgrid[: truth.shape[0], : truth.shape[1]]
    r = np.nan_to_num(recon) * np.exp(1j * (gy * yy + gx * xx))
    rm, tm = r[m], truth[m]
    g = np.vdot(rm, tm) / max(np.vdot(rm, rm).real, 1e-30)
    return float(np.linalg.norm(g * rm - tm) / np.linalg.norm(tm))


def phase_pcc(phase, truth_phase, mask):
    """Pearson correlation over ``mask`` after removing a least-squares plane from ``phase``."""
    m = mask & np.isfinite(phase)
    if m.sum() < 10:
        return -np.inf
    yy, xx = np.nonzero(m)
    A = np.stack([np.ones_like(yy), yy, xx], 1).astype(float)
    coef, *_ = np.linalg.lstsq(A, phase[m], rcond=None)
    p = phase[m] - A @ coef
    t = truth_phase[m]
    p = p - p.mean()
    t = t - t.mean()
    return float(np.dot(p, t) / np.sqrt(np.dot(p, p) * np.dot(t, t)))


def best_over_shifts(fn, recon, offset, shape, max_shift=3, maximize=False):
    best = None
    for dy in range(-max_shift, max_shift + 1):
        for dx_ in range(-max_shift, max_shift + 1):
            v = fn(_place(recon, (offset[0] + dy, offset[1] + dx_), shape))
            if best is None or (v > best if maximize else v < best):
                best = v
    return best


def xray_error(ds, recon2d, offset):
    """NRMSE of a 2D complex reconstruction placed at truth pixel ``offset``."""
    truth, _, _ = _truth(ds)
    t = truth[0] if truth.ndim == 3 else truth
    mask = illumination_mask(ds)
    return best_over_shifts(lambda r: complex_nrmse(r, t, mask), recon2d, offset, t.shape)


def summed_phase(slices):
    """Total phase (rad) of a reconstruction (S, H, W) or (H, W): every slice's phase,
    relative to its mean transmission and unwrapped (``skimage.restoration.unwrap_phase``),
    summed over the slices. A thick crystal's slices pass pi (the true total reaches 16 rad
    in the ptynb electron case), and summing wrapped phases scored them too low."""
    from skimage.restoration import unwrap_phase

    o = np.asarray(slices)
    o = o[None] if o.ndim == 2 else o
    return sum(unwrap_phase(np.angle(np.nan_to_num(s_) * np.conj(np.nanmean(s_)))) for s_ in o)


def true_total_phase(ds):
    """The truth's total phase (rad): its slices' phases summed (each slice is thin)."""
    truth, _, _ = _truth(ds)
    return np.angle(truth).sum(0) if truth.ndim == 3 else np.angle(truth)


def phase_slope(phase, truth_phase, mask):
    """Least-squares gain of ``phase`` against ``truth_phase`` over ``mask`` (a plane fitted
    jointly): 1 when the phase magnitude is right."""
    m = mask & np.isfinite(phase)
    if m.sum() < 10:
        return np.nan
    yy, xx = np.nonzero(m)
    A = np.stack([np.ones_like(yy), yy, xx, truth_phase[m]], 1).astype(float)
    coef, *_ = np.linalg.lstsq(A, phase[m], rcond=None)
    return float(coef[3])


def electron_pcc(ds, recon_slices, offset):
    """PCC of the summed (unwrapped) slice phases with the true total phase, scanned area."""
    tphase = true_total_phase(ds)
    mask = scanned_mask(ds)
    return best_over_shifts(lambda r: phase_pcc(r, tphase, mask), summed_phase(recon_slices),
                            offset, tphase.shape, maximize=True)


def electron_slope(ds, recon_slices, offset):
    """Phase gain (:func:`phase_slope`) of the summed unwrapped phase at the integer shift
    (up to 3 px) of best PCC."""
    tphase = true_total_phase(ds)
    mask = scanned_mask(ds)
    ph = summed_phase(recon_slices)
    best = None
    for dy in range(-3, 4):
        for dx_ in range(-3, 4):
            off = (offset[0] + dy, offset[1] + dx_)
            v = phase_pcc(_place(ph, off, tphase.shape), tphase, mask)
            if best is None or v > best[0]:
                best = (v, off)
    return phase_slope(_place(ph, best[1], tphase.shape), tphase, mask)


def ptynb_offset(ds, rec):
    """Truth-grid pixel of reconstruction pixel (0, 0) (from the y/x coordinates, metres)."""
    _, y0, x0 = _truth(ds)
    dx = float(ds.attrs["pixel_size"])
    return (int(round((float(rec["y"].values[0]) - y0) / dx)),
            int(round((float(rec["x"].values[0]) - x0) / dx)))


# ============================================================================ ptynb timing
def time_ptynb(ds, engine, iterations, *, slices=1, modes=1, slice_thickness=None,
               device=None, probe=None, batch_size=None, **kw):
    """Run ptynb.ptycho.reconstruct; return (result, per-iteration seconds (median of
    iterations 2..), total seconds)."""
    from ptynb import backend
    from ptynb.ptycho import reconstruct

    stamps = []

    def cb(it, info):
        if device == "gpu":
            backend.synchronize(backend.get_xp("gpu"))
        stamps.append(time.perf_counter())

    meas = ds.drop_vars([v for v in ("true_object", "true_probe") if v in ds])
    t0 = time.perf_counter()
    rec = reconstruct(meas, engine=engine, iterations=iterations, slices=slices, modes=modes,
                      slice_thickness=slice_thickness, device=device, probe=probe,
                      batch_size=batch_size, progress=False, callback=cb, **kw)
    total = time.perf_counter() - t0
    d = np.diff(stamps)
    per = float(np.median(d)) if len(d) else total / max(iterations, 1)
    return rec, per, total


# ============================================================================ peers
def _patch_ptyrad(venv: Path) -> str:
    """Apply :data:`PTYRAD_PATCH` to the installed PtyRAD (idempotent); return what was done."""
    rel, old, new = PTYRAD_PATCH
    hits = list(venv.glob(f"lib/python*/site-packages/{rel}"))
    if not hits:
        return "PtyRAD not installed"
    text = hits[0].read_text()
    if old not in text:
        return "patch not needed" if new in text else "patch target not found"
    hits[0].write_text(text.replace(old, new))
    log(f"[peers] patched {hits[0]}: {old} -> {new} (Python 3.11 f-string)")
    return "patched"


def peer_python(name: str, install: bool = True) -> tuple[Path | None, str]:
    """The venv python of peer ``name``, creating the venv and pip-installing if needed.

    Returns (python path or None, message).
    """
    info = PEERS[name]
    venv = VENVS / info["venv"]
    py = venv / "bin" / "python"
    check = [str(py), "-c", f"import {info['module']}, numpy; print({info['module']}.__name__)"]
    if name == "ptyrad" and py.exists():
        _patch_ptyrad(venv)
    CACHE.mkdir(parents=True, exist_ok=True)  # the checks run there (not next to the venvs)
    if py.exists():
        r = subprocess.run(check, capture_output=True, text=True, cwd=str(CACHE))
        if r.returncode == 0:
            return py, "ok"
    if not install:
        return None, "venv missing"
    VENVS.mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    if not py.exists():
        log(f"[peers] creating {venv} (minutes)...")
        r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True,
                           text=True)
        if r.returncode:
            return None, f"venv failed: {r.stderr.strip()[-200:]}"
    pip = [str(py), "-m", "pip", "install", "-q"]
    if info.get("pin"):
        log(f"[peers] installing {info['pin']} into {venv} (minutes)...")
        r = subprocess.run(pip + info["pin"], capture_output=True, text=True)
        if r.returncode:
            return None, f"pip install {info['pin']} failed: {r.stderr.strip().splitlines()[-1:]}"
        pins = venv / "pins.txt"
        pins.write_text("\n".join(info["pin"]) + "\n")
        pip += ["-c", str(pins)]  # the peer must not up- or downgrade torch
    log(f"[peers] installing {info['spec']} into {venv} (minutes)...")
    r = subprocess.run(pip + info["spec"], capture_output=True, text=True)
    if r.returncode:
        return None, f"pip install {info['spec']} failed: {r.stderr.strip().splitlines()[-1:]}"
    if name == "ptyrad":
        _patch_ptyrad(venv)
    r = subprocess.run(check, capture_output=True, text=True, cwd=str(CACHE))
    if r.returncode:
        return None, f"import failed: {r.stderr.strip().splitlines()[-1:]}"
    return py, "ok"


def peer_version(py: Path, module: str) -> str:
    r = subprocess.run([str(py), "-c", f"import importlib.metadata as m; print(m.version('{module}'))"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "?"


def write_ptylab_input(ds, path, probe0):
    """PtyLab CPM HDF5: ptychogram, encoder (m, row/col, relative to a centre), geometry."""
    import h5py

    truth, y0, x0 = _truth(ds)
    dx = float(ds.attrs["pixel_size"])
    sy, sx = ds["scan_y"].values, ds["scan_x"].values
    ky = int(round((sy.mean() - y0) / dx))
    kx = int(round((sx.mean() - x0) / dx))
    cy, cx = y0 + ky * dx, x0 + kx * dx
    n = ds.sizes["qy"]
    lam = float(ds.attrs["wavelength"])
    zo = float(ds.attrs["detector_distance"])
    dxd = float(ds.attrs["detector_pixel_size"])
    if not np.isclose(lam * zo / (n * dxd), dx, rtol=1e-6):
        raise ValueError("geometry: lambda z / (N dxd) differs from pixel_size")
    with h5py.File(path, "w") as f:
        f["ptychogram"] = np.asarray(ds["intensity"].values, np.float32)
        f["encoder"] = np.stack([sy - cy, sx - cx], 1)
        f["wavelength"] = lam
        f["dxd"] = dxd
        f["zo"] = zo
        f["entrancePupilDiameter"] = n * dx / 3
        f["initial_probe"] = np.asarray(probe0, np.complex64).reshape(n, n)
    return (ky, kx)


def ptylab_offset(centre_px, No):
    """Truth-grid pixel of PtyLab object pixel (0, 0): pixel p sits at centre + p - No//2."""
    return (centre_px[0] - No // 2, centre_px[1] - No // 2)


def write_py4dstem_input(ds, path, grid, n_slices, slice_thickness):
    """py4DSTEM runner input (format in ``benchmarks/peers/py4dstem_run.py``). The defocus is
    the *nominal* one (``nominal_defocus``), what ptynb's initial probe, and so pty-chi's and
    PtyRAD's, is built from."""
    dx = float(ds.attrs["pixel_size"])
    lam = float(ds.attrs["wavelength"])
    n = ds.sizes["qy"]
    inten = np.asarray(ds["intensity"].values, np.float32).reshape(grid, grid, n, n)
    pos = np.stack([ds["scan_y"].values, ds["scan_x"].values], 1) * 1e10
    df = float(ds.attrs.get("nominal_defocus", ds.attrs["defocus"]))
    np.savez(path, intensity=inten, positions_A=pos, energy_eV=float(ds.attrs["energy_eV"]),
             angular_sampling_mrad=lam / (n * dx) * 1e3,
             semiangle_mrad=float(ds.attrs["convergence_semiangle"]) * 1e3,
             defocus_A=df * 1e10, num_slices=n_slices,
             slice_thickness_A=float(slice_thickness) * 1e10)


def write_peer_input(ds, path, probe0, n_slices=1, slice_thickness=None, grid=None):
    """The common peer input ``.npz`` (format: ``benchmarks/peers/_common.py``)."""
    truth, y0, x0 = _truth(ds)
    dx = float(ds.attrs["pixel_size"])
    pos = np.stack([(ds["scan_y"].values - y0) / dx, (ds["scan_x"].values - x0) / dx], 1)
    n = ds.sizes["qy"]
    probe0 = np.asarray(probe0, np.complex64).reshape(-1, n, n)
    elec = ds.attrs.get("radiation") == "electron"
    g = grid or int(round(np.sqrt(ds.sizes["scan"])))
    np.savez(path, intensity=np.asarray(ds["intensity"].values, np.float32), pos_px=pos,
             object_shape=np.asarray(truth.shape[-2:]), truth_origin_m=np.asarray([y0, x0]),
             probe=probe0, pixel_size_m=dx,
             wavelength_m=float(ds.attrs["wavelength"]), energy_eV=float(ds.attrs["energy_eV"]),
             n_slices=int(n_slices), slice_thickness_m=float(slice_thickness or 0.0),
             radiation=str(ds.attrs.get("radiation", "xray")), grid=np.asarray([g, g]),
             semiangle_rad=float(ds.attrs["convergence_semiangle"]) if elec else np.nan,
             defocus_m=float(ds.attrs["defocus"]) if elec else np.nan)


# ============================================================================ main parts
def throughput_table(args, rates_by_n):
    from ptynb.simulate import smooth_random_object  # noqa: F401  (fail early if missing)

    sizes = (64, 128) if args.quick else (64, 128, 256)
    n_pat = 36 if args.quick else 100
    iters = 3 if args.quick else 4
    rows = []
    devices = ["cpu"] + (["gpu"] if args.gpu else [])
    for n in sizes:
        grid = int(round(np.sqrt(n_pat)))
        ds = xray_data(n_det=n, grid=grid, seed=1)
        for dev in devices:
            best_fft = (max(rates_by_n[n].values()) if dev == "cpu"
                        else rates_by_n.get(f"gpu{n}", {}).get("cupy", float("nan")))
            for slices in (1, 5):
                for modes in (1, 3):
                    for engine in ("epie", "lsqml"):
                        try:
                            rec, per, total = time_ptynb(
                                ds, engine, iters, slices=slices, modes=modes,
                                slice_thickness=2e-6 if slices > 1 else None,
                                device=dev)
                            rate = ds.sizes["scan"] / per
                            err = ""
                        except Exception as e:  # keep going, print the reason
                            rate, err = float("nan"), f"{type(e).__name__}: {e}"[:80]
                        bound = best_fft / (2 * slices * modes)
                        rows.append(dict(device=dev, n=n, slices=slices, modes=modes,
                                         engine=engine, rate=rate, bound=bound,
                                         ratio=bound / rate if np.isfinite(rate) else float("nan"),
                                         err=err))
                        log(f"[ptynb] {dev} {n}px S={slices} M={modes} {engine}: "
                            f"{rate:.1f} patterns/s (bound {bound:.0f}) {err}")
    return rows


def _runner_env(threads: int) -> dict:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    if threads:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                  "NUMEXPR_NUM_THREADS", "PTYNB_FFT_WORKERS"):
            env[k] = str(threads)
    return env


def run_runner(entry: dict, args) -> dict:
    """Run one package's runner in its own process; return its output record or a note.

    ``entry``: ``label`` (package), ``engine``, ``python`` (interpreter), ``script`` (in
    ``benchmarks/peers/``), ``argv``, ``out`` (.npz it writes) and ``offset`` (a function of the
    loaded output giving the truth-grid pixel of reconstruction pixel (0, 0)).
    """
    out = Path(entry["out"])
    if out.exists():
        out.unlink()
    cmd = [str(entry["python"]), str(HERE / "peers" / entry["script"]), *map(str, entry["argv"])]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.peer_timeout,
                           env=_runner_env(args.threads), cwd=str(CACHE))
    except subprocess.TimeoutExpired:
        return dict(note=f"timed out after {args.peer_timeout} s")
    wall = time.perf_counter() - t0
    if r.returncode or not out.exists():
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        return dict(note="failed: " + " | ".join(tail)[-300:])
    d = dict(np.load(out))
    d["offset"] = entry["offset"](d)
    d["wall"] = wall
    log(f"[{entry['case']}] {entry['label']} {entry['engine']}: {wall:.1f} s wall, "
        f"{r.stdout.strip().splitlines()[-1:]}")
    return d


def score_series(ds, kind, snapshots, offset):
    """Quality of every snapshot (K, S, H, W): X-ray NRMSE (slice 0) or electron phase PCC.

    The registration (integer shift, up to 3 px) is searched on the last snapshot; the others
    are scored within 1 px of it. An electron snapshot whose phase has no contrast at all
    (PCC 0 / 0, e.g. after a first iteration that only rescales the probe) scores 0.
    """
    truth, _, _ = _truth(ds)
    if kind == "xray":
        t = truth[0] if truth.ndim == 3 else truth
        mask = illumination_mask(ds)

        def fn(o, off):
            return complex_nrmse(_place(o[0], off, t.shape), t, mask)
        maximize = False
    else:
        tphase = true_total_phase(ds)
        mask = scanned_mask(ds)
        snapshots = [summed_phase(o) for o in snapshots]  # unwrapped once per snapshot

        def fn(ph, off):
            return phase_pcc(_place(ph, off, tphase.shape), tphase, mask)
        maximize = True

    def best(o, centre, radius):
        vals = {}
        for dy in range(-radius, radius + 1):
            for dx_ in range(-radius, radius + 1):
                off = (centre[0] + dy, centre[1] + dx_)
                vals[off] = fn(o, off)
        k = (max if maximize else min)(vals, key=vals.get)
        return k, vals[k]

    off, last = best(snapshots[-1], tuple(offset), 3)
    out = [best(o, off, 1)[1] for o in snapshots[:-1]] + [last]
    if kind != "xray":  # a phase without any contrast (PCC 0/0) correlates with nothing
        out = [v if np.isfinite(v) else 0.0 for v in out]
    return out


def _better(a, b, kind):
    return a <= b if kind == "xray" else a >= b


def _series(ds, kind, recs):
    out = []
    for r in recs:
        q = score_series(ds, kind, r["snapshots"], r["offset"])
        out.append((np.asarray(r["snap_times"], float), np.asarray(r["snap_iters"]),
                    np.asarray(q, float)))
    return out


def summarise(ds, kind, results, budget):
    """Per-package row: set-up, s/it, final quality, time to the target, quality at the budget.

    ``results``: list of (entry, [record per round], [extended records]). The final quality,
    s/iteration and start-up come from the rounds of the common iteration count; time to the
    target and quality at the budget from the extended runs where there are any (packages
    that finished early, run on until the budget), else from the rounds. Target = best final
    quality of the packages other than ptynb (all packages when there is no peer).
    """
    rows = []
    for entry, recs, ext in results:
        ok = [r for r in recs if "snapshots" in r]
        row = dict(package=entry["label"], engine=entry["engine"])
        if not ok:
            row["note"] = recs[0].get("note", "no result") if recs else "not run"
            rows.append(row)
            continue
        series = _series(ds, kind, ok)
        ext_ok = [r for r in ext if "snapshots" in r]
        its = [np.asarray(r["iteration_times"], float) for r in ok]
        row.update(series=series, ext_series=_series(ds, kind, ext_ok) if ext_ok else None,
                   per_iter=float(np.median(np.concatenate([t[1:] if t.size > 1 else t for t in its]))),
                   setup=float(np.median([float(r["setup_time"]) for r in ok])),
                   final=float(series[0][2][-1]),
                   finish=float(np.median([s_[0][-1] for s_ in series])),
                   iterations=int(series[0][1][-1]),
                   peak_mb=float(max(float(r["maxrss_mb"]) for r in ok + ext_ok)),
                   slope=(electron_slope(ds, ok[0]["snapshots"][-1], ok[0]["offset"])
                          if kind != "xray" else None),
                   version=str(ok[0].get("version", "")), note=str(ok[0].get("note", "")))
        if ext and not ext_ok:
            row["note"] += f"; extended run: {ext[0].get('note', 'failed')}"
        rows.append(row)
    done = [r for r in rows if "final" in r]
    if not done:
        return rows, None
    peers = [r for r in done if r["package"] != "ptynb"] or done
    target = (min if kind == "xray" else max)(r["final"] for r in peers)
    for r in done:
        hits, at_budget, n_at = [], [], []
        for t, it, q in (r["ext_series"] or r["series"]):
            reach = [tt for tt, qq in zip(t, q) if _better(qq, target, kind)]
            hits.append(reach[0] if reach else np.inf)
            sel = t <= budget * (1 + 1e-9)
            at_budget.append(q[sel][-1] if sel.any() else np.nan)
            n_at.append(int(it[sel][-1]) if sel.any() else 0)
        r["to_target"] = float(np.median(hits))
        r["at_budget"] = float(np.median(at_budget))
        r["iters_at_budget"] = int(np.median(n_at))
        r.pop("series")
        r.pop("ext_series")
    return rows, target


def _offset_fixed(d):
    return tuple(int(v) for v in d["offset"])


def case_entries(args, case, ds, inp, meas_pkl, iters, kind, peers, n_slices, slice_thickness,
                 probe0, grid):
    """The runs of one case: ptynb variants first, then the peers (those installed)."""
    entries = []
    sysy = sys.executable
    ptynb_variants = [("lsqml", "LSQ-ML", [])]
    if kind == "xray":
        ptynb_variants += [("default", "default chain (engine=None)", []),
                           ("epie", "ePIE", []),
                           ("epie", "ePIE whole-pixel, gaussian (PtyLab's algorithm)",
                            ["--kw", "subpixel=round", "--kw", "noise=gaussian"])]
    for engine, label, extra in ptynb_variants:
        out = CACHE / f"{case}_ptynb_{len(entries)}.npz"
        entries.append(dict(case=case, label="ptynb", engine=label + (" multislice" if n_slices > 1 else ""),
                            python=sysy, script="ptynb_run.py", out=out, offset=_offset_fixed,
                            argv=[inp, meas_pkl, out, "--engine", engine, "--iterations", iters,
                                  "--threads", args.threads, *extra]))
    notes = []
    for name in peers:
        if name == "ptylab" and kind != "xray":
            continue
        if name == "py4dstem" and kind == "xray":
            continue
        py, msg = peer_python(name, install=not args.no_install)
        if py is None:
            notes.append(dict(package=PEERS[name]["label"], engine="", note=msg))
            continue
        if name == "ptylab":
            h5 = CACHE / f"{case}_ptylab.h5"
            centre = write_ptylab_input(ds, h5, probe0)

            def off_ptylab(d, centre=centre):
                if not np.isclose(float(d["dxo"]), float(ds.attrs["pixel_size"]), rtol=1e-6):
                    raise ValueError(f"PtyLab object pixel {float(d['dxo'])} != {ds.attrs['pixel_size']}")
                return ptylab_offset(centre, int(d["No"]))
            for eng in ("ePIE", "mPIE"):
                out = CACHE / f"{case}_ptylab_{eng}.npz"
                entries.append(dict(case=case, label="PtyLab", engine=eng, python=py,
                                    script="ptylab_run.py", out=out, offset=off_ptylab,
                                    argv=[h5, out, "--engine", eng, "--iterations", iters]))
        elif name == "py4dstem":
            data = CACHE / f"{case}_py4dstem_in.npz"
            write_py4dstem_input(ds, data, grid, n_slices, slice_thickness)

            def off_py4(d):
                dx = float(ds.attrs["pixel_size"])
                samp = np.asarray(d["sampling_A"]) * 1e-10
                if not np.allclose(samp, dx, rtol=1e-4):
                    raise ValueError(f"py4DSTEM sampling {samp} m != pixel_size {dx}")
                _, y0, x0 = _truth(ds)
                tp = np.stack([(ds["scan_y"].values - y0) / dx, (ds["scan_x"].values - x0) / dx], 1)
                off = np.rint(np.median(tp - np.asarray(d["positions_px"]), axis=0)).astype(int)
                return (int(off[0]), int(off[1]))
            out = CACHE / f"{case}_py4dstem.npz"
            entries.append(dict(case=case, label="py4DSTEM",
                                engine="multislice gradient descent" if n_slices > 1 else "gradient descent",
                                python=py, script="py4dstem_run.py", out=out, offset=off_py4,
                                argv=[data, out, "--iterations", iters]))
        elif name == "ptychi":
            out = CACHE / f"{case}_ptychi.npz"
            entries.append(dict(case=case, label="pty-chi", engine="LSQ-ML" + (" multislice" if n_slices > 1 else ""),
                                python=py, script="ptychi_run.py", out=out, offset=_offset_fixed,
                                argv=[inp, out, "--iterations", iters, "--threads", args.threads]))
        elif name == "ptyrad":
            scales = [1.0] + ([PTYRAD_XRAY_LR_SCALE] if kind == "xray" else [])
            for sc in scales:
                out = CACHE / f"{case}_ptyrad_{sc:g}.npz"
                entries.append(dict(case=case, label="PtyRAD",
                                    engine=f"AD/Adam{' multislice' if n_slices > 1 else ''}, lr "
                                           f"{'default' if sc == 1 else f'default x{sc:g}'}",
                                    python=py, script="ptyrad_run.py", out=out, offset=_offset_fixed,
                                    argv=[inp, out, "--iterations", iters, "--threads", args.threads,
                                          "--lr-scale", sc]))
    return entries, notes


def run_case(args, case, ds, kind, iters, n_slices=1, slice_thickness=None, grid=None):
    """Simulated (or loaded) data -> every package, alternating order over ``--repeats`` rounds.

    Returns dict(case=..., iterations=..., rows=[...], target=..., budget=...).
    """
    import pickle

    from ptynb.ptycho import initial_probe

    CACHE.mkdir(parents=True, exist_ok=True)
    n = ds.sizes["qy"]
    grid = grid or int(round(np.sqrt(ds.sizes["scan"])))
    meas = ds.drop_vars([v for v in ("true_object", "true_probe") if v in ds])
    probe0 = initial_probe(meas, n, 1)
    inp = CACHE / f"{case}_in.npz"
    write_peer_input(ds, inp, probe0, n_slices, slice_thickness, grid)
    meas_pkl = CACHE / f"{case}_meas.pkl"
    with open(meas_pkl, "wb") as f:
        pickle.dump(meas, f)
    peers = [] if args.no_peers else [p for p in args.peers if p in ALL_PEERS]
    entries, notes = case_entries(args, case, ds, inp, meas_pkl, iters, kind, peers, n_slices,
                                  slice_thickness, probe0, grid)
    recs = {i: [] for i in range(len(entries))}
    for rnd in range(max(1, args.repeats)):
        order = list(range(len(entries)))
        if rnd % 2 == 1:
            order = order[::-1]
        for i in order:
            recs[i].append(_run_safe(entries[i], args))
    # equal wall time: the budget is the fastest peer's (or, --budget-rule slowest, the slowest
    # package's) time for the common iterations, or --budget; packages that finished well
    # before it run again with more iterations
    finish, per = {}, {}
    for i, rr in recs.items():
        ok = [r for r in rr if "snap_times" in r]
        if ok:
            finish[i] = float(np.median([r["snap_times"][-1] for r in ok]))
            its = np.concatenate([np.asarray(r["iteration_times"])[1:] for r in ok])
            per[i] = float(np.median(its)) if its.size else finish[i] / iters
    budget = args.budget
    if budget is None and finish:
        peer_finish = [f for i, f in finish.items() if entries[i]["label"] != "ptynb"]
        if args.budget_rule == "slowest" or not peer_finish:
            budget = max(finish.values())
        else:
            budget = min(peer_finish)
    ext = {i: [] for i in recs}
    if budget and not args.no_equal_time:
        for i in finish:
            if finish[i] < 0.8 * budget and per[i] > 0:
                n_ext = min(int(np.ceil(1.05 * budget / per[i])) + 1, args.max_extend * iters)
                if n_ext > iters:
                    e = dict(entries[i])
                    e["out"] = Path(str(e["out"]).replace(".npz", "_ext.npz"))
                    argv = [str(v) for v in e["argv"]]
                    argv[argv.index("--iterations") + 1] = str(n_ext)
                    argv = [e["out"] if v == str(entries[i]["out"]) else v for v in argv]
                    e["argv"], e["engine"] = argv, e["engine"] + f" ({n_ext} it)"
                    ext[i].append(_run_safe(e, args))
    rows, target = summarise(ds, kind, [(entries[i], recs[i], ext[i]) for i in recs],
                             budget=budget or np.inf)
    return dict(case=ds.attrs.get("benchmark_case", case), kind=kind, iterations=iters,
                slices=n_slices, rows=rows + notes, target=target, budget=budget,
                repeats=max(1, args.repeats), equal_time=not args.no_equal_time)


def _run_safe(entry, args):
    try:
        return run_runner(entry, args)
    except Exception as e:  # a runner's output that cannot be read: say why
        return dict(note=f"{type(e).__name__}: {e}"[:200])


def xray_peer_case(args):
    n_det = 64 if args.quick else 128
    grid = 8 if args.quick else 20
    iters = args.iterations or (10 if args.quick else 30)
    ds = xray_data(n_det=n_det, grid=grid, seed=0)
    return run_case(args, "xray", ds, "xray", iters, grid=grid)


def electron_peer_case(args):
    n_det = 64 if args.quick else 96
    grid = 12 if args.quick else 32
    n_slices = 4
    iters = args.electron_iterations or (3 if args.quick else 10)
    ds = electron_data(n_det=n_det, grid=grid, cells_thick=8 if args.quick else 20,
                       n_sim_slices=8 if args.quick else 20)
    z = ds["true_object"]["z"].values
    thick = float(z[-1] - z[0]) + float(np.diff(z)[0])
    return run_case(args, "electron", ds, "electron", iters, n_slices=n_slices,
                    slice_thickness=thick / n_slices, grid=grid)


def abtem_data(args):
    """The abTEM case: run ``benchmarks/peers/abtem_sim.py`` in the abTEM venv (cached by its
    settings) and wrap the result as a ptynb measurement with a ground truth.

    The truth is the phase ``sigma V_projected`` of the whole crystal from abTEM, stored as
    ``true_object`` = ``exp(i phase / 4)`` in 4 equal slices (so that no slice's phase wraps;
    the electron score sums the slice phases). ``nominal_defocus`` = the simulated defocus.
    """
    import xarray as xr

    from ptynb.data import measurement

    sim = dict(n_det=48, grid=10, cells=6) if args.quick else dict(n_det=96, grid=20, cells=12)
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"abtem_{sim['n_det']}_{sim['grid']}_{sim['cells']}.npz"
    if not out.exists():
        py, msg = peer_python("abtem", install=not args.no_install)
        if py is None:
            raise RuntimeError(f"abTEM: {msg}")
        cmd = [str(py), str(HERE / "peers" / "abtem_sim.py"), str(out), "--n-det",
               str(sim["n_det"]), "--grid", str(sim["grid"]), "--cells", str(sim["cells"])]
        log(f"[abtem] simulating {sim} (minutes)...")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.peer_timeout,
                           env=_runner_env(args.threads), cwd=str(CACHE))
        if r.returncode or not out.exists():
            raise RuntimeError("abTEM simulation failed: " + " | ".join(
                (r.stderr or r.stdout).strip().splitlines()[-3:])[-300:])
        log(f"[abtem] {r.stdout.strip().splitlines()[-1]}")
    d = np.load(out)
    dx = float(d["pixel_size_m"])
    n = d["intensity"].shape[-1]
    pos = np.asarray(d["positions_m"])
    ds = measurement(np.asarray(d["intensity"]), pos[:, 0], pos[:, 1], radiation="electron",
                     energy_eV=float(d["energy_eV"]), pixel_size=dx,
                     reciprocal_pixel_size=1.0 / (n * dx),
                     convergence_semiangle=float(d["semiangle_rad"]),
                     defocus=float(d["defocus_m"]), nominal_defocus=float(d["defocus_m"]))
    phase = np.asarray(d["true_phase"], np.float64)
    H, W = phase.shape
    k = 4
    ds["true_object"] = xr.DataArray(
        np.repeat(np.exp(1j * phase / k)[None], k, 0).astype(np.complex64),
        dims=("slice", "y", "x"),
        coords=dict(z=("slice", np.arange(k) * float(d["thickness_m"]) / k),
                    y=np.arange(H) * dx, x=np.arange(W) * dx))
    ds.attrs["benchmark_case"] = (
        f"abTEM {abtem_version(d)} SrTiO3 [001], {len(pos)} patterns {n}x{n}, "
        f"{float(d['thickness_m']) * 1e9:.1f} nm thick, {float(d['energy_eV']) / 1e3:.0f} keV, "
        f"{float(d['semiangle_rad']) * 1e3:.1f} mrad, {float(d['dose_e_per_A2']):.0e} e/A^2")
    return ds, float(d["thickness_m"]), int(d["grid"])


def abtem_version(d):
    return str(d["version"]) if "version" in d else "?"


def abtem_peer_case(args):
    ds, thick, grid = abtem_data(args)
    n_slices = 4
    iters = args.electron_iterations or (3 if args.quick else 10)
    return run_case(args, "abtem", ds, "electron", iters, n_slices=n_slices,
                    slice_thickness=thick / n_slices, grid=grid)


def siemens_case(args):
    """Tike's measured siemens-star-small: ptynb and pty-chi LSQ-ML from the same probe, scored
    by ``benchmarks/siemens_star.py``'s misfit measures (R-factor, Poisson cost, squared and
    absolute amplitude misfit) of the final object and probe at the file's positions.

    ptynb runs in this process (``siemens_star.run_ptynb``, its times per iteration from the
    callback); pty-chi in its venv (``peers/ptychi_run.py``) on the same patterns, positions
    (probe centres = Tike's corners + n // 2 on a grid holding every window) and initial
    probe (ptynb's :func:`~ptynb.ptycho.initial_probe` of Tike's probe).
    """
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    try:
        import siemens_star as ss
    except ImportError as e:
        return dict(note=f"benchmarks/siemens_star.py not importable: {e}")
    from ptynb.ptycho import initial_probe

    try:
        raw = ss.load()
    except FileNotFoundError as e:
        return dict(note=str(e).splitlines()[0])
    iters = args.iterations or (5 if args.quick else 30)
    data = np.asarray(raw["data"])
    if args.quick:
        keep = slice(0, 128)
        data, raw = data[keep], dict(raw, data=data[keep], scan=np.asarray(raw["scan"])[keep])
    n = data.shape[-1]
    scan = np.asarray(raw["scan"], np.float64)
    meas = ss.measurement(raw)
    probe0 = initial_probe(meas, n, 1, probe=raw["probe"])
    res = dict(case=f"Tike siemens-star-small: {len(data)} measured patterns {n}x{n}",
               iterations=iters, rows=[])
    t0 = time.perf_counter()
    old = os.environ.get("PTYNB_FFT_WORKERS")
    if args.threads:
        os.environ["PTYNB_FFT_WORKERS"] = str(args.threads)  # as many FFT threads as pty-chi
    try:
        rows, _ = ss.run_ptynb(iters, raw=raw, engine="lsqml")
    finally:
        if old is None:
            os.environ.pop("PTYNB_FFT_WORKERS", None)
        else:
            os.environ["PTYNB_FFT_WORKERS"] = old
    secs = np.diff([0.0] + [r["seconds"] for r in rows])
    last = rows[-1]
    from ptynb import __version__ as ptynb_version

    res["rows"].append(dict(package="ptynb", engine="LSQ-ML (in process)", version=ptynb_version,
                            per_iter=float(np.median(secs[1:])) if len(secs) > 1 else float(secs[0]),
                            **{k: last[k] for k in ("r_factor", "poisson", "squared", "absolute")}))
    log(f"[siemens] ptynb: {time.perf_counter() - t0:.1f} s, R {last['r_factor']:.4f}")
    if args.no_peers or "ptychi" not in args.peers:
        return res
    py, msg = peer_python("ptychi", install=not args.no_install)
    if py is None:
        res["rows"].append(dict(package="pty-chi", engine="LSQ-ML", note=msg))
        return res
    CACHE.mkdir(parents=True, exist_ok=True)
    scan = scan - np.floor(scan.min(0)) + 1  # corners on a grid holding every window
    shape = np.ceil(scan.max(0)).astype(int) + n + 2
    inp = CACHE / "siemens_in.npz"
    np.savez(inp, intensity=data.astype(np.float32), pos_px=scan + n // 2, object_shape=shape,
             truth_origin_m=np.zeros(2), probe=np.asarray(probe0, np.complex64),
             pixel_size_m=ss.PIXEL_SIZE, wavelength_m=12.398419843320026e-7 / ss.ENERGY_EV,
             energy_eV=ss.ENERGY_EV, n_slices=1, slice_thickness_m=0.0, radiation="xray",
             grid=np.asarray([1, len(data)]), semiangle_rad=np.nan, defocus_m=np.nan)
    out = CACHE / "siemens_ptychi.npz"
    r = run_runner(dict(case="siemens", label="pty-chi", engine="LSQ-ML", python=py,
                        script="ptychi_run.py", out=out, offset=_offset_fixed,
                        argv=[inp, out, "--iterations", iters, "--threads", args.threads]), args)
    if "snapshots" not in r:
        res["rows"].append(dict(package="pty-chi", engine="LSQ-ML", note=r.get("note", "")))
        return res
    m = ss.score(r["snapshots"][-1][0], r["probe"], scan, data)
    it = np.asarray(r["iteration_times"])
    res["rows"].append(dict(package="pty-chi", engine="LSQ-ML", version=str(r["version"]),
                            per_iter=float(np.median(it[1:])) if it.size > 1 else float(it[0]),
                            note=str(r["note"]), **m))
    log(f"[siemens] pty-chi: R {m['r_factor']:.4f}")
    return res


def print_siemens(res):
    print()
    print(f"## Measured data: {res.get('case', 'siemens star')}, LSQ-ML, "
          f"{res.get('iterations', '-')} iterations, same initial probe")
    if "note" in res:
        print(res["note"])
        return
    print("Misfit of the final object and probe at the file's positions "
          "(benchmarks/siemens_star.py; lower is better).")
    print("| package | engine | s/iteration (median) | R-factor | Poisson cost | squared misfit | "
          "absolute misfit | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['package']} {r.get('version', '')} | {r['engine']} | {fmt(r.get('per_iter'))} | "
              f"{fmt(r.get('r_factor'), '.4f')} | {fmt(r.get('poisson'), '.5f')} | "
              f"{fmt(r.get('squared'), '.5f')} | {fmt(r.get('absolute'), '.4f')} | "
              f"{r.get('note', '')} |")


# ============================================================================ printing
def fmt(v, spec=".3g"):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return format(v, spec)


def print_case(res):
    """Markdown table of one time-to-quality case (see :func:`summarise`)."""
    kind = res["kind"]
    q = "NRMSE (illuminated area, lower is better)" if kind == "xray" else \
        "phase PCC (scanned area, higher is better)"
    fq = ".4f" if kind == "xray" else ".3f"
    print()
    print(f"## {res['title']}: {res['case']}, {res['slices']} slice(s), {res['iterations']} "
          f"iterations, same data and initial probe (py4DSTEM: its own from the same nominal "
          "optics)")
    tgt = fmt(res["target"], fq)
    b = fmt(res["budget"], ".1f")
    how = ("--budget" if res.get("budget_given") else
           f"the {res.get('budget_rule', 'fastest-peer').replace('-', ' ')}'s time for the "
           "common iterations")
    ext = (" Packages that finished well before it ran again with more iterations (the count "
           "in brackets) for the time to target and the quality at the budget."
           if res.get("equal_time") else "")
    print(f"Quality: {q}. Target = best peer's final quality = {tgt}; equal-time budget = "
          f"{b} s ({how}).{ext} Times count iterations only (start-up, i.e. imports, data "
          f"loading, model building and the first iteration's excess over the median, is "
          f"apart); {res['repeats']} round(s), packages one after another (order alternating "
          "between rounds), each in its own process; peak memory = VmHWM (peak resident set) of that process.")
    name = q.split(" (")[0]
    el = kind != "xray"
    if el:
        print("Electron phases: every slice unwrapped before the sum; phase slope = fitted gain of "
              "the final summed phase against the true total phase (1: the right magnitude).")
    print(f"| package | engine | start-up s | s/iteration (median) | final {name} | "
          + ("final phase slope | " if el else "")
          + f"time to target s | {name} at {b} s (iterations) | peak memory MB | note |")
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if el else ""))
    for r in res["rows"]:
        tt = r.get("to_target")
        tts = "-" if tt is None else ("not reached" if not np.isfinite(tt) else f"{tt:.1f}")
        ab = fmt(r.get("at_budget"), fq)
        if "iters_at_budget" in r:
            ab += f" ({r['iters_at_budget']})"
        print(f"| {r['package']} {r.get('version', '')} | {r['engine']} | "
              f"{fmt(r.get('setup'), '.1f')} | {fmt(r.get('per_iter'))} | "
              f"{fmt(r.get('final'), fq)} | "
              + (f"{fmt(r.get('slope'), '.3f')} | " if el else "")
              + f"{tts} | {ab} | {fmt(r.get('peak_mb'), '.0f')} | "
              f"{r.get('note', '')} |")
    me = [r for r in res["rows"] if r["package"] == "ptynb" and "per_iter" in r]
    for r in res["rows"]:
        if r["package"] != "ptynb" and "per_iter" in r and me:
            print(f"- {r['package']} {r['engine']} s/iteration / ptynb {me[0]['engine']}: "
                  f"{r['per_iter'] / me[0]['per_iter']:.2f}x")


def git_state() -> str:
    """``commit`` of the checkout ptynb runs from, plus a note when ``ptynb/`` has uncommitted
    changes (what was measured is the working tree)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=str(ROOT), check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "ptynb"],
                               capture_output=True, text=True, cwd=str(ROOT),
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    n = len(dirty.splitlines())
    return f"commit {head}" + (f" + uncommitted changes in {n} file(s) under ptynb/" if n else "")


def print_report(args, rates_by_n, rows, cases, started, siemens=None):
    from ptynb import __version__
    from ptynb.backend import cpu_workers, fft_backend

    print(f"# ptynb {__version__} ptychography benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {cpu_workers()} cores, "
          f"python {platform.python_version()}, numpy {np.__version__}; ptynb CPU FFT: {fft_backend()}"
          f"{' (quick mode)' if args.quick else ''}")
    print(f"ptynb source: {git_state()}")
    if rates_by_n:
        print()
        print("## FFT rate: batched complex64 2D transforms (batch 32), FFTs/s")
        w = cpu_workers()
        print(f"| n | numpy.fft | scipy.fft (workers={w}) | pyfftw measure, 1 thread | "
              f"pyfftw measure, {w} threads | pyfftw patient, 1 thread | pyfftw patient, one at a "
              "time | fastest |")
        print("|---|---|---|---|---|---|---|---|")
        for n, r in rates_by_n.items():
            if str(n).startswith("gpu"):
                continue
            best = max(r, key=r.get)
            print(f"| {n} | {fmt(r.get('numpy'), '.0f')} | {fmt(r.get('scipy'), '.0f')} | "
                  f"{fmt(r.get('pyfftw1'), '.0f')} | {fmt(r.get(f'pyfftw{w}'), '.0f')} | "
                  f"{fmt(r.get('pyfftw1-patient'), '.0f')} | {fmt(r.get('single-patient'), '.0f')} | "
                  f"{best} |")
    gpu = {k: v for k, v in rates_by_n.items() if str(k).startswith("gpu")}
    if gpu:
        print()
        print("GPU (cupy/cuFFT, batch 32, FFTs/s): " + ", ".join(
            f"{k[3:]} px {v['cupy']:.0f}" for k, v in gpu.items()))
    if rows:
        print()
        print("## ptynb throughput: diffraction patterns per second per iteration")
        print("FFT bound = fastest FFTs/s / (2 x slices x modes); ratio = bound / ptynb (1 = at the bound)")
        print("| device | detector | slices | modes | engine | ptynb patterns/s | FFT bound | bound/ptynb |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['device']} | {r['n']} | {r['slices']} | {r['modes']} | {r['engine']} | "
                  f"{fmt(r['rate'], '.1f')}{(' (' + r['err'] + ')') if r['err'] else ''} | "
                  f"{fmt(r['bound'], '.0f')} | {fmt(r['ratio'], '.2f')} |")
    for res in cases:
        if res:
            print_case(res)
    if siemens:
        print_siemens(siemens)
    print()
    print(f"total benchmark time {time.time() - started:.0f} s. Shared, noisy machine: compare "
          "ratios measured side by side in one run.")


ALL_PEERS = ["ptylab", "py4dstem", "ptychi", "ptyrad"]
PARTS = ["fft", "throughput", "xray", "electron", "abtem", "siemens"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--no-peers", action="store_true", help="ptynb only in the peer cases")
    ap.add_argument("--peers", default=",".join(ALL_PEERS),
                    help=f"comma-separated peers to run (default all: {','.join(ALL_PEERS)})")
    ap.add_argument("--no-install", action="store_true", help="do not create peer venvs")
    ap.add_argument("--gpu", action="store_true", help="also time ptynb on the GPU")
    ap.add_argument("--only", choices=PARTS, action="append",
                    help="run only these parts (repeatable; default all)")
    ap.add_argument("--iterations", type=int, default=None, help="X-ray peer-case iterations")
    ap.add_argument("--electron-iterations", type=int, default=None,
                    help="iterations of the two electron cases")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads of every package in the peer cases (OpenMP/BLAS/torch/FFT)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds of every peer case (order alternates between rounds)")
    ap.add_argument("--budget", type=float, default=None,
                    help="equal-time budget in s (default: see --budget-rule)")
    ap.add_argument("--budget-rule", choices=["fastest-peer", "slowest"], default="fastest-peer",
                    help="default budget: the fastest peer's or the slowest package's time for "
                         "the common iterations")
    ap.add_argument("--no-equal-time", action="store_true",
                    help="do not re-run the faster packages up to the budget")
    ap.add_argument("--max-extend", type=int, default=20,
                    help="at most this many times the common iterations in a re-run")
    ap.add_argument("--peer-timeout", type=int, default=3600)
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)
    args.peers = [p.strip().lower() for p in args.peers.split(",") if p.strip()]
    bad = [p for p in args.peers if p not in ALL_PEERS]
    if bad:
        ap.error(f"unknown peers {bad}; choose from {ALL_PEERS}")
    parts = set(args.only or PARTS)
    started = time.time()
    if args.gpu:
        from ptynb.backend import gpu_available

        if not gpu_available():
            log("--gpu: no usable GPU/cupy here; timing the CPU only")
            args.gpu = False
    rates = {}
    if parts & {"fft", "throughput"}:
        sizes = (64, 128) if args.quick else (64, 128, 256)
        rates = {n: fft_rates(n) for n in sizes}
        for n, r in rates.items():
            log(f"[fft] {n}: " + ", ".join(f"{k} {v:.0f}/s" for k, v in r.items()))
        if args.gpu:
            for n in sizes:
                rates[f"gpu{n}"] = {"cupy": fft_rate_gpu(n)}
                log(f"[fft] gpu {n}: cupy {rates[f'gpu{n}']['cupy']:.0f}/s")
    rows = throughput_table(args, rates) if "throughput" in parts else []
    cases = []
    for part, fn, title in (("xray", xray_peer_case, "X-ray, simulated by ptynb"),
                            ("electron", electron_peer_case,
                             "Electron multislice, simulated by ptynb"),
                            ("abtem", abtem_peer_case, "Electron multislice, simulated by abTEM")):
        if part in parts:
            res = fn(args)
            res["title"] = title
            res["budget_given"] = args.budget is not None
            res["budget_rule"] = "slowest package" if args.budget_rule == "slowest" else "fastest peer"
            cases.append(res)
    siemens = siemens_case(args) if "siemens" in parts else None
    print_report(args, rates, rows, cases, started, siemens)
    if args.json:
        args.json.write_text(json.dumps(dict(fft=rates, throughput=rows, cases=cases,
                                             siemens=siemens), default=float, indent=1))


if __name__ == "__main__":
    main()
