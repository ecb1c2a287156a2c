"""ptynb LSQ-ML on measured counts: Tike's ``siemens-star-small`` test dataset, scored by misfit.

Run from the repository root::

    python benchmarks/siemens_star.py                  # 60 LSQ-ML iterations, table per iteration
    python benchmarks/siemens_star.py --iterations 100 --batch-size 32 --json out.json

The data
--------
Tike's test file ``tests/data/siemens-star-small.npz.bz2`` (github.com/AdvancedPhotonSource/tike,
3.35 MB, not part of ptynb): 516 measured far-field patterns of 128 x 128 pixels in integer
counts (about 4.6e5 counts per pattern, 52 % of the pixels zero), scan positions in pixels and
a single-mode initial probe; no ground truth, no mask, no pixel size and no energy. The script
reads it from ``benchmarks/.cache/siemens-star-small.npz.bz2`` (gitignored); when it is missing
it says how to get it (``git clone --depth 1`` of Tike, or download that file, and copy it
there). Conventions assumed here: Tike's patterns are in FFT order (zero frequency at pixel 0,
they are ``fftshift``-ed to ptynb's detector-centred order), positions are the top-left corners
of the probe window in object pixels, the real-space pixel is :data:`PIXEL_SIZE` (an assumed
10 nm; the file gives none) and the photon energy :data:`ENERGY_EV` (assumed 10 keV; neither
enters a single-slice reconstruction, only the metre units of the coordinates).

Misfit measures
---------------
Computed from the model far-field intensity ``I_m`` (counts, ptynb's forward model: exit wave
``P(r - r_j) O(r)`` with Fourier sub-pixel shifts of the probe, orthonormal FFT, incoherent sum
over probe modes) and the counts ``d`` over the valid detector pixels of every pattern; the
functions are public so that other packages' results can be scored the same way
(:func:`misfit_measures`, :func:`score`):

* :func:`r_factor` -- amplitude R-factor ``sum |sqrt(I_m) - sqrt(d)| / sum sqrt(d)``;
* :func:`poisson_cost` -- Poisson negative log-likelihood minus its value at ``I_m = d``,
  ``sum (I_m - d log I_m) - (d - d log d)`` divided by ``sum d`` (0 at a perfect fit; the
  cost ptynb's Poisson engines report per iteration);
* :func:`squared_misfit` -- ``sum (sqrt(I_m) - sqrt(d))^2 / sum d`` (the table also prints
  it per pixel, ``sum (...)^2 / valid pixels``: times the mean counts per pixel, 28.15 here);
* :func:`absolute_misfit` -- ``mean |sqrt(I_m) - sqrt(d)|`` per valid pixel (sqrt-count units).
"""
from __future__ import annotations

import argparse
import bz2
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CACHE = HERE / ".cache"
DATA_FILE = CACHE / "siemens-star-small.npz.bz2"
#: sha256 of the file read here (Tike's git blob 362e75a5b73c...)
DATA_SHA256 = "dbce7715c1d4a7c28a48f684dacc7d343fbc5d06fe993d6ea31714ffb5c68d3d"
#: assumed real-space pixel (m): the file gives none
PIXEL_SIZE = 10e-9
#: assumed photon energy (eV): the file gives none
ENERGY_EV = 10_000.0
#: floor of the model intensity (counts) in the logarithm of the Poisson cost (ptynb's eps)
EPS = 1e-6

__all__ = ["DATA_FILE", "ENERGY_EV", "PIXEL_SIZE", "absolute_misfit", "load", "measurement",
           "misfit_measures", "model_intensity", "poisson_cost", "r_factor", "run_ptynb",
           "score", "score_reconstruction", "squared_misfit"]

HOW_TO_GET = f"""The siemens-star test data are missing: {DATA_FILE}
They are Tike's test file (not part of ptynb). Either
    git clone --depth 1 https://github.com/AdvancedPhotonSource/tike /tmp/tike
    mkdir -p {CACHE} && cp /tmp/tike/tests/data/siemens-star-small.npz.bz2 {CACHE}/
or download tests/data/siemens-star-small.npz.bz2 from that repository into {CACHE}/."""


