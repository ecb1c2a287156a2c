"""Ptychography benchmark: ptynb throughput vs the machine's FFT bound, and vs peers.

Run from the repository root::

    python benchmarks/ptycho.py            # full run (tens of minutes on 2 cores)
    python benchmarks/ptycho.py --quick    # small sizes, smoke test (a few minutes)
    python benchmarks/ptycho.py --no-peers # ptynb and FFT only
    python benchmarks/ptycho.py --gpu      # also time ptynb on the GPU (cupy)

What it measures
----------------
1. FFT rates: batched complex64 2D transforms (batch 32) of 64, 128, 256 px with numpy.fft,
   scipy.fft (workers = number of cores) and a planned pyfftw (FFTW_MEASURE, in place,
   execute only; 1 thread and one thread per core), in FFTs per second, called in turn.
2. ptynb throughput: diffraction patterns processed per second per iteration (median over
   iterations, the first iteration excluded) for engines ePIE and LSQ-ML at 64/128/256 px
   detectors, 1 and 5 slices, 1 and 3 probe modes, next to the FFT-bound rate
   ``best FFTs/s / (2 * slices * modes)`` measured in the same run, and their ratio.
3. Peers, on the same simulated data (``ptynb.simulate.ptychography``) and the same number of
   iterations, each in its own virtual environment under ``benchmarks/.venvs/`` created by
   this script (``python -m venv`` + pip): PtyLab 0.3.x (numpy 2) and py4DSTEM 0.14.18
   (numpy < 2). The data go to ``benchmarks/.cache/``; a peer script in
   ``benchmarks/peers/`` reconstructs and writes its object to ``.npz``; this script computes
   every error the same way:

   * X-ray: NRMSE of the complex object over the well-illuminated area (illumination
     ``sum_j |P(r - r_j)|^2`` above 25 % of its maximum), after removing a global complex
     factor (phase offset and amplitude scale) and a linear phase ramp, best over integer
     shifts of up to 3 px (grid conventions differ between packages).
   * Electron: Pearson correlation of the summed phase of the slices with the true total
     phase (proportional to the projected potential) over the scanned area, after removing
     a fitted plane from the reconstructed phase, best over integer shifts of up to 3 px.

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
    "ptylab": {"spec": "ptylab>=0.3.7,<0.4", "module": "PtyLab", "script": "ptylab_run.py"},
    "py4dstem": {"spec": "py4dstem==0.14.18", "module": "py4DSTEM", "script": "py4dstem_run.py"},
}


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


def electron_pcc(ds, recon_slices, offset):
    """PCC of the summed slice phases with the true total phase, over the scanned area."""
    truth, _, _ = _truth(ds)
    tphase = np.angle(truth).sum(0) if truth.ndim == 3 else np.angle(truth)
    rphase = np.angle(recon_slices).sum(0) if recon_slices.ndim == 3 else np.angle(recon_slices)
    mask = scanned_mask(ds)
    return best_over_shifts(lambda r: phase_pcc(r, tphase, mask), rphase, offset, tphase.shape,
                            maximize=True)


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
def peer_python(name: str, install: bool = True) -> tuple[Path | None, str]:
    """The venv python of peer ``name``, creating the venv and pip-installing if needed.

    Returns (python path or None, message).
    """
    info = PEERS[name]
    venv = VENVS / name
    py = venv / "bin" / "python"
    check = [str(py), "-c", f"import {info['module']}, numpy; print({info['module']}.__name__)"]
    if py.exists():
        r = subprocess.run(check, capture_output=True, text=True)
        if r.returncode == 0:
            return py, "ok"
    if not install:
        return None, "venv missing"
    log(f"[peers] creating {venv} and installing {info['spec']} (minutes)...")
    VENVS.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if r.returncode:
        return None, f"venv failed: {r.stderr.strip()[-200:]}"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", info["spec"]],
                       capture_output=True, text=True)
    if r.returncode:
        return None, f"pip install {info['spec']} failed: {r.stderr.strip().splitlines()[-1:]}"
    r = subprocess.run(check, capture_output=True, text=True)
    if r.returncode:
        return None, f"import failed: {r.stderr.strip().splitlines()[-1:]}"
    return py, "ok"


def peer_version(py: Path, module: str) -> str:
    r = subprocess.run([str(py), "-c", f"import importlib.metadata as m; print(m.version('{module}'))"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "?"


def run_peer(py, script, args, timeout):
    cmd = [str(py), str(HERE / "peers" / script), *map(str, args)]
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                           cwd=str(CACHE))
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    if r.returncode:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        return None, "failed: " + " | ".join(tail)[-300:]
    log(f"[peers] {script} done in {time.perf_counter() - t0:.1f} s: {r.stdout.strip().splitlines()[-1:]}")
    return True, "ok"


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


def write_py4dstem_input(ds, path, grid, n_slices):
    dx = float(ds.attrs["pixel_size"])
    lam = float(ds.attrs["wavelength"])
    n = ds.sizes["qy"]
    inten = np.asarray(ds["intensity"].values, np.float32).reshape(grid, grid, n, n)
    pos = np.stack([ds["scan_y"].values, ds["scan_x"].values], 1) * 1e10
    thick = float(ds["true_object"]["z"].values[-1] - ds["true_object"]["z"].values[0]) + \
        float(np.diff(ds["true_object"]["z"].values)[0])
    np.savez(path, intensity=inten, positions_A=pos, energy_eV=float(ds.attrs["energy_eV"]),
             angular_sampling_mrad=lam / (n * dx) * 1e3,
             semiangle_mrad=float(ds.attrs["convergence_semiangle"]) * 1e3,
             defocus_A=float(ds.attrs["defocus"]) * 1e10, num_slices=n_slices,
             slice_thickness_A=thick / n_slices * 1e10)
    return thick


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


def xray_peer_case(args):
    from ptynb.ptycho import initial_probe

    n_det = 64 if args.quick else 128
    grid = 8 if args.quick else 20
    iters = args.iterations or (10 if args.quick else 50)
    ds = xray_data(n_det=n_det, grid=grid, seed=0)
    meas = ds.drop_vars(["true_object", "true_probe"])
    probe0 = initial_probe(meas, n_det, 1)
    res = {"case": ds.attrs["benchmark_case"], "iterations": iters, "rows": []}

    # ptynb's defaults (exact sub-pixel positions by Fourier shifts, Poisson likelihood), and the
    # algorithm PtyLab's ePIE runs (positions rounded to whole pixels, amplitude constraint)
    variants = (("epie", "epie", {}), ("lsqml", "lsqml", {}),
                ("epie (whole-pixel, gaussian: PtyLab's algorithm)", "epie",
                 dict(subpixel="round", noise="gaussian")))
    for label, engine, kw in variants:
        rec, per, total = time_ptynb(ds, engine, iters, probe=probe0, **kw)
        o = np.asarray(rec["object"].values)[0]
        err = xray_error(ds, o, ptynb_offset(ds, rec))
        res["rows"].append(dict(package="ptynb", engine=label, per_iter=per, error=err))
        log(f"[xray] ptynb {label}: {per:.3f} s/iter, NRMSE {err:.3f}")

    if args.no_peers:
        return res
    py, msg = peer_python("ptylab", install=not args.no_install)
    if py is None:
        res["rows"].append(dict(package="PtyLab", engine="ePIE/mPIE", note=msg))
        return res
    res["ptylab_version"] = peer_version(py, "ptylab")
    CACHE.mkdir(parents=True, exist_ok=True)
    h5 = CACHE / f"xray_{n_det}_{grid * grid}.h5"
    centre = write_ptylab_input(ds, h5, probe0)
    for engine in ("ePIE", "mPIE"):
        out = CACHE / f"ptylab_{engine}_{n_det}.npz"
        if out.exists():
            out.unlink()
        ok, msg = run_peer(py, "ptylab_run.py", [h5, out, "--engine", engine,
                                                  "--iterations", iters], args.peer_timeout)
        if not ok:
            res["rows"].append(dict(package="PtyLab", engine=engine, note=msg))
            continue
        r = np.load(out)
        if not np.isclose(float(r["dxo"]), float(ds.attrs["pixel_size"]), rtol=1e-6):
            res["rows"].append(dict(package="PtyLab", engine=engine,
                                    note=f"object pixel {float(r['dxo'])} != {ds.attrs['pixel_size']}"))
            continue
        times = np.asarray(r["iteration_times"])
        per = float(np.median(times)) if times.size else float(r["total_time"]) / iters
        err = xray_error(ds, np.asarray(r["object"]), ptylab_offset(centre, int(r["No"])))
        res["rows"].append(dict(package="PtyLab", engine=engine, per_iter=per, error=err))
        log(f"[xray] PtyLab {engine}: {per:.3f} s/iter, NRMSE {err:.3f}")
    return res


def electron_peer_case(args):
    n_det = 64 if args.quick else 96
    grid = 12 if args.quick else 32
    n_slices = 4
    iters = args.electron_iterations or (3 if args.quick else 10)
    ds = electron_data(n_det=n_det, grid=grid, cells_thick=8 if args.quick else 20,
                       n_sim_slices=8 if args.quick else 20)
    thick = float(ds["true_object"]["z"].values[-1] - ds["true_object"]["z"].values[0]) + \
        float(np.diff(ds["true_object"]["z"].values)[0])
    dz = thick / n_slices
    res = {"case": ds.attrs["benchmark_case"], "iterations": iters, "rows": []}
    for engine in ("lsqml",):
        rec, per, total = time_ptynb(ds, engine, iters, slices=n_slices, slice_thickness=dz)
        o = np.asarray(rec["object"].values)
        pcc = electron_pcc(ds, o, ptynb_offset(ds, rec))
        res["rows"].append(dict(package="ptynb", engine=f"{engine} multislice", per_iter=per,
                                pcc=pcc))
        log(f"[electron] ptynb {engine}: {per:.3f} s/iter, phase PCC {pcc:.3f}")
    if args.no_peers:
        return res
    py, msg = peer_python("py4dstem", install=not args.no_install)
    if py is None:
        res["rows"].append(dict(package="py4DSTEM", engine="multislice", note=msg))
        return res
    res["py4dstem_version"] = peer_version(py, "py4DSTEM")
    CACHE.mkdir(parents=True, exist_ok=True)
    data = CACHE / f"electron_{n_det}_{grid * grid}.npz"
    write_py4dstem_input(ds, data, grid, n_slices)
    out = CACHE / f"py4dstem_{n_det}.npz"
    if out.exists():
        out.unlink()
    ok, msg = run_peer(py, "py4dstem_run.py", [data, out, "--iterations", iters],
                       args.peer_timeout)
    if not ok:
        res["rows"].append(dict(package="py4DSTEM", engine="multislice", note=msg))
        return res
    r = np.load(out)
    dx = float(ds.attrs["pixel_size"])
    samp = np.asarray(r["sampling_A"]) * 1e-10
    if not np.allclose(samp, dx, rtol=1e-4):
        res["rows"].append(dict(package="py4DSTEM", engine="multislice",
                                note=f"sampling {samp} m != pixel_size {dx}"))
        return res
    _, y0, x0 = _truth(ds)
    tp = np.stack([(ds["scan_y"].values - y0) / dx, (ds["scan_x"].values - x0) / dx], 1)
    off = np.rint(np.median(tp - np.asarray(r["positions_px"]), axis=0)).astype(int)
    pcc = electron_pcc(ds, np.asarray(r["object"]), (int(off[0]), int(off[1])))
    res["rows"].append(dict(package="py4DSTEM", engine="multislice (gradient descent)",
                            per_iter=float(r["iteration_time"]), pcc=pcc))
    log(f"[electron] py4DSTEM: {float(r['iteration_time']):.3f} s/iter, phase PCC {pcc:.3f}")
    return res


# ============================================================================ printing
def fmt(v, spec=".3g"):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return format(v, spec)


def print_report(args, rates_by_n, rows, xray, electron, started):
    from ptynb import __version__
    from ptynb.backend import cpu_workers, fft_backend

    print(f"# ptynb {__version__} ptychography benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {cpu_workers()} cores, "
          f"python {platform.python_version()}, numpy {np.__version__}; ptynb CPU FFT: {fft_backend()}"
          f"{' (quick mode)' if args.quick else ''}")
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
    if xray:
        print()
        print(f"## X-ray vs PtyLab {xray.get('ptylab_version', '')}: {xray['case']}, "
              f"{xray['iterations']} iterations, same data and initial probe")
        print("| package | engine | s/iteration (median) | NRMSE (illuminated area) | note |")
        print("|---|---|---|---|---|")
        for r in xray["rows"]:
            print(f"| {r['package']} | {r['engine']} | {fmt(r.get('per_iter'))} | "
                  f"{fmt(r.get('error'))} | {r.get('note', '')} |")
        d = {(r["package"], r["engine"]): r for r in xray["rows"]}
        pe, pl = d.get(("PtyLab", "ePIE")), d.get(("PtyLab", "mPIE"))
        for eng in ("epie", "lsqml", "epie (whole-pixel, gaussian: PtyLab's algorithm)"):
            me = d.get(("ptynb", eng))
            if me and pe and "per_iter" in pe:
                print(f"- ptynb {eng} speed-up vs PtyLab ePIE per iteration: "
                      f"{pe['per_iter'] / me['per_iter']:.2f}x (target >= 4x)")
            if me and pl and "error" in pl:
                print(f"- ptynb {eng} NRMSE / PtyLab mPIE NRMSE: {me['error'] / pl['error']:.2f} "
                      f"(target < 1)")
        if rows and xray["rows"]:
            n_det = 64 if args.quick else 128
            rn = rates_by_n.get(n_det, {"none": float("nan")})
            rate = max(rn.values())
            single = rn.get("single-patient", float("nan"))
            for r in xray["rows"]:
                if r["package"] == "ptynb" and "per_iter" in r:
                    n_pat = int(xray["case"].split()[1])
                    got = n_pat / r["per_iter"]
                    print(f"- ptynb {r['engine']}: {got:.0f} patterns/s vs FFT bound "
                          f"{rate / 2:.0f} (fastest batched) -> {rate / 2 / got:.2f}x from the "
                          f"bound (target <= 2.5x); vs one-at-a-time FFTs {single / 2:.0f} -> "
                          f"{single / 2 / got:.2f}x")
    if electron:
        print()
        print(f"## Electron vs py4DSTEM {electron.get('py4dstem_version', '')}: {electron['case']}, "
              f"4 slices, {electron['iterations']} iterations")
        print("| package | engine | s/iteration | phase PCC (scanned area) | note |")
        print("|---|---|---|---|---|")
        for r in electron["rows"]:
            print(f"| {r['package']} | {r['engine']} | {fmt(r.get('per_iter'))} | "
                  f"{fmt(r.get('pcc'))} | {r.get('note', '')} |")
        me = [r for r in electron["rows"] if r["package"] == "ptynb"]
        pe = [r for r in electron["rows"] if r["package"] == "py4DSTEM" and "per_iter" in r]
        if me and pe:
            print(f"- ptynb speed-up vs py4DSTEM per iteration: "
                  f"{pe[0]['per_iter'] / me[0]['per_iter']:.2f}x (target >= 3x); "
                  f"PCC ptynb {me[0]['pcc']:.3f} vs py4DSTEM {pe[0]['pcc']:.3f}")
    print()
    print(f"total benchmark time {time.time() - started:.0f} s. Shared, noisy machine: compare "
          "ratios measured side by side in one run.")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--no-peers", action="store_true", help="skip PtyLab and py4DSTEM")
    ap.add_argument("--no-install", action="store_true", help="do not create peer venvs")
    ap.add_argument("--gpu", action="store_true", help="also time ptynb on the GPU")
    ap.add_argument("--only", choices=["fft", "throughput", "xray", "electron"], action="append",
                    help="run only these parts (repeatable)")
    ap.add_argument("--iterations", type=int, default=None, help="X-ray peer-case iterations")
    ap.add_argument("--electron-iterations", type=int, default=None)
    ap.add_argument("--peer-timeout", type=int, default=3600)
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)
    parts = set(args.only or ["fft", "throughput", "xray", "electron"])
    started = time.time()
    if args.gpu:
        from ptynb.backend import gpu_available

        if not gpu_available():
            log("--gpu: no usable GPU/cupy here; timing the CPU only")
            args.gpu = False
    sizes = (64, 128) if args.quick else (64, 128, 256)
    rates = {n: fft_rates(n) for n in sizes}
    for n, r in rates.items():
        log(f"[fft] {n}: " + ", ".join(f"{k} {v:.0f}/s" for k, v in r.items()))
    if args.gpu:
        for n in sizes:
            rates[f"gpu{n}"] = {"cupy": fft_rate_gpu(n)}
            log(f"[fft] gpu {n}: cupy {rates[f'gpu{n}']['cupy']:.0f}/s")
    rows = throughput_table(args, rates) if "throughput" in parts else []
    xray = xray_peer_case(args) if "xray" in parts else None
    if xray is not None and 128 not in rates and not args.quick:
        rates[128] = fft_rates(128)
    electron = electron_peer_case(args) if "electron" in parts else None
    print_report(args, rates, rows, xray, electron, started)
    if args.json:
        args.json.write_text(json.dumps(dict(fft=rates, throughput=rows, xray=xray,
                                             electron=electron), default=float, indent=1))


if __name__ == "__main__":
    main()
