"""Array backends: numpy (CPU) or cupy (GPU), fast FFTs, host/device transfer, torch bridge.

Every hot loop in ptynb is written once against an "array module" ``xp`` (numpy or cupy)
and asks this module for it. Nothing here imports cupy or torch at import time.

Device selection
----------------
``device`` arguments accept ``"cpu"``, ``"gpu"`` (alias ``"cuda"``) or ``None``. ``None``
means the ``PTYNB_DEVICE`` environment variable if set, else ``"cpu"``.

FFTs
----
:func:`fft2` / :func:`ifft2` transform the last two axes of a (batched) complex array with
``norm="ortho"`` by default. On the CPU they use FFTW through pyfftw with cached plans
and all cores when pyfftw is importable (``PTYNB_FFT=pyfftw|scipy|numpy`` overrides), else
``scipy.fft`` with ``workers=-1``; on the GPU they use ``cupy.fft`` (cuFFT, plans cached by
cupy).
"""
from __future__ import annotations

import os
import threading
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "DeviceError",
    "resolve_device",
    "gpu_available",
    "get_xp",
    "xp_of",
    "is_gpu_array",
    "to_device",
    "to_host",
    "fft2",
    "fftw_plan",
    "fftw_wisdom_path",
    "load_fftw_wisdom",
    "save_fftw_wisdom",
    "ifft2",
    "fftn",
    "ifftn",
    "fft_backend",
    "set_fft_backend",
    "cpu_workers",
    "to_torch",
    "from_torch",
    "synchronize",
]


class DeviceError(RuntimeError):
    """Raised when a requested device (e.g. the GPU) is not usable."""


# ---------------------------------------------------------------------------- devices
_DEVICE_ALIASES = {"cpu": "cpu", "numpy": "cpu", "gpu": "gpu", "cuda": "gpu", "cupy": "gpu"}


def resolve_device(device: str | None = None) -> str:
    """Normalise a device request to ``"cpu"`` or ``"gpu"``.

    Parameters
    ----------
    device : {"cpu", "gpu", "cuda", None}
        ``None`` reads the ``PTYNB_DEVICE`` environment variable (default ``"cpu"``).

    Raises
    ------
    ValueError
        For an unknown device name.
    DeviceError
        If ``"gpu"`` is requested and cupy or a CUDA device is unavailable.
    """
    if device is None:
        device = os.environ.get("PTYNB_DEVICE", "cpu")
    key = str(device).strip().lower()
    if key not in _DEVICE_ALIASES:
        raise ValueError(f"unknown device {device!r}: use 'cpu' or 'gpu'")
    dev = _DEVICE_ALIASES[key]
    if dev == "gpu" and not gpu_available():
        raise DeviceError(
            "device='gpu' was requested but no usable CUDA GPU with cupy was found; "
            "install the 'gpu' extra (pip install 'ptynb[gpu]') on a machine with a GPU, "
            "or use device='cpu'"
        )
    return dev


@lru_cache(maxsize=1)
def gpu_available() -> bool:
    """True if cupy imports and at least one CUDA device answers."""
    try:
        import cupy  # noqa: F401

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDA driver errors
        return False


def get_xp(device: str | None = None):
    """Return the array module (``numpy`` or ``cupy``) for ``device``."""
    if resolve_device(device) == "gpu":
        import cupy

        return cupy
    return np


def is_gpu_array(x: Any) -> bool:
    """True for a cupy ndarray (checked without importing cupy)."""
    return type(x).__module__.split(".")[0] == "cupy"


def xp_of(*arrays: Any):
    """Array module of the given arrays (cupy if any of them is a cupy array)."""
    for a in arrays:
        if is_gpu_array(a):
            import cupy

            return cupy
    return np


def to_device(x: Any, device: str | None = None, dtype=None):
    """Move an array (numpy, cupy, xarray-wrapped or array-like) to ``device``.

    Returns a numpy array for ``"cpu"`` and a cupy array for ``"gpu"``; ``dtype`` optionally
    casts on the way. No copy is made when the array is already there with that dtype.
    """
    dev = resolve_device(device)
    if hasattr(x, "data") and hasattr(x, "dims"):  # xarray object
        x = x.data
    if dev == "gpu":
        import cupy

        return cupy.asarray(x, dtype=dtype)
    return np.asarray(to_host(x), dtype=dtype)