# ============================================================================ data
def load(path: Path | str = DATA_FILE) -> dict:
    """Read Tike's ``siemens-star-small.npz.bz2``.

    Returns
    -------
    dict
        ``data`` float32 (516, 128, 128) counts, detector-centred (Tike's FFT order shifted);
        ``scan`` float64 (516, 2) top-left probe-window corners (pixels, as in the file);
        ``probe`` complex64 (128, 128) (Tike's initial probe, its own power).

    Raises
    ------
    FileNotFoundError
        With instructions when the file is not there.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(HOW_TO_GET)
    with bz2.open(path, "rb") as f:
        arc = np.load(io.BytesIO(f.read()))
        data = np.asarray(arc["data"][0], dtype=np.float32)  # (J, N, N)
        scan = np.asarray(arc["scan"][0], dtype=np.float64)  # (J, 2)
        probe = np.asarray(arc["probe"], dtype=np.complex64).reshape(-1, *data.shape[-2:])[0]
    return {"data": np.fft.fftshift(data, axes=(-2, -1)), "scan": scan, "probe": probe}


def measurement(raw: dict | None = None):
    """The dataset as a ptynb measurement Dataset (X-ray, :data:`PIXEL_SIZE`,
    :data:`ENERGY_EV`; positions = probe-window centres in metres)."""
    from ptynb.data import measurement as make

    raw = load() if raw is None else raw
    n = raw["data"].shape[-1]
    centres = (raw["scan"] + n // 2) * PIXEL_SIZE  # (J, 2) m
    return make(raw["data"], centres[:, 0], centres[:, 1], radiation="xray",
                energy_eV=ENERGY_EV, pixel_size=PIXEL_SIZE, source="tike siemens-star-small")


# ============================================================================ measures
def _valid(d, mask):
    if mask is None:
        return np.ones(d.shape, bool)
    m = np.asarray(mask, bool)
    if m.shape != d.shape[-2:]:
        raise ValueError(f"mask {m.shape} does not match the patterns {d.shape[-2:]}")
    return np.broadcast_to(m, d.shape)


def _check(I_m, d):
    I_m = np.asarray(I_m, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    if I_m.shape != d.shape:
        raise ValueError(f"model intensity {I_m.shape} and counts {d.shape} differ in shape")
    if np.any(d < 0) or not np.all(np.isfinite(d)) or not np.all(np.isfinite(I_m)):
        raise ValueError("counts must be finite and >= 0, model intensities finite")
    return np.maximum(I_m, 0.0), d


def r_factor(I_m, d, mask=None) -> float:
    """Amplitude R-factor ``sum |sqrt(I_m) - sqrt(d)| / sum sqrt(d)`` over valid pixels.

    Parameters
    ----------
    I_m, d : array (J, N, N)
        Model intensity and measured counts (same units: counts), detector-centred or not
        (the same order for both and for ``mask``).
    mask : bool array (N, N), optional
        True = valid pixel (default: all valid).

    Returns
    -------
    float
        Dimensionless; 0 is a perfect fit.
    """
    I_m, d = _check(I_m, d)
    v = _valid(d, mask)
    a, b = np.sqrt(I_m[v]), np.sqrt(d[v])
    return float(np.abs(a - b).sum() / b.sum())


def poisson_cost(I_m, d, mask=None, eps: float = EPS) -> float:
    """Poisson cost relative to the perfect fit, normalised by the total counts.

    ``[sum (I_m - d log I_m) - sum (d - d log d)] / sum d`` over valid pixels
    (``0 log 0 = 0``; ``I_m`` floored at ``eps`` counts inside the log). Half the Poisson
    deviance per measured count: 0 at ``I_m = d``, >= 0 otherwise; equal to the cost
    ptynb's Poisson engines report per iteration (their model floor is the same 1e-6 counts).
    Multiply by ``sum d / (valid pixels)`` for the mean per pixel.

    Parameters
    ----------
    I_m, d : array (J, N, N)
        Model intensity and measured counts (counts).
    mask : bool array (N, N), optional
        True = valid pixel.
    eps : float
        Floor of ``I_m`` in the logarithm (counts).

    Returns
    -------
    float
        Dimensionless (per measured count).
    """
    I_m, d = _check(I_m, d)
    v = _valid(d, mask)
    m, c = I_m[v], d[v]
    dlogd = np.where(c > 0, c * np.log(np.where(c > 0, c, 1.0)), 0.0)
    val = (m - c * np.log(m + eps)) - (c - dlogd)
    return float(val.sum() / c.sum())


def squared_misfit(I_m, d, mask=None) -> float:
    """Squared amplitude misfit ``sum (sqrt(I_m) - sqrt(d))^2 / sum d`` over valid pixels.

    Parameters
    ----------
    I_m, d : array (J, N, N)
        Model intensity and measured counts (counts).
    mask : bool array (N, N), optional
        True = valid pixel.

    Returns
    -------
    float
        Dimensionless; the Gaussian-amplitude cost per measured count.
    """
    I_m, d = _check(I_m, d)
    v = _valid(d, mask)
    r = np.sqrt(I_m[v]) - np.sqrt(d[v])
    return float((r * r).sum() / d[v].sum())


def absolute_misfit(I_m, d, mask=None) -> float:
    """Absolute amplitude misfit ``mean |sqrt(I_m) - sqrt(d)|`` over valid pixels.

    Parameters
    ----------
    I_m, d : array (J, N, N)
        Model intensity and measured counts (counts).
    mask : bool array (N, N), optional
        True = valid pixel.

    Returns
    -------
    float
        sqrt(counts) per pixel.
    """
    I_m, d = _check(I_m, d)
    v = _valid(d, mask)
    return float(np.abs(np.sqrt(I_m[v]) - np.sqrt(d[v])).mean())


def misfit_measures(I_m, d, mask=None) -> dict[str, float]:
    """Every measure: ``{"r_factor", "poisson", "squared", "absolute"}`` (see the functions
    of the same names; ``poisson`` is :func:`poisson_cost`, ``squared`` :func:`squared_misfit`,
    ``absolute`` :func:`absolute_misfit`) for ``I_m``, ``d`` (J, N, N) in counts."""
    return {"r_factor": r_factor(I_m, d, mask), "poisson": poisson_cost(I_m, d, mask),
            "squared": squared_misfit(I_m, d, mask), "absolute": absolute_misfit(I_m, d, mask)}


# ============================================================================ forward model
def model_intensity(obj, probe, positions, chunk: int = 64) -> np.ndarray:
    """ptynb's single-slice far-field model intensity, detector-centred.

    Parameters
    ----------
    obj : complex array (Y, X) or (1, Y, X)
        Object transmission (one slice).
    probe : complex array (n, n) or (M, n, n)
        Probe modes, power in counts (orthonormal FFT: ``sum |P|^2`` = counts per pattern).
    positions : float array (J, 2)
        Top-left corners (row, column) of the probe window in object pixels; fractional
        parts are applied as Fourier shifts of the probe (as ptynb's engines do).
    chunk : int
        Patterns per batch (memory).

    Returns
    -------
    float64 array (J, n, n)
        ``sum_m |F[P_m(r - f_j) O(r + c_j)]|^2`` in counts, zero frequency at ``n // 2``.
    """
    from ptynb.ptycho.operators import FFT2, extract_patches, fourier_shift_ramps, shift_waves

    obj = np.asarray(obj, dtype=np.complex64)
    obj = obj[None] if obj.ndim == 2 else obj
    probe = np.asarray(probe, dtype=np.complex64)
    probe = probe[None] if probe.ndim == 2 else probe
    pos = np.asarray(positions, dtype=np.float64)
    if obj.ndim != 3 or obj.shape[0] != 1:
        raise ValueError(f"object must be (Y, X) or (1, Y, X), got {obj.shape}")
    if probe.ndim != 3 or probe.shape[-1] != probe.shape[-2]:
        raise ValueError(f"probe must be (n, n) or (M, n, n), got {probe.shape}")
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions must be (J, 2), got {pos.shape}")
    n = probe.shape[-1]
    ip = np.floor(pos + 0.5).astype(np.int64)
    frac = pos - ip
    if ip.min() < 0 or np.any(ip + n > np.array(obj.shape[1:])):
        raise ValueError("a probe window lies outside the object")
    fft = FFT2(np)
    out = np.empty((pos.shape[0], n, n), np.float64)
    for c in range(0, pos.shape[0], chunk):
        sl = slice(c, c + chunk)
        B = ip[sl].shape[0]
        P = np.broadcast_to(probe[None], (B, *probe.shape))
        if np.any(np.abs(frac[sl]) > 1e-6):
            ry, rx = fourier_shift_ramps(frac[sl, 0], frac[sl, 1], n, np)
            P = shift_waves(P, ry, rx, fft)
        O = extract_patches(obj, ip[sl, 0], ip[sl, 1], n)[:, 0]  # (B, n, n)
        psi = np.ascontiguousarray(P * O[:, None])
        W = fft.forward(psi)
        I = (W.real.astype(np.float64) ** 2 + W.imag.astype(np.float64) ** 2).sum(axis=1)
        out[sl] = np.fft.fftshift(I, axes=(-2, -1))
    return out


def score(obj, probe, positions, d, mask=None) -> dict[str, float]:
    """:func:`misfit_measures` of the reconstruction ``(obj, probe, positions)`` (see
    :func:`model_intensity` for their shapes and units) against counts ``d`` (J, n, n),
    detector-centred; ``mask`` (n, n) True = valid."""
    return misfit_measures(model_intensity(obj, probe, positions), d, mask)


def _corners(rec, n):
    """Top-left probe-window corners (J, 2) in object pixels of a ptynb reconstruction."""
    dx = float(rec.attrs["pixel_size"])
    y0, x0 = float(rec["y"].values[0]), float(rec["x"].values[0])
    return np.stack([(rec["scan_y"].values - y0) / dx - n // 2,
                     (rec["scan_x"].values - x0) / dx - n // 2], axis=1)


def score_reconstruction(rec, d, mask=None) -> dict[str, float]:
    """:func:`score` of a ptynb reconstruction Dataset (single slice) against counts ``d``."""
    n = rec.sizes["py"]
    return score(rec["object"].values, rec["probe"].values, _corners(rec, n), d, mask)


# ============================================================================ run
def run_ptynb(iterations: int = 60, *, raw: dict | None = None, engine: str = "lsqml",
              **kw) -> tuple[list[dict], object]:
    """Reconstruct with ptynb from Tike's probe and score every iteration.

    The states are copied in the callback and scored after the run, so the times are the
    engine's (cumulative wall seconds at the end of each iteration, callback copies included).

    Returns
    -------
    (rows, rec)
        ``rows``: one dict per iteration (``iteration``, ``seconds``, ``cost`` (ptynb's own),
        and :func:`misfit_measures`); ``rec`` the final reconstruction Dataset.
    """
    from ptynb.ptycho import reconstruct

    raw = load() if raw is None else raw
    meas = measurement(raw)
    n = raw["data"].shape[-1]
    frame = reconstruct(meas, engine=engine, iterations=0, probe=raw["probe"], progress=False,
                        **kw)
    pos0 = _corners(frame, n)
    snaps = []
    t0 = time.perf_counter()

    def cb(it, info):
        snaps.append((it, time.perf_counter() - t0, info["object"][0], info["probe"],
                      info["cost"][-1], info["scan_y"], info["scan_x"]))

    rec = reconstruct(meas, engine=engine, iterations=iterations, probe=raw["probe"],
                      progress=False, callback=cb, **kw)
    dx = PIXEL_SIZE
    y0, x0 = float(frame["y"].values[0]), float(frame["x"].values[0])
    rows = []
    for it, sec, o, p, c, sy, sx in snaps:
        pos = np.stack([(sy - y0) / dx - n // 2, (sx - x0) / dx - n // 2], axis=1)
        if np.abs(pos - pos0).max() < 1e-6:  # fixed positions: exactly the engine's
            pos = pos0
        rows.append({"iteration": it, "seconds": sec, "cost": c,
                     **score(o, p, pos, raw["data"])})
    return rows, rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--engine", default="lsqml")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra reconstruct keyword (value parsed as JSON, else a string)")
    args = ap.parse_args(argv)
    kw = {}
    for s in args.set:
        k, _, v = s.partition("=")
        try:
            kw[k] = json.loads(v)
        except json.JSONDecodeError:
            kw[k] = v
    try:
        raw = load()
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    rows, _ = run_ptynb(args.iterations, raw=raw, engine=args.engine,
                        batch_size=args.batch_size, **kw)
    per_px = float(raw["data"].mean())  # squared x this = the squared misfit per pixel
    print(f"{'it':>4} {'s':>7} {'R':>7} {'poisson':>8} {'squared':>8} {'sq/pixel':>8} "
          f"{'absolute':>8}")
    for r in rows:
        print(f"{r['iteration']:4d} {r['seconds']:7.2f} {r['r_factor']:7.4f} {r['poisson']:8.5f} "
              f"{r['squared']:8.5f} {r['squared'] * per_px:8.4f} {r['absolute']:8.5f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
