"""Memory estimate for a ptychographic reconstruction, checked before the first iteration.

:func:`estimate_memory` counts every array a run of :func:`ptynb.ptycho.reconstruct` holds at
its peak, from the problem sizes alone; :func:`check_memory` compares the estimate with the
memory free on the host (``psutil.virtual_memory().available``) and, for ``device="gpu"``, on
the GPU (free bytes of cupy's memory pool plus ``cudaMemGetInfo``), and raises
:class:`InsufficientMemoryError` with what was needed, what is free and what to change.

What is counted (complex arrays take ``dtype_bytes`` bytes per element, 8 for complex64;
real work arrays half of that; ``P = upsample * detector`` is the probe / exit-wave window,
``B`` the batch size, ``L`` slices, ``M`` modes)

=====================  ========================================================================
``intensity_input``    the caller's measurement, float32 (J, Dy, Dx), host. Already in memory
                       (and so already missing from "available"), hence *not* added to
                       ``host_bytes`` unless ``include_input=True`` (a lazy dask measurement)
``intensity``          the run's float32 copy of the patterns (FFT order), on the run's device
``intensity_setup_copy`` a transient second host copy while the patterns are converted and
                       reordered before the first iteration
``mask``               detector mask, bool plus a float32 copy (Dy, Dx)
``positions``          float64 (J, 2): initial, current, refinement gradient
``object``             object slices (L, Oy, Ox) complex: current estimate + last good state
                       (kept for cancel / divergence)
``probe``              probe modes (M, Py, Px) complex: current + last good state
``momentum``           with ``momentum=True``: velocity and previous state of object and probe
``result``             on the GPU only: host copies of object and probe for the result
``batch_waves``        batched engine: object patches (B, L, P, P), incident waves of slices
                       1..L-1 and the exit wave (B, L, M, P, P); sequential engine (ePIE/rPIE,
                       one pattern at a time): (2 L M + 4 M + 2) windows
``pattern_constants``  per-pattern constants (Poisson deviance / amplitudes; LSQ-ML on the CPU too)
                       computed before the first sweep, 2 x (J, Dy, Dx) float32 with temporaries
``fft_workspace``      far-field wave / exit-wave update (B, M, P, P) complex, model intensity
                       and update factor (B, P, P) real, gathered patterns (B, Dy, Dx)
``lsqml_buffers``      LSQ-ML: object/probe update directions, their products with the waves
                       and the temporaries of the optimal-step sums, (5 M + 1) x (B, P, P)
                       complex + (B, P, P) real, and the object-sized numerator, denominator and
                       step (Oy, Ox)
``fft_plans``          FFT plan overhead, stated: pyfftw keeps one aligned in-place buffer per
                       planned (shape, direction), i.e. 2 x (B, M, P, P) complex on the CPU;
                       cuFFT keeps a work area of about one batched transform on the GPU
``overhead_*``         10 % of the counted host total (allocator slack, Python objects,
                       temporaries not listed), 5 % on the GPU
=====================  ========================================================================

For a chain of engines (``engine=[("epie", 900), ("lsqml", 100)]``) the largest per-engine
work set is counted. The estimate is checked against ``tracemalloc`` peaks of real runs in
``tests/test_memory_checkpoint.py`` (within 30 %).
"""
from __future__ import annotations

from .._memory import MemoryForecastError, format_bytes
from .._memory import available_memory as _host_available

import math
import os
from typing import Any

__all__ = ["InsufficientMemoryError", "estimate_memory", "check_memory", "format_bytes",
           "available_memory"]

_ENGINES = ("epie", "rpie", "lsqml", "multislice", "mpie", "pie")
_SEQUENTIAL = ("epie", "rpie", "mpie", "pie")
_HOST_OVERHEAD = 0.10
_GPU_OVERHEAD = 0.05


class InsufficientMemoryError(MemoryForecastError):
    """The estimated memory of a run exceeds what is free on the host or the GPU (a
    :class:`ptynb._memory.MemoryForecastError`: both a ValidationError and a MemoryError)."""


def _pos_int(name: str, value, minimum: int = 1) -> int:
    from ..data import ValidationError

    try:
        iv = int(value)
    except (TypeError, ValueError):
        raise ValidationError(name, f"must be an integer >= {minimum}, got {value!r}") from None
    if iv != value or iv < minimum:
        raise ValidationError(name, f"must be an integer >= {minimum}, got {value!r}")
    return iv


def _shape2(name: str, shape) -> tuple[int, int]:
    from ..data import ValidationError

    try:
        t = tuple(shape)
    except TypeError:
        raise ValidationError(name, f"must be a (ny, nx) pair, got {shape!r}") from None
    if len(t) != 2:
        raise ValidationError(name, f"must be a (ny, nx) pair, got {shape!r}")
    return _pos_int(name, t[0]), _pos_int(name, t[1])


