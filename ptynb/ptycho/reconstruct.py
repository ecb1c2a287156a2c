"""``reconstruct``: the public entry point of the ptychography engines.

Takes a measurement Dataset (``intensity`` (..., scan, qy, qx)), runs a schedule of engines
(``"epie"``, ``"rpie"``, ``"lsqml"``) and returns a reconstruction Dataset (see
:func:`ptynb.data.reconstruction`). Leading ``beam``/``angle`` dims are reconstructed
independently (serially, or on a dask cluster through :func:`ptynb.parallel.map_blocks`).
"""
from __future__ import annotations

import hashlib
import json
import math
import threading

import numpy as np
import xarray as xr

from .. import __version__
from ..backend import get_xp, resolve_device, to_host
from ..control import check_event
from ..data import ValidationError, reconstruction, validate
from . import options as _options
from .engines import ENGINES, Problem
from .operators import orthogonalize_modes, unshift_data
from .state import State

__all__ = ["ENGINE_NAMES", "DivergenceError", "initial_probe", "reconstruct"]

ENGINE_NAMES = tuple(ENGINES)
_NOISE = ("poisson", "gaussian")
_LEAD = ("beam", "angle")
#: sequential runs doing at least this many single-pattern FFTs plan them with FFTW_PATIENT
#: (about 1 s for 128 x 128 on one core, kept in the wisdom file; 10-30 % faster transforms
#: than FFTW_MEASURE's plans, measured on the 2-core development machine)
PATIENT_TRANSFORMS = 30_000


class DivergenceError(FloatingPointError):
    """The cost became NaN/inf. ``last_good`` holds the last finite reconstruction Dataset."""

    def __init__(self, message: str, last_good: xr.Dataset | None = None, iteration: int = -1):
        super().__init__(message)
        self.last_good = last_good
        self.iteration = iteration


# ============================================================================ helpers
#: the engine chain of ``reconstruct(engine=None)`` per radiation (stated here only): a few
#: rPIE sweeps before LSQ-ML for X-rays (X-ray case, 400 x 128^2, 30 iterations: NRMSE 0.0143
#: against 0.0202 for LSQ-ML alone; Tike's siemens star: lower R, Poisson, squared and
#: absolute misfit at 10, 20 and 30 iterations), LSQ-ML alone for electrons (7.8 nm SrTiO3 in
#: 4 slices, 10 iterations, unwrapped summed-phase PCC: 0.82 against 0.55 for rPIE 3 + LSQ-ML
#: 7 and 0.41 for ePIE 10, measured again with the reg_wave rule and the |O| <= 1 limit);
#: ``None`` iterations: what is left of ``iterations``. See benchmarks/RESULTS.md.
DEFAULT_CHAINS = {"xray": (("rpie", 3), ("lsqml", None)), "electron": (("lsqml", None),)}


def default_engine(radiation, iterations) -> list[tuple[str, int]]:
    """The engine chain that ``reconstruct(engine=None)`` runs for ``radiation``.

    Parameters
    ----------
    radiation : {"xray", "electron"} or None
        The measurement's ``radiation`` attr (None or unknown: X-ray's chain).
    iterations : int
        Total iterations; the fixed-length stages are cut to fit, stages of 0 dropped.

    Returns
    -------
    list of (engine name, iterations), e.g. ``[("rpie", 3), ("lsqml", 97)]`` for X-rays and
    100 iterations, ``[("lsqml", 100)]`` for electrons.
    """
    chain = DEFAULT_CHAINS.get(str(radiation or "xray").lower(), DEFAULT_CHAINS["xray"])
    if isinstance(iterations, (bool, np.bool_)) or not isinstance(iterations, (int, np.integer)):
        return [(chain[-1][0], iterations)]  # _schedule names the bad value
    left, out = int(iterations), []
    for name, n in chain:
        m = left if n is None else min(int(n), left)
        if m > 0:
            out.append((name, m))
            left -= m
    return out or [(chain[-1][0], int(iterations))]


