"""LSQ-ML's per-pattern pipeline in one compiled call, with FFTW called from the compiled code.

:func:`ptynb.ptycho.engines._lsq_batch_compiled` splits a batch between worker threads. With
one Python call per stage the workers hold the GIL between the stages (argument checks of
every kernel and FFT call) and wait for each other; here each worker runs its whole chunk
(shifted probes, exit waves, forward FFT, detector step, inverse FFT, update sums, the probe
update's FFT) in ONE call that never holds the GIL, one pattern after the other, so that each
pattern's arrays stay in the core's cache.

The transforms are FFTW's (the single-precision library that :mod:`pyfftw` loads), planned
once per window size for one in-place ``n x n`` complex64 transform (the FFTW wisdom of
:mod:`ptynb.backend` applies) and executed on each pattern's buffer with
``fftwf_execute_dft``, which FFTW documents as thread-safe for a shared plan. A compiled
function that calls a ctypes pointer cannot be cached on disk (numba refuses), so
:func:`far_fields` is compiled once per process (about 2 s); the kernels it calls are the
cached ones of :mod:`ptynb.ptycho._kernels`. It gains 0-10 % over the staged path on two
cores (measured, ``benchmarks/RESULTS.md``), so the engine compiles it only for runs of at
least :data:`WORTH_COMPILING` pattern updates, or uses it once compiled.

:func:`available` is False (and the engine keeps its staged path) when numba or the FFTW
library is missing or a buffer is not aligned as the plan needs.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import threading

import numpy as np

from . import _kernels as K

_LOCK = threading.Lock()
_STATE: dict = {}
_PLANS: dict[int, tuple[int, int, int]] = {}

FFTW_FORWARD, FFTW_BACKWARD = -1, 1
_FLAGS = {"estimate": 1 << 6, "measure": 0, "patient": 1 << 5, "exhaustive": 1 << 3}


def _library():
    """The libfftw3f that pyfftw uses (its wheel's copy, else the system's), or None."""
    if "lib" in _STATE:
        return _STATE["lib"]
    lib = None
    try:
        import pyfftw

        here = os.path.dirname(pyfftw.__file__)
        cands = sorted(glob.glob(os.path.join(here, "..", "pyfftw.libs", "libfftw3f-*.so*")))
        cands += sorted(glob.glob(os.path.join(here, ".dylibs", "libfftw3f*.dylib")))
        sysname = ctypes.util.find_library("fftw3f")
        if sysname:
            cands.append(sysname)
        for c in cands:
            try:
                lib = ctypes.CDLL(c)
                break
            except OSError:
                continue
    except ImportError:  # pragma: no cover
        lib = None
    threads = None
    if lib is not None:
        # the threads library sets how many threads NEW plans use, a global that pyfftw
        # changes for each of its plans: these plans must be one-thread ones (each worker
        # runs its own transforms; an OpenMP plan run from two threads at once oversubscribes
        # the cores, and its spinning teams slowed every later transform 6x, measured)
        here = os.path.dirname(getattr(lib, "_name", "") or "")
        for c in sorted(glob.glob(os.path.join(here, "libfftw3f_omp-*.so*"))
                        + sorted(glob.glob(os.path.join(here, "libfftw3f_threads*")))
                        + [ctypes.util.find_library("fftw3f_threads") or ""]):
            if not c:
                continue
            try:
                threads = ctypes.CDLL(c)
                threads.fftwf_plan_with_nthreads.argtypes = [ctypes.c_int]
                threads.fftwf_plan_with_nthreads.restype = None
                break
            except (OSError, AttributeError):
                threads = None
    _STATE["threads"] = threads
    if lib is not None:
        lib.fftwf_plan_dft_2d.restype = ctypes.c_void_p
        lib.fftwf_plan_dft_2d.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                          ctypes.c_void_p, ctypes.c_int, ctypes.c_uint]
        lib.fftwf_execute_dft.restype = None
        lib.fftwf_execute_dft.argtypes = [ctypes.c_void_p] * 3
        lib.fftwf_alignment_of.restype = ctypes.c_int
        lib.fftwf_alignment_of.argtypes = [ctypes.c_void_p]
    _STATE["lib"] = lib
    return lib


#: LSQ-ML pattern updates of a run from which the engine compiles the pipeline (about 2 s, once
#: per process) rather than keep the staged path (about 14 us slower per update at 128^2)
WORTH_COMPILING = 150_000


def compiled() -> bool:
    """True if the pipeline is already compiled in this process."""
    return _STATE.get("fn") is not None


def linkable() -> bool:
    """True if numba and the FFTW library are present (what :func:`available` needs, without
    compiling the pipeline)."""
    return K.available() and _library() is not None


def available() -> bool:
    """True if the one-call pipeline can run here (numba and the FFTW library present)."""
    return K.available() and _library() is not None and _compiled() is not None


def plans(n: int, effort: str = "measure") -> tuple[int, int, int]:
    """``(forward, inverse, alignment)`` FFTW plan pointers for one in-place ``n x n``
    complex64 transform (unnormalised), made once per process and size; ``alignment`` is
    the byte alignment the buffers they run on must share (``fftwf_alignment_of``)."""
    with _LOCK:
        got = _PLANS.get(n)
        if got is not None:
            return got
        from ..backend import _plan_lock, load_fftw_wisdom, save_fftw_wisdom
        from .operators import empty

        lib = _library()
        load_fftw_wisdom()
        buf = empty((n, n), np)
        flag = _FLAGS.get(str(effort), 0)
        with _plan_lock:  # FFTW's planner is not thread-safe (pyfftw's use is serialised too)
            if _STATE.get("threads") is not None:
                _STATE["threads"].fftwf_plan_with_nthreads(1)
            f = lib.fftwf_plan_dft_2d(n, n, buf.ctypes.data, buf.ctypes.data, FFTW_FORWARD, flag)
            b = lib.fftwf_plan_dft_2d(n, n, buf.ctypes.data, buf.ctypes.data, FFTW_BACKWARD, flag)
        if not f or not b:  # pragma: no cover
            raise RuntimeError(f"FFTW could not plan a {n} x {n} complex64 transform")
        if flag != _FLAGS["estimate"]:
            save_fftw_wisdom()
        got = _PLANS[n] = (int(f), int(b), int(lib.fftwf_alignment_of(buf.ctypes.data)))
        return got


def aligned(a: np.ndarray, alignment: int) -> bool:
    """Whether every ``n x n`` slot of the C-contiguous complex64 buffer ``a`` has the plan's
    alignment (slot offsets are multiples of ``n^2 * 8`` bytes, so the base decides)."""
    lib = _library()
    return bool(a.flags.c_contiguous and a.dtype == np.complex64
                and lib.fftwf_alignment_of(a.ctypes.data) == alignment)


def _compiled():
    """The compiled :func:`far_fields` (built on first use), or None without numba."""
    if "fn" in _STATE:
        return _STATE["fn"]
    fn = None
    lib = _library()
    if K.available() and lib is not None:
        fn = _build(lib.fftwf_execute_dft)
    _STATE["fn"] = fn
    return fn


def _build(execute):
    import numba as nb

    jit = nb.njit(nogil=True, fastmath=True, error_model="numpy", boundscheck=False)
    ln2 = np.float32(np.log(2.0))
    sqrt2 = np.float32(np.sqrt(2.0))
    third, fifth, seventh, ninth = (np.float32(1 / 3), np.float32(1 / 5), np.float32(1 / 7),
                                    np.float32(1 / 9))

    @jit
    def log_dot(model, I, valid, bits, mant):
        """``sum valid I log(model)`` (float64 over float32 rows) for ``model`` > 0 normal
        float32 (n, n): exponent from the bits, mantissa in [sqrt(1/2), sqrt(2)), ``log`` of
        it by ``2 atanh((f - 1)/(f + 1))`` to the z^9 term (relative error < 1e-9 there,
        float32 rounding beyond); ``bits``/``mant`` (n,) int32/float32 work rows (one view of
        the same memory), so that the loops vectorise."""
        n0, n1 = model.shape
        mi = model.view(np.int32)
        acc = 0.0
        for i in range(n0):
            r = mi[i]
            for j in range(n1):
                bits[j] = (r[j] & 0x007FFFFF) | 0x3F800000
            ii = I[i]
            v_ = valid[i]
            t = np.float32(0.0)
            for j in range(n1):
                e = np.float32(((r[j] >> 23) & 0xFF) - 127)
                f = mant[j]
                if f > sqrt2:
                    f = f * np.float32(0.5)
                    e = e + np.float32(1.0)
                z = (f - np.float32(1.0)) / (f + np.float32(1.0))
                z2 = z * z
                lg = np.float32(2.0) * z * (np.float32(1.0) + z2 * (third + z2 * (fifth + z2 * (
                    seventh + z2 * ninth))))
                t += ii[j] * v_[j] * (e * ln2 + lg)
            acc += t
        return acc

    @jit
    def far_fields(pf, pb, sub, phat, ry, rx, inv_npix, P, probe1, O, y, x, s, Psi, I, idx,
                   valid, gauss, eps, eps_p, gmin, const, model, g, bits, cost, num, gP, dP,
                   pden, c4, c3, mode):
        """One worker's chunk of an LSQ-ML batch, pattern by pattern (one probe mode, no
        detector upsampling): the shifted probe (``sub``: ``P[b] = F^-1[phat ry_b rx_b]``),
        the exit wave into ``Psi[b]``, forward FFT, the detector step (``gauss``: amplitude
        projection, ``I`` (J, n, n) then holds the measured amplitudes; else the Poisson
        Newton step on the intensities ``I``, misfit with :func:`log_dot`), inverse FFT, then :func:`~ptynb.ptycho._kernels.lsq_update_sums`
        into this worker's ``num``/``dP``/``pden`` (``mode`` 0/1/2 as there) and, sub-pixel
        with the probe update, the update's spectrum shifted back into ``dP``. Arrays as in
        :func:`ptynb.ptycho.engines._lsq_batch_compiled`; ``cost`` (B,) float64 out."""
        B, M, n0, n1 = Psi.shape
        mant = bits.view(np.float32)
        one = np.float32(1.0)
        yb = np.empty(1, np.int64)
        xb = np.empty(1, np.int64)
        for b in range(B):
            # one-pattern views by integer index and reshape keep numba's C layout (slices
            # would be "any" layout, whose loops do not vectorise)
            yb[0] = y[b]
            xb[0] = x[b]
            Wb = Psi[b].reshape(1, M, n0, n1)
            if sub:
                K.ramp_multiply(phat, ry[b], rx[b], inv_npix, P[b])
                execute(pb, P[b, 0].ctypes.data, P[b, 0].ctypes.data)
                Pb = P[b].reshape(1, M, n0, n1)
            else:
                Pb = probe1
            K.lsq_exit_waves(Pb, O, yb, xb, s, Wb)
            W = Psi[b, 0]
            execute(pf, W.ctypes.data, W.ctypes.data)
            j = idx[b]
            if gauss:
                cost[b] = K.modulus_gaussian(W, I[j], I[j], valid, eps, one)
            else:
                s1, s2, s3 = K.poisson_sums(W, I[j], valid, eps_p, model, g, gmin)
                a = s1 / (s1 + s2 + 1e-12)
                a = min(max(a, 0.0), 1.0)
                cost[b] = s3 - log_dot(model, I[j], valid, bits, mant) + const[j]
                K.poisson_apply(W, g, valid, np.float32(a), one)
            execute(pb, W.ctypes.data, W.ctypes.data)
            if mode == 2:
                K.lsq_update_sums(Pb, O, yb, xb, s, Wb, num,
                                  gP[b].reshape(1, M, n0, n1), c3, pden, 2)
                G = gP[b, 0]
                execute(pf, G.ctypes.data, G.ctypes.data)
                K.add_ramp_multiply(gP[b], ry[b], rx[b], dP)
            elif mode == 1:
                K.lsq_update_sums(Pb, O, yb, xb, s, Wb, num, c4, dP,
                                  pden, 1)
            else:
                K.lsq_update_sums(Pb, O, yb, xb, s, Wb, num, c4, c3,
                                  pden, 0)

    return far_fields


def far_fields(*args):
    """Run the compiled chunk pipeline (see :func:`_build`'s ``far_fields``)."""
    return _compiled()(*args)