def estimate_memory(
    *,
    n_patterns: int,
    detector_shape: tuple[int, int],
    object_shape: tuple[int, int],
    n_slices: int = 1,
    n_modes: int = 1,
    batch_size: int = 1,
    engine: str = "lsqml",
    device: str | None = "cpu",
    dtype_bytes: int = 8,
    upsample: int = 1,
    momentum: bool = False,
    include_input: bool = False,
    noise: str = "poisson",
    workers: int | None = None,
) -> dict[str, Any]:
    """Estimate the peak host and device memory of one reconstruction.

    Parameters
    ----------
    n_patterns : int
        Number of diffraction patterns (scan positions) of one reconstruction.
    detector_shape : (int, int)
        Detector pixels (Dy, Dx) after any cropping.
    object_shape : (int, int)
        Object pixels (Oy, Ox) of each slice.
    n_slices, n_modes : int
        Object slices and probe modes.
    batch_size : int
        Patterns processed together (clipped to ``n_patterns``).
    engine : str or list of (str, int)
        ``"epie"``, ``"rpie"`` (sequential: ``batch_size`` is ignored, one pattern at a time),
        ``"lsqml"`` (batched; or ``"multislice"``, ``"mpie"``, ``"pie"``), or a chain
        ``[(name, iterations), ...]`` (the largest work set counts).
    device : {"cpu", "gpu", None}
        Where the iterations run (None: the ``PTYNB_DEVICE`` environment variable, else
        "cpu"). On the GPU the arrays of the run live on the device and the
        host holds the input measurement and the result.
    dtype_bytes : int
        Bytes per complex element (8 for complex64, 16 for complex128). Real work arrays use
        half, the measured amplitudes are always float32.
    upsample : int
        Reconstruction-grid upsampling ``s``: the probe window is ``s * detector``.
    momentum : bool
        LSQ-ML momentum acceleration (adds velocity buffers).
    include_input : bool
        Count the input measurement in ``host_bytes`` (for a lazily loaded measurement that
        the run will read into memory); otherwise it is listed in the breakdown only.
    noise : {"poisson", "gaussian"}
        Noise model of the run: with "gaussian", LSQ-ML on the CPU keeps the measured
        amplitudes (one more float32 array the size of the intensities).

    workers : int, optional
        Worker threads of LSQ-ML's compiled one-slice batch (each scatters into its own
        object frame); None: the usable cores, at most ``ComputeOptions.MAX_WORKERS``,
        capped at ``batch_size // 4`` as in the engine.

    Returns
    -------
    dict
        ``host_bytes`` (int) and ``device_bytes`` (int; 0 for ``device="cpu"``) at the peak,
        and ``breakdown``: ``{array_name: bytes}`` with the per-array counts (see the module
        docstring), plus ``"location"``: ``{array_name: "host" | "device"}``, ``"device"`` and
        the inputs under ``"inputs"``.

    Raises
    ------
    ptynb.data.ValidationError
        For non-positive sizes or an unknown engine/device.
    """
    from ..data import ValidationError

    n = _pos_int("n_patterns", n_patterns)
    dy, dx = _shape2("detector_shape", detector_shape)
    oy, ox = _shape2("object_shape", object_shape)
    ns = _pos_int("n_slices", n_slices)
    nm = _pos_int("n_modes", n_modes)
    b = min(_pos_int("batch_size", batch_size), n)
    if workers is not None:
        workers = _pos_int("workers", workers)
    s = _pos_int("upsample", upsample)
    cb = _pos_int("dtype_bytes", dtype_bytes)
    if cb not in (8, 16):
        raise ValidationError("dtype_bytes", f"must be 8 (complex64) or 16 (complex128), got {cb}")
    noise = str(noise).lower()
    if noise not in ("poisson", "gaussian"):
        raise ValidationError("noise", f"must be 'poisson' or 'gaussian', got {noise!r}")
    rb = cb // 2
    if isinstance(engine, str):
        names = [engine]
    else:
        try:
            names = [e if isinstance(e, str) else e[0] for e in engine]
        except (TypeError, IndexError):
            raise ValidationError("engine", f"must be a name or a list of (name, iterations), "
                                  f"got {engine!r}") from None
    engines = []
    for e in names:
        eng = str(e).strip().lower()
        if eng not in _ENGINES:
            raise ValidationError("engine", f"unknown engine {e!r}; expected one of {_ENGINES}")
        engines.append(eng)
    if not engines:
        raise ValidationError("engine", "no engine given")
    if device is None:
        device = os.environ.get("PTYNB_DEVICE", "cpu")
    dev = str(device).strip().lower()
    dev = {"cuda": "gpu", "cupy": "gpu", "numpy": "cpu"}.get(dev, dev)
    if dev not in ("cpu", "gpu"):
        raise ValidationError("device", f"must be 'cpu' or 'gpu', got {device!r}")

    py, px = s * dy, s * dx
    det = dy * dx
    win = py * px
    obj = ns * oy * ox

    br: dict[str, int] = {}
    loc: dict[str, str] = {}
    on_dev = "device" if dev == "gpu" else "host"

    def add(name, nbytes, where):
        br[name] = br.get(name, 0) + int(nbytes)
        loc[name] = where

    add("intensity_input", n * det * 4, "host")
    add("intensity", n * det * 4, on_dev)
    add("intensity_setup_copy", n * det * 4, "host")  # float32 conversion / reordering
    add("mask", det * (1 + 4), on_dev)
    add("positions", n * 2 * 8 * 3, on_dev)
    add("object", 2 * obj * cb, on_dev)  # current estimate + last good state
    add("probe", 2 * nm * win * cb, on_dev)
    if dev == "gpu":
        add("result", (obj + nm * win) * cb, "host")
    if momentum:
        add("momentum", 2 * (obj + nm * win) * cb, on_dev)  # velocity + previous state
    batch_names = {}
    for eng in engines:
        part = {}
        if eng in _SEQUENTIAL:
            # one pattern at a time: incident/exit waves per slice and mode, work arrays
            part["batch_waves"] = (2 * ns * nm + 4 * nm + 2) * win * cb
            part["fft_workspace"] = 4 * win * rb + det * 4
            part["fft_plans"] = 2 * nm * win * cb
            # the intensities in unnormalised FFT units, and for Gaussian noise the measured
            # amplitudes with and without the 1/npix (Poisson: one constant per pattern, made
            # in chunks of patterns)
            part["pattern_constants"] = n * det * 4 * (3 if noise == "gaussian" else 1) + 8 * n
        else:
            bb = b
            # object patches (B, L), incident waves for slices 1..L-1 and the exit wave
            part["batch_waves"] = bb * (ns + ns * nm) * win * cb
            if dev == "cpu" and ns == 1 and eng == "lsqml":
                # the compiled one-slice batch: exit waves written from the object straight
                # into the FFT buffer (no patch copies), the sub-pixel-shifted probes (counted
                # as if positions were sub-pixel), the object direction and the scan
                # illumination over the object frame; one object-direction frame per worker
                # thread and the detector step's model/gradient arrays of the batch
                from .engines import lsq_worker_count

                nw = lsq_worker_count(workers, bb)
                part["batch_waves"] = bb * nm * win * cb
                part["fft_workspace"] = bb * nm * win * cb + 2 * bb * det * 4
                part["lsqml_buffers"] = (bb * nm * win * cb + oy * ox * (nw * cb + 2 * rb)
                                         + nw * nm * win * cb)
            elif dev == "cpu":
                # compiled passes (numba is a dependency): the detector step works in place
                # and the object sums and step lengths form no direction arrays
                part["fft_workspace"] = bb * nm * win * cb + bb * det * 4
                part["lsqml_buffers"] = bb * (2 * nm + 1) * win * cb + oy * ox * (2 * cb + rb)
                # measured amplitudes (Gaussian), or one Poisson constant per pattern
                part["pattern_constants"] = n * det * 4 if noise == "gaussian" else 8 * n
            else:
                # far field / exit-wave update, model, update factor, gathered patterns
                part["fft_workspace"] = bb * nm * win * cb + 2 * bb * win * rb + bb * det * 4
                # object/probe update directions, step-size products and their temporaries
                part["lsqml_buffers"] = (bb * (5 * nm + 1) * win * cb + bb * win * rb
                                         + oy * ox * (2 * cb + rb))
            part["fft_plans"] = (2 if dev == "cpu" else 1) * bb * nm * win * cb
            if dev == "cpu" and ns == 1 and eng == "lsqml" and nm == 1 and upsample == 1:
                from . import _native

                its = 0
                if not isinstance(engine, str):  # (name, iterations) pairs: the run's size
                    its = sum(int(e[1]) for e in engine if not isinstance(e, str)
                              and str(e[0]).strip().lower() == "lsqml")
                if _native.linkable() and (_native.compiled()
                                           or n * its >= _native.WORTH_COMPILING):
                    # the one-call pipeline: two single-window FFTW plans, no batch plans
                    part["fft_plans"] = 2 * win * cb
        total = sum(part.values())
        if total > sum(batch_names.values()):
            batch_names = part
    for name, v in batch_names.items():
        add(name, v, on_dev)

    host = sum(v for k, v in br.items() if loc[k] == "host" and k != "intensity_input")
    if include_input:
        host += br["intensity_input"]
    device_total = sum(v for k, v in br.items() if loc[k] == "device")
    host_over = int(math.ceil(_HOST_OVERHEAD * host))
    br["overhead_host"] = host_over
    loc["overhead_host"] = "host"
    host += host_over
    if dev == "gpu":
        dev_over = int(math.ceil(_GPU_OVERHEAD * device_total))
        br["overhead_device"] = dev_over
        loc["overhead_device"] = "device"
        device_total += dev_over
    return {
        "host_bytes": int(host),
        "device_bytes": int(device_total),
        "device": dev,
        "breakdown": br,
        "location": loc,
        "inputs": dict(n_patterns=n, detector_shape=(dy, dx), object_shape=(oy, ox),
                       n_slices=ns, n_modes=nm, batch_size=b, engine=engines, device=dev,
                       dtype_bytes=cb, upsample=s, momentum=bool(momentum),
                       include_input=bool(include_input)),
    }