def _schedule(engine, iterations):
    """Normalise ``engine`` to a list of (name, iterations)."""
    if isinstance(engine, str):
        sched = [(engine, iterations)]
    else:
        try:
            sched = [(str(e), n) for e, n in engine]
        except (TypeError, ValueError):
            raise ValidationError(
                "engine", f"must be a name or a list of (name, iterations), got {engine!r}") from None
    out = []
    for name, n in sched:
        key = name.strip().lower().replace("-", "").replace("_", "")
        if key not in ENGINES:
            raise ValidationError("engine", f"unknown engine {name!r}; choose from {ENGINE_NAMES}")
        if (isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer, float, np.floating))
                or not float(n).is_integer()):
            raise ValidationError("iterations", f"must be a whole number, got {n!r}")
        n = int(n)
        if n < 0:
            raise ValidationError("iterations", f"must be >= 0, got {n}")
        out.append((key, n))
    return out


def _engine_at(sched, it):
    k = 0
    for name, n in sched:
        if it < k + n:
            return name
        k += n
    return sched[-1][0]


def initial_probe(measurement: xr.Dataset, n: int, modes: int = 1, upsample: int = 1,
                  probe=None) -> np.ndarray:
    """Initial probe modes (mode, n, n) complex64, power matched to the mean pattern.

    Sources, in order (only what a user knows; never the ``true_*`` variables or the
    ``probe_*`` attrs that :mod:`ptynb.simulate` keeps as ground truth):

    1. ``probe``: an array or DataArray (py, px) or (mode, py, px).
    2. The *nominal* optics in the measurement attrs (:func:`~ptynb.ptycho.probe_start.nominal_probe`):
       electrons (``radiation="electron"``): ``convergence_semiangle`` (rad), ``nominal_defocus``
       (m, positive = underfocus; ``defocus`` accepted) and optional ``nominal_Cs`` (``Cs``, m),
       via :func:`ptynb.physics.electron_probe`; X-rays: ``zone_plate_diameter``,
       ``zone_plate_outer_zone_width``, optional ``central_stop_diameter`` and
       ``nominal_defocus`` (m, positive = downstream of the focus), via
       :func:`ptynb.physics.zone_plate_probe`. A missing defocus is measured from the data.
    3. The data alone (:func:`~ptynb.ptycho.probe_start.data_probe`): pupil amplitude
       ``sqrt(mean pattern)`` on its bright-field support, propagated to the defocus measured
       from the parallax of the bright-field shadow between neighbouring patterns
       (:func:`~ptynb.ptycho.probe_start.estimate_defocus`). Where that parallax cannot be
       measured (focused or very strongly defocused probe, too little overlap) a
       ValidationError names the attrs to give.

    Missing modes are added as the first mode times low-order polynomials (y, x, xy, ...) at
    10% of its power and then orthogonalised. The total power ``sum |P|^2`` is set to the mean
    measured counts per pattern, except for a given ``probe`` whose power is already within
    a factor 2 of it (then it is used as is).
    """
    from . import probe_start

    inten = measurement["intensity"]
    if probe is not None:
        p = np.asarray(to_host(probe.data if isinstance(probe, xr.DataArray) else probe))
        if p.ndim == 2:
            p = p[None]
        if p.ndim != 3:
            raise ValidationError("probe", f"has shape {p.shape}; expected (py, px) or (mode, py, px)")
        if p.shape[-1] > n or p.shape[-2] > n:
            raise ValidationError(
                "probe", f"window {p.shape[-2:]} is larger than the detector-limited window "
                f"({n}, {n}) = upsample x detector pixels")
        if p.shape[-2:] != (n, n):
            raise ValidationError(
                "probe", f"window {p.shape[-2:]} must equal ({n}, {n}) = upsample x detector pixels")
        if p.shape[0] > modes:
            raise ValidationError("probe", f"has {p.shape[0]} modes but modes={modes}")
        if not np.all(np.isfinite(p)):
            raise ValidationError("probe", "contains NaN or inf")
        p = p.astype(np.complex64)
    else:
        p = probe_start.nominal_probe(measurement, n)
        if p is None:
            p = probe_start.data_probe(measurement, n, upsample)
        p = np.asarray(p).astype(np.complex64)[None]
    if p.shape[0] < modes:
        yy, xx = np.mgrid[:n, :n].astype(np.float32)
        yy = (yy - n // 2) / (n / 4)
        xx = (xx - n // 2) / (n / 4)
        polys = [yy, xx, yy * xx, yy ** 2 - xx ** 2, yy ** 2 + xx ** 2 - 1]
        extra = []
        for m in range(modes - p.shape[0]):
            q = p[0] * polys[m % len(polys)] * (1.0 + m // len(polys))
            q = q * np.sqrt(0.1 * np.sum(np.abs(p[0]) ** 2) / max(np.sum(np.abs(q) ** 2), 1e-30))
            extra.append(q.astype(np.complex64))
        p = np.concatenate([p, np.stack(extra)], axis=0)
        p = orthogonalize_modes(p)
    total = float(np.asarray(inten.sum(dim=("qy", "qx")).mean()))
    power = float(np.sum(np.abs(p) ** 2))
    rescale = probe is None or not (0.5 < power / max(total, 1e-30) < 2.0)
    if rescale and power > 0 and total > 0:
        p = p * np.float32(np.sqrt(total / power))
    return p.astype(np.complex64)


def _object_frame(sy, sx, dx, n, margin):
    """(origin_y, origin_x, Y, X) in pixels for windows of ``n`` centred at the positions."""
    cy, cx = np.asarray(sy) / dx, np.asarray(sx) / dx
    oy = int(math.floor(np.min(cy))) - n // 2 - margin
    ox = int(math.floor(np.min(cx))) - n // 2 - margin
    Y = int(math.ceil(np.max(cy))) - n // 2 + n + margin - oy + 1
    X = int(math.ceil(np.max(cx))) - n // 2 + n + margin - ox + 1
    return oy, ox, Y, X


def _fingerprint(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ============================================================================ public API
def reconstruct(measurement, engine=None, iterations: int = 100, probe=None, slices: int = 1,
                slice_thickness: float | None = None, modes: int = 1, *, object=None,
                upsample: int = 1, position_refinement=None, noise: str = "poisson",
                batch_size: int | None = None, device: str | None = None, seed: int = 0,
                callback=None, callback_every: int = 1, progress: bool = True,
                checkpoint=None, checkpoint_every: int | None = None, resume=None,
                cancel: threading.Event | None = None, client=None, parallel: bool = False,
                options=None, **knobs) -> xr.Dataset:
    """Reconstruct object and probe from a ptychographic measurement.

    Parameters
    ----------
    measurement : xarray.Dataset
        ptynb measurement: ``intensity`` (..., scan, qy, qx) in counts, detector centred,
        positions ``scan_y``/``scan_x`` (m, probe centres), attrs ``pixel_size`` (m),
        ``energy_eV``, ``radiation``; optional ``mask`` (qy, qx), True = valid pixel. Leading
        dims ``beam``/``angle`` are reconstructed independently. A lazy (dask) intensity is
        read only after the memory forecast.
    engine : str or list of (str, int), optional
        ``"epie"``, ``"rpie"`` (sequential, random order each iteration) or ``"lsqml"``
        (batched, optimal step sizes); a list chains engines, e.g.
        ``[("epie", 900), ("lsqml", 100)]`` (then ``iterations`` is ignored). None
        (default): the radiation's chain, :func:`default_engine` (X-ray: 3 rPIE sweeps, then
        LSQ-ML; electron: LSQ-ML).
    iterations : int
        Iterations (full passes over the data) for a single engine or the default chain.
    probe : array or DataArray, optional
        Initial probe (py, px) or (mode, py, px), complex, window ``upsample * N`` pixels of
        ``pixel_size``. Default: see :func:`initial_probe`.
    slices : int
        Number of object slices (multislice if > 1).
    slice_thickness : float, optional
        Slice spacing (m), required when ``slices > 1``.
    modes : int
        Mutually incoherent probe modes (orthogonalised every iteration by SVD).
    object : array or DataArray, optional
        Initial object (slice, y, x) or (y, x); a DataArray's ``y``/``x`` coords (m) fix the
        frame, an array's pixel (0, 0) sits at y = x = 0. Default: ones on a grid that
        covers every probe window (plus a margin).
    upsample : int
        Reconstruction-grid upsampling ``s``: probe window ``s N`` pixels of ``pixel_size``,
        each detector pixel integrating ``s x s`` model pixels (far field sampled ``s`` times
        finer than the detector; "virtually enlarged illumination").
    position_refinement : int, True, dict or PositionRefinement, optional
        Iteration from which positions are refined (gradient of the exit-wave update with
        respect to a shift, least-squares per pattern, mean shift removed, step clipped);
        True: from the start; a dict of :class:`~ptynb.ptycho.options.PositionRefinement`
        fields (``start`` 0 unless given) or such an object (also accepted in ``options``).
    noise : {"poisson", "gaussian"}
        Noise model: Poisson likelihood (Newton step per pattern) or Gaussian on the
        amplitudes (modulus projection).
    batch_size : int, optional
        Patterns per LSQ-ML batch (``LSQMLOptions.batch_size``).
    device : {"cpu", "gpu"}, optional
        Compute device; data stay there across iterations (``ComputeOptions.device``).
    seed : int
        Seed of the random pattern order / batches.
    callback : callable, optional
        ``callback(iteration, info)`` every ``callback_every`` iterations; ``info`` has
        ``cost`` (list), ``object``, ``probe`` (host numpy), ``scan_y``, ``scan_x`` (m),
        ``engine``, ``iterations`` (total).
    progress : bool
        tqdm progress bar.
    checkpoint : path, optional
        HDF5 checkpoint file written atomically every ``checkpoint_every`` iterations (and at
        the end).
    resume : path, optional
        Continue from a checkpoint written by a run with the same settings; the result is
        identical to an uninterrupted run (on the CPU).
    cancel : threading.Event, optional
        Set it to stop after the current iteration; the result has ``status="cancelled"``
        (see :mod:`ptynb.control`). KeyboardInterrupt does the same. With leading
        ``beam``/``angle`` dims, blocks not started are not run (NaN-filled, marked in
        ``block_status``) and the cost histories are padded with NaN.
    client, parallel :
        Run leading ``angle``/``beam`` blocks on a dask cluster
        (see :func:`ptynb.parallel.map_blocks`).
    options : options object or list/tuple of them, optional
        Engine settings as objects of :mod:`ptynb.ptycho.options` (at most one per class),
        e.g. ``[PIEOptions(alpha=0.5), LSQMLOptions(momentum=0.5)]``. A keyword below that
        is also set (to a non-default value) in an object must agree with it.
    **knobs
        The same settings as flat keywords (the field names of the classes, prefixed where
        ambiguous), plus ``mask`` (qy, qx) bool overriding the dataset's mask. Unknown
        keywords raise with a suggestion. Every option, its default and bounds:

<<OPTIONS>>

    Returns
    -------
    xarray.Dataset
        Reconstruction: ``object`` (..., slice, y, x) complex64 with ``y``/``x`` in the
        scan-position frame (m); ``probe`` (..., mode, py, px); refined ``scan_y``/``scan_x``
        (..., scan) in m; ``cost`` (..., iteration); attrs with every setting
        (``option_<key>``), ``ptynb_version`` and ``status`` ("complete" or "cancelled").

    Raises
    ------
    ptynb.data.ValidationError
        Bad input, found before the first iteration (failing :func:`ptynb.data.validate`,
        probe window larger than the detector window, positions outside a given object,
        all-zero patterns, bad dims or options, an option out of its bounds).
    ptynb.ptycho.memory.InsufficientMemoryError
        The memory forecast (made before any large array is allocated) does not fit on the
        host/device, unless ``allow_exceeding=True``.
    DivergenceError
        The cost became NaN/inf; ``err.last_good`` holds the last good reconstruction.
    """
    if not isinstance(measurement, xr.Dataset):
        raise ValidationError("measurement", f"must be an xarray.Dataset, got {type(measurement).__name__}")
    check_event(cancel)
    validate(measurement, lazy="skip")  # lazy data are checked for NaN once read (below)
    opts, mask = _resolve_options(options, knobs, batch_size=batch_size, device=device,
                                  position_refinement=position_refinement)
    if engine is None:
        engine = default_engine(measurement.attrs.get("radiation"), iterations)
    settings = dict(engine=engine, iterations=iterations, probe=probe, slices=slices,
                    slice_thickness=slice_thickness, modes=modes, object=object,
                    upsample=upsample, noise=noise, seed=seed, mask=mask, options=opts)
    inten = measurement["intensity"]
    lead = [d for d in inten.dims if d in _LEAD]
    if not lead:
        return _reconstruct_single(measurement, settings, callback=callback,
                                   callback_every=callback_every, progress=progress,
                                   checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                                   resume=resume, cancel=cancel)
    if checkpoint is not None or resume is not None:
        raise ValidationError("checkpoint", "checkpoints/resume apply to one reconstruction; "
                              "select a single angle/beam first")
    # a common object frame for every block so the results stack
    if object is None:
        n = int(upsample) * inten.sizes["qy"]
        dx = float(measurement.attrs["pixel_size"])
        frame = _object_frame(measurement["scan_y"].values, measurement["scan_x"].values, dx, n,
                              _margin(opts["position_start"]))
        settings["_frame"] = frame
    from ..parallel import map_blocks

    use_cluster = bool(parallel) or client is not None
    kw = dict(settings=settings)
    if not use_cluster:
        kw.update(callback=callback, callback_every=callback_every, block_progress=progress,
                  block_cancel=cancel)
    return map_blocks(_block, measurement, dims=lead, client=client,
                      parallel=parallel if use_cluster else False, progress=progress,
                      cancel=cancel, pad=("iteration",), **kw)


reconstruct.__doc__ = reconstruct.__doc__.replace("<<OPTIONS>>", _options.options_doc())

#: flat keywords accepted by :func:`reconstruct` (documented under ``**knobs``)
ENGINE_OPTIONS = (*_options.KEYWORDS, "mask")
#: engine option keys that steer the computation but are not engine arithmetic
_COMPUTE_KEYS = ("device", "threads", "fftw_effort", "allow_exceeding")


def _resolve_options(options, knobs, *, batch_size, device, position_refinement):
    """Options objects + flat keywords -> (engine option dict, mask or None).

    Unknown keywords raise a ValidationError with a did-you-mean suggestion; the named
    arguments ``batch_size``/``device`` count as given when not None.
    """
    import difflib

    for key in knobs:
        if key not in ENGINE_OPTIONS:
            close = difflib.get_close_matches(key, ENGINE_OPTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValidationError("options", f"unknown option {key!r}{hint} Known: "
                                  f"{', '.join(ENGINE_OPTIONS)}")
    kw = dict(knobs)
    mask = kw.pop("mask", None)
    if batch_size is not None:
        kw["batch_size"] = batch_size
    if device is not None:
        kw["device"] = device
    objs = _options.resolve(options, kw, position_refinement=position_refinement)
    opts: dict = {}
    for obj in objs.values():
        opts.update(obj.engine_items())
    return opts, mask


def _block(block, settings, block_progress=False, block_cancel=None, **kw):
    """map_blocks worker: one leading-dim block (module level so dask can pickle it)."""
    return _reconstruct_single(block, settings, progress=block_progress, cancel=block_cancel,
                               **kw)


def _margin(refine_start):
    return 2 if refine_start is None else 10


def _forecast(ds, *, J, N, Y, X, L, M, up, sched, opts, noise, device):
    """Memory forecast of one reconstruction, from sizes only (nothing large allocated).

    Raises :class:`~ptynb.ptycho.memory.InsufficientMemoryError` (forecast, free memory,
    what to change) unless ``opts["allow_exceeding"]``, which warns instead.
    """
    from . import memory as _mem

    bs = opts["batch_size"] or (_options.LSQMLOptions.DEFAULT_BATCH
                                if any(e == "lsqml" for e, _ in sched) else 1)
    est = _mem.estimate_memory(
        n_patterns=J, detector_shape=(N, N), object_shape=(Y, X), n_slices=L, n_modes=M,
        batch_size=min(int(bs), J), device=device, upsample=up, engine=list(sched),
        momentum=bool(opts["momentum"]), include_input=hasattr(ds["intensity"].data, "dask"),
        noise=noise, workers=opts.get("workers"))
    try:
        _mem.check_memory(est, device)
    except _mem.InsufficientMemoryError as e:
        if not opts["allow_exceeding"]:
            raise _mem.InsufficientMemoryError(
                f"{e} (object frame {Y} x {X} pixels x {L} slice(s); pass "
                "allow_exceeding=True to run anyway)") from None
        import warnings

        warnings.warn(f"allow_exceeding=True: {e}", ResourceWarning, stacklevel=3)


# ============================================================================ one reconstruction
def _reconstruct_single(ds, settings, *, callback=None, callback_every=1, progress=True,
                        checkpoint=None, checkpoint_every=None, resume=None, cancel=None):
    s = dict(settings)
    sched = _schedule(s.pop("engine"), s.pop("iterations"))
    total = sum(n for _, n in sched)
    probe_in = s.pop("probe")
    L = int(s.pop("slices"))
    dz = s.pop("slice_thickness")
    M = int(s.pop("modes"))
    obj_in = s.pop("object")
    up = int(s.pop("upsample"))
    noise = str(s.pop("noise")).lower()
    seed = s.pop("seed")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValidationError("seed", f"must be an integer >= 0, got {seed!r}")
    seed = int(seed)
    frame = s.pop("_frame", None)
    mask = s.pop("mask", None)
    options = dict(s.pop("options"))  # engine knobs by engine key, complete
    refine_start = options["position_start"]
    device = resolve_device(options["device"])
    for name, val, lo in (("slices", L, 1), ("modes", M, 1), ("upsample", up, 1)):
        if val < lo:
            raise ValidationError(name, f"must be >= {lo}, got {val}")
    if noise not in _NOISE:
        raise ValidationError("noise", f"must be one of {_NOISE}, got {noise!r}")
    if L > 1 and (dz is None or not np.isfinite(dz) or dz <= 0):
        raise ValidationError("slice_thickness", "a positive slice spacing (m) is required when slices > 1")
    if callback is not None and not callable(callback):
        raise ValidationError("callback", "must be callable(iteration, info)")
    callback_every = max(1, int(callback_every or 1))

    xp = get_xp(device)
    attrs = ds.attrs
    if options.get("reg_object") is None:  # the radiation's default (LSQMLOptions.REG_OBJECT)
        options["reg_object"] = _options.LSQMLOptions.reg_object_for(attrs.get("radiation"))
    if options.get("object_amplitude_max") is None:  # ObjectConstraints.AMPLITUDE_MAX
        amax = _options.ObjectConstraints.amplitude_max_for(attrs.get("radiation"))
        amin = options.get("object_amplitude_min")
        if amax is not None and (amin is None or amin <= amax):
            options["object_amplitude_max"] = amax
    inten = ds["intensity"]
    if tuple(inten.dims) != ("scan", "qy", "qx"):
        raise ValidationError("intensity", f"has dims {inten.dims}; expected (scan, qy, qx) per block")
    N = inten.sizes["qy"]
    if inten.sizes["qx"] != N:
        raise ValidationError("intensity", f"detector must be square, got {inten.shape[-2:]}")
    J = inten.sizes["scan"]
    dx = float(attrs["pixel_size"])
    lam = float(attrs.get("wavelength") or 0.0)
    n = up * N
    if mask is None and "mask" in ds:
        mask = ds["mask"].values
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (N, N):
            raise ValidationError("mask", f"has shape {mask.shape}, detector is {(N, N)}")
        if not mask.any():
            raise ValidationError("mask", "marks every detector pixel invalid")
    sy = np.asarray(ds["scan_y"].values, dtype=np.float64).reshape(-1)
    sx = np.asarray(ds["scan_x"].values, dtype=np.float64).reshape(-1)
    if sy.size != J or sx.size != J:
        raise ValidationError("scan_y/scan_x", f"have {sy.size}/{sx.size} positions for {J} patterns")

    # ---------------------------------------------------------------- object frame (sizes only)
    margin = _margin(refine_start)
    if obj_in is not None:
        o = obj_in
        if isinstance(o, xr.DataArray):
            if "y" in o.coords and "x" in o.coords:
                oy = int(round(float(o["y"].values[0]) / dx))
                ox = int(round(float(o["x"].values[0]) / dx))
            else:
                oy = ox = 0
            o = o.data
        else:
            oy = ox = 0
        o = np.asarray(to_host(o)).astype(np.complex64)
        if o.ndim == 2:
            o = np.repeat(o[None], L, axis=0)
        if o.ndim != 3 or o.shape[0] != L:
            raise ValidationError("object", f"has shape {o.shape}; expected (slice={L}, y, x) or (y, x)")
        Y, X = o.shape[1:]
        obj0 = o
    else:
        if frame is None:
            frame = _object_frame(sy, sx, dx, n, margin)
        oy, ox, Y, X = frame
        obj0 = None  # allocated after the memory forecast
    pos = np.stack([sy / dx - n // 2 - oy, sx / dx - n // 2 - ox], axis=1)
    ip = np.floor(pos + 0.5)
    out = (ip[:, 0] < 0) | (ip[:, 1] < 0) | (ip[:, 0] + n > Y) | (ip[:, 1] + n > X)
    if np.any(out):
        raise ValidationError(
            "scan_y/scan_x", f"{int(out.sum())} position(s) put the {n}x{n} probe window outside "
            f"the object ({Y}x{X} pixels from y={oy * dx:.4g} m, x={ox * dx:.4g} m)")

    # ---------------------------------------------------------------- memory, before allocating
    _forecast(ds, J=J, N=N, Y=Y, X=X, L=L, M=M, up=up, sched=sched, opts=options, noise=noise,
              device=device)
    I = np.asarray(to_host(inten.data), dtype=np.float32)
    if not np.all(np.isfinite(I)):
        n_bad = int(np.size(I) - np.count_nonzero(np.isfinite(I)))
        raise ValidationError("intensity", f"contains {n_bad} NaN or inf value(s)")
    sums = I.sum(axis=(1, 2))
    if np.any(sums <= 0):
        bad = np.flatnonzero(sums <= 0)
        raise ValidationError("intensity", f"{bad.size} pattern(s) are all zero (scan index {bad[:5].tolist()}...)")
    if obj0 is None:
        obj0 = np.ones((L, Y, X), np.complex64)

    # ---------------------------------------------------------------- probe + problem
    p0 = initial_probe(ds, n, M, up, probe=probe_in)
    kernel = None
    if L > 1:
        from ..physics.propagation import angular_spectrum_kernel

        kernel = xp.asarray(angular_spectrum_kernel((n, n), dx, lam, float(dz),
                                                    tilt=tuple(options["tilt"]), xp=np)
                            .astype(np.complex64))
    meas = unshift_data(I, np)
    m_unshift = unshift_data(mask, np) if mask is not None else None
    norm = float((I * mask).sum()) if mask is not None else float(I.sum())
    opts = {k: v for k, v in options.items() if k not in _COMPUTE_KEYS}
    threads = options["threads"]
    effort = options["fftw_effort"]
    if effort is None:  # a patient plan (~1 s at 128^2, once per machine) pays off on long runs
        n_seq = 2 * J * L * M * sum(k for e, k in sched if e in ("epie", "rpie"))
        effort = "patient" if n_seq >= PATIENT_TRANSFORMS else "measure"
    from .operators import FFT2

    problem = Problem(xp=xp, intensity=xp.asarray(meas), mask=None if m_unshift is None else xp.asarray(m_unshift),
                      upsample=up, kernel=kernel, noise=noise, norm=norm, options=opts,
                      fft=FFT2(xp, threads), fft1=FFT2(xp, 1, effort=effort),
                      lsq_updates=J * sum(k for e, k in sched if e == "lsqml"))

    fp = _fingerprint(dict(sched=sched, J=J, N=N, n=n, L=L, M=M, Y=Y, X=X, oy=oy, ox=ox, dz=dz,
                           noise=noise, seed=seed, options=opts))
    if resume is not None:
        from .checkpoint import load_checkpoint

        arrays, meta = load_checkpoint(resume)
        if meta.get("fingerprint") != fp:
            raise ValidationError("resume", f"checkpoint {resume} was written with different settings "
                                  "or data; cannot continue it")
        state = State.from_arrays(arrays, meta, xp)
    else:
        state = State(object=xp.asarray(obj0), probe=xp.asarray(p0), positions=pos.copy(),
                      rng=np.random.default_rng(seed))

    def result(st, status):
        posm = st.positions
        scan_y = (posm[:, 0] + n // 2 + oy) * dx
        scan_x = (posm[:, 1] + n // 2 + ox) * dx
        engine_str = ",".join(f"{e}:{k}" for e, k in sched)
        extra = {k: (v if isinstance(v, (int, float, str, bool)) else repr(v))
                 for k, v in opts.items() if v is not None}
        rec = reconstruction(
            to_host(st.object), to_host(st.probe), pixel_size=dx, scan_y=scan_y, scan_x=scan_x,
            origin=(oy * dx, ox * dx), slice_thickness=dz if L > 1 else None,
            cost=np.asarray(st.cost, dtype=np.float64),
            engine=engine_str, iterations=int(st.iteration), iterations_requested=total,
            slices=L, modes=M, upsample=up, noise=noise, seed=seed, device=device,
            position_refinement=-1 if refine_start is None else refine_start,
            status=status, radiation=attrs.get("radiation"), energy_eV=attrs.get("energy_eV"),
            wavelength=lam, **{"option_" + k: v for k, v in extra.items()})
        rec.attrs["ptynb_version"] = __version__
        return rec

    # ---------------------------------------------------------------- loop
    bar = None
    if progress:
        from ..control import tqdm_class
        tqdm = tqdm_class()

        bar = tqdm(total=total, initial=state.iteration, desc="ptycho", leave=False)
    status = "complete"
    last_good = state.copy()
    momentum = float(opts["momentum"])
    try:
        while state.iteration < total:
            if cancel is not None and cancel.is_set():
                status = "cancelled"
                break
            it = state.iteration
            name = _engine_at(sched, it)
            state.refining = refine_start is not None and it >= refine_start
            if momentum > 0 and name == "lsqml":
                o_start, p_start = state.object.copy(), state.probe.copy()
            c = ENGINES[name](problem, state, it)
            if momentum > 0 and name == "lsqml":
                for key, arr, start in (("object", state.object, o_start), ("probe", state.probe, p_start)):
                    delta = arr - start
                    v = state.momentum.get(key)
                    v = delta if v is None else delta + np.float32(momentum) * v
                    state.momentum[key] = v
                    arr += np.float32(momentum) * (v - delta)
            _constraints(problem, state, opts, xp)
            finite = np.isfinite(c) and bool(xp.isfinite(state.object.sum()))
            if not finite:
                raise DivergenceError(
                    f"reconstruction diverged at iteration {it} (engine {name}): cost {c}; "
                    "err.last_good holds the state after the last finite iteration",
                    last_good=result(last_good, "diverged"), iteration=it)
            state.cost.append(float(c))
            state.iteration = it + 1
            last_good = state.copy()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(engine=name, cost=f"{c:.4g}")
            if callback is not None and (state.iteration % callback_every == 0 or state.iteration == total):
                callback(state.iteration, {
                    "iteration": state.iteration, "iterations": total, "engine": name,
                    "cost": list(state.cost), "object": np.array(to_host(state.object)),
                    "probe": np.array(to_host(state.probe)),
                    "scan_y": (state.positions[:, 0] + n // 2 + oy) * dx,
                    "scan_x": (state.positions[:, 1] + n // 2 + ox) * dx})
            if checkpoint is not None and checkpoint_every and state.iteration % int(checkpoint_every) == 0:
                _save(checkpoint, state, fp)
    except KeyboardInterrupt:
        status = "cancelled"
        state = last_good
    finally:
        if bar is not None:
            bar.close()
    if checkpoint is not None:
        _save(checkpoint, state, fp)
    return result(state, status)


def _save(path, state, fp):
    from .checkpoint import save_checkpoint

    arrays, meta = state.to_arrays()
    meta["fingerprint"] = fp
    save_checkpoint(path, arrays, meta)


def _constraints(problem, state, opts, xp):
    """Probe/object constraints applied after every iteration (in place)."""
    probe, obj = state.probe, state.object
    n = probe.shape[-1]
    if probe.shape[0] > 1:
        probe[...] = orthogonalize_modes(probe)
    sup = opts.get("probe_support")
    if sup:
        yy, xx = np.mgrid[:n, :n]
        r = np.hypot(yy - n // 2, xx - n // 2)
        probe *= xp.asarray((r <= float(sup) * n / 2).astype(np.float32))
    pw = opts.get("probe_power")
    if pw is not None:
        target = float(problem.norm / problem.intensity.shape[0]) if pw == "measured" else float(pw)
        cur = float((probe.real ** 2 + probe.imag ** 2).sum())
        if cur > 0:
            probe *= np.float32(math.sqrt(target / cur))
    amax, amin = opts.get("object_amplitude_max"), opts.get("object_amplitude_min")
    if amax is not None and math.isinf(amax):  # math.inf: no limit
        amax = None
    pr = opts.get("object_phase_range")
    if opts.get("pure_phase"):
        a = xp.abs(obj)
        obj /= xp.maximum(a, 1e-12)
    elif amax is not None or amin is not None:
        a = xp.abs(obj)
        lim = xp.clip(a, amin if amin is not None else 0.0, amax if amax is not None else np.inf)
        obj *= (lim / xp.maximum(a, 1e-12)).astype(np.float32)
    if pr is not None:
        ph = xp.clip(xp.angle(obj), float(pr[0]), float(pr[1]))
        obj[...] = (xp.abs(obj) * xp.exp(1j * ph)).astype(np.complex64)
