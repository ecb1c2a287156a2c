"""The one training loop of ptynb (ADePt and APT use it), with checkpoints and resume.

:func:`train` runs ``iterations`` optimiser steps of a loss that the caller defines::

    from ptynb.learn import TrainOptions, train

    def loss_fn(model, ctx):                       # ctx: TrainContext
        x = data[ctx.rng.integers(len(data))]      # numpy Generator, checkpointed
        loss = ((model(x) - target) ** 2).mean()
        return loss, {"mse": float(loss)}          # or just the loss

    result = train(model, loss_fn, TrainOptions(iterations=500, learning_rate=2e-4),
                   checkpoint="run.ckpt", cancel=event)

Guarantees
----------
- **Same code on CPU and CUDA** (``TrainOptions.device``: "auto" takes a GPU when torch sees
  one). The model is moved to that device; ``ctx.device`` tells the loss where to put data.
- **Atomic checkpoints** every ``checkpoint_every`` iterations, on cancel and at the end: the
  weights, the optimiser (Adam moments), the learning-rate scheduler, every random state the
  loop uses (``ctx.rng``, ``ctx.generator`` and torch's global CPU/CUDA generators, which the
  loop forks so that the caller's own random state is left as it was) and the loss history.
  A file is written next to its target and moved over it, so a crash never leaves a broken
  checkpoint.
- **Resume equals an uninterrupted run**: ``train(..., checkpoint=path)`` with a checkpoint at
  ``path`` continues from it; on the CPU with ``deterministic=True`` the final weights and
  the loss history are bit-identical to a run that was never stopped (tested). A checkpoint
  made with other settings, another model shape or other data (``fingerprint``) is refused
  with a message that names the difference, never silently mixed.
- **Clean cancel**: when ``cancel`` (a :class:`threading.Event`) is set, the loop stops after
  the current iteration, writes the checkpoint and returns with ``status="cancelled"``.
- **Progress and live loss**: a tqdm bar with the loss, ``report(fraction, message)`` for
  apps, and ``callback(model, ctx, history)`` every ``callback_every`` iterations for live
  views.
- A non-finite loss raises :class:`FloatingPointError` naming the iteration (the last
  checkpoint is kept); lower the learning rate.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import param

from ..control import STATUS_CANCELLED, STATUS_COMPLETE, Reporter, check_event, is_cancelled
from ..data import ValidationError
from ..options import Options

__all__ = ["TrainOptions", "TrainContext", "TrainResult", "train", "save_weights",
           "load_weights", "resolve_torch_device", "CHECKPOINT_FORMAT", "WEIGHTS_FORMAT"]

CHECKPOINT_FORMAT = "ptynb-train-checkpoint/1"
WEIGHTS_FORMAT = "ptynb-weights/1"

# settings that do not change the result (and may differ between a run and its resume)
_NOT_IN_FINGERPRINT = ("checkpoint_every", "device", "log_every")


class TrainOptions(Options):
    """Settings of :func:`train` (Adam with a learning-rate schedule)."""

    iterations = param.Integer(1000, bounds=(1, None), doc="Optimiser steps in all.")
    learning_rate = param.Number(2e-4, bounds=(0, None), inclusive_bounds=(False, True),
                                 doc="Adam's initial learning rate.")
    schedule = param.Selector(default="constant", objects=["constant", "step", "poly"], doc=(
        "Learning-rate schedule: constant; step (times step_gamma every step_every "
        "iterations); poly ((1 - i / iterations) ** poly_power, as in APT)."))
    step_every = param.Integer(500, bounds=(1, None), doc="Period of the step schedule (iterations).")
    step_gamma = param.Number(0.5, bounds=(0, 1), inclusive_bounds=(False, True),
                              doc="Factor of the step schedule.")
    poly_power = param.Number(0.9, bounds=(0, None), doc="Power of the poly schedule.")
    betas = param.NumericTuple((0.9, 0.999), length=2, doc="Adam's moment decay rates.")
    weight_decay = param.Number(0.0, bounds=(0, None), doc="Adam's L2 weight decay.")
    grad_clip = param.Number(0.0, bounds=(0, None),
                             doc="Clip the gradients' global norm to this (0: no clipping).")
    seed = param.Integer(0, bounds=(0, None), doc="Seed of every random state the loop uses.")
    checkpoint_every = param.Integer(50, bounds=(1, None),
                                     doc="Write the checkpoint every this many iterations.")
    log_every = param.Integer(1, bounds=(1, None), doc="Update the progress bar every this many iterations.")
    device = param.Selector(default="auto", objects=["auto", "cpu", "cuda"],
                            doc="Where to train: auto takes a CUDA GPU when torch sees one.")
    deterministic = param.Boolean(True, doc=(
        "Use torch's deterministic algorithms while training (bit-exact resume on the CPU; "
        "on a GPU some operations are slower)."))

    def _check(self):
        b = tuple(self.betas)
        if not all(0.0 <= v < 1.0 for v in b):
            raise ValidationError("betas", f"must be two numbers in [0, 1), got {b}")


@dataclass
class TrainContext:
    """What the loss function gets besides the model.

    Attributes
    ----------
    iteration : int
        The step being computed, 0-based.
    iterations : int
        Steps in all.
    rng : numpy.random.Generator
        For sampling (angle subsets, patches); its state is checkpointed.
    generator : torch.Generator
        A CPU torch generator for torch-side sampling (``torch.rand(..., generator=g)``);
        checkpointed.
    device : torch.device
        Where the model lives; put the data there.
    options : TrainOptions
    """

    iteration: int
    iterations: int
    rng: np.random.Generator
    generator: Any
    device: Any
    options: TrainOptions


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes
    ----------
    model : torch.nn.Module
        The trained model (on the training device, in eval mode).
    history : dict of str to numpy.ndarray
        Per completed iteration: ``iteration`` (1-based), ``loss``, ``lr`` and every value the
        loss function logged.
    status : str
        "complete" or "cancelled".
    iterations_done : int
    resumed_from : int
        The iteration the run resumed from (0: started fresh).
    seconds : float
        Wall time of this call.
    """

    model: Any
    history: dict = field(default_factory=dict)
    status: str = STATUS_COMPLETE
    iterations_done: int = 0
    resumed_from: int = 0
    seconds: float = 0.0


