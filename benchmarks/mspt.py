"""MSPT benchmark: per-tilt multislice ptychography vs py4DSTEM, and alignment + tomography vs a
paper-style method, side by side in one run.

Run from the repository root::

    python benchmarks/mspt.py            # 3 rounds; alignment on 24 tilts of 32 px (5-10 min on 2 cores)
    python benchmarks/mspt.py --quick    # smoke test: 1 round, 12 tilts of 24 px (1-2 min)
    python benchmarks/mspt.py --no-peers # no py4DSTEM
    python benchmarks/mspt.py --tilts 36 --views-px 40 --rounds 5

Every run is a fresh process of its own (``OMP_NUM_THREADS=1``, ``PTYNB_FFT_WORKERS=1``: one
thread each), so that each has its own peak resident set size: ``VmHWM`` (MiB) at its end,
in brackets the same measure before the work (after the imports for ptychography, after the
simulation for alignment). The script prints two Markdown tables, measured in this run on
this machine (``--quick`` sets 1 round, 12 tilts of 24 px, a 60 s Adam limit):

1. **Per-tilt multislice ptychography** on one simulated tilt (``--tilt-index`` of the
   3-tilt series -70, 0, +70 deg) of the MSPT workflow's default settings
   (:class:`ptynb.workflows.mspt.Settings`: 2-cell Co3O4 cube, 200 keV, 24 px detector,
   441 patterns, ``n_slices`` slices of ``slice_dz()``, ``iterations`` of ``engine``):

   * ptynb: ``ptynb.ptycho.reconstruct`` with the workflow's engine, slices, slice thickness,
     iterations and the initial probe ``ptynb.ptycho.initial_probe`` makes from the nominal
     optics;
   * py4DSTEM 0.14.18 ``MultislicePtychography`` (gradient descent; its venv is built by
     ``benchmarks/ptycho.py``'s ``peer_python`` under ``benchmarks/.venvs/py4dstem``, minutes
     the first time) via ``benchmarks/peers/py4dstem_mspt_run.py``, on the same intensities,
     positions, detector sampling, slices, slice thickness, iterations and initial probe,
     with all patterns in one gradient step (py4DSTEM's default) and with batches of
     ``--py4dstem-batch`` patterns.

   Each process first runs one warm-up iteration (numba's cached kernels, FFT plans, py4DSTEM's
   imports inside ``reconstruct``), then the timed reconstruction. Seconds per tilt: ptynb's
   ``reconstruct`` call; py4DSTEM's ``DataCube`` + constructor + ``preprocess`` +
   ``reconstruct``. Seconds per iteration: ptynb, the mean time between its iteration
   callbacks after the first; py4DSTEM, ``reconstruct`` time / iterations. The runs alternate
   in ``--rounds`` rounds (the order flipped every round); the table has medians, the time
   ratios are the medians over rounds of py4DSTEM / ptynb seconds per tilt and per
   iteration. Quality: Pearson
   correlation of the summed-slice phase with the tilt's true projected phase
   (``truth.true_projection``, the scanned field of view) after removing a least-squares
   plane from the reconstruction, best over integer shifts up to 3 px
   (``benchmarks/ptycho.py``'s ``phase_pcc``).

   Conventions, checked where both converge (``--only tilt --iterations 100 --rounds 1``: the
   log also prints the PCC of the transposed and of the negated phase, which must be lower):
   positions (y, x) in Å on the first/second scan and detector axes,
   no rotation or transpose, patterns moved to the corner by exactly Q // 2 pixels, the
   probe moved to the corner and scaled to py4DSTEM's normalisation.
2. **Alignment + tomography** on the ``projections=`` path (exact atomic projections of the
   cube with injected shifts and Euler errors, 0.02 rad noise): ptynb's
   ``ptynb.tomo.joint_refinement`` on the MSPT schedule (the workflow's
   :func:`~ptynb.workflows.mspt.tomography`), and a minimal re-implementation of the paper
   code's method for the timing only - the volume rotated per view by
   ``torch.nn.functional.grid_sample``, summed along the beam, mean squared error to the data,
   torch Adam on the volume and on the poses in turn, coarse to fine (4 x 4 pixel means for
   the first 40 rounds) - run until both its gauge-free shift
   and angle errors are at most joint refinement's (or ``--adam-time`` runs out; the table
   says which), in ``--rounds`` alternating rounds (medians; Adam's target is the first
   round's joint-refinement errors). Errors are rms against the truth after removing the
   invisible global translation and rotation; the table also gives the errors of estimating
   every pose as zero (no alignment) for reference.
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

CACHE = HERE / ".cache"
A = 1e-10
#: one thread per process: the machines are shared, and the peers run single-threaded numpy
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMBA_NUM_THREADS": "1", "PTYNB_FFT_WORKERS": "1"}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def rss_mib() -> float:
    """This process's peak resident set size (MiB): ``VmHWM`` (``peers/_common.maxrss_mb``;
    ``ru_maxrss`` carries the parent's size over fork + exec)."""
    sys.path.insert(0, str(HERE / "peers"))
    from _common import maxrss_mb

    return maxrss_mb()


