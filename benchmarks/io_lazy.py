"""I/O benchmark: lazy open, single-pattern reads and bulk throughput, HDF5 vs Zarr.

Prints a table of ptynb.io timings next to this machine's limits measured in the same run
(a raw sequential read of the same HDF5 file's bytes, and an in-memory copy of the array).

    python benchmarks/io_lazy.py              # 256 MiB measurement of 128x128 patterns
    python benchmarks/io_lazy.py --mib 1024   # bigger
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _timeit(fn, repeat=1):
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _sparse_2gib(path: Path, n_scan=8192, n=256):
    """A 2 GiB measurement file whose intensity chunks are allocated but never written."""
    import h5netcdf
    import h5py

    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"scan": n_scan, "qy": n, "qx": n}
        f.attrs.update({"kind": "measurement", "radiation": "xray", "energy_eV": 8000.0,
                        "pixel_size": 1e-8, "_ptynb_io_object": "Dataset"})
        for name, vals in (("scan", np.arange(n_scan)), ("qy", np.arange(n) - n // 2.0),
                           ("qx", np.arange(n) - n // 2.0)):
            f.create_variable(name, (name,), vals.dtype, data=vals)
        f.create_variable("scan_y", ("scan",), "f8", data=np.zeros(n_scan))
        f.create_variable("scan_x", ("scan",), "f8", data=np.zeros(n_scan))
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        v = f.create_variable("intensity", ("scan", "qy", "qx"), "f4", chunks=(1, n, n), dcpl=dcpl)
        v.attrs["coordinates"] = "scan_y scan_x"


def main(argv=None):
    from ptynb import data as D
    from ptynb import io

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=float, default=256.0, help="measurement size (MiB)")
    ap.add_argument("--n", type=int, default=128, help="detector pixels per side")
    ap.add_argument("--dir", default=None, help="scratch directory (default: system temp)")
    args = ap.parse_args(argv)

    n = args.n
    n_scan = max(1, int(args.mib * 2**20 // (n * n * 4)))
    rng = np.random.default_rng(0)
    inten = rng.poisson(3.0, (n_scan, n, n)).astype(np.float32)
    sy, sx = np.meshgrid(np.arange(int(np.ceil(np.sqrt(n_scan)))), np.arange(int(np.ceil(np.sqrt(n_scan)))))
    sy, sx = sy.ravel()[:n_scan] * 5e-8, sx.ravel()[:n_scan] * 5e-8
    m = D.measurement(inten, sy, sx, radiation="xray", energy_eV=8000.0, pixel_size=1e-8)
    mib = inten.nbytes / 2**20
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        big = tmp / "big.h5"
        _sparse_2gib(big)
        io.load(big, lazy=True).close()  # warm imports
        t, ds = _timeit(lambda: io.load(big, lazy=True), repeat=3)
        rows.append(("lazy open, 2 GiB HDF5 (8192 x 256^2)", f"{t * 1e3:.1f} ms", ""))
        ds.close()

        t_copy, _ = _timeit(lambda: inten.copy(), repeat=3)
        for suffix in (".h5", ".zarr"):
            path = tmp / f"m{suffix}"
            t, _ = _timeit(lambda p=path: io.save(m, p))
            rows.append((f"save {suffix} ({mib:.0f} MiB)", f"{t:.2f} s", f"{mib / t:.0f} MiB/s"))
            t, _ = _timeit(lambda p=path: io.load(p))
            rows.append((f"load {suffix} (eager)", f"{t:.2f} s", f"{mib / t:.0f} MiB/s"))
            t, lazy = _timeit(lambda p=path: io.load(p, lazy=True), repeat=3)
            rows.append((f"lazy open {suffix}", f"{t * 1e3:.1f} ms", ""))
            idx = iter(rng.integers(0, n_scan, 40).tolist())
            t, _ = _timeit(lambda lz=lazy, it=idx: lz["intensity"][next(it)].values, repeat=20)
            rows.append((f"one pattern via lazy dataset {suffix}", f"{t * 1e3:.2f} ms", ""))
            t, _ = _timeit(lambda p=path, it=idx: io.open_intensity(p, next(it)), repeat=20)
            rows.append((f"one pattern via open_intensity {suffix}", f"{t * 1e3:.2f} ms", ""))
            if suffix == ".h5":
                def raw(p=path):
                    with open(p, "rb", buffering=0) as fh:
                        while fh.read(1 << 24):
                            pass
                t_raw, _ = _timeit(raw, repeat=3)
                size = os.path.getsize(path) / 2**20
                rows.append(("limit: raw read of the .h5 bytes (page cache)", f"{t_raw:.2f} s",
                             f"{size / t_raw:.0f} MiB/s"))
    rows.append(("limit: in-memory copy of the array", f"{t_copy:.3f} s", f"{mib / t_copy:.0f} MiB/s"))
    w = max(len(r[0]) for r in rows)
    print(f"{'operation':<{w}}  {'time':>10}  {'throughput':>12}")
    for name, t, thr in rows:
        print(f"{name:<{w}}  {t:>10}  {thr:>12}")


if __name__ == "__main__":
    main()
