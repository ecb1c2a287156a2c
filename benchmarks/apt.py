"""APT timings on the CPU (medians): Approximant per angle vs FBP/SIRT/SART of the same angles,
network inference per volume, training time per epoch (a short run of the shipped recipe).

    python benchmarks/apt.py [--repeats 3]

The paper (MIT Supercloud, 2 V100): 38 min acquisition + reconstruction in all, 45 s inference on
its 4.48 x 93.2 x 3.92 um test volume. Here the projections path (no ptychography) on small volumes.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _median(fn, repeats):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from ptynb import tomo
    from ptynb.workflows import apt
    from ptynb.workflows import apt_steps as steps

    out = {}
    model, arch, meta = steps.load_model()
    for lateral in (64, 128):
        s = apt.Settings(n_lateral=lateral)
        sim = apt.simulate(s)
        P = sim["projections"].to_dataset()["projections"]
        n = P.sizes["angle"]
        a = steps.approximant(P)
        xa, _, _ = steps.standardize(a.values)
        key = f"32x{lateral}x{lateral}"
        out[key] = {
            "approximant_per_angle_s": _median(lambda: steps.approximant(P), args.repeats) / n,
            "fbp_per_angle_s": _median(lambda: tomo.fbp(P), args.repeats) / n,
            "sirt100_per_angle_s": _median(lambda: tomo.sirt(P, 100, progress=False), 1) / n,
            "sart10_per_angle_s": _median(lambda: tomo.sart(P, 10, 10, progress=False), args.repeats) / n,
            "inference_per_volume_s": _median(lambda: steps.apply_model(model, xa, arch["patch"]), args.repeats),
        }
    ts = apt.TrainSettings(n_train=4, n_val=1, draws=1, iterations=10)
    r = apt.train_model(ts, progress=False)
    out["train_per_iteration_s"] = r["meta"]["seconds_train"] / 10
    out["train_per_epoch_s_shipped_recipe"] = out["train_per_iteration_s"] * 864 / 4
    out["shipped_meta"] = {k: meta[k] for k in ("seconds_train", "seconds_per_epoch", "seconds_data", "patches")}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