def _env():
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="ignore", **ONE_THREAD)
    env.pop("PYTHONPATH", None)
    return env


def _run(cmd, timeout):
    """Run a worker; return (ok, message)."""
    try:
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False,
                           env=_env(), cwd=str(CACHE))
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout} s"
    if r.returncode:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        return False, "failed: " + " | ".join(tail)[-300:]
    return True, "ok"


# ============================================================================ 1. per tilt
def tilt_case(settings, tilt_index: int):
    """Simulate the 3-tilt series of ``settings`` and return one tilt's inputs.

    Returns dict: ``block`` (Dataset: intensity (scan, qy, qx) counts, scan_y/scan_x m, the
    measurement's attrs), ``probe`` (qy, qx) complex64 initial probe, ``truth`` (y, x) rad
    true projected phase, ``truth_y0``/``truth_x0`` (m, first truth-grid coordinates),
    ``angle`` (deg), ``opts`` (engine, iterations, slices, slice_thickness m, seed).
    """
    from ptynb.ptycho import initial_probe
    from ptynb.workflows import mspt

    s = settings.copy(n_tilts=3)
    dt = mspt.simulate(s)
    m = dt["measurement"].to_dataset()
    tr = dt["truth"].to_dataset()
    block = m[["intensity"]].isel(angle=tilt_index)
    angle = float(block["angle"].values)
    block = block.drop_vars("angle")
    n = block.sizes["qy"]
    probe = np.asarray(initial_probe(block, n, 1))[0].astype(np.complex64)
    opts = dict(engine=s.engine, iterations=int(s.iterations), slices=int(s.n_slices),
                slice_thickness=float(s.slice_dz()), seed=int(s.seed))
    return dict(block=block, probe=probe, angle=angle, opts=opts,
                truth=np.asarray(tr["true_projection"].isel(angle=tilt_index).values, np.float64),
                truth_y0=float(tr["y"].values[0]), truth_x0=float(tr["x"].values[0]))


def write_py4dstem_tilt(case, path):
    """The py4DSTEM peer's input (see ``benchmarks/peers/py4dstem_mspt_run.py``)."""
    b = case["block"]
    dx = float(b.attrs["pixel_size"])
    lam = float(b.attrs["wavelength"])
    n = b.sizes["qy"]
    ny, nx = (int(v) for v in np.asarray(b.attrs["scan_shape"]).ravel())
    sy, sx = b["scan_y"].values, b["scan_x"].values
    if not (np.all(np.diff(sy.reshape(ny, nx)[:, 0]) > 0) and np.all(np.diff(sx.reshape(ny, nx)[0]) > 0)):
        raise ValueError("the scan is not a y-slow raster of scan_shape")
    np.savez(path, intensity=np.asarray(b["intensity"].values, np.float32).reshape(ny, nx, n, n),
             positions_A=np.stack([sy, sx], 1) / A, angular_sampling_mrad=lam / (n * dx) * 1e3,
             energy_eV=float(b.attrs["energy_eV"]), semiangle_mrad=float(b.attrs["convergence_semiangle"]) * 1e3,
             defocus_A=float(b.attrs["nominal_defocus"]) / A, num_slices=case["opts"]["slices"],
             slice_thickness_A=case["opts"]["slice_thickness"] / A, iterations=case["opts"]["iterations"],
             probe=case["probe"])