def _torch():
    import torch

    return torch


def resolve_torch_device(device: str = "auto"):
    """``"auto"`` / ``"cpu"`` / ``"cuda"`` (or ``"gpu"``) as a :class:`torch.device`.

    Raises :class:`ptynb.backend.DeviceError` for "cuda" without a CUDA GPU.
    """
    torch = _torch()
    d = str(device).lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            from ..backend import DeviceError

            raise DeviceError("device='cuda' but torch sees no CUDA GPU; use device='cpu' or 'auto'")
        return torch.device("cuda")
    if d == "cpu":
        return torch.device("cpu")
    raise ValidationError("device", f"must be 'auto', 'cpu' or 'cuda', got {device!r}")


def _architecture(model) -> list:
    """Parameter and buffer names with their shapes: what must match for a state dict."""
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def _fingerprint(options: TrainOptions, model, extra) -> tuple[str, dict]:
    d = {k: v for k, v in options.as_dict().items() if k not in _NOT_IN_FINGERPRINT}
    d["betas"] = list(options.betas)
    desc = {"options": d, "model": type(model).__name__, "architecture": _architecture(model),
            "extra": extra}
    text = json.dumps(desc, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], desc


def _describe_mismatch(old: dict, new: dict) -> str:
    parts = []
    for k in sorted(set(old.get("options", {})) | set(new.get("options", {}))):
        a, b = old.get("options", {}).get(k), new.get("options", {}).get(k)
        if a != b:
            parts.append(f"{k} {a!r} in the checkpoint, {b!r} now")
    if old.get("model") != new.get("model") or old.get("architecture") != new.get("architecture"):
        parts.append(f"the model ({old.get('model')} with {len(old.get('architecture', []))} "
                     f"tensors in the checkpoint, {new.get('model')} with "
                     f"{len(new.get('architecture', []))} now, or other shapes)")
    if old.get("extra") != new.get("extra"):
        parts.append("the data or the problem (fingerprint) differ")
    return "; ".join(parts) or "unknown difference"


