"""Fused CPU kernels (numba) for the sequential PIE sweep: one pass over memory per stage.

The sequential engines (ePIE, rPIE) do about 20 elementwise numpy passes per diffraction
pattern besides the two FFTs; at 128 x 128 those passes cost more than the FFTs. These
kernels fuse them into three loops per pattern (exit wave, detector constraint, object and
probe update) that numba compiles to SIMD code. They implement exactly the arithmetic of the
generic (numpy/cupy) loop in :mod:`ptynb.ptycho.engines`, which stays the reference and the
GPU path; ``tests/test_ptycho_engines.py`` checks that both give the same reconstruction.

All arrays are C-contiguous: ``P``, ``chi``, ``W`` (n, n) complex64; ``O`` (Y, X) complex64,
patch at rows ``y:y+n``, columns ``x:x+n``; real arrays (n, n) float32. Compiled code is
cached on disk (numba ``cache=True``), so only the first process on a machine compiles.
"""
from __future__ import annotations

import numpy as np

try:
    import numba as _nb
except ImportError:  # pragma: no cover - numba is a dependency; the generic loop still works
    _nb = None

__all__ = ["available", "exit_wave", "modulus_gaussian", "update_pie"]


def available() -> bool:
    """True if the fused kernels can be used (numba importable)."""
    return _nb is not None


if _nb is not None:
    _opts = dict(nogil=True, fastmath=True, cache=True, error_model="numpy", boundscheck=False)
    _jit = _nb.njit(**_opts)
else:  # pragma: no cover
    def _jit(f):
        return f


@_jit
def exit_wave(P, O, y, x, chi, o2):
    """``chi = P * O[y:y+n, x:x+n]``; ``o2 = |O patch|^2`` (float32, for its maximum)."""
    n0, n1 = P.shape
    for i in range(n0):
        p = P[i]
        o = O[y + i, x:x + n1]
        c = chi[i]
        r = o2[i]
        for j in range(n1):
            orr = o[j].real
            oi = o[j].imag
            pr = p[j].real
            pi = p[j].imag
            c[j] = complex(pr * orr - pi * oi, pr * oi + pi * orr)
            r[j] = orr * orr + oi * oi


@_jit
def modulus_gaussian(W, A, amps, valid, eps, inv1):
    """Amplitude constraint on the unnormalised far field ``W`` in place; returns the misfit.

    ``A`` measured amplitudes (sqrt counts), ``amps = A / npix`` (the inverse FFT's 1/npix
    folded in), ``valid`` 1/0 detector mask (float32), ``eps`` regulariser of ``|W|``,
    ``inv1 = 1/npix`` (masked pixels keep the model). Misfit ``sum valid (|W| - A)^2``
    (float64 over rows of float32 partial sums).
    """
    n0, n1 = W.shape
    cost = 0.0
    for i in range(n0):
        w = W[i]
        a_ = A[i]
        s_ = amps[i]
        v_ = valid[i]
        c = np.float32(0.0)
        for j in range(n1):
            wr = w[j].real
            wi = w[j].imag
            a = np.sqrt(wr * wr + wi * wi)
            v = v_[j]
            d = (a - a_[j]) * v
            c += d * d
            f = v * (s_[j] / (a + eps)) + (np.float32(1.0) - v) * inv1
            w[j] = complex(wr * f, wi * f)
        cost += c
    return cost


@_jit
def update_pie(W, chi, P, O, y, x, so, sp, do_probe, regularized, alpha, beta, off_o, off_p,
               p2):
    """Object and probe update from the exit-wave update ``d = W - chi`` (one pass).

    ePIE (``regularized`` False): ``O += so conj(P) d`` with ``so = alpha / max|P|^2`` and,
    if ``do_probe``, ``P += sp conj(O) d`` with ``sp = beta / max|O patch|^2`` (both from the
    values before this step). rPIE: ``O += conj(P) d / ((1 - alpha)|P|^2 + off_o)`` and
    ``P += conj(O) d / ((1 - beta)|O|^2 + off_p)``, with ``off_o = alpha max|P|^2`` and
    ``off_p = beta max|O patch|^2`` (plus a tiny regulariser; ``so``/``sp`` unused).
    Writes ``|P_new|^2`` into ``p2`` (float32, for the next step's maximum).
    """
    n0, n1 = P.shape
    one = np.float32(1.0)
    for i in range(n0):
        w = W[i]
        c = chi[i]
        p = P[i]
        o = O[y + i, x:x + n1]
        q = p2[i]
        for j in range(n1):
            dr = w[j].real - c[j].real
            di = w[j].imag - c[j].imag
            orr = o[j].real
            oi = o[j].imag
            pr = p[j].real
            pi = p[j].imag
            if regularized:
                a2 = pr * pr + pi * pi
                so_ = one / ((one - alpha) * a2 + off_o)
                b2 = orr * orr + oi * oi
                sp_ = one / ((one - beta) * b2 + off_p)
            else:
                so_ = so
                sp_ = sp
            o[j] = complex(orr + so_ * (pr * dr + pi * di), oi + so_ * (pr * di - pi * dr))
            if do_probe:
                pr2 = pr + sp_ * (orr * dr + oi * di)
                pi2 = pi + sp_ * (orr * di - oi * dr)
                p[j] = complex(pr2, pi2)
                q[j] = pr2 * pr2 + pi2 * pi2
            else:
                q[j] = pr * pr + pi * pi