def ptynb_worker(inp, out):
    """Worker process: ptynb's multislice reconstruction of one tilt (pickled case)."""
    from ptynb.ptycho import reconstruct

    rss0 = rss_mib()
    with open(inp, "rb") as f:
        case = pickle.load(f)
    o = case["opts"]
    kw = dict(engine=o["engine"], slices=o["slices"], probe=case["probe"], seed=o["seed"], progress=False,
              slice_thickness=o["slice_thickness"] if o["slices"] > 1 else None)
    reconstruct(case["block"], iterations=1, **kw)  # warm-up
    stamps = []
    t0 = time.perf_counter()
    rec = reconstruct(case["block"], iterations=o["iterations"], callback=lambda it, info: stamps.append(
        time.perf_counter()), **kw)
    total = time.perf_counter() - t0
    per = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else total / o["iterations"]
    np.savez(out, object=np.asarray(rec["object"].values, np.complex64), y0=float(rec["y"].values[0]),
             x0=float(rec["x"].values[0]), tilt_time=total, iteration_time=per, maxrss_MiB=rss_mib(),
             maxrss_start_MiB=rss0)


def tilt_pcc(case, phase, offset):
    """PCC of a summed-slice phase (2D) whose pixel (0, 0) sits at truth pixel ``offset``."""
    from ptycho import best_over_shifts, phase_pcc

    t = case["truth"]
    mask = np.ones(t.shape, bool)  # the truth grid is the scanned field of view
    return best_over_shifts(lambda r: phase_pcc(r, t, mask), phase, offset, t.shape, maximize=True)


def py4dstem_python(install: bool):
    """The py4DSTEM venv's python (``benchmarks/.venvs``, built by ``benchmarks/ptycho.py``).

    The import is checked here from ``benchmarks/.cache`` (a folder without other venvs on
    the path); only if that fails is ``ptycho.peer_python`` asked to build or repair it.
    Returns (python path or None, message).
    """
    import ptycho

    info = ptycho.PEERS["py4dstem"]
    py = ptycho.VENVS / info.get("venv", "py4dstem") / "bin" / "python"
    if py.exists():
        r = subprocess.run([str(py), "-c", f"import {info['module']}"], capture_output=True, text=True,
                           cwd=str(CACHE), env=_env(), check=False)
        if r.returncode == 0:
            return py, "ok"
    return ptycho.peer_python("py4dstem", install=install)