def _lr_factor(options: TrainOptions):
    n = options.iterations
    if options.schedule == "step":
        return lambda i: options.step_gamma ** (i // options.step_every)
    if options.schedule == "poly":
        return lambda i: max(0.0, 1.0 - i / n) ** options.poly_power
    return lambda i: 1.0


@contextlib.contextmanager
def _deterministic(enabled: bool):
    torch = _torch()
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(bool(enabled), warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)


def _write(path: Path, state: dict):
    from ..io._atomic import atomic_write

    torch = _torch()
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _read(path: Path) -> dict:
    torch = _torch()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no code runs on load
    except Exception as e:  # noqa: BLE001  (truncated, foreign file)
        raise ValidationError("checkpoint", f"{path} is not a ptynb training checkpoint ({type(e).__name__}: "
                              f"{e}); delete it or pass another checkpoint path") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValidationError("checkpoint", f"{path} is not a ptynb training checkpoint (format "
                              f"{state.get('format') if isinstance(state, dict) else None!r}, "
                              f"expected {CHECKPOINT_FORMAT!r})")
    return state


def _history_arrays(rows: list[dict]) -> dict:
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    return {k: np.array([r.get(k, np.nan) for r in rows],
                        dtype=np.int64 if k == "iteration" else np.float64) for k in keys}


def train(model, loss_fn: Callable, options: TrainOptions | None = None, *,
          parameters=None, checkpoint=None, resume: bool = True, fingerprint: Any = None,
          progress: bool = True, report: Callable | None = None, cancel=None,
          callback: Callable | None = None, callback_every: int = 10,
          desc: str = "training") -> TrainResult:
    """Train ``model`` by Adam on ``loss_fn`` with checkpoints, resume, progress and cancel.

    Parameters
    ----------
    model : torch.nn.Module
        Moved to the training device; left in eval mode at the end.
    loss_fn : callable(model, ctx) -> loss or (loss, dict)
        Returns the scalar loss tensor of iteration ``ctx.iteration`` (and optionally a dict
        of floats to log). Draw random numbers only from ``ctx.rng`` / ``ctx.generator`` (or
        torch's global generator, which the loop seeds and checkpoints).
    options : TrainOptions, optional
    parameters : iterable of torch.nn.Parameter, optional
        What to optimise (default: ``model.parameters()`` that require gradients).
    checkpoint : str or Path, optional
        Checkpoint file. Written atomically every ``options.checkpoint_every`` iterations,
        on cancel and at the end.
    resume : bool
        Continue from an existing ``checkpoint`` (default). False starts afresh and
        overwrites it.
    fingerprint : JSON-serialisable, optional
        Identifies the data/problem (e.g. a hash of the projections and the angle set): a
        checkpoint with another fingerprint is refused.
    progress : bool
        tqdm bar with the current loss.
    report : callable(fraction, message), optional
        Progress for apps (fraction in [0, 1]).
    cancel : threading.Event, optional
        Stop after the current iteration (checkpoint written, ``status="cancelled"``).
    callback : callable(model, ctx, history), optional
        Called every ``callback_every`` iterations and after the last one (live views).
        ``history`` is the dict of arrays so far.
    callback_every : int
    desc : str
        Label of the progress bar.

    Returns
    -------
    TrainResult
    """
    import time

    torch = _torch()
    t0 = time.perf_counter()
    options = TrainOptions() if options is None else options
    if not isinstance(options, TrainOptions):
        raise TypeError(f"options must be a TrainOptions, got {type(options).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable(model, ctx)")
    cancel = check_event(cancel)
    reporter = Reporter(report)
    callback_every = max(1, int(callback_every))
    device = resolve_torch_device(options.device)
    model.to(device)
    params = [p for p in (model.parameters() if parameters is None else parameters)
              if p.requires_grad]
    if not params:
        raise ValidationError("model", "nothing to train: the model has no parameters that require gradients")
    fp, fp_desc = _fingerprint(options, model, fingerprint)
    path = None if checkpoint is None else Path(checkpoint)
    if path is not None and not path.parent.is_dir():
        raise ValidationError("checkpoint", f"directory {path.parent} does not exist")

    opt = torch.optim.Adam(params, lr=options.learning_rate, betas=tuple(options.betas),
                           weight_decay=options.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(options))
    rng = np.random.Generator(np.random.PCG64(options.seed))
    gen = torch.Generator(device="cpu")
    gen.manual_seed(options.seed)
    rows: list[dict] = []
    start = 0
    cuda_devices = [device.index or 0] if device.type == "cuda" else []

    with torch.random.fork_rng(devices=cuda_devices), _deterministic(options.deterministic):
        torch.manual_seed(options.seed)
        if path is not None and resume and path.exists():
            state = _read(path)
            if state["fingerprint"] != fp:
                raise ValidationError(
                    "checkpoint", f"{path} was made by another training run: "
                    f"{_describe_mismatch(state['description'], fp_desc)}; pass resume=False "
                    "to start afresh (it will be overwritten) or another checkpoint path")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            rng.bit_generator.state = state["numpy_rng"]
            gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            if cuda_devices and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], device.index or 0)
            rows = list(state["history"])
            start = int(state["iteration"])
        resumed_from = start

        def save(iteration):
            if path is None:
                return
            _write(path, {
                "format": CHECKPOINT_FORMAT, "fingerprint": fp, "description": fp_desc,
                "iteration": iteration, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "numpy_rng": rng.bit_generator.state, "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device.index or 0) if cuda_devices else None,
                "history": rows,
            })

        bar = None
        if progress and start < options.iterations:
            from ..control import progress_bar

            bar = progress_bar(options.iterations, desc=desc, initial=start)
        status = STATUS_COMPLETE
        it = start
        try:
            model.train()
            while it < options.iterations:
                if is_cancelled(cancel):
                    status = STATUS_CANCELLED
                    break
                ctx = TrainContext(it, options.iterations, rng, gen, device, options)
                opt.zero_grad(set_to_none=True)
                out = loss_fn(model, ctx)
                loss, logs = (out if isinstance(out, tuple) else (out, {}))
                if not torch.is_tensor(loss) or loss.numel() != 1:
                    raise TypeError("loss_fn must return a scalar torch tensor (or (loss, dict))")
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"the training loss became {value} at iteration {it + 1}; lower "
                        f"learning_rate (now {options.learning_rate:g})"
                        + (f"; the checkpoint {path} keeps the last good state" if path else ""))
                loss.backward()
                if options.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
                lr = opt.param_groups[0]["lr"]
                opt.step()
                sched.step()
                it += 1
                rows.append({"iteration": it, "loss": value, "lr": lr,
                             **{k: float(v) for k, v in logs.items()}})
                if bar is not None and (it % options.log_every == 0 or it == options.iterations):
                    bar.n = it
                    bar.set_postfix(loss=f"{value:.4g}", refresh=False)
                    bar.refresh()
                reporter(it / options.iterations, f"{desc}: iteration {it}/{options.iterations}, "
                                                  f"loss {value:.4g}")
                if it % options.checkpoint_every == 0 and it < options.iterations:
                    save(it)
                if callback is not None and (it % callback_every == 0 or it == options.iterations):
                    model.eval()
                    with torch.no_grad():
                        callback(model, ctx, _history_arrays(rows))
                    model.train()
        finally:
            if bar is not None:
                bar.close()
        model.eval()
        if path is not None and (it > resumed_from or not path.exists()):
            save(it)
    return TrainResult(model=model, history=_history_arrays(rows), status=status,
                       iterations_done=it, resumed_from=resumed_from,
                       seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------- weights files
def save_weights(path, model, architecture: dict, meta: dict | None = None) -> Path:
    """Write a model's weights for shipping: ``{format, architecture, meta, state_dict}``.

    Parameters
    ----------
    path : str or Path
        Target file (written atomically).
    model : torch.nn.Module
    architecture : dict
        JSON-friendly description that must match when loading (class name, widths, patch
        size, ...).
    meta : dict, optional
        Provenance: training command, seed, data recipe, time, final loss.
    """
    torch = _torch()
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"format": WEIGHTS_FORMAT, "architecture": json.loads(json.dumps(architecture)),
               "meta": json.loads(json.dumps(meta or {}, default=str)), "state_dict": state}
    from ..io._atomic import atomic_write

    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def load_weights(path, *, architecture: dict | None = None) -> dict:
    """Read a weights file written by :func:`save_weights` (safely: ``weights_only``).

    Parameters
    ----------
    path : str or Path
    architecture : dict, optional
        When given, every key must equal the file's: a mismatch raises
        :class:`~ptynb.data.ValidationError` naming the keys (weights for another
        architecture or patch size).

    Returns
    -------
    dict with ``architecture``, ``meta``, ``state_dict``.
    """
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise ValidationError("weights", f"file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValidationError("weights", f"{path} is not a ptynb weights file ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise ValidationError("weights", f"{path} is not a ptynb weights file (expected format {WEIGHTS_FORMAT!r})")
    if architecture is not None:
        have = payload.get("architecture", {})
        want = json.loads(json.dumps(architecture))
        diff = [f"{k}: {have.get(k)!r} in the file, {want.get(k)!r} expected"
                for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
        if diff:
            raise ValidationError("weights", f"{path} are for another model: " + "; ".join(diff))
    return payload
