#!/usr/bin/env python
"""Tomography benchmark: ptynb FBP / SIRT / OS-SART vs scikit-image and astra-toolbox (CPU),
3D projector throughput next to this machine's memory bandwidth.

Run:  python benchmarks/tomo.py            (about 2-3 minutes on 2 cores)
      python benchmarks/tomo.py --quick    (smaller, for a smoke test)
      python benchmarks/tomo.py --fbp-only [--rounds 3]
                                           (2D FBP only, ptynb and astra measured in
                                            alternating rounds: under 1 minute)

Data: a 256 x 256 Shepp-Logan (scikit-image's phantom resized with anti-aliasing), its
sinogram computed ONCE with scikit-image's ``radon`` (a neutral third-party projector) for
180 and 29 views over [0, 180) deg; every package reconstructs that same sinogram. Errors
(RMSE and Pearson correlation) are measured inside the inscribed circle. Angle conventions
differ between packages: ptynb's view at angle a equals scikit-image's at -a (checked in
tests/test_tomo_projector.py); astra's mapping is calibrated once on a small image (the
candidate with the best correlation is used and printed).

astra-toolbox: imported from this environment if possible; otherwise a virtual environment
``benchmarks/.venvs/astra`` (with the system site-packages, so numpy is shared) is created and
``astra-toolbox`` pip-installed into it, and the astra part runs there in a subprocess. If that
fails the table says "astra: unavailable (reason)".

Timings are medians of repeats (wall clock; "CPU time": process CPU time of all threads).
"cold" is ptynb's first call for a geometry: the operator cache is cleared before each repeat.
A first call on a 2D slice runs matrix-free (compiled kernels evaluate the Joseph weights on
the fly); the second call with the same geometry builds the sparse operator, and "warm" is
the median of calls that reuse it (as every later call with the same geometry, e.g. each
slice stack or solver iteration, does). astra caches nothing: each of
its FBP calls sets up its geometry and projector, i.e. every astra time is a first call. The
load average is printed: on a shared machine trust the ratios measured side by side.

ptynb's matrix-free kernels and its sparse-operator fill are compiled numba kernels. Their
one-time costs are kept out of "cold": before any timing tiny FBPs and a projection (16 x 16,
8 views) import numba, initialise its CPU target and load the kernels from numba's on-disk
cache (or compile them, once per machine); the output says which and how long it took. With ``--fbp-only`` each round also starts a new Python process and times
ptynb's very first 180-view FBP there (after ``from ptynb import tomo``), which does include
numba's per-process start.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venvs" / "astra"


# ---------------------------------------------------------------------------- helpers
def median_time(fn, repeats=5, warmup=0, before=None, cpu=False):
    """Median wall time of ``fn()`` (and median process CPU time if ``cpu``); ``before()`` runs
    untimed before each repeat."""
    for _ in range(warmup):
        fn()
    ts, cs = [], []
    out = None
    for _ in range(repeats):
        if before is not None:
            before()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    if cpu:
        return float(np.median(ts)), float(np.median(cs)), out
    return float(np.median(ts)), out


def load_average():
    try:
        one, five, fifteen = os.getloadavg()
        return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"
    except OSError:  # pragma: no cover
        return "load average unavailable"


def phantom(n):
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    img = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True).astype(np.float32)
    yy, xx = np.mgrid[:n, :n] - n // 2
    circ = (yy ** 2 + xx ** 2) < (n // 2 - 2) ** 2
    return img, circ


def errors(rec, img, circ):
    r = np.asarray(rec, dtype=np.float64)[circ]
    t = np.asarray(img, dtype=np.float64)[circ]
    return float(np.sqrt(np.mean((r - t) ** 2))), float(np.corrcoef(r, t)[0, 1])


def membw():
    a = np.ones(64 * 1024 * 1024, dtype=np.float32)  # 256 MiB
    b = np.empty_like(a)
    t, _ = median_time(lambda: np.copyto(b, a), repeats=5, warmup=1)
    return 2 * a.nbytes / t / 1e9  # read + write, GB/s


# ---------------------------------------------------------------------------- ptynb
def ptynb_projections(sino, ang_deg):
    """DataArray for a (angle, x) sinogram of an n x n slice (unit pixels), ptynb convention."""
    from ptynb.data import projections

    n = sino.shape[1]
    return projections(sino[:, None, :].astype(np.float32), -np.asarray(ang_deg), pixel_size=1.0,
                       geometry="tomography", tilt=90.0, volume_shape=np.array([n, 1, n]),
                       voxel_size=np.array([1.0, 1.0, 1.0]),
                       volume_origin=np.array([-(n // 2), 0.0, -(n // 2)]))


def bench_ptynb(sino, ang, img, circ, sirt_iters, repeats):
    from ptynb import tomo
    from ptynb.tomo.projector import clear_cache

    p = ptynb_projections(sino, ang)
    cold, cold_cpu, rec = median_time(lambda: tomo.fbp(p), repeats, before=clear_cache, cpu=True)
    warm, warm_cpu, rec = median_time(lambda: tomo.fbp(p), repeats, cpu=True)
    out = {"fbp_cold": cold, "fbp_warm": warm, "fbp_cold_cpu": cold_cpu, "fbp_warm_cpu": warm_cpu,
           "fbp_err": errors(rec.values[:, 0, :], img, circ)}
    if not sirt_iters:
        return out
    curve = []
    tomo.sirt(p, sirt_iters, progress=False,
              callback=lambda i, info: curve.append(errors(info["volume"][:, 0, :], img, circ)[0]))
    t_sirt, rs = median_time(lambda: tomo.sirt(p, sirt_iters, progress=False), max(1, repeats // 3))
    out.update(sirt_per_it=t_sirt / sirt_iters, sirt_err=errors(rs.values[:, 0, :], img, circ),
               sirt_curve=curve)
    sweeps = max(2, sirt_iters // 10)
    t_sart, ra = median_time(lambda: tomo.sart(p, sweeps, subsets=10, progress=False), 1)
    out.update(sart_per_sweep=t_sart / sweeps, sart_sweeps=sweeps,
               sart_err=errors(ra.values[:, 0, :], img, circ))
    return out


def warm_kernels():
    """Load ptynb's compiled (numba) kernels before any timing: on a tiny (16 x 16, 8 views)
    geometry, one FBP (matrix-free adjoint kernel), a second one (builds the slice matrix: the
    CSR fill kernel) and a forward projection without the matrix (forward kernel). It pays
    importing numba, initialising its CPU target and loading the kernels from numba's on-disk
    cache, or compiling them on a machine (or after an edit) where that cache is empty.
    Returns (seconds, numba cache hits, misses); hits and misses are None if the numpy fill is
    used (numba unavailable, or PTYNB_TOMO_NUMBA=0)."""
    from ptynb import tomo
    from ptynb.tomo import projector
    from ptynb.tomo.projector import clear_cache

    n, ang = 16, np.linspace(0, 180, 8, endpoint=False)
    p = ptynb_projections(np.ones((ang.size, n), dtype=np.float32), ang)
    t0 = time.perf_counter()
    clear_cache()
    vol = tomo.fbp(p)
    tomo.fbp(p)
    clear_cache()
    tomo.project(vol, ang)
    clear_cache()
    dt = time.perf_counter() - t0
    if not projector._USE_NUMBA:
        return dt, None, None
    from ptynb.tomo import _kernels

    if not _kernels.available():
        return dt, None, None
    sts = [f.stats for f in (_kernels.slice_csr, _kernels.slice_forward, _kernels.slice_adjoint)]
    return (dt, sum(sum(st.cache_hits.values()) for st in sts),
            sum(sum(st.cache_misses.values()) for st in sts))


FRESH_SCRIPT = r"""
import sys, time
import numpy as np
t0 = time.perf_counter()
from ptynb import tomo
from ptynb.tomo.projector import clear_cache
t_imp = time.perf_counter() - t0
from ptynb.data import projections
d = np.load(sys.argv[1])
sino, n = d["sino_180"], d["sino_180"].shape[1]
p = projections(sino[:, None, :].astype(np.float32), -d["ang_180"], pixel_size=1.0,
                geometry="tomography", tilt=90.0, volume_shape=np.array([n, 1, n]),
                voxel_size=np.array([1.0, 1.0, 1.0]),
                volume_origin=np.array([-(n // 2), 0.0, -(n // 2)]))
t0 = time.perf_counter()
tomo.fbp(p)
t_first = time.perf_counter() - t0
clear_cache()
t0 = time.perf_counter()
tomo.fbp(p)
t_second = time.perf_counter() - t0
print(t_imp, t_first, t_second, "numba" in sys.modules)
"""


def bench_fresh(data):
    """ptynb's very first FBP (180 views) in a new process, after ``from ptynb import tomo``:
    includes numba's per-process start (import, target initialisation, cache load) besides the
    operator build. Returns (import s, first call s, next first call s, numba loaded)."""
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "in.npz")
        np.savez(npz, sino_180=data["sino_180"], ang_180=data["ang_180"])
        run = subprocess.run([sys.executable, "-W", "ignore", "-c", FRESH_SCRIPT, npz],
                             capture_output=True, text=True, timeout=300, check=False)
    if run.returncode != 0:  # pragma: no cover
        return None
    a, b, c, nb = run.stdout.split()[-4:]
    return float(a), float(b), float(c), nb == "True"


def bench_skimage(sino, ang, img, circ, repeats):
    from skimage.transform import iradon

    t, rec = median_time(lambda: iradon(sino.T, ang, circle=True, filter_name="ramp"), repeats)
    return {"fbp": t, "fbp_err": errors(rec, img, circ)}


# ---------------------------------------------------------------------------- astra
ASTRA_CANDIDATES = {
    "a": lambda a: a, "-a": lambda a: -a, "a+90": lambda a: a + 90.0, "-a+90": lambda a: 90.0 - a,
    "a-90": lambda a: a - 90.0, "-a-90": lambda a: -a - 90.0,
}
ASTRA_FLIPS = {
    "none": lambda r: r, "flipud": lambda r: r[::-1], "fliplr": lambda r: r[:, ::-1],
    "rot180": lambda r: r[::-1, ::-1], "T": lambda r: r.T, "T-flipud": lambda r: r.T[::-1],
    "T-fliplr": lambda r: r.T[:, ::-1], "T-rot180": lambda r: r.T[::-1, ::-1],
}
#: half-pixel offsets of astra's volume window (its rotation centre sits between pixels for
#: even sizes, scikit-image's at pixel n // 2)
ASTRA_OFFSETS = [(dy, dx) for dy in (-0.5, 0.0, 0.5) for dx in (-0.5, 0.0, 0.5)]


def astra_worker(npz_path, json_path):
    """Runs inside an environment where ``import astra`` works; writes results as JSON."""
    import astra

    d = np.load(npz_path)
    img, circ = d["img"], d["circ"]
    repeats = int(d["repeats"])
    sirt_iters = int(d["sirt_iters"])
    n = img.shape[0]
    res = {"version": str(getattr(astra, "__version__", "?"))}

    offset = [0.0, 0.0]

    def pad(sino):
        # astra centres the detector at (n_det - 1) / 2; scikit-image at n // 2: append a
        # zero column so that both centres coincide (odd width)
        if sino.shape[1] % 2 == 0:
            sino = np.concatenate([sino, np.zeros((sino.shape[0], 1), sino.dtype)], axis=1)
        return np.ascontiguousarray(sino)

    def setup(sino, ang_deg):
        dy, dx = offset
        vg = astra.create_vol_geom(n, n, -n / 2 + dx, n / 2 + dx, -n / 2 + dy, n / 2 + dy)
        pg = astra.create_proj_geom("parallel", 1.0, sino.shape[1], np.deg2rad(ang_deg))
        pid = astra.create_projector("linear", pg, vg)
        return vg, pg, pid

    def fbp(sino, ang_deg):
        sino = pad(sino)
        vg, pg, pid = setup(sino, ang_deg)
        sid = astra.data2d.create("-sino", pg, sino)
        rid = astra.data2d.create("-vol", vg)
        cfg = astra.astra_dict("FBP")
        cfg.update(ReconstructionDataId=rid, ProjectionDataId=sid, ProjectorId=pid)
        cfg["option"] = {"FilterType": "Ram-Lak"}
        alg = astra.algorithm.create(cfg)
        astra.algorithm.run(alg)
        rec = astra.data2d.get(rid)
        astra.algorithm.delete(alg)
        astra.data2d.delete([sid, rid])
        astra.projector.delete(pid)
        return rec

    # calibrate the angle/orientation convention on the 180-view sinogram
    sino180, ang180 = d["sino_180"], d["ang_180"]
    best = None
    for ka, fa in ASTRA_CANDIDATES.items():
        rec = fbp(sino180, fa(ang180))
        for kf, ff in ASTRA_FLIPS.items():
            e = errors(ff(rec), img, circ)
            if best is None or e[1] > best[0]:
                best = (e[1], ka, kf)
    _, ka, kf = best
    fa, ff = ASTRA_CANDIDATES[ka], ASTRA_FLIPS[kf]
    best_o = None
    for off in ASTRA_OFFSETS:
        offset[:] = off
        e = errors(ff(fbp(sino180, fa(ang180))), img, circ)
        if best_o is None or e[1] > best_o[0]:
            best_o = (e[1], off)
    offset[:] = best_o[1]
    res["convention"] = (f"angles {ka}, image {kf}, volume window offset (y, x) = "
                         f"{tuple(best_o[1])} px")
    for key in ("180", "29"):
        sino, ang = d["sino_" + key], d["ang_" + key]
        t, t_cpu, rec = median_time(lambda sino=sino, ang=ang: fbp(sino, fa(ang)), repeats, cpu=True)
        r = {"fbp": t, "fbp_cpu": t_cpu, "fbp_err": errors(ff(rec), img, circ)}
        if not sirt_iters:
            res[key] = r
            continue
        # SIRT (CPU): per-iteration time and the error curve (chunks of 10 iterations)
        sino = pad(sino)
        vg, pg, pid = setup(sino, fa(ang))
        sid = astra.data2d.create("-sino", pg, sino)
        rid = astra.data2d.create("-vol", vg, 0.0)
        cfg = astra.astra_dict("SIRT")
        cfg.update(ReconstructionDataId=rid, ProjectionDataId=sid, ProjectorId=pid)
        alg = astra.algorithm.create(cfg)
        curve = []
        for _ in range(sirt_iters // 10):
            astra.algorithm.run(alg, 10)
            curve.append(errors(ff(astra.data2d.get(rid)), img, circ)[0])
        astra.algorithm.delete(alg)
        astra.data2d.store(rid, 0.0)
        alg = astra.algorithm.create(cfg)
        t0 = time.perf_counter()
        astra.algorithm.run(alg, sirt_iters)
        t_sirt = time.perf_counter() - t0
        r.update(sirt_per_it=t_sirt / sirt_iters, sirt_err=errors(ff(astra.data2d.get(rid)), img, circ),
                 sirt_curve10=curve)
        astra.algorithm.delete(alg)
        astra.data2d.delete([sid, rid])
        astra.projector.delete(pid)
        res[key] = r
    with open(json_path, "w") as fh:
        json.dump(res, fh)


def astra_python():
    """A python executable that can import astra, or (None, reason)."""
    try:
        import astra  # noqa: F401

        return sys.executable, None
    except ImportError:
        pass
    py = VENV / "bin" / "python"
    if not py.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(VENV)],
                           check=True, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:  # pragma: no cover
            return None, f"could not create {VENV}: {e}"
    chk = subprocess.run([str(py), "-c", "import astra"], capture_output=True, timeout=120,
                         check=False)
    if chk.returncode != 0:
        inst = subprocess.run([str(py), "-m", "pip", "install", "-q", "astra-toolbox"],
                              capture_output=True, text=True, timeout=600, check=False)
        if inst.returncode != 0:
            return None, "pip install astra-toolbox failed: " + inst.stderr.strip().splitlines()[-1:][0] \
                if inst.stderr.strip() else "pip install astra-toolbox failed"
        chk = subprocess.run([str(py), "-c", "import astra"], capture_output=True, text=True,
                             timeout=120, check=False)
        if chk.returncode != 0:
            return None, "import astra failed: " + (chk.stderr.strip().splitlines() or ["?"])[-1]
    return str(py), None


def bench_astra(data, img, circ, repeats, sirt_iters):
    py, reason = astra_python()
    if py is None:
        return None, reason
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "in.npz")
        js = os.path.join(tmp, "out.json")
        np.savez(npz, img=img, circ=circ, repeats=repeats, sirt_iters=sirt_iters, **data)
        run = subprocess.run([py, str(Path(__file__).resolve()), "--astra-worker", npz, js],
                             capture_output=True, text=True, timeout=900, check=False)
        if run.returncode != 0 or not os.path.exists(js):
            tail = (run.stderr.strip().splitlines() or ["no output"])[-1]
            return None, f"astra run failed: {tail}"
        with open(js) as fh:
            return json.load(fh), None


# ---------------------------------------------------------------------------- 3D
def bench_3d(n, ny, n_ang, repeats):
    from ptynb import tomo
    from ptynb.tomo.geometry import Geometry
    from ptynb.tomo.projector import Projector, clear_cache

    clear_cache()
    g = Geometry("tomography", np.linspace(0, 180, n_ang, endpoint=False))
    op = Projector(g, (n, ny, n))
    rng = np.random.default_rng(0)
    x = rng.random((n, ny, n), dtype=np.float32)
    t0 = time.perf_counter()
    op._matrices(np, np.float32)
    build = time.perf_counter() - t0
    t_f, y = median_time(lambda: op.forward(x), repeats)
    t_a, _ = median_time(lambda: op.adjoint(y), repeats)
    vox_ang = n * ny * n * n_ang
    from ptynb.data import volume

    p = tomo.project(volume(x, voxel_size=1.0), g.angles)
    t_fbp, _ = median_time(lambda: tomo.fbp(p), max(1, repeats // 2))
    nnz = op._matrices(np, np.float32).nnz
    return {"shape": (n, ny, n), "angles": n_ang, "build": build, "fwd": t_f, "adj": t_a,
            "rate": 2 * vox_ang / (t_f + t_a), "fbp_stack": t_fbp, "nnz": nnz,
            "gfma": nnz * ny / 1e9 / ((t_f + t_a) / 2)}


def bench_lamino(n, n_ang, repeats):
    from ptynb.tomo import projector as P
    from ptynb.tomo.geometry import Geometry

    P.clear_cache()
    g = Geometry("laminography", np.linspace(0, 360, n_ang, endpoint=False), tilt=61.108)
    op = P.Projector(g, (n, n, n))
    sparse = op._general_matrix(np, np.float32) is not None
    P.clear_cache()
    x = np.random.default_rng(0).random((n, n, n), dtype=np.float32)
    t0 = time.perf_counter()
    y = op.forward(x)
    cold = time.perf_counter() - t0
    t_f, y = median_time(lambda: op.forward(x), repeats)
    t_a, _ = median_time(lambda: op.adjoint(y), repeats)
    old = P._SPARSE_MAX_NNZ
    P._SPARSE_MAX_NNZ = 0
    try:
        op2 = P.Projector(g, (n, n, n))
        t_f2, _ = median_time(lambda: op2.forward(x), 1)
        t_a2, _ = median_time(lambda: op2.adjoint(y), 1)
    finally:
        P._SPARSE_MAX_NNZ = old
    va = n ** 3 * n_ang
    return {"n": n, "angles": n_ang, "cold_fwd": cold, "sparse": sparse, "rate_sparse": 2 * va / (t_f + t_a),
            "rate_fly": 2 * va / (t_f2 + t_a2), "det": op.detector_shape}


def bench_gpu(n, ny, n_ang, img, circ, sino, ang, repeats):
    import cupy

    from ptynb import tomo
    from ptynb.tomo.geometry import Geometry
    from ptynb.tomo.projector import Projector

    p = ptynb_projections(sino, ang)
    pg = p.copy(data=cupy.asarray(p.values))
    tomo.fbp(pg)
    cupy.cuda.Device().synchronize()

    def run_fbp():
        r = tomo.fbp(pg)
        cupy.cuda.Device().synchronize()
        return r

    t_fbp, rec = median_time(run_fbp, repeats)
    err = errors(rec.data.get()[:, 0, :], img, circ)
    g = Geometry("tomography", np.linspace(0, 180, n_ang, endpoint=False))
    op = Projector(g, (n, ny, n))
    x = cupy.random.random((n, ny, n), dtype=cupy.float32)
    y = op.forward(x)
    op.adjoint(y)
    cupy.cuda.Device().synchronize()

    def fa():
        z = op.adjoint(op.forward(x))
        cupy.cuda.Device().synchronize()
        return z

    t, _ = median_time(fa, repeats)
    return {"fbp": t_fbp, "fbp_err": err, "rate": 2 * n * ny * n * n_ang / t,
            "device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()}


# ---------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--no-astra", action="store_true")
    ap.add_argument("--fbp-only", action="store_true",
                    help="only the 2D FBP table (ptynb cold / warm, scikit-image, astra)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="alternate ptynb and astra FBP measurements this many times and report "
                         "medians over rounds (default 3 with --fbp-only, else 1)")
    ap.add_argument("--astra-worker", nargs=2, metavar=("NPZ", "JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.astra_worker:
        astra_worker(*args.astra_worker)
        return

    from skimage.transform import radon

    import ptynb
    from ptynb.backend import cpu_workers, gpu_available

    t_start = time.perf_counter()
    n = 128 if args.quick else 256
    repeats = 3 if args.quick else 5
    sirt_iters = 0 if args.fbp_only else (50 if args.quick else 100)
    rounds = max(1, args.rounds if args.rounds is not None else (3 if args.fbp_only else 1))
    img, circ = phantom(n)
    print(f"# ptynb {ptynb.__version__} tomography benchmark - {platform.node()} "
          f"({platform.processor() or platform.machine()}), {os.cpu_count()} CPUs visible, "
          f"{cpu_workers()} worker threads, numpy {np.__version__}")
    print(f"start: {load_average()}")
    bw = membw()
    print(f"memory bandwidth (numpy copy of 256 MiB, read+write): {bw:.1f} GB/s")
    data = {}
    for na in (180, 29):
        ang = np.linspace(0, 180, na, endpoint=False)
        data[f"sino_{na}"] = radon(img, ang, circle=True).T.astype(np.float32)  # (angle, x)
        data[f"ang_{na}"] = ang
    t_w, hits, misses = warm_kernels()
    if hits is None:
        print(f"numba unavailable or PTYNB_TOMO_NUMBA=0: ptynb builds its operators with the "
              f"numpy fill ({t_w:.2f} s warm-up FBP)")
    else:
        print(f"numba kernel warm-up (16x16, 8 views, before any timing; "
              f"{'compiled' if misses else 'loaded from numba cache'}): {t_w:.2f} s. "
              "ptynb's 'first call' below excludes this one-time cost but includes everything "
              "done for the benchmark geometry (its ray tables; matrix-free, so no operator).")
    # rounds of ptynb then astra, side by side; SIRT / SART (full run) in the first round only
    per_round, astra_rounds, fresh_rounds, reason = [], [], [], None
    results = {}
    for r in range(rounds):
        res_r = {na: bench_ptynb(data[f"sino_{na}"], data[f"ang_{na}"], img, circ,
                                 sirt_iters if r == 0 else 0, repeats) for na in (180, 29)}
        if args.fbp_only:
            fresh_rounds.append(bench_fresh(data))
        if r == 0:
            results = {na: {"ptynb": dict(res_r[na]),
                            "skimage": bench_skimage(data[f"sino_{na}"], data[f"ang_{na}"], img,
                                                     circ, repeats)} for na in (180, 29)}
        per_round.append(res_r)
        if args.no_astra:
            reason = "skipped (--no-astra)"
        elif reason is None:
            a_r, reason = bench_astra(data, img, circ, repeats, sirt_iters if r == 0 else 0)
            if a_r is not None:
                astra_rounds.append(a_r)
                reason = None
    astra_res = json.loads(json.dumps(astra_rounds[0])) if astra_rounds else None
    keys = ("fbp_cold", "fbp_warm", "fbp_cold_cpu", "fbp_warm_cpu")
    for na in (180, 29):  # medians over rounds
        for key in keys:
            results[na]["ptynb"][key] = float(np.median([pr[na][key] for pr in per_round]))
        if astra_res:
            for key in ("fbp", "fbp_cpu"):
                astra_res[str(na)][key] = float(np.median([a[str(na)][key] for a in astra_rounds]))
    print(f"end of FBP rounds: {load_average()}")

    # ------------------------------------------------------------------ tables
    print(f"\n## 2D FBP, {n}x{n} Shepp-Logan, scikit-image radon sinogram, errors in the inscribed "
          f"circle (median of {repeats} calls{f', median over {rounds} alternating rounds' if rounds > 1 else ''})")
    print("| views | package | FBP wall time (s) | CPU time (s) | RMSE | PCC |")
    print("|---|---|---|---|---|---|")
    for na in (180, 29):
        r = results[na]
        pr = r["ptynb"]
        pe = pr["fbp_err"]
        print(f"| {na} | ptynb first call (matrix-free) | {pr['fbp_cold']:.4f} | "
              f"{pr['fbp_cold_cpu']:.4f} | {pe[0]:.4f} | {pe[1]:.4f} |")
        print(f"| {na} | ptynb later calls (operator cached) | {pr['fbp_warm']:.4f} | "
              f"{pr['fbp_warm_cpu']:.4f} | {pe[0]:.4f} | {pe[1]:.4f} |")
        se = r["skimage"]["fbp_err"]
        print(f"| {na} | scikit-image iradon | {r['skimage']['fbp']:.4f} | - | {se[0]:.4f} | {se[1]:.4f} |")
        if astra_res:
            a = astra_res[str(na)]
            print(f"| {na} | astra CPU FBP (linear; every call) | {a['fbp']:.4f} | {a['fbp_cpu']:.4f} | "
                  f"{a['fbp_err'][0]:.4f} | {a['fbp_err'][1]:.4f} |")
    if astra_res:
        print(f"\nastra {astra_res['version']} convention: {astra_res['convention']}")
        print("ptynb / astra wall-time ratio per round (median over rounds; < 1: ptynb faster):")
        for na in (180, 29):
            cold = [pr[na]["fbp_cold"] / a[str(na)]["fbp"] for pr, a in zip(per_round, astra_rounds)]
            warm = [pr[na]["fbp_warm"] / a[str(na)]["fbp"] for pr, a in zip(per_round, astra_rounds)]
            print(f"  {na} views: first call {np.median(cold):.2f} "
                  f"(rounds: {', '.join(f'{c:.2f}' for c in cold)}), later calls {np.median(warm):.2f}")
    else:
        print(f"\nastra: unavailable ({reason})")
    fr = [f for f in fresh_rounds if f is not None]
    if fr:
        what = "includes numba's per-process start" if fr[0][3] else "numba not used"
        print("\nptynb's very first FBP (180 views) in a new process, after `from ptynb import tomo` "
              f"(one per round; {what}):")
        print(f"  import {np.median([f[0] for f in fr]):.3f} s, first call "
              f"{np.median([f[1] for f in fr]):.3f} s (rounds: {', '.join(f'{f[1]:.3f}' for f in fr)}), "
              f"then with the cache cleared {np.median([f[2] for f in fr]):.3f} s")
    if args.fbp_only:
        print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f} s")
        return

    print(f"\n## SIRT / OS-SART ({sirt_iters} SIRT iterations; OS-SART 10 subsets)")
    print("| views | package | time per iteration (s) | RMSE at end | PCC at end | iterations to reach "
          "the common RMSE |")
    print("|---|---|---|---|---|---|")
    for na in (180, 29):
        r = results[na]["ptynb"]
        curve = np.asarray(r["sirt_curve"])
        target = r["sirt_err"][0]
        if astra_res:
            a = astra_res[str(na)]
            target = max(target, a["sirt_err"][0])
        it_p = int(np.argmax(curve <= target * 1.0001)) + 1 if np.any(curve <= target * 1.0001) else None
        print(f"| {na} | ptynb SIRT | {r['sirt_per_it']:.4f} | {r['sirt_err'][0]:.4f} | "
              f"{r['sirt_err'][1]:.4f} | {it_p} |")
        if astra_res:
            a = astra_res[str(na)]
            c10 = np.asarray(a["sirt_curve10"])
            it_a = (int(np.argmax(c10 <= target * 1.0001)) + 1) * 10 if np.any(c10 <= target * 1.0001) else None
            print(f"| {na} | astra CPU SIRT | {a['sirt_per_it']:.4f} | {a['sirt_err'][0]:.4f} | "
                  f"{a['sirt_err'][1]:.4f} | <= {it_a} |")
        print(f"| {na} | ptynb OS-SART (per sweep) | {r['sart_per_sweep']:.4f} | {r['sart_err'][0]:.4f} | "
              f"{r['sart_err'][1]:.4f} | ({r['sart_sweeps']} sweeps) |")

    ny3 = 16 if args.quick else 64
    n3 = 128 if args.quick else 256
    r3 = bench_3d(n3, ny3, 180, 2)
    print(f"\n## 3D projector (tomography fast path), volume {r3['shape']} (z, y, x), 180 views, float32")
    print(f"(a {ny3}-slice stack of the {n3}^3 problem: the operator is separable in y, so {n3}^3 costs "
          f"{n3 // ny3}x this)")
    print("| quantity | value |")
    print("|---|---|")
    print(f"| sparse operator build (once per geometry) | {r3['build']:.2f} s ({r3['nnz'] / 1e6:.1f} M nonzeros) |")
    print(f"| forward / adjoint | {r3['fwd']:.3f} s / {r3['adj']:.3f} s |")
    print(f"| throughput (forward + adjoint) | {r3['rate'] / 1e9:.3f} G voxel-angles/s |")
    print(f"| estimated {n3}^3 x 180 forward + adjoint | {(r3['fwd'] + r3['adj']) * n3 / ny3:.1f} s |")
    print(f"| FBP of the {ny3}-slice stack | {r3['fbp_stack']:.3f} s (issue: scikit-image 12 s, astra 8 s "
          f"for 64 slices) |")
    print(f"| sparse multiply-adds (nonzeros x slices / time) | {r3['gfma']:.2f} G/s |")
    print(f"| memory bandwidth (numpy copy, same run) | {bw:.1f} GB/s |")
    nl = 32 if args.quick else 48
    rl = bench_lamino(nl, 90, 2)
    print(f"\n## 3D laminography (general path), {nl}^3, 90 views at 61.108 deg, detector {rl['det']}")
    print("| operator | throughput (forward + adjoint) |")
    print("|---|---|")
    label = "cached sparse operator" if rl["sparse"] else "default (too large to cache: on the fly)"
    print(f"| {label} | {rl['rate_sparse'] / 1e9:.3f} G voxel-angles/s (first call incl. build "
          f"{rl['cold_fwd']:.2f} s) |")
    print(f"| on the fly (no cache) | {rl['rate_fly'] / 1e9:.4f} G voxel-angles/s |")
    if gpu_available():
        ang = data["ang_180"]
        rg = bench_gpu(n3, ny3, 180, img, circ, data["sino_180"], ang, repeats)
        print(f"\n## GPU ({rg['device']})")
        print(f"| FBP {n}x{n}, 180 views | {rg['fbp']:.4f} s, RMSE {rg['fbp_err'][0]:.4f}, PCC {rg['fbp_err'][1]:.4f} |")
        print(f"| 3D forward + adjoint throughput | {rg['rate'] / 1e9:.2f} G voxel-angles/s |")
    else:
        print("\nGPU: none here (cupy/CUDA unavailable)")
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
