"""APT timings on the CPU (medians): Approximant per angle vs FBP/SIRT/SART of the same angles,
network inference per volume, training time per epoch (a short run of the shipped recipe), and
the ptychographic Approximant per angle (2 ePIE iterations, L = 5, M = 2) vs ptynb's full
reconstruction of the same angle (same engine and model, 100 iterations), side by side.

    python benchmarks/apt.py [--repeats 3] [--only ptycho]

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


def ptycho_per_angle(repeats=3, shapes=((32, 32, 32), (32, 64, 64)), full_iterations=100):
    """Ptychographic Approximant vs full reconstruction of one angle (median seconds per angle).

    Per shape: a held-out IC, ptycho-tomography at 0 and 17 deg (``apt_ptycho.simulate_measurement``,
    M = 2 modes, L = 5 slices); the Approximant's reconstruction (2 ePIE iterations, step 1/L)
    and the full one (``full_iterations`` of the same) of the 17-deg angle alone, medians of
    ``repeats``; the PCC of each one's summed slice phase with the ideal projection says what
    the extra time buys. Printed as a table; returns a dict.
    """
    import warnings

    from ptynb import metrics
    from ptynb.workflows import apt_ptycho as ap
    from ptynb.workflows import apt_steps as steps

    rows = {}
    for shape in shapes:
        seed = steps.seeds_for("test", 1, 0)[0]
        q = steps.simulate_ic(seed, shape, 14e-9)["q"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = ap.simulate_measurement(q, [0.0, 17.0], modes=2, seed=seed)
        one = m.isel(angle=[1])
        ideal = steps.phase_projections(q, [17.0]).values[0]
        row = {"positions": int(m.sizes["scan"]), "detector": int(m.sizes["qx"])}
        for name, it in (("approximant", 2), ("full", int(full_iterations))):
            out = {}

            def go(it=it, out=out, one=one):
                out["ph"] = ap.ptycho_phases(one, iterations=it, slices=5, modes=2)

            row[f"{name}_s"] = _median(go, repeats)
            row[f"{name}_pcc"] = float(metrics.pcc(ideal, ap.ptycho_projections(out["ph"]).values[0]))
        row["ratio"] = row["full_s"] / row["approximant_s"]
        rows["x".join(map(str, shape))] = row
    print(f"\nptychographic Approximant vs full reconstruction, one angle (17 deg), medians of {repeats}")
    print(f"{'volume':>10} {'positions':>9} {'approx 2 it (s)':>15} {'PCC':>5} "
          f"{'full ' + str(full_iterations) + ' it (s)':>17} {'PCC':>5} {'full/approx':>11}")
    for k, r in rows.items():
        print(f"{k:>10} {r['positions']:>9} {r['approximant_s']:>15.3f} {r['approximant_pcc']:>5.2f} "
              f"{r['full_s']:>17.3f} {r['full_pcc']:>5.2f} {r['ratio']:>11.1f}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["all", "ptycho"], default="all")
    args = ap.parse_args(argv)
    if args.only == "ptycho":
        return {"ptycho_per_angle": ptycho_per_angle(args.repeats)}
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
    out["ptycho_per_angle"] = ptycho_per_angle(args.repeats)
    return out


if __name__ == "__main__":
    main()
