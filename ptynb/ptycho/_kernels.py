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

__all__ = ["add_ramp_multiply", "available", "exit_wave", "exit_wave_p2", "modulus_gaussian",
           "poisson_apply", "poisson_sums", "ramp_multiply", "update_pie"]


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
def exit_wave_p2(P, O, y, x, chi, o2, p2):
    """:func:`exit_wave` that also writes ``p2 = |P|^2`` (the shifted probe's, sub-pixel case)."""
    n0, n1 = P.shape
    for i in range(n0):
        p = P[i]
        o = O[y + i, x:x + n1]
        c = chi[i]
        r = o2[i]
        q = p2[i]
        for j in range(n1):
            orr = o[j].real
            oi = o[j].imag
            pr = p[j].real
            pi = p[j].imag
            c[j] = complex(pr * orr - pi * oi, pr * oi + pi * orr)
            r[j] = orr * orr + oi * oi
            q[j] = pr * pr + pi * pi


@_jit
def ramp_multiply(F, ry, rx, scale, out):
    """``out = scale * F * ry[:, None] * rx[None, :]`` (the probe spectrum shifted).

    ``F`` (n, n) complex64 spectrum, ``ry``/``rx`` (n,) complex64 Fourier-shift phase ramps.
    """
    n0, n1 = F.shape
    for i in range(n0):
        a = ry[i] * scale
        f = F[i]
        o = out[i]
        for j in range(n1):
            o[j] = f[j] * (a * rx[j])


@_jit
def add_ramp_multiply(F, ry, rx, acc):
    """``acc += F * conj(ry[:, None] * rx[None, :])`` (probe spectrum update, sub-pixel case)."""
    n0, n1 = F.shape
    for i in range(n0):
        a = ry[i].conjugate()
        f = F[i]
        o = acc[i]
        for j in range(n1):
            o[j] = o[j] + f[j] * (a * rx[j].conjugate())


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
def poisson_sums(W, I, valid, eps, model, g):
    """First pass of the Poisson detector step on the unnormalised far field ``W``.

    Writes ``model = |W|^2 + eps`` and ``g = valid max(1 - I / model, -1)`` (float32) and
    returns ``(sum g^2 model, sum g^2 I, sum valid model)`` (float64 over float32 row sums):
    the Newton step length along ``g`` is ``num / (num + sum g^2 I)``.
    """
    n0, n1 = W.shape
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for i in range(n0):
        w = W[i]
        ii = I[i]
        v_ = valid[i]
        m_ = model[i]
        g_ = g[i]
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for j in range(n1):
            wr = w[j].real
            wi = w[j].imag
            m = wr * wr + wi * wi + eps
            gg = max(np.float32(1.0) - ii[j] / m, np.float32(-1.0)) * v_[j]
            m_[j] = m
            g_[j] = gg
            a1 += gg * gg * m
            a2 += gg * gg * ii[j]
            a3 += v_[j] * m
        s1 += a1
        s2 += a2
        s3 += a3
    return s1, s2, s3


@_jit
def poisson_apply(W, g, valid, a, inv1):
    """Second pass: ``W *= (1 - a g) / npix`` on valid pixels, ``W *= 1 / npix`` elsewhere
    (``inv1 = 1 / npix``, ``a`` the step length)."""
    n0, n1 = W.shape
    for i in range(n0):
        w = W[i]
        g_ = g[i]
        v_ = valid[i]
        for j in range(n1):
            f = inv1 * (np.float32(1.0) - a * g_[j] * v_[j])
            w[j] = complex(w[j].real * f, w[j].imag * f)


@_jit
def update_pie(W, chi, P, O, y, x, so, sp, do_probe, regularized, alpha, beta, off_o, off_p,
               p2, D, direct):
    """Object and probe update from the exit-wave update ``d = W - chi`` (one pass).

    ePIE (``regularized`` False): ``O += so conj(P) d`` with ``so = alpha / max|P|^2`` and,
    if ``do_probe``, ``P += sp conj(O) d`` with ``sp = beta / max|O patch|^2`` (both from the
    values before this step). rPIE: ``O += conj(P) d / ((1 - alpha)|P|^2 + off_o)`` and
    ``P += conj(O) d / ((1 - beta)|O|^2 + off_p)``, with ``off_o = alpha max|P|^2`` and
    ``off_p = beta max|O patch|^2`` (plus a tiny regulariser; ``so``/``sp`` unused).
    Writes ``|P_new|^2`` into ``p2`` (float32, for the next step's maximum). With
    ``direct`` False the probe is not changed: its update is written to ``D`` instead (the
    sub-pixel case, where it is applied to the probe's spectrum), and ``p2`` is left alone.
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
            if not direct:
                if do_probe:
                    D[i, j] = complex(sp_ * (orr * dr + oi * di), sp_ * (orr * di - oi * dr))
            elif do_probe:
                pr2 = pr + sp_ * (orr * dr + oi * di)
                pi2 = pi + sp_ * (orr * di - oi * dr)
                p[j] = complex(pr2, pi2)
                q[j] = pr2 * pr2 + pi2 * pi2
            else:
                q[j] = pr * pr + pi * pi
