"""Fused CPU kernels (numba) for the sequential PIE sweep and the batched LSQ-ML update: one
pass over memory per stage.

The sequential engines (ePIE, rPIE) do about 20 elementwise numpy passes per diffraction
pattern besides the two FFTs; at 128 x 128 those passes cost more than the FFTs. These
kernels fuse them into three loops per pattern (exit wave, detector constraint, object and
probe update) that numba compiles to SIMD code. They implement exactly the arithmetic of the
generic (numpy/cupy) loop in :mod:`ptynb.ptycho.engines`, which stays the reference and the
GPU path; ``tests/test_ptycho_reconstruct.py`` checks that both give the same result.
LSQ-ML's one-slice batch (``engines._lsq_batch_compiled``) reads the object patches in place
(:func:`lsq_exit_waves`, :func:`lsq_update_sums`, :func:`lsq_step_sums_stack`) and updates the
object in one pass per batch (:func:`lsq_apply_object_stack`); the orthonormal FFT scale is folded
into these kernels, so the transforms run unnormalised.

All arrays are C-contiguous: probe modes ``P``, exit waves ``chi``, far fields ``W``
(M, n, n) complex64 (the single-mode detector kernels take one (n, n) far field); ``O``
(Y, X) complex64, patch at rows ``y:y+n``, columns ``x:x+n``; real arrays (n, n) float32. Compiled code is
cached on disk (numba ``cache=True``), so only the first process on a machine compiles.
"""
from __future__ import annotations

import numpy as np

try:
    import numba as _nb
except ImportError:  # pragma: no cover - numba is a dependency; the generic loop still works
    _nb = None

__all__ = ["add_ramp_multiply", "add_ramp_multiply_batch", "available", "exit_wave",
           "exit_wave_modes", "lsq_apply_object_stack", "lsq_exit_waves",
           "lsq_object_sums", "lsq_step_sums", "lsq_step_sums_stack",
           "lsq_update_sums", "modulus_gaussian", "modulus_gaussian_batch", "poisson_apply",
           "poisson_apply_batch", "poisson_sums", "poisson_sums_batch", "ramp_multiply",
           "ramp_multiply_batch", "scatter_intensity",
           "update_pie", "update_pie_modes"]


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
def exit_wave(P, O, y, x, chi, o2, p2, want_p2):
    """``chi = P * O[y:y+n, x:x+n]`` for one mode, ``P``/``chi`` (n, n); ``o2 = |O patch|^2``
    and, if ``want_p2`` (the shifted probe of the sub-pixel case), ``p2 = |P|^2`` (float32
    (n, n), for their maxima)."""
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
            if want_p2:
                q[j] = pr * pr + pi * pi


@_jit
def exit_wave_modes(P, O, y, x, chi, o2, p2, want_p2):
    """Exit waves of every mode: ``chi[m] = P[m] * O[y:y+n, x:x+n]``.

    ``P``, ``chi`` (M, n, n) complex64. Writes ``o2 = |O patch|^2`` and, if ``want_p2``,
    ``p2 = sum_m |P[m]|^2`` (float32 (n, n), for their maxima).
    """
    M, n0, n1 = P.shape
    for i in range(n0):
        o = O[y + i, x:x + n1]
        r = o2[i]
        for j in range(n1):
            r[j] = o[j].real * o[j].real + o[j].imag * o[j].imag
        if want_p2:
            q = p2[i]
            for j in range(n1):
                q[j] = np.float32(0.0)
        for m in range(M):
            p = P[m, i]
            c = chi[m, i]
            for j in range(n1):
                orr = o[j].real
                oi = o[j].imag
                pr = p[j].real
                pi = p[j].imag
                c[j] = complex(pr * orr - pi * oi, pr * oi + pi * orr)
            if want_p2:
                q = p2[i]
                for j in range(n1):
                    q[j] += p[j].real * p[j].real + p[j].imag * p[j].imag