def per_tilt(settings, args):
    from ptycho import peer_version

    case = tilt_case(settings, args.tilt_index)
    b = case["block"]
    dx = float(b.attrs["pixel_size"])
    CACHE.mkdir(parents=True, exist_ok=True)
    inp_pt = CACHE / "mspt_tilt.pkl"
    inp_4d = CACHE / "mspt_tilt_py4dstem.npz"
    with open(inp_pt, "wb") as f:
        pickle.dump(case, f)
    write_py4dstem_tilt(case, inp_4d)
    o = case["opts"]
    info = dict(angle=case["angle"], patterns=b.sizes["scan"], detector=b.sizes["qy"], pixel=dx, **o)

    runners = {"ptynb": lambda out: [sys.executable, HERE / "mspt.py", "--ptynb-worker", inp_pt, out]}
    notes = {}
    if not args.no_peers:
        py, msg = py4dstem_python(install=not args.no_install)
        if py is None:
            notes["py4DSTEM"] = msg
        else:
            info["py4dstem_version"] = peer_version(py, "py4DSTEM")
            script = HERE / "peers" / "py4dstem_mspt_run.py"
            runners["py4DSTEM all"] = lambda out: [py, script, inp_4d, out, "--batch", 0]
            runners[f"py4DSTEM {args.py4dstem_batch}"] = lambda out: [py, script, inp_4d, out, "--batch",
                                                                     args.py4dstem_batch]
    yt, xt = case["truth_y0"], case["truth_x0"]
    pos = np.stack([(b["scan_y"].values - yt) / dx, (b["scan_x"].values - xt) / dx], 1)
    res = {k: [] for k in runners}
    names = list(runners)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            out = CACHE / f"mspt_out_{name.replace(' ', '_')}.npz"
            if out.exists():
                out.unlink()
            ok, msg = _run(runners[name](out), args.peer_timeout)
            if not ok:
                notes[name] = msg
                log(f"[tilt] {name}: {msg}")
                continue
            z = np.load(out)
            ph = np.angle(z["object"]).sum(0)
            if name == "ptynb":
                off = (round((float(z["y0"]) - yt) / dx), round((float(z["x0"]) - xt) / dx))
                t_tilt = float(z["tilt_time"])
            else:
                if not np.allclose(z["sampling_A"] * A, dx, rtol=1e-4):
                    notes[name] = f"sampling {z['sampling_A']} A != {dx / A} A"
                    continue
                off = tuple(int(v) for v in np.rint(np.median(pos - z["positions_px"], axis=0)))
                t_tilt = float(z["setup_time"]) + float(z["reconstruct_time"])
            row = dict(tilt=t_tilt, iteration=float(z["iteration_time"]), pcc=tilt_pcc(case, ph, off),
                       rss=float(z["maxrss_MiB"]), rss0=float(z["maxrss_start_MiB"]))
            res[name].append(row)
            # convention check: the transposed and the negated phase must score lower
            wrong = (tilt_pcc(case, ph.T.copy(), off[::-1]), tilt_pcc(case, -ph, off))
            log(f"[tilt] round {r + 1} {name}: {row['tilt']:.2f} s/tilt, {row['iteration']:.3f} s/it, "
                f"PCC {row['pcc']:.3f} (transposed {wrong[0]:.3f}, negated {wrong[1]:.3f}), "
                f"RSS {row['rss']:.0f} MiB")
    return dict(info=info, res=res, notes=notes, batch=args.py4dstem_batch)


def print_tilt_table(t):
    i = t["info"]
    print(f"## Per-tilt multislice ptychography: MSPT default settings, tilt {i['angle']:+.0f} deg")
    print(f"{i['patterns']} patterns of {i['detector']}x{i['detector']} px, {i['pixel'] / A:.2f} A pixels, "
          f"{i['slices']} slices of {i['slice_thickness'] / A:.2f} A, {i['iterations']} iterations, same data "
          f"and initial probe; one thread per process; medians of {len(t['res'].get('ptynb', []))} rounds")
    print()
    print("| package | method | s / tilt | s / iteration | time vs ptynb (tilt, iteration) | phase PCC "
          "| peak RSS MiB (after imports) |")
    print("|---|---|---|---|---|---|---|")
    label = {"ptynb": ("ptynb", f"{i['engine']} multislice"),
             "py4DSTEM all": (f"py4DSTEM {i.get('py4dstem_version', '')}", ("gradient descent, all patterns "
                                                                   "per step (default)")),
             f"py4DSTEM {t['batch']}": (f"py4DSTEM {i.get('py4dstem_version', '')}",
                                        f"gradient descent, batches of {t['batch']}")}
    base = t["res"].get("ptynb", [])
    for name, rows in t["res"].items():
        pkg, meth = label[name]
        if not rows:
            print(f"| {pkg} | {meth} | - | - | - | - | - | {t['notes'].get(name, '')}")
            continue
        med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
        if name == "ptynb" or len(base) != len(rows):
            ratio = "1" if name == "ptynb" else "-"
        else:
            ratio = (f"{np.median([r['tilt'] / b['tilt'] for r, b in zip(rows, base)]):.2f}x, "
                     f"{np.median([r['iteration'] / b['iteration'] for r, b in zip(rows, base)]):.2f}x")
        print(f"| {pkg} | {meth} | {med['tilt']:.2f} | {med['iteration']:.3f} | {ratio} | {med['pcc']:.3f} | "
              f"{med['rss']:.0f} ({med['rss0']:.0f}) |")
    for name, msg in t["notes"].items():
        if name not in t["res"]:
            print(f"| {name} | - | - | - | - | - | - | {msg}")
    print()
    print("time vs ptynb = medians over rounds of py4DSTEM / ptynb seconds per tilt and per iteration, "
          "measured in the same round.")