def available_memory(device: str | None = "cpu") -> dict[str, int | None]:
    """Free memory now: ``{"host": bytes, "device": bytes or None}``.

    Host: ``psutil.virtual_memory().available`` (``MemAvailable`` from ``/proc/meminfo`` if
    psutil is missing). GPU (``device="gpu"``): ``cudaMemGetInfo`` free bytes plus the bytes
    cached but unused in cupy's default memory pool (which cupy can reuse).
    """
    host = _host_available()
    dev_free = None
    if str(device or "cpu").lower() in ("gpu", "cuda", "cupy"):
        import cupy

        free, _total = cupy.cuda.runtime.memGetInfo()
        pool = cupy.get_default_memory_pool()
        dev_free = int(free) + int(pool.total_bytes() - pool.used_bytes())
    return {"host": host, "device": dev_free}


def _advice(est: dict) -> str:
    inp = est.get("inputs", {})
    br = est["breakdown"]
    hints = []
    if inp.get("batch_size", 1) > 1:
        work = sum(br.get(k, 0) for k in ("batch_waves", "fft_workspace", "fft_plans",
                                            "lsqml_buffers"))
        hints.append(f"a smaller batch_size (now {inp['batch_size']}; batch buffers take "
                     f"{format_bytes(work)})")
    if inp.get("n_modes", 1) > 1:
        hints.append(f"fewer probe modes (now {inp['n_modes']})")
    if inp.get("upsample", 1) > 1:
        hints.append(f"a smaller upsample factor (now {inp['upsample']})")
    dy, dx = inp.get("detector_shape", (0, 0))
    hints.append(f"cropping the detector (now {dy}x{dx}; amplitudes take "
                 f"{format_bytes(br.get('amplitudes', 0))})")
    if inp.get("n_slices", 1) > 1:
        hints.append(f"fewer slices (now {inp['n_slices']})")
    hints.append("splitting the scan or the angles over several processes/machines "
                 "(ptynb.parallel.map_blocks)")
    return "; ".join(hints)