@_jit
def ramp_multiply(F, ry, rx, scale, out):
    """``out[m] = scale * F[m] * ry[:, None] * rx[None, :]`` (the probe modes' spectra shifted).

    ``F``, ``out`` (M, n, n) complex64; ``ry``/``rx`` (n,) complex64 Fourier-shift ramps.
    """
    M, n0, n1 = F.shape
    for m in range(M):
        for i in range(n0):
            a = ry[i] * scale
            f = F[m, i]
            o = out[m, i]
            for j in range(n1):
                o[j] = f[j] * (a * rx[j])


@_jit
def add_ramp_multiply(F, ry, rx, acc):
    """``acc[m] += F[m] * conj(ry[:, None] * rx[None, :])`` (probe spectrum update, sub-pixel)."""
    M, n0, n1 = F.shape
    for m in range(M):
        for i in range(n0):
            a = ry[i].conjugate()
            f = F[m, i]
            o = acc[m, i]
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
def poisson_sums(W, I, valid, eps, model, g, gmin):
    """First pass of the Poisson detector step on the unnormalised far field ``W``.

    Writes ``model = |W|^2 + eps`` and ``g = valid max(1 - I / model, gmin)`` (float32;
    ``gmin`` < 0, -1 in the sequential engines) and
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
            gg = max(np.float32(1.0) - ii[j] / m, gmin) * v_[j]
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


@_jit
def update_pie_modes(W, chi, P, O, y, x, so, sp, do_probe, regularized, alpha, beta, off_o,
                     off_p, p2, D, direct, rows):
    """:func:`update_pie` for M probe modes: ``W``, ``chi``, ``P``, ``D`` (M, n, n).

    ``O += so sum_m conj(P[m]) d[m]`` (ePIE, ``so = alpha / max sum_m |P[m]|^2``; rPIE: divided
    by ``(1 - alpha) sum_m |P[m]|^2 + off_o``) and ``P[m] += sp conj(O) d[m]`` (rPIE: divided
    by ``(1 - beta)|O|^2 + off_p``), both from the values before this step, ``d[m] = W[m] -
    chi[m]``; ``p2 = sum_m |P_new[m]|^2``; with ``direct`` False the probe update goes to ``D``.
    ``rows`` is scratch, float32 (6, n). Row by row, modes in the outer loop, so that the
    inner loops stay unit-stride (vectorised).
    """
    M, n0, n1 = P.shape
    one = np.float32(1.0)
    ur = rows[0]
    ui = rows[1]
    a2 = rows[2]
    o_r = rows[3]
    o_i = rows[4]
    spr = rows[5]
    for i in range(n0):
        o = O[y + i, x:x + n1]
        for j in range(n1):
            ur[j] = np.float32(0.0)
            ui[j] = np.float32(0.0)
            a2[j] = np.float32(0.0)
        for m in range(M):
            w = W[m, i]
            c = chi[m, i]
            p = P[m, i]
            for j in range(n1):
                dr = w[j].real - c[j].real
                di = w[j].imag - c[j].imag
                pr = p[j].real
                pi = p[j].imag
                ur[j] += pr * dr + pi * di
                ui[j] += pr * di - pi * dr
                a2[j] += pr * pr + pi * pi
        for j in range(n1):
            orr = o[j].real
            oi = o[j].imag
            o_r[j] = orr
            o_i[j] = oi
            if regularized:
                so_ = one / ((one - alpha) * a2[j] + off_o)
                spr[j] = one / ((one - beta) * (orr * orr + oi * oi) + off_p)
            else:
                so_ = so
                spr[j] = sp
            o[j] = complex(orr + so_ * ur[j], oi + so_ * ui[j])
        if direct:
            q = p2[i]
            if do_probe:
                for j in range(n1):
                    q[j] = np.float32(0.0)
            else:
                for j in range(n1):
                    q[j] = a2[j]
        if do_probe:
            for m in range(M):
                w = W[m, i]
                c = chi[m, i]
                p = P[m, i]
                dd = D[m, i]
                for j in range(n1):
                    dr = w[j].real - c[j].real
                    di = w[j].imag - c[j].imag
                    vr = spr[j] * (o_r[j] * dr + o_i[j] * di)
                    vi = spr[j] * (o_r[j] * di - o_i[j] * dr)
                    if direct:
                        pr2 = p[j].real + vr
                        pi2 = p[j].imag + vi
                        p[j] = complex(pr2, pi2)
                        p2[i, j] += pr2 * pr2 + pi2 * pi2
                    else:
                        dd[j] = complex(vr, vi)


# ---------------------------------------------------------------------------- LSQ-ML (batched)
@_jit
def lsq_object_sums(pk, d, y, x, num, den):
    """Object-update sums of one LSQ-ML batch for one slice, scattered into the object frame.

    For every pattern ``b`` and mode ``m``: ``num[y_b + i, x_b + j] += conj(pk) d`` and
    ``den[y_b + i, x_b + j] += |pk|^2`` (one pass; replaces the products, the sums over modes
    and the two scatters of the generic code). ``pk`` (B, M, n, n) complex64, the waves
    incident on the slice, or (1, M, n, n): the same probe for every pattern; ``d``
    (B, M, n, n) complex64 the exit-wave update; ``y``, ``x`` (B,) int64 window corners;
    ``num`` (Y, X) complex64, ``den`` (Y, X) float32, accumulated in place (patterns in
    order, as the generic scatter).
    """
    B, M, n0, n1 = d.shape
    shared = pk.shape[0] == 1
    for b in range(B):
        pb = 0 if shared else b
        yb = y[b]
        xb = x[b]
        for m in range(M):
            for i in range(n0):
                nr = num[yb + i]
                dr = den[yb + i]
                pr = pk[pb, m, i]
                qr = d[b, m, i]
                for j in range(n1):
                    p = pr[j]
                    nr[xb + j] += p.conjugate() * qr[j]
                    dr[xb + j] += p.real * p.real + p.imag * p.imag


@_jit
def lsq_step_sums(dO, pk, Ok, dP, d, with_probe, out):
    """The five sums of the LSQ-ML step lengths per pattern, without forming the directions.

    With ``a = dO[b] pk[b, m]`` (object direction times incident wave) and ``v = Ok[b] dP[m]``
    (object patch times probe direction): ``out[b] = (sum |a|^2, Re sum conj(a) v,
    sum |v|^2, Re sum conj(a) d, Re sum conj(v) d)`` over modes and pixels (float64 over
    float32 row sums); the ``v`` terms are 0 if not ``with_probe``. ``dO``, ``Ok`` (B, n, n),
    ``pk`` (B or 1, M, n, n), ``dP`` (M, n, n), ``d`` (B, M, n, n) complex64; ``out`` (B, 5)
    float64.
    """
    B, M, n0, n1 = d.shape
    shared = pk.shape[0] == 1
    for b in range(B):
        pb = 0 if shared else b
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        s4 = 0.0
        for m in range(M):
            for i in range(n0):
                dor = dO[b, i]
                pr = pk[pb, m, i]
                qr = d[b, m, i]
                t0 = np.float32(0.0)
                t3 = np.float32(0.0)
                if with_probe:
                    okr = Ok[b, i]
                    dpr = dP[m, i]
                    t1 = np.float32(0.0)
                    t2 = np.float32(0.0)
                    t4 = np.float32(0.0)
                    for j in range(n1):
                        a = dor[j] * pr[j]
                        v = okr[j] * dpr[j]
                        q = qr[j]
                        t0 += a.real * a.real + a.imag * a.imag
                        t1 += a.real * v.real + a.imag * v.imag
                        t2 += v.real * v.real + v.imag * v.imag
                        t3 += a.real * q.real + a.imag * q.imag
                        t4 += v.real * q.real + v.imag * q.imag
                    s1 += t1
                    s2 += t2
                    s4 += t4
                else:
                    for j in range(n1):
                        a = dor[j] * pr[j]
                        q = qr[j]
                        t0 += a.real * a.real + a.imag * a.imag
                        t3 += a.real * q.real + a.imag * q.imag
                s0 += t0
                s3 += t3
        out[b, 0] = s0
        out[b, 1] = s1
        out[b, 2] = s2
        out[b, 3] = s3
        out[b, 4] = s4


# --------------------------------------------- LSQ-ML, one slice, "scan" preconditioner
@_jit
def lsq_exit_waves(P, O, y, x, s, Psi):
    """Exit waves of a batch straight from the object: ``Psi[b, m] = s P[pb, m] O[y_b + i,
    x_b + j]`` (``pb = b``, or 0 when ``P`` (1, M, n, n) is the same probe for every pattern).

    ``P`` (B or 1, M, n, n), ``Psi`` (B, M, n, n) complex64; ``O`` (Y, X) complex64; ``y``,
    ``x`` (B,) int64 window corners; ``s`` a real scale (the orthonormal FFT's
    ``1 / sqrt(n^2)`` folded in, so that an unnormalised FFT follows). Replaces the patch
    copy, the product and the FFT buffer copy of the generic code.
    """
    B, M, n0, n1 = Psi.shape
    shared = P.shape[0] == 1
    for b in range(B):
        pb = 0 if shared else b
        yb = y[b]
        xb = x[b]
        for m in range(M):
            for i in range(n0):
                o = O[yb + i, xb:xb + n1]
                p = P[pb, m, i]
                w = Psi[b, m, i]
                for j in range(n1):
                    w[j] = (p[j] * o[j]) * s


@_jit
def lsq_update_sums(P, O, y, x, s, D, num, gP, pnum, pden, probe_mode):
    """The exit-wave update and the object and probe sums of a batch in one pass.

    ``D`` (B, M, n, n): on entry the updated far fields after an unnormalised inverse FFT,
    on exit ``d = s D - P O`` (the exit-wave update, ``s = 1 / sqrt(n^2)``). For every
    pattern ``b`` (in order) and mode ``m``: ``num[y_b + i, x_b + j] += conj(P) d`` (the
    object direction before preconditioning, (Y, X) complex64). ``probe_mode`` 0: no probe
    sums; 1 (whole-pixel positions): ``pnum[m] += conj(O) d`` (M, n, n) and ``pden +=
    |O|^2`` (n, n) float32, counted once per pattern; 2 (sub-pixel): ``gP[b, m] = conj(O) d``
    (to be shifted back in Fourier space) and ``pden += |O|^2``. ``P``, ``O``, ``y``, ``x``
    as in :func:`lsq_exit_waves`. One loop over each row of each mode (the probe branches
    are loop-invariant).
    """
    B, M, n0, n1 = D.shape
    shared = P.shape[0] == 1
    for b in range(B):
        pb = 0 if shared else b
        yb = y[b]
        xb = x[b]
        for i in range(n0):
            o = O[yb + i, xb:xb + n1]
            nr = num[yb + i, xb:xb + n1]
            for m in range(M):
                p = P[pb, m, i]
                w = D[b, m, i]
                if probe_mode == 0:
                    for j in range(n1):
                        dd = w[j] * s - p[j] * o[j]
                        w[j] = dd
                        nr[j] += p[j].conjugate() * dd
                elif probe_mode == 1:
                    q = pnum[m, i]
                    for j in range(n1):
                        dd = w[j] * s - p[j] * o[j]
                        w[j] = dd
                        nr[j] += p[j].conjugate() * dd
                        q[j] += o[j].conjugate() * dd
                else:
                    q = gP[b, m, i]
                    for j in range(n1):
                        dd = w[j] * s - p[j] * o[j]
                        w[j] = dd
                        nr[j] += p[j].conjugate() * dd
                        q[j] = o[j].conjugate() * dd
            if probe_mode != 0:
                r = pden[i]
                for j in range(n1):
                    r[j] += o[j].real * o[j].real + o[j].imag * o[j].imag


@_jit
def scatter_intensity(p2, y, x, w):
    """``w[y_j + i, x_j + j] += p2[i, j]`` for every window corner ``j`` (``p2`` (n, n)
    float32 the probe intensity, ``y``, ``x`` (J,) int64, ``w`` (Y, X) float32): the
    illumination of the whole scan."""
    n0, n1 = p2.shape
    for k in range(y.shape[0]):
        yk = y[k]
        xk = x[k]
        for i in range(n0):
            r = w[yk + i, xk:xk + n1]
            q = p2[i]
            for j in range(n1):
                r[j] += q[j]


# --------------------------------------------- LSQ-ML batch kernels (whole chunks of patterns)
@_jit
def ramp_multiply_batch(F, ry, rx, scale, out):
    """:func:`ramp_multiply` for a chunk of patterns: ``out[b, m] = scale F[m] ry[b, :,
    None] rx[b, None, :]`` (``F`` (M, n, n), ``ry``/``rx`` (B, n), ``out`` (B, M, n, n)
    complex64)."""
    for b in range(out.shape[0]):
        ramp_multiply(F, ry[b], rx[b], scale, out[b])


@_jit
def add_ramp_multiply_batch(G, ry, rx, acc):
    """``acc[m] += sum_b G[b, m] conj(ry[b, :, None] rx[b, None, :])`` (``G`` (B, M, n, n),
    ``acc`` (M, n, n) complex64): the probe-update spectra of a chunk shifted back."""
    for b in range(G.shape[0]):
        add_ramp_multiply(G[b], ry[b], rx[b], acc)


@_jit
def poisson_sums_batch(W, I, idx, valid, eps, gmin, model, g, out):
    """:func:`poisson_sums` for a chunk: far fields ``W`` (B, n, n) complex64 against the
    measured ``I[idx[b]]`` (``I`` (J, n, n) float32), writing ``model``/``g`` (B, n, n)
    float32 and ``out[b] = (sum g^2 model, sum g^2 I, sum valid model)`` (B, 3) float64."""
    for b in range(W.shape[0]):
        s1, s2, s3 = poisson_sums(W[b], I[idx[b]], valid, eps, model[b], g[b], gmin)
        out[b, 0] = s1
        out[b, 1] = s2
        out[b, 2] = s3


@_jit
def poisson_apply_batch(W, g, logm, I, idx, valid, sums, const, inv1, cost):
    """Second pass of the batched Poisson step: per pattern the Newton step ``a =
    clip(s1 / (s1 + s2), 0, 1)`` from ``sums`` (B, 3), ``W[b] *= inv1 (1 - a g)`` on valid
    pixels (``inv1`` elsewhere) and the Poisson deviance ``cost[b] = s3 - sum valid I log m +
    const[idx[b]]`` (``logm`` (B, n, n) float32 holds ``log model``; float64 (B,) out)."""
    one = np.float32(1.0)
    B, n0, n1 = W.shape
    for b in range(B):
        s1 = sums[b, 0]
        a = s1 / (s1 + sums[b, 1] + 1e-12)
        a = np.float32(min(max(a, 0.0), 1.0))
        Ib = I[idx[b]]
        acc = 0.0
        for i in range(n0):
            w = W[b, i]
            g_ = g[b, i]
            l_ = logm[b, i]
            v_ = valid[i]
            ii = Ib[i]
            t = np.float32(0.0)
            for j in range(n1):
                f = inv1 * (one - a * g_[j] * v_[j])
                w[j] = complex(w[j].real * f, w[j].imag * f)
                t += ii[j] * l_[j] * v_[j]
            acc += t
        cost[b] = sums[b, 2] - acc + const[idx[b]]


@_jit
def modulus_gaussian_batch(W, A, idx, valid, eps, inv1, cost):
    """:func:`modulus_gaussian` for a chunk: ``W`` (B, n, n) complex64 against the measured
    amplitudes ``A[idx[b]]`` (``A`` (J, n, n) float32, LSQ-ML's ortho units, so ``amps =
    A``); misfits into ``cost`` (B,) float64."""
    for b in range(W.shape[0]):
        cost[b] = modulus_gaussian(W[b], A[idx[b]], A[idx[b]], valid, eps, inv1)


@_jit
def lsq_step_sums_stack(num, inv_w, P, O, y, x, dP, d, with_probe, out):
    """The step-length sums of a batch with the object direction read from the frames:
    ``dO[b] = (sum_t num[t, patch_b]) inv_w[patch_b]`` (``num`` (T, Y, X) complex64, each
    worker thread's scatter of its own patterns; ``inv_w`` (Y, X) float32 the preconditioner)
    and ``Ok[b] = O[patch_b]`` (``O`` (Y, X)); ``P`` (B or 1, M, n, n) the incident probes,
    ``dP`` (M, n, n), ``d`` (B, M, n, n); ``out`` (B, 5) float64 ``(sum |a|^2, Re sum conj(a)
    v, sum |v|^2, Re sum conj(a) d, Re sum conj(v) d)`` with ``a = dO P``, ``v = Ok dP`` (the sum and the preconditioner
    into a row buffer first, so that the sums' loop stays the vectorised one)."""
    T = num.shape[0]
    B, M, n0, n1 = d.shape
    shared = P.shape[0] == 1
    row = np.empty(n1, np.complex64)
    for b in range(B):
        pb = 0 if shared else b
        yb = y[b]
        xb = x[b]
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        s4 = 0.0
        for i in range(n0):
            wr = inv_w[yb + i, xb:xb + n1]
            n_0 = num[0, yb + i, xb:xb + n1]
            for j in range(n1):
                row[j] = n_0[j]
            for t in range(1, T):
                n_t = num[t, yb + i, xb:xb + n1]
                for j in range(n1):
                    row[j] += n_t[j]
            for j in range(n1):
                row[j] *= wr[j]
            okr = O[yb + i, xb:xb + n1]
            for m in range(M):
                pr = P[pb, m, i]
                qr = d[b, m, i]
                t0 = np.float32(0.0)
                t1 = np.float32(0.0)
                t2 = np.float32(0.0)
                t3 = np.float32(0.0)
                t4 = np.float32(0.0)
                if with_probe:
                    dpr = dP[m, i]
                    for j in range(n1):
                        a = row[j] * pr[j]
                        v = okr[j] * dpr[j]
                        q = qr[j]
                        t0 += a.real * a.real + a.imag * a.imag
                        t1 += a.real * v.real + a.imag * v.imag
                        t2 += v.real * v.real + v.imag * v.imag
                        t3 += a.real * q.real + a.imag * q.imag
                        t4 += v.real * q.real + v.imag * q.imag
                else:
                    for j in range(n1):
                        a = row[j] * pr[j]
                        q = qr[j]
                        t0 += a.real * a.real + a.imag * a.imag
                        t3 += a.real * q.real + a.imag * q.imag
                s0 += t0
                s1 += t1
                s2 += t2
                s3 += t3
                s4 += t4
        out[b, 0] = s0
        out[b, 1] = s1
        out[b, 2] = s2
        out[b, 3] = s3
        out[b, 4] = s4


@_jit
def lsq_apply_object_stack(O, num, inv_w, a):
    """``O += a (sum_t num[t]) inv_w`` and ``num = 0`` (``O`` (Y, X), ``num`` (T, Y, X)
    complex64, ``inv_w`` (Y, X) float32): each worker's frame summed row by row (loops that
    vectorise), then the update."""
    T = num.shape[0]
    Y, X = O.shape
    zero = np.complex64(0.0)
    row = np.empty(X, np.complex64)
    for i in range(Y):
        n0 = num[0, i]
        for j in range(X):
            row[j] = n0[j]
            n0[j] = zero
        for t in range(1, T):
            nt = num[t, i]
            for j in range(X):
                row[j] += nt[j]
                nt[j] = zero
        o = O[i]
        wr = inv_w[i]
        for j in range(X):
            o[j] += row[j] * (wr[j] * a)