# ============================================================================ 2. alignment
def errors(ang, S_est_px, E_est, S_true_px, E_true):
    """Gauge-free rms errors: shifts (px, norm of the 2-vector) and Euler angles (deg)."""
    from ptynb.tomo import remove_null_space, rotation_gauge
    from ptynb.workflows.mspt_steps import gauge_free

    dS = remove_null_space(np.asarray(S_est_px) - S_true_px, ang)
    dE = gauge_free(np.asarray(E_est) - E_true, rotation_gauge(ang))
    return float(np.sqrt(np.mean(np.sum(dS ** 2, 1)))), float(np.sqrt(np.mean(dE ** 2)))


def paper_style(P, ang, target, S_true, E_true, time_limit, *, lr_v=0.02, lr_s=0.05, lr_e=0.002,
                volume_rounds=10, coarse_rounds=40, coarse=4):
    """Adam through grid_sample rotations of the volume (a minimal equivalent of the paper
    code's forward model and optimiser, written here for the timing only).

    The volume ``V`` (z, y, x), phase per voxel (rad), is turned per view by
    ``R = Rz(rz) Ry(ry) Rx(rx) Ry(angle)`` about the grid point ``n // 2`` (the projections'
    zero) and moved by the shift (object displacement, px) with ``affine_grid`` +
    ``grid_sample`` (trilinear), summed along z and compared with the data (mean squared
    error over the mean squared data). Each round: 5 Adam steps on ``V`` (kept >= 0), then 5
    on the poses (shifts and Euler angles, own learning rates); the poses wait
    ``volume_rounds`` rounds; the first ``coarse_rounds`` rounds compare ``coarse x coarse``
    pixel means (coarse to fine, without which the shifts stall near 1 px).

    Parameters
    ----------
    P : array (angle, n, n) float32, projections (rad); ang : (angle,) nominal tilts, deg
    target : (shift px, angle deg) gauge-free rms errors to reach
    S_true : (angle, 2) px, (y, x) object displacement; E_true : (angle, 3) deg
    time_limit : s
    lr_v : Adam step of ``V`` as a fraction of ``max(P) / n``; lr_s : px; lr_e : deg

    Returns
    -------
    (seconds, (shift err px, angle err deg), rounds, reached)
    """
    import torch
    import torch.nn.functional as F

    from ptynb.physics.atoms import rotation_matrix

    n = P.shape[-1]
    nv = len(ang)
    data = torch.tensor(P, dtype=torch.float32)
    V = torch.zeros((n, n, n), dtype=torch.float32, requires_grad=True)
    E = torch.zeros((nv, 3), dtype=torch.float32, requires_grad=True)
    S = torch.zeros((nv, 2), dtype=torch.float32, requires_grad=True)
    Rn = torch.tensor(np.stack([rotation_matrix(a, "y") for a in ang]), dtype=torch.float32)
    # grid point n // 2 in normalised coordinates (align_corners=False): 1 / n for even n, 0 for odd
    c = torch.full((nv, 3, 1), 0.0 if n % 2 else 1.0 / n)

    def rot_xyz(e):
        e = e * (math.pi / 180)
        cx, sx = torch.cos(e[:, 0]), torch.sin(e[:, 0])
        cy, sy = torch.cos(e[:, 1]), torch.sin(e[:, 1])
        cz, sz = torch.cos(e[:, 2]), torch.sin(e[:, 2])
        o, z = torch.ones_like(cx), torch.zeros_like(cx)
        Rx = torch.stack([o, z, z, z, cx, -sx, z, sx, cx], 1).view(-1, 3, 3)
        Ry = torch.stack([cy, z, sy, z, o, z, -sy, z, cy], 1).view(-1, 3, 3)
        Rz = torch.stack([cz, -sz, z, sz, cz, z, z, z, o], 1).view(-1, 3, 3)
        return Rz @ Ry @ Rx

    def forward():
        R = rot_xyz(E) @ Rn                         # sample -> lab, (x, y, z) order
        # grid_sample wants, for every output (lab) point r, the input (sample) point
        # s = R^T (r - c - t) + c, normalised (x, y, z) coordinates, t the shift
        Rt = R.transpose(1, 2)
        t = torch.stack([S[:, 1], S[:, 0], torch.zeros_like(S[:, 0])], 1)[:, :, None] * (2.0 / n)
        theta = torch.cat([Rt, c - Rt @ (c + t)], 2)
        grid = F.affine_grid(theta, (nv, 1, n, n, n), align_corners=False)
        rot = F.grid_sample(V[None, None].expand(nv, 1, n, n, n), grid, align_corners=False)
        return rot[:, 0].sum(1)                     # sum along lab z (dim 0 of z, y, x)

    def loss(k):
        d = F.avg_pool2d(data[:, None], k)[:, 0] if k > 1 else data
        f = forward()
        f = F.avg_pool2d(f[:, None], k)[:, 0] if k > 1 else f
        return torch.mean((f - d) ** 2) / torch.mean(d ** 2)

    opt_v = torch.optim.Adam([V], lr=lr_v * float(data.max()) / n)
    opt_p = torch.optim.Adam([{"params": [S], "lr": lr_s}, {"params": [E], "lr": lr_e}])

    def err():
        return errors(ang, S.detach().numpy().astype(float), E.detach().numpy().astype(float), S_true, E_true)

    t0 = time.perf_counter()
    it = 0
    reached = False
    while time.perf_counter() - t0 < time_limit:
        it += 1
        k = coarse if it <= coarse_rounds else 1
        for opt in ((opt_v,) if it <= volume_rounds else (opt_v, opt_p)):
            for _ in range(5):
                opt.zero_grad()
                loss(k).backward()
                opt.step()
                if opt is opt_v:
                    with torch.no_grad():
                        V.clamp_(min=0.0)
        if it > volume_rounds:
            e = err()
            if e[0] <= target[0] and e[1] <= target[1]:
                reached = True
                break
    return time.perf_counter() - t0, err(), it, reached