def check_memory(estimate: dict, device: str | None = None, *,
                 available: dict | None = None) -> None:
    """Raise :class:`InsufficientMemoryError` if ``estimate`` does not fit in free memory.

    Parameters
    ----------
    estimate : dict
        The result of :func:`estimate_memory`.
    device : {"cpu", "gpu"}, optional
        Device of the run (default: the estimate's own ``"device"``). For ``"gpu"`` both
        host and device memory are checked.
    available : dict, optional
        ``{"host": bytes, "device": bytes}`` to check against instead of querying the
        machine (for tests and for planning runs on another machine).

    Raises
    ------
    InsufficientMemoryError
        Naming what is needed, what is free and what to change (smaller batch_size, fewer
        modes, cropping the detector, ...).
    """
    if not isinstance(estimate, dict) or "host_bytes" not in estimate:
        raise TypeError("estimate must be the dict returned by estimate_memory()")
    dev = device or estimate.get("device", "cpu")
    dev = "gpu" if str(dev).lower() in ("gpu", "cuda", "cupy") else "cpu"
    avail = available if available is not None else available_memory(dev)
    problems = []
    host_free = avail.get("host")
    if host_free is not None and estimate["host_bytes"] > host_free:
        problems.append(f"host memory: needs about {format_bytes(estimate['host_bytes'])}, "
                        f"{format_bytes(host_free)} available")
    if dev == "gpu":
        dev_free = avail.get("device")
        if dev_free is not None and estimate["device_bytes"] > dev_free:
            problems.append(f"GPU memory: needs about {format_bytes(estimate['device_bytes'])}, "
                            f"{format_bytes(dev_free)} free")
    if problems:
        big = sorted(estimate["breakdown"].items(), key=lambda kv: -kv[1])[:3]
        largest = ", ".join(f"{k} {format_bytes(v)}" for k, v in big)
        raise InsufficientMemoryError(
            "the reconstruction does not fit in memory — " + "; ".join(problems)
            + f". Largest arrays: {largest}. Try " + _advice(estimate) + "."
        )
