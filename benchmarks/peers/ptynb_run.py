"""Run ptynb on a benchmark input in its own process (so its peak memory is measured like a peer's).

Usage (the python that has ptynb installed)::

    python ptynb_run.py IN.npz MEAS.pkl OUT.npz --engine lsqml --iterations 30 [--threads 2]

IN.npz: the common peer input (``_common.py``; ptynb uses its ``probe``, ``n_slices``,
``slice_thickness_m`` and ``truth_origin_m``); MEAS.pkl: the pickled ptynb measurement
(xarray Dataset, no ground truth) that ``benchmarks/ptycho.py`` simulated; OUT.npz: the common
output. ``--kw key=value`` passes extra ``ptynb.ptycho.reconstruct`` keywords (values parsed
as Python literals, else strings). The object is read in ptynb's callback (called every
iteration; it hands over host copies of object and probe, a cost that is counted).
Set-up inside ``reconstruct`` before the first iteration is split off as in ``_common.py``.
"""
import argparse
import ast
import os
import sys
import time

T_START = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the ptynb of this checkout, not whatever an installed (editable) ptynb points to
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from _common import Recorder, save_result, set_threads, snapshot_iterations


def _literal(v):
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("meas")
    ap.add_argument("out")
    ap.add_argument("--engine", default="lsqml", help='an engine name, or "default" (engine=None)')
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--kw", action="append", default=[], help="key=value reconstruct keyword")
    a = ap.parse_args()
    set_threads(a.threads)

    import pickle

    import numpy as np

    import ptynb
    from ptynb.ptycho import reconstruct

    d = np.load(a.data)
    with open(a.meas, "rb") as f:
        meas = pickle.load(f)
    kw = dict(kv.split("=", 1) for kv in a.kw)
    kw = {k: _literal(v) for k, v in kw.items()}
    S = int(d["n_slices"])
    rec = Recorder(a.iterations, snapshot_iterations(a.iterations))
    probe = np.asarray(d["probe"])
    setup = time.perf_counter() - T_START
    rec.start()  # ptynb's own set-up (checks, FFT plans) runs inside reconstruct: see _common
    engine = None if a.engine == "default" else a.engine  # None: the radiation's default chain
    out = reconstruct(meas, engine=engine, iterations=a.iterations, probe=probe, slices=S,
                      slice_thickness=float(d["slice_thickness_m"]) if S > 1 else None,
                      progress=False, callback=lambda it, info: rec.tick(lambda: info["object"]),
                      **kw)
    y0, x0 = (float(v) for v in d["truth_origin_m"])
    dx = float(d["pixel_size_m"])
    off = (int(round((float(out["y"].values[0]) - y0) / dx)),
           int(round((float(out["x"].values[0]) - x0) / dx)))
    save_result(a.out, rec, setup_time=setup, offset=off,
                version=ptynb.__version__, note=f"{a.engine} {kw}" if kw else a.engine)
    print(f"ptynb {a.engine} ({os.path.dirname(ptynb.__file__)}): {a.iterations} iterations in "
          f"{rec.elapsed:.2f} s")


if __name__ == "__main__":
    main()