def _align_inputs(tilts, views_px):
    from ptynb.workflows import mspt

    s = mspt.Settings(n_tilts=tilts, pixel_size=0.8 * A, field_of_view=views_px * 0.8 * A)
    src = mspt.simulate_projections(s, noise=0.02)
    P = src["projections"]["projections"]
    tr = src["truth"].to_dataset()
    dx = float(s.pixel_size)
    S_true = np.stack([tr["shift_y"].values, tr["shift_x"].values], 1) / dx
    E_true = np.stack([tr[k].values for k in ("rx", "ry", "rz")], 1)
    return s, P, S_true, E_true


def align_worker(method, tilts, views_px, out, target_s=None, target_e=None, time_limit=None):
    """Worker process: simulate the projections, run one alignment method, write its result."""
    import torch

    torch.set_num_threads(1)
    s, P, S_true, E_true = _align_inputs(tilts, views_px)
    rss0 = rss_mib()
    ang = P["angle"].values
    dx = float(s.pixel_size)
    if method == "joint":
        from ptynb.workflows import mspt

        t0 = time.perf_counter()
        res = mspt.tomography(P, s)
        t = time.perf_counter() - t0
        al = res["alignment"]
        S_est = np.stack([al["shift_y"].values, al["shift_x"].values], 1) / dx
        E_est = np.stack([al[k].values for k in ("rx", "ry", "rz")], 1)
        err, it, reached = errors(ang, S_est, E_est, S_true, E_true), 0, True
    else:
        t, err, it, reached = paper_style(P.values.astype(np.float32), ang, (target_s, target_e),
                                          S_true, E_true, time_limit)
    zero = errors(ang, np.zeros_like(S_true), np.zeros_like(E_true), S_true, E_true)
    np.savez(out, time=t, shift_err=err[0], angle_err=err[1], rounds=it, reached=reached,
             zero_shift_err=zero[0], zero_angle_err=zero[1],
             maxrss_MiB=rss_mib(), maxrss_start_MiB=rss0,
             nuisance_shift=float(np.sqrt(np.mean(np.sum(S_true ** 2, 1)))),
             nuisance_angle=float(np.sqrt(np.mean(E_true ** 2))))


