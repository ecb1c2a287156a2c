"""ADePt: time and peak memory per training iteration, ptynb's projector vs a grid_sample rotation.

Same network (the DIP U-Net of :mod:`ptynb.learn.dip`), same volume, same angles, same loss
(0.5 * relative squared misfit), side by side in one run; each configuration runs in its own
subprocess so that its peak resident memory is its own. Projectors:

* ``ptynb``: the exact-adjoint Joseph laminography projector through
  :func:`ptynb.tomo.torch_ops.project_torch` (backward = the adjoint operator).
* ``grid_sample``: a minimal rotate-and-sum projector like the released ADePt script's (written
  here for the timing only): each view rotates the volume by ``sample_to_lab`` with
  ``torch.nn.functional.affine_grid`` / ``grid_sample`` (trilinear) into a cube of the
  detector's size and sums along the beam; the backward pass is autograd's.

Usage: ``python benchmarks/adept.py [--iterations 20] [--sizes ci,default]``. Prints a markdown
table of the median seconds per iteration and the peak RSS increase (MiB) over the set-up.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SIZES = {"ci": ((16, 32, 32), 64, 16, 0.25), "default": ((24, 48, 48), 128, 16, 0.25),
         "default-8": ((24, 48, 48), 128, 8, 0.25)}


def grid_sample_project(u, angles_deg, tilt, det):
    """(angle, det, det) projections of ``u`` (z, y, x) by rotation + sum along the beam (lab z)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ptynb.physics.rotations import sample_to_lab

    nz, ny, nx = u.shape
    n = det
    pad = [(n - nx) // 2, n - nx - (n - nx) // 2, (n - ny) // 2, n - ny - (n - ny) // 2,
           (n - nz) // 2, n - nz - (n - nz) // 2]
    cube = F.pad(u, pad)[None, None]
    R = np.asarray(sample_to_lab(np.asarray(angles_deg, float), tilt))  # (angle, 3, 3) on (z, y, x)
    out = []
    for r in R:
        # lab (z, y, x) -> sample: r^T; affine_grid wants (x, y, z) order
        m = r.T[::-1, ::-1].copy()
        theta = torch.zeros(1, 3, 4, dtype=u.dtype)
        theta[0, :, :3] = torch.as_tensor(m, dtype=u.dtype)
        grid = F.affine_grid(theta, (1, 1, n, n, n), align_corners=False)
        out.append(F.grid_sample(cube, grid, mode="bilinear", align_corners=False)[0, 0].sum(0))
    return torch.stack(out)


def one(size: str, projector: str, iterations: int) -> dict:
    import resource
    import time

    import numpy as np
    import torch

    from ptynb.learn.dip import DIPOptions, build_dip
    from ptynb.tomo.torch_ops import project_torch
    from ptynb.workflows import adept

    torch.set_num_threads(1)
    shape, n_angles, step, width = SIZES[size]
    s = adept.Settings(volume_shape=shape, n_angles=n_angles, subsample=step, width=width)
    P = adept.subsample(adept.simulate(s)["projections"]["projections"], step)
    op = adept._op_of(P)
    dz = float(op.voxel_size[0])
    model = build_dip(shape, DIPOptions(width=width), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ang = P["angle"].values
    det = max(op.detector_shape)
    if projector == "ptynb":
        Y = torch.as_tensor(P.values)

        def fwd(u):
            return project_torch(u / dz, op)
    else:
        Y = grid_sample_project(torch.as_tensor(np.asarray(adept.simulate(s)["truth"]["volume"].values) * dz),
                                ang, s.tilt, det).detach()

        def fwd(u):
            return grid_sample_project(u, ang, s.tilt, det)
    norm = float((Y ** 2).mean())
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        opt.zero_grad()
        u = model()
        loss = 0.5 * ((fwd(u) - Y) ** 2).mean() / norm
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # projector alone (forward + backward), to separate it from the network
    x = torch.zeros(shape, requires_grad=True)
    pt = []
    for _ in range(iterations):
        t = time.perf_counter()
        fwd(x).sum().backward()
        pt.append(time.perf_counter() - t)
    return {"size": size, "projector": projector, "shape": list(shape), "angles": int(P.sizes["angle"]),
            "detector": list(op.detector_shape) if projector == "ptynb" else [det, det],
            "median_s": float(np.median(times[1:] if len(times) > 1 else times)),
            "projector_median_s": float(np.median(pt[1:] if len(pt) > 1 else pt)),
            "peak_rss_increase_mib": (rss1 - rss0) / 1024.0, "peak_rss_mib": rss1 / 1024.0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--sizes", default="ci,default")
    ap.add_argument("--one", nargs=2, metavar=("SIZE", "PROJECTOR"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], a.iterations)))
        return
    rows = []
    for size in a.sizes.split(","):
        for proj in ("ptynb", "grid_sample"):
            out = subprocess.run([sys.executable, __file__, "--iterations", str(a.iterations), "--one", size, proj],
                                 capture_output=True, text=True, check=False, env=dict(os.environ, PYTHONWARNINGS="ignore"))
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| volume (z, y, x) | angles | projector | detector | s / iteration (median) | projector fwd+bwd s | "
          "peak RSS increase MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {tuple(r['shape'])} | {r['angles']} | {r['projector']} | {tuple(r['detector'])} | "
              f"{r['median_s']:.4f} | {r['projector_median_s']:.4f} | {r['peak_rss_increase_mib']:.1f} | "
              f"{r['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