def to_host(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array (copying from the GPU if needed)."""
    if is_gpu_array(x):
        return x.get()
    if hasattr(x, "dims") and hasattr(x, "data"):
        x = x.data
    if hasattr(x, "compute") and not isinstance(x, np.ndarray):  # dask
        x = x.compute()
    if type(x).__module__.split(".")[0] == "torch":
        return x.detach().cpu().numpy()
    return np.asarray(x)


def synchronize(xp=None) -> None:
    """Block until queued GPU work is done (no-op on the CPU); use around timings."""
    if xp is not None and xp is not np:
        xp.cuda.Device().synchronize()


def cpu_workers() -> int:
    """Threads used by CPU FFTs: ``PTYNB_FFT_WORKERS`` or the number of usable cores."""
    env = os.environ.get("PTYNB_FFT_WORKERS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------- FFT
_FFT_CHOICES = ("pyfftw", "scipy", "numpy")
_fft_choice: str | None = None
_plan_lock = threading.RLock()


def _pyfftw_ok() -> bool:
    try:
        import pyfftw  # noqa: F401

        return True
    except Exception:
        return False


def fft_backend() -> str:
    """Name of the CPU FFT library in use: ``"pyfftw"``, ``"scipy"`` or ``"numpy"``."""
    global _fft_choice
    if _fft_choice is None:
        env = os.environ.get("PTYNB_FFT", "").strip().lower()
        if env:
            set_fft_backend(env)
        else:
            _fft_choice = "pyfftw" if _pyfftw_ok() else "scipy"
    return _fft_choice


def set_fft_backend(name: str) -> None:
    """Choose the CPU FFT library (``"pyfftw"``, ``"scipy"`` or ``"numpy"``)."""
    global _fft_choice
    name = name.strip().lower()
    if name not in _FFT_CHOICES:
        raise ValueError(f"unknown FFT backend {name!r}: choose one of {_FFT_CHOICES}")
    if name == "pyfftw" and not _pyfftw_ok():
        raise ValueError("FFT backend 'pyfftw' requested but pyfftw is not installed")
    _fft_choice = name


_PLANS: dict = {}
#: a shape's plan is re-made with FFTW_MEASURE after this many uses (ESTIMATE before that)
MEASURE_AFTER = 32


def _fftw_effort_default() -> str:
    return os.environ.get("PTYNB_FFTW_EFFORT", "adaptive").strip().lower()


# ---------------------------------------------------------------------------- FFTW wisdom
#: planning rigour, weakest first (FFTW's flags)
FFTW_EFFORTS = ("estimate", "measure", "patient", "exhaustive")
_wisdom_lock = threading.Lock()
_wisdom_state = {"loaded": False, "saved": None}


def fftw_wisdom_path():
    """The file in which FFTW wisdom (measured plans) is kept between sessions, or None.

    ``PTYNB_FFTW_WISDOM``: a file path, or ``off``/``0``/``none`` to keep wisdom in memory
    only. Default: ``$XDG_CACHE_HOME/ptynb/`` (``~/.cache/ptynb/``) with a file name keyed by
    this CPU (model and instruction-set flags) and the pyfftw version, because a plan measured
    on one CPU is not valid on another.
    """
    from pathlib import Path

    env = os.environ.get("PTYNB_FFTW_WISDOM")
    if env is not None and env.strip().lower() in ("", "0", "off", "none", "false", "no"):
        return None
    if env:
        return Path(env).expanduser()
    import hashlib
    import platform

    try:
        import pyfftw

        ver = pyfftw.__version__
    except Exception:  # pragma: no cover - no pyfftw: no wisdom
        return None
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "flags")):
                    cpu += line
                if cpu.count("\n") >= 2:
                    break
    except OSError:  # pragma: no cover - non-Linux
        cpu = platform.processor()
    key = hashlib.sha1(f"{platform.machine()}|{cpu}|{ver}".encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ptynb"
    return base / f"fftw-wisdom-{key}.json"


def load_fftw_wisdom() -> bool:
    """Import the stored FFTW wisdom once per process; True if a file was read.

    A missing, unreadable or foreign file is ignored (plans are then measured again).
    """
    with _wisdom_lock:
        if _wisdom_state["loaded"]:
            return False
        _wisdom_state["loaded"] = True
        path = fftw_wisdom_path()
        if path is None or not path.is_file():
            return False
        import json

        import pyfftw

        try:
            doc = json.loads(path.read_text())
            if doc.get("pyfftw") != pyfftw.__version__:
                return False
            wis = tuple(doc[k].encode("ascii") for k in ("double", "single", "long"))
            pyfftw.import_wisdom(wis)
            _wisdom_state["saved"] = wis
            return True
        except Exception:  # corrupt or foreign: measure again, overwrite on the next save
            return False


def save_fftw_wisdom() -> bool:
    """Write this process's FFTW wisdom to :func:`fftw_wisdom_path` (atomic replace).

    Returns True if the file was written (False when wisdom is off or nothing is new).
    """
    path = fftw_wisdom_path()
    if path is None:
        return False
    import json
    import tempfile

    import pyfftw

    with _wisdom_lock:
        wis = pyfftw.export_wisdom()
        if wis == _wisdom_state["saved"]:
            return False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            doc = {"pyfftw": pyfftw.__version__, "double": wis[0].decode("ascii"),
                   "single": wis[1].decode("ascii"), "long": wis[2].decode("ascii")}
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".wisdom-", suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh)
            os.replace(tmp, path)
        except OSError:  # read-only home, full disk: plans still work, only not kept
            return False
        _wisdom_state["saved"] = wis
        return True


def fftw_plan(input_array, output_array, *, axes=(-2, -1), inverse: bool = False,
              threads: int = 1, effort: str = "measure"):
    """A ``pyfftw.FFTW`` plan using and extending the stored FFTW wisdom.

    Parameters
    ----------
    input_array, output_array : numpy arrays (aligned, complex64/complex128)
        Buffers the plan is made for (the same array for an in-place transform).
    axes : tuple of int
        Transformed axes.
    inverse : bool
        Backward (unnormalised) transform if True.
    threads : int
        FFTW threads.
    effort : {"estimate", "measure", "patient", "exhaustive"}
        Planning rigour. With wisdom for the same transform at this or a higher rigour the
        plan is made instantly; otherwise planning takes from milliseconds (estimate) to
        seconds (patient, 128 x 128: about 1 s on one core) and, above ``estimate``, the
        result is saved to the wisdom file so later sessions on this machine plan instantly.
    """
    import pyfftw

    effort = str(effort).lower()
    if effort not in FFTW_EFFORTS:
        raise ValueError(f"FFTW effort must be one of {FFTW_EFFORTS}, not {effort!r}")
    load_fftw_wisdom()
    flag = "FFTW_" + effort.upper()
    plan = pyfftw.FFTW(input_array, output_array, axes=axes,
                       direction="FFTW_BACKWARD" if inverse else "FFTW_FORWARD",
                       flags=(flag,), threads=int(threads), normalise_idft=False, ortho=False)
    if effort != "estimate":
        save_fftw_wisdom()
    return plan


def _fftw_plan(shape, dtype, axes, inverse):
    """A cached pyfftw.FFTW object for (shape, dtype, axes, direction).

    Planning effort (``PTYNB_FFTW_EFFORT``): ``adaptive`` (default) plans with
    FFTW_ESTIMATE (instant) and re-plans with FFTW_MEASURE once the same transform has been
    used ``MEASURE_AFTER`` times, so short jobs and tests never wait for planning while
    iterative reconstructions get measured plans; ``estimate`` or ``measure`` force one.
    """
    import pyfftw

    key = (shape, np.dtype(dtype).str, axes, inverse, cpu_workers())
    entry = _PLANS.get(key)
    effort = _fftw_effort_default()
    if entry is not None:
        entry[1] += 1
        if not (effort == "adaptive" and entry[2] == "FFTW_ESTIMATE" and entry[1] >= MEASURE_AFTER):
            return entry[0]
    with _plan_lock:
        entry = _PLANS.get(key)
        if entry is not None and not (effort == "adaptive" and entry[2] == "FFTW_ESTIMATE"
                                      and entry[1] >= MEASURE_AFTER):
            return entry[0]
        if effort == "measure" or (effort == "adaptive" and entry is not None):
            flag = "FFTW_MEASURE"
        else:
            flag = "FFTW_ESTIMATE"
        a = pyfftw.empty_aligned(shape, dtype=dtype)
        b = pyfftw.empty_aligned(shape, dtype=dtype)
        plan = fftw_plan(a, b, axes=axes, inverse=inverse, threads=cpu_workers(),
                         effort=flag[5:].lower())
        if len(_PLANS) > 64:
            _PLANS.clear()
        _PLANS[key] = [plan, entry[1] if entry else 1, flag]
    return plan


def _norm_factor(shape, axes, norm, inverse):
    n = 1
    for ax in axes:
        n *= shape[ax]
    if norm == "ortho":
        return 1.0 / np.sqrt(n)
    if norm == "backward":
        return 1.0 / n if inverse else 1.0
    if norm == "forward":
        return 1.0 if inverse else 1.0 / n
    raise ValueError(f"norm must be 'ortho', 'backward' or 'forward', not {norm!r}")


def _cpu_fft(x, axes, norm, inverse, overwrite):
    choice = fft_backend()
    if not np.iscomplexobj(x):
        x = x.astype(np.complex64 if x.dtype == np.float32 else np.complex128)
    if choice == "pyfftw" and x.dtype in (np.complex64, np.complex128):
        axes_n = tuple(ax % x.ndim for ax in axes)
        import pyfftw

        plan = _fftw_plan(x.shape, x.dtype, axes_n, inverse)
        with _plan_lock:  # a plan's buffers are shared: one caller at a time
            # FFTW needs the plan's alignment: copy into its input buffer, write straight into a
            # fresh aligned output (returned to the caller, so no copy back out)
            plan.input_array[...] = x
            out = pyfftw.empty_aligned(x.shape, dtype=x.dtype)
            plan.update_arrays(plan.input_array, out)
            plan.execute()
        f = _norm_factor(x.shape, axes_n, norm, inverse)
        if f != 1.0:
            out *= out.real.dtype.type(f)
        return out
    if choice == "numpy":
        fn = np.fft.ifftn if inverse else np.fft.fftn
        return fn(x, axes=axes, norm=norm).astype(x.dtype, copy=False)
    import scipy.fft

    fn = scipy.fft.ifftn if inverse else scipy.fft.fftn
    return fn(x, axes=axes, norm=norm, workers=cpu_workers(), overwrite_x=overwrite)


def _fft(x, axes, norm, inverse, overwrite=False):
    if is_gpu_array(x):
        import cupy

        fn = cupy.fft.ifftn if inverse else cupy.fft.fftn
        return fn(x, axes=axes, norm=norm)
    return _cpu_fft(np.asarray(x), tuple(axes), norm, inverse, overwrite)


def fft2(x, norm: str = "ortho", overwrite: bool = False):
    """2D FFT over the last two axes of a (batched) array; complex64 in, complex64 out.

    ``norm="ortho"`` (default) makes the transform unitary, so total intensity is conserved.
    """
    return _fft(x, (-2, -1), norm, False, overwrite)


def ifft2(x, norm: str = "ortho", overwrite: bool = False):
    """Inverse 2D FFT over the last two axes; the inverse of :func:`fft2` with the same norm."""
    return _fft(x, (-2, -1), norm, True, overwrite)


def fftn(x, axes=None, norm: str = "ortho"):
    """N-D FFT over ``axes`` (all axes by default) on the array's own device."""
    axes = tuple(range(np.ndim(x))) if axes is None else tuple(axes)
    return _fft(x, axes, norm, False)


def ifftn(x, axes=None, norm: str = "ortho"):
    """Inverse N-D FFT over ``axes`` (all axes by default) on the array's own device."""
    axes = tuple(range(np.ndim(x))) if axes is None else tuple(axes)
    return _fft(x, axes, norm, True)


# ---------------------------------------------------------------------------- torch
def to_torch(x, device: str | None = None):
    """Share a numpy/cupy array with torch via DLPack (zero-copy where possible).

    numpy arrays become CPU tensors sharing memory; cupy arrays become CUDA tensors on the
    same device, without a copy. ``device`` ("cpu"/"gpu") optionally moves the result.
    """
    import torch

    if isinstance(x, torch.Tensor):
        t = x
    elif is_gpu_array(x):
        t = torch.from_dlpack(x)
    else:
        arr = np.asarray(x)
        if not arr.flags.writeable or not (arr.flags.c_contiguous or arr.flags.f_contiguous):
            arr = np.ascontiguousarray(arr).copy()
        t = torch.from_numpy(arr)
    if device is not None:
        t = t.to("cuda" if resolve_device(device) == "gpu" else "cpu")
    return t


def from_torch(t, like=None):
    """Convert a torch tensor to numpy (CPU tensors) or cupy (CUDA tensors) via DLPack.

    If ``like`` is given (a numpy or cupy array), the result is placed on its device.
    Gradients are detached.
    """
    t = t.detach()
    if t.is_cuda:
        import cupy

        out = cupy.from_dlpack(t)
    else:
        out = t.numpy()
    if like is not None:
        if is_gpu_array(like) and not is_gpu_array(out):
            import cupy

            out = cupy.asarray(out)
        elif not is_gpu_array(like) and is_gpu_array(out):
            out = out.get()
    return out