def alignment(args):
    """Joint refinement and the paper-style method in alternating rounds (Adam's target: the
    first round's joint-refinement errors; both are deterministic)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, HERE / "mspt.py", "--align-worker"]
    geo = ["--tilts", args.tilts, "--views-px", args.views_px]
    rows = {"joint": [], "adam": []}
    notes = []
    target = None
    for r in range(args.rounds):
        for k in (("joint", "adam") if r % 2 == 0 else ("adam", "joint")):
            if k == "adam" and target is None:
                continue  # joint refinement failed
            out = CACHE / f"mspt_align_{k}.npz"
            if out.exists():
                out.unlink()
            cmd = [*base, k, *geo, "--out", out]
            if k == "adam":
                cmd += ["--target-shift", target[0], "--target-angle", target[1], "--adam-time", args.adam_time]
            ok, msg = _run(cmd, args.peer_timeout + (args.adam_time if k == "adam" else 0))
            if not ok:
                notes.append(f"{k}: {msg}")
                log(f"[align] {k}: {msg}")
                continue
            z = {n: float(v) for n, v in np.load(out).items()}
            rows[k].append(z)
            if k == "joint" and target is None:
                target = (z["shift_err"], z["angle_err"])
            log(f"[align] round {r + 1} {k}: {z['time']:.1f} s, shift {z['shift_err']:.3f} px, angle "
                f"{z['angle_err']:.3f} deg" + (f", {z['rounds']:.0f} Adam rounds, reached {bool(z['reached'])}"
                                               if k == "adam" else ""))
        if target is None:
            break
    return {"rows": rows, "notes": notes, "args": args}


def print_align_table(al):
    a = al["args"]
    j, ad = al["rows"]["joint"], al["rows"]["adam"]
    print(f"## Alignment + tomography: {a.tilts} tilts (+-70 deg), {a.views_px} x {a.views_px} px projections "
          f"of 0.8 A, 0.02 rad noise; one thread per process; medians of {len(j)} rounds")
    if j:
        print(f"injected nuisance (before gauge removal): {j[0]['nuisance_shift']:.2f} px, "
              f"{j[0]['nuisance_angle']:.2f} deg rms")
    print()
    print("| method | seconds | shift error px (gauge-free rms) | angle error deg (gauge-free rms) | "
          "time / ptynb's | peak RSS MiB (after setup) |")
    print("|---|---|---|---|---|---|")

    def med(rows, key):
        return float(np.median([r[key] for r in rows]))

    if j:
        print(f"| ptynb mspt.tomography (joint_refinement, then atomic_refinement) | {med(j, 'time'):.1f} | {med(j, 'shift_err'):.3f} | "
              f"{med(j, 'angle_err'):.3f} | 1 | {med(j, 'maxrss_MiB'):.0f} ({med(j, 'maxrss_start_MiB'):.0f}) |")
    if ad:
        reached = all(r["reached"] for r in ad)
        extra = (f" until both errors <= ptynb's, {med(ad, 'rounds'):.0f} rounds" if reached else
                 f", time limit {a.adam_time:.0f} s: ptynb's errors not reached in "
                 f"{sum(not r['reached'] for r in ad)} of {len(ad)} runs")
        ratio = "-"
        if len(ad) == len(j):
            ratio = f"{np.median([x['time'] / y['time'] for x, y in zip(ad, j)]):.2f}x"
            ratio += "" if reached else " (lower bound)"
        print(f"| Adam + grid_sample (paper style){extra} | {med(ad, 'time'):.1f} | {med(ad, 'shift_err'):.3f} | "
              f"{med(ad, 'angle_err'):.3f} | {ratio} | {med(ad, 'maxrss_MiB'):.0f} "
              f"({med(ad, 'maxrss_start_MiB'):.0f}) |")
    if j:
        print(f"| no alignment (every pose estimated as zero), reference | - | {j[0]['zero_shift_err']:.3f} | "
              f"{j[0]['zero_angle_err']:.3f} | - | - |")
    for n in al["notes"]:
        print(f"| {n} | - | - | - | - | - |")
    print()
    print("time / ptynb's = median over rounds of (Adam seconds) / (joint refinement seconds), same round.")


# ============================================================================ main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 round, 12 tilts of 24 px, Adam <= 60 s")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds of the per-tilt and of the alignment runs (3; --quick 1)")
    ap.add_argument("--tilt-index", type=int, default=0, choices=(0, 1, 2),
                    help="tilt of the 3-tilt series -70, 0, +70 deg (default 0: -70 deg)")
    ap.add_argument("--iterations", type=int, default=None,
                    help="per-tilt iterations (default: the workflow's, 12); e.g. 100 to check conventions")
    ap.add_argument("--py4dstem-batch", type=int, default=64, help="py4DSTEM's second max_batch_size")
    ap.add_argument("--no-peers", action="store_true", help="skip py4DSTEM")
    ap.add_argument("--no-install", action="store_true", help="do not create the py4DSTEM venv")
    ap.add_argument("--only", choices=["tilt", "align"], default=None, help="run one part")
    ap.add_argument("--tilts", type=int, default=None, help="tilts of the alignment part (24; --quick 12)")
    ap.add_argument("--views-px", type=int, default=None, help="projection side, pixels of 0.8 A (32; --quick 24)")
    ap.add_argument("--adam-time", type=float, default=None,
                    help="time limit of the paper-style method, s (600; --quick 60)")
    ap.add_argument("--peer-timeout", type=int, default=1800, help="time limit of one worker, s")
    # workers (this script run by itself in a fresh process)
    ap.add_argument("--ptynb-worker", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--align-worker", choices=["joint", "adam"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--target-shift", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--target-angle", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("outfile", nargs="?", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ptynb_worker is not None:
        return ptynb_worker(args.ptynb_worker, args.outfile)
    if args.align_worker is not None:
        return align_worker(args.align_worker, args.tilts, args.views_px, args.out, args.target_shift,
                            args.target_angle, args.adam_time)
    q = args.quick
    args.rounds = args.rounds or (1 if q else 3)
    args.tilts = args.tilts or (12 if q else 24)
    args.views_px = args.views_px or (24 if q else 32)
    args.adam_time = args.adam_time or (60.0 if q else 600.0)
    for k in ("rounds", "tilts", "views_px", "iterations"):
        if getattr(args, k) is not None and getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1")

    from ptynb import __version__
    from ptynb.workflows import mspt

    started = time.time()
    st = mspt.Settings() if args.iterations is None else mspt.Settings(iterations=args.iterations)
    tilt = per_tilt(st, args) if args.only in (None, "tilt") else None
    align = alignment(args) if args.only in (None, "align") else None
    git = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                         text=True, check=False).stdout.strip() or "?"
    print(f"# ptynb {__version__} ({git}) MSPT benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores (shared), "
          f"load average {os.getloadavg()[0]:.1f}; python {platform.python_version()}, numpy {np.__version__}"
          f"{'; quick mode' if q else ''}")
    print()
    if tilt is not None:
        print_tilt_table(tilt)
        print()
    if align is not None:
        print_align_table(align)
        print()
    print(f"total {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
