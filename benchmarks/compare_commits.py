"""Side-by-side timing of two commits: did a change make anything slower?

Run from the repository root::

    python benchmarks/compare_commits.py 9fa6f40          # that commit vs the working tree
    python benchmarks/compare_commits.py 9fa6f40 --rounds 7

The base commit is checked out in a temporary git worktree. Each case runs in a fresh Python
process with ``PYTHONPATH`` pointing at one tree, alternating base / working tree round by
round (so drifting load on a shared machine hits both alike); each process times its case a
few times after one warm-up call and reports its best. The table gives the median over rounds
and the ratio working tree / base (< 1: faster). Only public APIs are used, so both trees run
the same code paths. Numba kernels are compiled (and cached on disk) in the warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: case name -> Python source run in the tree under test; it must print one JSON float (s)
CASES = {
    "ePIE 10 it, 100 x 64^2": """
import time, numpy as np, ptynb
m = ptynb.simulate.demo(kind="xray", seed=0)
run = lambda: ptynb.ptycho.reconstruct(m, engine="epie", iterations=10, progress=False)
run()
""",
    "LSQ-ML 10 it, 100 x 64^2": """
import time, numpy as np, ptynb
m = ptynb.simulate.demo(kind="xray", seed=0)
run = lambda: ptynb.ptycho.reconstruct(m, engine="lsqml", iterations=10, progress=False)
run()
""",
    "multislice ePIE 5 it, 3 slices, 100 x 64^2": """
import time, numpy as np, ptynb
m = ptynb.simulate.demo(kind="electron", seed=0)
run = lambda: ptynb.ptycho.reconstruct(m, engine="epie", iterations=5, slices=3,
                                       slice_thickness=5e-9, progress=False)
run()
""",
    "FBP 256^2, 180 views (first call)": """
import time, numpy as np, ptynb
from skimage.data import shepp_logan_phantom
from skimage.transform import resize
img = resize(shepp_logan_phantom(), (256, 256), anti_aliasing=True).astype(np.float32)
vol = ptynb.data.volume(img[:, None, :], voxel_size=1.0)
ang = np.linspace(0, 180, 180, endpoint=False)
P = ptynb.tomo.project(vol, ang)
import ptynb.tomo.projector as _pj
def run():  # a first call: no cached operator or ray table (the same caches in both trees)
    _pj.Projector._cache.clear()
    _pj._RAYS.clear()
    ptynb.tomo.fbp(P)
run()
""",
    "SIRT 20 it, 128^2, 90 views": """
import time, numpy as np, ptynb
from skimage.data import shepp_logan_phantom
from skimage.transform import resize
img = resize(shepp_logan_phantom(), (128, 128), anti_aliasing=True).astype(np.float32)
vol = ptynb.data.volume(img[:, None, :], voxel_size=1.0)
P = ptynb.tomo.project(vol, np.linspace(0, 180, 90, endpoint=False))
run = lambda: ptynb.tomo.sirt(P, iterations=20, progress=False)
run()
""",
}

TIMER = """
import json, time, warnings
warnings.simplefilter("ignore")
{setup}
best = float("inf")
for _ in range({repeats}):
    t0 = time.perf_counter(); run(); best = min(best, time.perf_counter() - t0)
print(json.dumps(best))
"""


def _time(tree: Path, case: str, repeats: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), PTYNB_FFTW_WISDOM=os.environ.get("PTYNB_FFTW_WISDOM", ""))
    src = TIMER.format(setup=CASES[case], repeats=repeats)
    out = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, env=env,
                         cwd=tempfile.gettempdir(), timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{case} failed in {tree}:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="base commit (e.g. the commit before a refactor)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per case (default 5)")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per process (best kept)")
    ap.add_argument("--only", action="append", help="run only cases whose name contains this")
    args = ap.parse_args(argv)
    wt = Path(tempfile.mkdtemp(prefix="ptynb-base-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(wt), args.base], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        rows = []
        for case in CASES:
            if args.only and not any(o in case for o in args.only):
                continue
            base, head = [], []
            for _ in range(args.rounds):
                base.append(_time(wt, case, args.repeats))
                head.append(_time(ROOT, case, args.repeats))
            mb, mh = statistics.median(base), statistics.median(head)
            rows.append((case, mb, mh, mh / mb))
            print(f"{case:45s} base {mb:8.3f} s   now {mh:8.3f} s   ratio {mh / mb:5.2f}", flush=True)
        print(json.dumps({"base": args.base, "rounds": args.rounds,
                          "cases": {c: {"base_s": b, "now_s": h, "ratio": r} for c, b, h, r in rows}}))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
