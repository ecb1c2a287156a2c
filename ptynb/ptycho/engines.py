"""Reconstruction engines: ePIE / rPIE (sequential) and LSQ-ML (batched), all multislice and
mixed-state capable, with position refinement.

Each engine is a function ``engine(problem, state, iteration) -> float`` that performs one full
iteration (one pass over every diffraction pattern) in place on ``state`` and returns the
normalised data misfit measured during that pass. ``problem`` holds the fixed, device-resident
data (:class:`Problem`); ``state`` the variables (:class:`ptynb.ptycho.state.State`).

Algorithms
----------
ePIE (Maiden & Rodenburg 2009) and rPIE (Maiden, Johnson & Li 2017), with the multislice
extension 3PIE (Maiden, Humphry & Rodenburg 2012): for each pattern in a random order, the exit
wave is replaced by its Fourier-constrained version and the difference is propagated back through
the slices, updating each slice and finally the probe (all modes jointly).

LSQ-ML (Odstrcil, Menzel & Guizar-Sicairos, Opt. Express 26, 3108, 2018): for each batch of
patterns the exit-wave update ``chi`` is computed for the chosen noise model (Poisson: a Newton
step along the likelihood gradient ``1 - I/I_model``, clipped at ``-poisson_clip``); object and
probe update directions are the preconditioned sums ``sum_batch conj(P) chi / w`` and
``sum conj(O) chi / (sum |O|^2 + delta)``, and the step lengths solve the 2x2 least-squares
problem ``min || chi - a_O dO P - a_P O dP ||^2`` of the batch (limited to ``max_step``).
The object preconditioner ``w`` is by default (``preconditioner="scan"``) the damped probe
intensity summed over *every* scan position, the same for all batches of an iteration; the
batch's own sum (``"batch"``) lets each batch fit its patterns fully and leaves a mini-batch
noise floor above the minimum (measured on Tike's siemens-star counts, see
``benchmarks/siemens_star.py``; together with the former clip at -1, issue #16).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend import fftw_plan
from .operators import (
    FFT2,
    bin_intensity,
    data_cost,
    empty,
    expand_ratio,
    extract_patches,
    fourier_shift_ramps,
    fourier_update_factor,
    scatter_add_patches,
)
from .options import LSQMLOptions, PIEOptions, engine_defaults

__all__ = ["ENGINES", "Problem", "epie_iteration", "lsqml_iteration", "rpie_iteration"]


_DEFAULTS: dict = {}


def _defaults() -> dict:
    """The engines' option defaults (from :mod:`ptynb.ptycho.options`, computed once)."""
    if not _DEFAULTS:
        _DEFAULTS.update(engine_defaults())
    return _DEFAULTS


@dataclass
class Problem:
    """Fixed data of one reconstruction, on the compute device.

    Attributes
    ----------
    xp : module
        numpy or cupy.
    intensity : float32 (J, N, N)
        Measured patterns, unshifted FFT order, ortho-FFT units.
    mask : bool (N, N) or None
        Valid detector pixels (unshifted), None if all valid.
    upsample : int
        Model pixels per detector pixel per side (``s``); probe window ``n = s N``.
    kernel : complex64 (n, n) or None
        Angular-spectrum transfer function between slices (unshifted).
    noise : {"poisson", "gaussian"}
    norm : float
        Sum of valid measured counts (cost normalisation).
    options : dict
        Engine knobs by their engine keys (alpha, beta, reg_object, reg_probe, ...; see
        :func:`ptynb.ptycho.options.engine_defaults`); missing keys are filled with the
        defaults of the option classes.
    """

    xp: Any
    intensity: Any
    mask: Any
    upsample: int
    kernel: Any
    noise: str
    norm: float
    options: dict = field(default_factory=dict)
    fft: Any = None
    fft1: Any = None
    #: LSQ-ML pattern updates the run will do (patterns x LSQ-ML iterations; 0: unknown),
    #: which decides whether compiling the one-call pipeline pays off
    lsq_updates: int = 0

    @property
    def n(self) -> int:
        return self.intensity.shape[-1] * self.upsample

    def __post_init__(self):
        self.options = {**_defaults(), **self.options}
        if self.fft is None:
            self.fft = FFT2(self.xp)
        if self.fft1 is None:
            self.fft1 = FFT2(self.xp, threads=1)


def _split(pos):
    """Float top-left positions (J, 2) -> integer corners and fractional shifts."""
    ipos = np.floor(pos + 0.5).astype(np.int64)
    return ipos[:, 0], ipos[:, 1], pos[:, 0] - ipos[:, 0], pos[:, 1] - ipos[:, 1]


def _subpixel(problem, state) -> bool:
    mode = problem.options["subpixel"]
    if mode in (True, "fourier"):
        return True
    if mode in (False, "round", "none"):
        return False
    frac = state.positions - np.floor(state.positions + 0.5)
    return bool(np.max(np.abs(frac)) > 1e-3) or state.refining


def _refine_step(problem, state, grads):
    """Apply position updates (J, 2) in pixels: clip and add, after projecting out the global
    components that are ambiguities or should come from the known geometry.

    By default (``position_affine=False``) the part of the update that is an affine function
    of the positions (mean shift, scale, rotation, shear) is removed: a mean shift just moves
    the object, and a global scale trades off against the probe's defocus curvature (with an
    imperfect probe the positions would slowly shrink or grow, measured ~1 % per 40
    iterations). With ``position_affine=True`` only the mean is removed.
    """
    if problem.options["position_affine"] or grads.shape[0] < 4:
        g = grads - grads.mean(axis=0, keepdims=True)
    else:
        p = state.positions
        A = np.c_[p - p.mean(axis=0), np.ones(p.shape[0])]
        coef = np.linalg.lstsq(A, grads, rcond=None)[0]
        g = grads - A @ coef
    lim = float(problem.options["position_step"])
    g = np.clip(g, -lim, lim)

    state.positions += g
    return g


# ============================================================================ PIE family
class _PieBuffers:
    """Preallocated work arrays and per-pattern constants of the sequential engines."""

    def __init__(self, problem, L, M, n):
        xp = problem.xp
        N = problem.intensity.shape[-1]
        self.key = (L, M, n)
        self.psi = empty((L, M, n, n), xp)
        self.chi = empty((L, M, n, n), xp)
        self.W = empty((M, n, n), xp)
        self.phat = empty((M, n, n), xp)
        self.tmp = empty((M, n, n), xp)
        self.dpsi = empty((M, n, n), xp)
        self.num = empty((n, n), xp)
        self.model = xp.empty((N, N), np.float32)
        self.r = xp.empty((N, N), np.float32)
        self.t = xp.empty((N, N), np.float32)
        # work in unnormalised FFT units: intensities x npix (the misfit is scaled back)
        self.npix = float(n * n)
        I = problem.intensity * np.float32(self.npix)
        self.I = I
        self.amp = xp.sqrt(I) if problem.noise == "gaussian" else None
        self.amp_s = self.amp * np.float32(1.0 / self.npix) if self.amp is not None else None
        if problem.noise == "poisson":  # constant part of the Poisson deviance per pattern
            self.const = _poisson_const(I, problem.mask)
        self.invmask = None if problem.mask is None else ~problem.mask


def _poisson_const(I, mask) -> np.ndarray:
    """Constant part ``sum_pixels valid (I log I - I)`` of each pattern's Poisson deviance
    (host float64 (J,)), for intensities ``I`` (J, N, N) float32 (numpy or cupy) in the units
    the engine works in; computed in chunks of patterns so the temporaries stay small."""
    xp = np if not hasattr(I, "get") else __import__("cupy")
    out = np.empty(I.shape[0], np.float64)
    for c in range(0, I.shape[0], 64):
        Ic = I[c:c + 64]
        t = Ic * xp.log(xp.maximum(Ic, np.float32(1e-30)))  # 0 where I = 0
        t -= Ic
        if mask is not None:
            t *= mask
        out[c:c + 64] = _host(t.sum(axis=(-2, -1), dtype=np.float64))
    return out


class _CompiledDetector:
    """The detector step of the compiled CPU engines on one far field ``W`` (n, n) complex64,
    in place (:mod:`ptynb.ptycho._kernels`): amplitude projection (Gaussian noise) or the
    Poisson Newton step ``1 - a g`` with its sums in the same pass; ``det(j, W)`` returns the
    misfit of pattern ``j``.

    Works in the units of ``I`` (J, n, n) float32: the sequential engines' unnormalised FFT
    units (``I`` x npix, with the inverse FFT's 1/npix folded into the update: ``inv1`` =
    1/npix), or LSQ-ML's ortho units (``inv1`` = 1). ``amp``, ``amps``: measured amplitudes
    and the amplitudes times ``inv1`` (Gaussian); ``const`` (J,): :func:`_poisson_const`
    (Poisson); ``eps``, ``eps_p``: regularisers of the model amplitude and intensity.
    """

    def __init__(self, noise, I, mask, *, amp=None, amps=None, const=None, eps, eps_p, inv1,
                 gmin=-1.0):
        n = I.shape[-1]
        f32 = np.float32
        self.gaussian = noise == "gaussian"
        self.I, self.amp, self.amps, self.const = I, amp, amps, const
        self.valid = (np.ones((n, n), f32) if mask is None
                      else np.ascontiguousarray(mask, dtype=f32))
        self.masked = mask is not None
        self.eps, self.eps_p, self.inv1, self.gmin = f32(eps), f32(eps_p), f32(inv1), f32(gmin)
        self.model = np.empty((n, n), f32)
        self.g = np.empty((n, n), f32)

    @classmethod
    def for_pie(cls, problem, buf, npix):
        """The sequential engines' step (unnormalised units of :class:`_PieBuffers`)."""
        return cls(problem.noise, buf.I, problem.mask, amp=buf.amp, amps=buf.amp_s,
                   const=getattr(buf, "const", None), eps=1e-6 * np.sqrt(npix),
                   eps_p=1e-6 * npix, inv1=1.0 / npix)

    @classmethod
    def for_lsqml(cls, problem):
        """LSQ-ML's step (ortho units, gradient clipped at ``-poisson_clip``); kept on the
        problem (amplitudes, constants)."""
        det = problem.__dict__.get("_lsq_det")
        gmin = -float(problem.options["poisson_clip"])
        if det is None or det.gmin != np.float32(gmin):
            I = np.ascontiguousarray(problem.intensity, dtype=np.float32)
            gauss = problem.noise == "gaussian"
            amp = np.sqrt(I) if gauss else None
            det = problem.__dict__["_lsq_det"] = cls(
                problem.noise, I, problem.mask, amp=amp, amps=amp,
                const=None if gauss else _poisson_const(I, problem.mask),
                eps=1e-6, eps_p=1e-6, inv1=1.0, gmin=gmin)
        return det

    def batch(self, idx, W, model, g, sums, cost):
        """The step on the far fields ``W`` (B, n, n) of patterns ``idx`` (B,) int64 in one
        compiled call each pass; misfits into ``cost`` (B,) float64. ``model``/``g`` (B, n,
        n) float32 and ``sums`` (B, 3) float64 are work arrays (LSQ-ML's ortho units)."""
        from . import _kernels as K

        if self.gaussian:
            K.modulus_gaussian_batch(W, self.amp, idx, self.valid, self.eps, self.inv1, cost)
            return
        K.poisson_sums_batch(W, self.I, idx, self.valid, self.eps_p, self.gmin, model, g, sums)
        np.log(model, out=model)  # numpy's SIMD log
        K.poisson_apply_batch(W, g, model, self.I, idx, self.valid, sums, self.const,
                              self.inv1, cost)

    def __call__(self, j, W) -> float:
        from . import _kernels as K

        if self.gaussian:
            return K.modulus_gaussian(W, self.amp[j], self.amps[j], self.valid, self.eps,
                                      self.inv1)
        Ij = self.I[j]
        s1, s2, s3 = K.poisson_sums(W, Ij, self.valid, self.eps_p, self.model, self.g, self.gmin)
        a = min(max(s1 / (s1 + s2 + 1e-12), 0.0), 1.0)
        logm = np.log(self.model, out=self.model)  # numpy's SIMD log
        if self.masked:
            logm *= self.valid
        cost = s3 - float(np.dot(Ij.ravel(), logm.ravel())) + float(self.const[j])
        K.poisson_apply(W, self.g, self.valid, np.float32(a), self.inv1)
        return cost


def _abs2(a, xp):
    """|a|^2 as float32 (abs then square: the fastest numpy route, measured)."""
    b = xp.abs(a)
    b *= b
    return b


def _fourier_step(problem, buf, j, W, s, npix):
    """Apply the detector constraint to the unnormalised far field ``W`` (M, n, n) of
    pattern ``j`` in place (including the 1/npix of the inverse FFT); return its misfit."""
    xp = problem.xp
    M = W.shape[0]
    if problem.noise == "gaussian" and M == 1 and s == 1:
        # fast path: amplitudes only (abs, subtract, dot, divide, multiply)
        A = buf.amp[j]
        amp = xp.abs(W[0])
        diff = amp - A
        if problem.mask is not None:
            diff *= problem.mask
        cost = float(xp.vdot(diff.ravel(), diff.ravel()).real)
        amp += np.float32(1e-6 * np.sqrt(npix))
        f = xp.divide(buf.amp_s[j], amp, out=amp)  # amp_s = A / npix
        if buf.invmask is not None:
            xp.copyto(f, np.float32(1.0 / npix), where=buf.invmask)
        W *= f
        return cost / npix
    model = _abs2(W, xp)  # unnormalised units (npix x ortho)
    if M > 1:
        model = model.sum(axis=0)
    else:
        model = model[0]
    if s > 1:
        model = bin_intensity(model, s)
    model += np.float32(1e-6 * npix)
    I = buf.I[j]
    mask = problem.mask
    if problem.noise == "gaussian":
        A = buf.amp[j]
        sq = xp.sqrt(model)
        diff = sq - A
        if mask is not None:
            diff *= mask
        cost = float(xp.vdot(diff.ravel(), diff.ravel()).real)
        f = xp.divide(A, sq, out=sq)
        if s == 1:
            f *= np.float32(1.0 / npix)
    else:
        g = xp.divide(I, model, out=buf.r)
        xp.subtract(np.float32(1.0), g, out=g)
        xp.maximum(g, np.float32(-1.0), out=g)
        if mask is not None:
            g *= mask
        t = xp.multiply(g, model, out=buf.t)
        num = float(xp.dot(t.ravel(), g.ravel()))
        xp.multiply(g, I, out=t)
        den = num + float(xp.dot(t.ravel(), g.ravel())) + 1e-12
        a = min(max(num / den, 0.0), 1.0)
        logm = xp.log(model)
        if mask is not None:
            logm *= mask
            msum = float(xp.dot(model.ravel(), mask.ravel().astype(np.float32)))
        else:
            msum = float(model.sum(dtype=np.float64))
        cost = msum - float(xp.dot(I.ravel(), logm.ravel())) + float(buf.const[j])
        if s == 1:
            g *= np.float32(-a / npix)
            g += np.float32(1.0 / npix)
        else:
            g *= np.float32(-a)
            g += np.float32(1.0)
        f = g
    if buf.invmask is not None:
        xp.copyto(f, np.float32(1.0 / npix if s == 1 else 1.0), where=buf.invmask)
    if s > 1:
        f = expand_ratio(f, s) * np.float32(1.0 / npix)
    W *= f
    return cost / npix


def _fused_ok(obj, probe) -> bool:
    """Whether the fused CPU sweep applies (numba present, complex64 C-contiguous arrays)."""
    from . import _kernels

    return (_kernels.available() and obj.dtype == np.complex64 and probe.dtype == np.complex64
            and obj.flags.c_contiguous and probe.flags.c_contiguous)


def _pie_iteration(problem: Problem, state, iteration: int, regularized: bool) -> float:
    xp = problem.xp
    opts = problem.options
    alpha, beta = PIEOptions.step_sizes("rpie" if regularized else "epie", opts["alpha"],
                                        opts["beta"])
    update_probe = iteration >= int(opts["probe_update_start"])
    fft = problem.fft1
    s = problem.upsample
    obj, probe = state.object, state.probe
    L, M, n = obj.shape[0], probe.shape[0], probe.shape[-1]
    npix = float(n * n)
    inv_npix = np.float32(1.0 / npix)
    H = problem.kernel
    Hc = xp.conj(H) if H is not None else None
    J = problem.intensity.shape[0]
    buf = getattr(problem, "_pie_buf", None)
    if buf is None or buf.key != (L, M, n):
        buf = problem._pie_buf = _PieBuffers(problem, L, M, n)
    sub = _subpixel(problem, state)
    refine = state.refining
    iy_all, ix_all, fy_all, fx_all = _split(state.positions)
    order = state.rng.permutation(J)
    psi, chi, W, tmp = buf.psi, buf.chi, buf.W, buf.tmp
    if sub:
        phat = buf.phat
        phat[...] = probe
        fft.forward(phat, norm=None)  # unnormalised spectrum of the probe
        ry_all, rx_all = fourier_shift_ramps(fy_all, fx_all, n, xp)
    cost = 0.0
    pos_grad = np.zeros_like(state.positions) if refine else None
    Y, X = obj.shape[1:]

    if (not refine and xp is np and _fused_ok(obj, probe) and opts["fused"]
            and (L == 1 or H is not None)):
        if L == 1:
            sweep, O = _pie_fast_sweep, obj[0]
        else:
            sweep, O = _pie_fast_sweep_multislice, obj
        c = sweep(problem, buf, O, probe, order, iy_all.tolist(), ix_all.tolist(), alpha,
                  beta, regularized, update_probe, npix, ramps=(ry_all, rx_all) if sub else None)
        if sub and update_probe:
            fft.inverse(phat, norm=None)
            phat *= inv_npix
            probe[...] = phat
        return c / problem.norm

    for j in order.tolist():
        y, x = int(iy_all[j]), int(ix_all[j])
        Ov = obj[:, y:y + n, x:x + n]
        # ---- incident probe at this position
        if sub:
            ramp = xp.multiply(ry_all[j][:, None], rx_all[j][None, :])
            xp.multiply(phat, ramp, out=psi[0])
            fft.inverse(psi[0], norm=None)
            psi[0] *= inv_npix
        elif L > 1:
            psi[0] = probe
        # ---- forward through the slices
        for k in range(L):
            xp.multiply(psi[k] if (k or sub or L > 1) else probe, Ov[k], out=chi[k])
            if k < L - 1:
                psi[k + 1] = chi[k]
                fft.forward(psi[k + 1], norm=None)
                psi[k + 1] *= H
                fft.inverse(psi[k + 1], norm=None)
                psi[k + 1] *= inv_npix
        W[...] = chi[L - 1]
        fft.forward(W, norm=None)
        cost += _fourier_step(problem, buf, j, W, s, npix)
        fft.inverse(W, norm=None)
        d = W
        d -= chi[L - 1]  # exit-wave update (M, n, n)
        # ---- position gradient (last slice, before the object changes)
        if refine and 1 <= y and y + n + 1 <= Y and 1 <= x and x + n + 1 <= X:
            Ok = obj[L - 1]
            gy = (Ok[y + 1:y + n + 1, x:x + n] - Ok[y - 1:y + n - 1, x:x + n])
            gx = (Ok[y:y + n, x + 1:x + n + 1] - Ok[y:y + n, x - 1:x + n - 1])
            for c, g in ((0, gy), (1, gx)):
                G = psi[L - 1] * g  # 2 x the derivative
                den = float(xp.vdot(G.ravel(), G.ravel()).real) + 1e-12
                pos_grad[j, c] = 2.0 * float(xp.vdot(G.ravel(), d.ravel()).real) / den
        # ---- back through the slices
        for k in range(L - 1, -1, -1):
            Ok = Ov[k]
            pk = psi[k] if (k or sub or L > 1) else probe
            do_psi = k > 0 or update_probe
            if do_psi:
                # incident-wave update (before O changes):
                # dpsi = beta conj(O) d / max |O|^2 (ePIE), or the rPIE weighting
                oa = xp.abs(Ok)
                omax = float(oa.max()) ** 2 + 1e-12
                dpsi = xp.multiply(xp.conj(Ok)[None], d, out=buf.dpsi)
                if regularized:
                    oa *= oa
                    oa *= np.float32(1.0 - beta)
                    oa += np.float32(beta * omax)
                    dpsi /= oa
                else:
                    dpsi *= np.float32(beta / omax)
            # object update: O += alpha * sum_m conj(P_m) d_m / max(sum_m |P_m|^2)
            xp.conjugate(pk, out=tmp)
            tmp *= d
            num = tmp.sum(axis=0) if M > 1 else tmp[0]
            if regularized:
                p2 = _abs2(pk, xp)
                p2 = p2.sum(axis=0) if M > 1 else p2[0]
                pmax = float(p2.max())
                p2 *= np.float32(1.0 - alpha)
                p2 += np.float32(alpha * pmax + 1e-12)
                num /= p2
            else:
                pa = xp.abs(pk) if M == 1 else xp.sqrt(_abs2(pk, xp).sum(axis=0))
                pmax = float(pa.max()) ** 2 + 1e-12
                num *= np.float32(alpha / pmax)
            Ok += num
            if not do_psi:
                break
            if k > 0:
                fft.forward(dpsi, norm=None)
                dpsi *= Hc
                fft.inverse(dpsi, norm=None)
                dpsi *= inv_npix
                d[...] = dpsi
            elif sub:
                fft.forward(dpsi, norm=None)
                dpsi *= xp.conj(ramp)
                phat += dpsi
            else:
                probe += dpsi
    if sub and update_probe:
        fft.inverse(phat, norm=None)
        phat *= inv_npix
        probe[...] = phat
    if refine:
        _refine_step(problem, state, pos_grad)
    return cost / problem.norm


def _pie_fast_sweep(problem, buf, O, P, order, iy, ix, alpha, beta, regularized,
                    update_probe, npix, ramps=None):
    """The PIE sweep for one slice (any number of probe modes) on the CPU, fused passes.

    Same arithmetic as the generic loop of :func:`_pie_iteration`, with the elementwise work
    of each pattern fused into a few compiled passes (:mod:`ptynb.ptycho._kernels`: exit
    waves, detector constraint, object + probe update) around the FFTs. At 128 x 128 the ~20
    numpy passes of the generic loop took 1.5-2x the time of the two FFTs; the fused passes
    take about 0.6x (measured, see ``benchmarks/RESULTS.md``).

    ``O`` (Y, X) object, ``P`` (M, n, n) probe modes (updated in place). ``ramps``: None for
    whole-pixel positions (2 FFTs per pattern and mode, the probe updated in place), or
    ``(ry, rx)`` (J, n) Fourier-shift ramps for exact sub-pixel positions: the probe is shifted
    through its spectrum ``buf.phat`` and its update applied to the spectrum (4 FFTs per
    pattern and mode), as in the generic loop.
    """
    from . import _kernels as K

    M, n = P.shape[0], P.shape[-1]
    fft = problem.fft1
    W = buf.W  # (M, n, n)
    chi = buf.chi[0]  # (M, n, n)
    key = ("oop", M, n)
    plans = getattr(fft, "_oop", None)
    if plans is None or plans[0] != key:
        # out-of-place forward chi -> W (c2c preserves its input: no copy), in-place inverse
        fwd = fftw_plan(chi, W, threads=fft.threads, effort=fft.effort)
        fft._oop = plans = (key, fwd)
    fwd_plan = plans[1]
    fwd_plan.update_arrays(chi, W)
    inv_plan = fft._plan(W, True)
    inv_plan.update_arrays(W, W)  # the cached plan runs in place on this buffer
    f32 = np.float32
    # one mode, no upsampling: the compiled detector step; else the generic one
    det = (_CompiledDetector.for_pie(problem, buf, npix)
           if M == 1 and problem.upsample == 1 else None)
    W0 = W[0]
    inv1 = f32(1.0 / npix)
    o2 = np.empty((n, n), np.float32)  # |O patch|^2, then its maximum
    p2 = np.empty((n, n), np.float32)  # sum_m |P_m|^2, then its maximum
    a32, b32 = f32(alpha), f32(beta)
    rows = np.empty((6, n), np.float32)  # scratch of the mixed-state update
    sub = ramps is not None
    if sub:
        ry_all, rx_all = ramps
        phat = buf.phat  # (M, n, n) unnormalised probe spectra, set by the caller
        psi = buf.psi[0]  # the shifted probe modes
        D = buf.dpsi  # their update, then that update's spectra
        sp_plans = getattr(fft, "_sub", None)
        if sp_plans is None or sp_plans[0] != key:  # in place on psi (inverse), D (forward)
            sp_plans = fft._sub = (key, fftw_plan(psi, psi, inverse=True, threads=fft.threads,
                                                  effort=fft.effort),
                                   fftw_plan(D, D, threads=fft.threads, effort=fft.effort))
        shift_plan, d_plan = sp_plans[1], sp_plans[2]
        shift_plan.update_arrays(psi, psi)
        d_plan.update_arrays(D, D)
    else:
        psi = P
        D = P  # unused
        p2[...] = (np.abs(P) ** 2).sum(axis=0)  # kept current by the update kernel
        pmax = float(p2.max())
    # one mode: kernels on (n, n) views (fully vectorised); several: the mode-stack kernels
    if M == 1:
        psi1, chi1, D1 = psi[0], chi[0], D[0]

        def exit_wave(want_p2):
            K.exit_wave(psi1, O, y, x, chi1, o2, p2, want_p2)

        def update(so, sp, off_o, off_p):
            K.update_pie(W0, chi1, psi1, O, y, x, so, sp, update_probe, regularized, a32, b32,
                         off_o, off_p, p2, D1, not sub)
    else:
        def exit_wave(want_p2):
            K.exit_wave_modes(psi, O, y, x, chi, o2, p2, want_p2)

        def update(so, sp, off_o, off_p):
            K.update_pie_modes(W, chi, psi, O, y, x, so, sp, update_probe, regularized, a32,
                               b32, off_o, off_p, p2, D, not sub, rows)
    cost = 0.0
    for j in order.tolist():
        y = iy[j]
        x = ix[j]
        if sub:
            K.ramp_multiply(phat, ry_all[j], rx_all[j], inv1, psi)
            shift_plan.execute()
            exit_wave(True)
            pmax = float(p2.max())
        else:
            exit_wave(False)
        fwd_plan.execute()
        if det is not None:
            cost += det(j, W0) / npix
        else:  # mixed states or upsampling: the generic detector step
            cost += _fourier_step(problem, buf, j, W, problem.upsample, npix)
        inv_plan.execute()
        omax = float(o2.max()) + 1e-12
        if regularized:
            so = sp = f32(0.0)
            off_o, off_p = f32(alpha * pmax + 1e-12), f32(beta * omax)
        else:
            so, sp = f32(alpha / (pmax + 1e-12)), f32(beta / omax)
            off_o = off_p = f32(0.0)
        update(so, sp, off_o, off_p)
        if sub:
            if update_probe:
                d_plan.execute()
                K.add_ramp_multiply(D, ry_all[j], rx_all[j], phat)
        else:
            pmax = float(p2.max())
    return cost


def _pie_fast_sweep_multislice(problem, buf, obj, P, order, iy, ix, alpha, beta, regularized,
                               update_probe, npix, ramps=None):
    """The PIE sweep through L > 1 slices on the CPU with the compiled kernels.

    Per pattern: exit waves slice by slice (one kernel pass each, also writing ``|O|^2`` and
    ``sum_m |psi|^2`` for the step sizes) with angular-spectrum propagation between slices;
    the detector step; then back through the slices: one kernel pass updates the slice and
    writes the incident-wave update, which is propagated back (conjugate kernel) to be the
    previous slice's exit-wave update; at the first slice the update goes to the probe (in
    place, or to its spectrum for sub-pixel positions). The same arithmetic as the generic
    loop of :func:`_pie_iteration` (the reference and the GPU path). ``obj`` (L, Y, X),
    ``P`` (M, n, n) updated in place; ``ramps`` as in :func:`_pie_fast_sweep`.
    """
    from . import _kernels as K

    L = obj.shape[0]
    M, n = P.shape[0], P.shape[-1]
    fft = problem.fft1
    f32 = np.float32
    inv1 = f32(1.0 / npix)
    psi, chi, W, D = buf.psi, buf.chi, buf.W, buf.dpsi
    key = (fft.threads, fft.effort)
    plans = getattr(buf, "ms_plans", None)  # plans on this buffer's own arrays
    if plans is None or plans[0] != key:
        mk = lambda a, b, inv: fftw_plan(a, b, inverse=inv, threads=fft.threads,
                                         effort=fft.effort)
        plans = buf.ms_plans = (key, {
            "psi": [(mk(psi[k], psi[k], False), mk(psi[k], psi[k], True)) for k in range(L)],
            "exit": mk(chi[L - 1], W, False), "W": mk(W, W, True),
            "D": (mk(D, D, False), mk(D, D, True))})
    pl = plans[1]
    Hn = (problem.kernel * inv1).astype(np.complex64)  # propagation incl. the 1/npix
    Hcn = np.conj(Hn)
    det = (_CompiledDetector.for_pie(problem, buf, npix)
           if M == 1 and problem.upsample == 1 else None)
    o2 = np.empty((L, n, n), np.float32)
    p2 = np.empty((L, n, n), np.float32)
    rows = np.empty((6, n), np.float32)
    a32, b32 = f32(alpha), f32(beta)
    sub = ramps is not None
    if sub:
        ry_all, rx_all = ramps
        phat = buf.phat

    def exit_wave(k, inc):
        if M == 1:
            K.exit_wave(inc[0], obj[k], y, x, chi[k, 0], o2[k], p2[k], True)
        else:
            K.exit_wave_modes(inc, obj[k], y, x, chi[k], o2[k], p2[k], True)

    def update(k, inc, Wk, do_psi, direct, so, sp, off_o, off_p):
        if M == 1:
            K.update_pie(Wk[0], chi[k, 0], inc[0], obj[k], y, x, so, sp, do_psi, regularized,
                         a32, b32, off_o, off_p, p2[k], D[0], direct)
        else:
            K.update_pie_modes(Wk, chi[k], inc, obj[k], y, x, so, sp, do_psi, regularized, a32,
                               b32, off_o, off_p, p2[k], D, direct, rows)

    cost = 0.0
    for j in order.tolist():
        y = iy[j]
        x = ix[j]
        # ---- forward through the slices
        if sub:
            K.ramp_multiply(phat, ry_all[j], rx_all[j], inv1, psi[0])
            pl["psi"][0][1].execute()
            inc0 = psi[0]
        else:
            inc0 = P
        for k in range(L):
            exit_wave(k, inc0 if k == 0 else psi[k])
            if k < L - 1:
                nxt = psi[k + 1]
                nxt[...] = chi[k]
                pl["psi"][k + 1][0].execute()
                nxt *= Hn
                pl["psi"][k + 1][1].execute()
        pl["exit"].execute()
        # ---- detector
        if det is not None:
            cost += det(j, W[0]) / npix
        else:
            cost += _fourier_step(problem, buf, j, W, problem.upsample, npix)
        pl["W"].execute()  # W: the updated exit wave of the last slice
        # ---- back through the slices
        for k in range(L - 1, -1, -1):
            inc = inc0 if k == 0 else psi[k]
            do_psi = k > 0 or update_probe
            pmax = float(p2[k].max())
            omax = float(o2[k].max()) + 1e-12
            if regularized:
                so = sp = f32(0.0)
                off_o, off_p = f32(alpha * pmax + 1e-12), f32(beta * omax)
            else:
                so, sp = f32(alpha / (pmax + 1e-12)), f32(beta / omax)
                off_o = off_p = f32(0.0)
            direct = k == 0 and not sub
            update(k, inc, W, do_psi, direct, so, sp, off_o, off_p)
            if not do_psi or direct:
                continue
            pl["D"][0].execute()
            if k > 0:  # back to the previous slice's exit plane: its updated exit wave
                D *= Hcn
                pl["D"][1].execute()
                np.add(chi[k - 1], D, out=W)
            else:  # sub-pixel probe: the update goes to the spectrum
                K.add_ramp_multiply(D, ry_all[j], rx_all[j], phat)
    return cost


def epie_iteration(problem, state, iteration):
    """One ePIE / 3PIE sweep (random order); returns the normalised misfit."""
    return _pie_iteration(problem, state, iteration, regularized=False)


def rpie_iteration(problem, state, iteration):
    """One rPIE sweep (regularised PIE, Maiden et al. 2017); returns the normalised misfit."""
    return _pie_iteration(problem, state, iteration, regularized=True)


# ============================================================================ LSQ-ML
def _propagate(w, H, fft):
    w = fft.forward(w)
    w *= H
    return fft.inverse(w)


def lsqml_iteration(problem: Problem, state, iteration: int) -> float:
    """One LSQ-ML epoch in random mini-batches of ``batch_size``; returns the normalised misfit."""
    xp = problem.xp
    opts = problem.options
    fft = problem.fft
    s = problem.upsample
    obj, probe = state.object, state.probe
    L, M, n = obj.shape[0], probe.shape[0], probe.shape[-1]
    J = problem.intensity.shape[0]
    bs = max(1, min(int(opts["batch_size"] or LSQMLOptions.DEFAULT_BATCH), J))
    reg_o = opts["reg_object"]
    reg_o = LSQMLOptions.reg_object_for(None) if reg_o is None else float(reg_o)  # None: X-ray's
    reg_p = float(opts["reg_probe"])
    reg_w = float(opts["reg_wave"])
    max_step = float(opts["max_step"])
    step_rule = str(opts["step_rule"])
    update_probe = iteration >= int(opts["probe_update_start"])
    H = problem.kernel
    Hc = xp.conj(H) if H is not None else None
    sub = _subpixel(problem, state)
    refine = state.refining
    iy_all, ix_all, fy_all, fx_all = _split(state.positions)
    order = state.rng.permutation(J)
    cost = 0.0
    pos_grad = np.zeros_like(state.positions) if refine else None
    # CPU with numba: compiled object/step passes (any modes and slices); with one mode and no
    # upsampling also the detector step (two passes per pattern)
    fused_upd = xp is np and opts["fused"] and _fused_ok(obj, probe)
    fused_det = fused_upd and M == 1 and s == 1
    if fused_upd:
        from . import _kernels as K

        sums = np.empty((bs, 5), np.float64)
        no_dP = np.zeros((1, 1, 1), np.complex64)

    # "scan" preconditioner: 1 / damped probe intensity summed over every position (from the
    # probe at the start of the iteration), the same metric for every batch; one slice only:
    # in multislice the later slices keep their batch metric, and a scan-wide first slice
    # then starved (4-slice electron case: its phase slope 0.02 against 0.84 for the last)
    inv_w = (_scan_preconditioner(probe, iy_all, ix_all, obj.shape[1:], reg_o, xp, fused_upd)
             if opts["preconditioner"] == "scan" and L == 1 else None)
    # one slice, "scan" preconditioner, fixed positions on the CPU: the compiled batch
    # (_lsq_batch_compiled), the same arithmetic as the generic loop below (the reference)
    fast = fused_upd and L == 1 and inv_w is not None and not refine
    if fast:
        wk = _LsqWork.get(problem, bs, M, n, sub, obj.shape[1:], _lsq_workers(problem, bs))
    else:
        bufs = (xp.zeros(obj.shape[1:], dtype=np.complex64),
                xp.zeros(obj.shape[1:], dtype=np.float32))
    for b0 in range(0, J, bs):
        idx = np.sort(order[b0:b0 + bs])
        B = idx.size
        iy, ix = iy_all[idx], ix_all[idx]
        if fast:
            ramps = fourier_shift_ramps(fy_all[idx], fx_all[idx], n, xp) if sub else None
            cost += _lsq_batch_compiled(problem, obj, probe, idx, iy, ix, ramps, inv_w,
                                        wk, update_probe, sums, step_rule, reg_p, max_step)
            continue
        iy_d, ix_d = (xp.asarray(iy), xp.asarray(ix)) if xp is not np else (iy, ix)
        Opat = extract_patches(obj, iy_d, ix_d, n)  # (B, L, n, n)
        if sub:
            # the probe's spectrum once per batch (not once per pattern), then one inverse FFT
            # per pattern: P_j = F^-1[F(P) ry_j rx_j]
            ry, rx = fourier_shift_ramps(fy_all[idx], fx_all[idx], n, xp)
            phat = empty((M, n, n), xp)
            phat[...] = probe
            phat = fft.forward(phat)
            P = empty((B, M, n, n), xp)
            if fused_upd:
                for b in range(B):
                    K.ramp_multiply(phat, ry[b], rx[b], np.float32(1.0), P[b])
            else:
                xp.multiply(phat[None], ry[:, None, :, None], out=P)
                P *= rx[:, None, None, :]
            P = fft.inverse(P)
        else:
            P = xp.broadcast_to(probe[None], (B, M, n, n))
        psis = [P]
        chi = None
        for k in range(L):
            chi = psis[k] * Opat[:, k, None]
            if k < L - 1:
                w = empty(chi.shape, xp)
                w[...] = chi
                psis.append(_propagate(w, H, fft))
        Psi = empty(chi.shape, xp)
        Psi[...] = chi
        Psi = fft.forward(Psi)
        if fused_det:  # ortho far fields, replaced by their updates in place
            det = _CompiledDetector.for_lsqml(problem)
            for b, j in enumerate(idx.tolist()):
                cost += det(j, Psi[b, 0])
        else:
            model = _abs2(Psi, xp)
            model = model.sum(axis=1) if M > 1 else model[:, 0]  # (B, n, n)
            if s > 1:
                model = bin_intensity(model, s)
            meas = problem.intensity[xp.asarray(idx) if xp is not np else idx]
            cost += float(data_cost(model, meas, problem.mask, problem.noise).sum())
            f = _lsq_update_factor(model, meas, problem.mask, problem.noise,
                                   float(opts["poisson_clip"]), xp)
            if s > 1:
                f = expand_ratio(f, s)
            Psi *= f[:, None]
        d = fft.inverse(Psi)
        d -= chi  # (B, M, n, n) exit-wave update
        if refine:
            ey = xp.clip(iy_d - 1, 0, obj.shape[1] - n - 2)
            ex = xp.clip(ix_d - 1, 0, obj.shape[2] - n - 2)
            Oe = extract_patches(obj[L - 1:L], ey, ex, n + 2)[:, 0]  # (B, n+2, n+2)
            gy = (Oe[:, 2:, 1:-1] - Oe[:, :-2, 1:-1]) * np.float32(0.5)
            gx = (Oe[:, 1:-1, 2:] - Oe[:, 1:-1, :-2]) * np.float32(0.5)
            for c, g in ((0, gy), (1, gx)):
                G = psis[L - 1] * g[:, None]
                num = (xp.conj(G) * d).real.sum(axis=(1, 2, 3))
                den = (G.real ** 2 + G.imag ** 2).sum(axis=(1, 2, 3)) + 1e-12
                pos_grad[idx, c] = _host(num / den)
        numO, denO = bufs
        for k in range(L - 1, -1, -1):
            pk = psis[k]
            Ok = Opat[:, k]
            numO.fill(0)
            denO.fill(0)
            if fused_upd:  # one compiled pass: products, mode sums and both scatters
                pk = probe[None] if (k == 0 and not sub) else pk  # (1 or B, M, n, n)
                Ok = np.ascontiguousarray(Ok)
                K.lsq_object_sums(pk, d, iy, ix, numO, denO)
            else:
                gO = xp.conj(pk)
                gO *= d
                gO = gO.sum(axis=1) if M > 1 else gO[:, 0]  # (B, n, n)
                scatter_add_patches(numO, gO, iy, ix)
                if k == 0 and not sub:  # the same illumination at every position
                    w1 = _abs2(probe, xp).sum(axis=0)
                    scatter_add_patches(denO, xp.broadcast_to(w1, (B, n, n)), iy, ix)
                else:
                    wO = _abs2(pk, xp)
                    scatter_add_patches(denO, wO.sum(axis=1) if M > 1 else wO[:, 0], iy, ix)
            if k == 0 and inv_w is not None:
                numO *= inv_w  # numO is now the object direction dO
            else:
                denO += np.float32(reg_o * float(denO.max()) + 1e-12)
                numO /= denO  # numO is now the object direction dO
            dOp = extract_patches(numO[None], iy_d, ix_d, n)[:, 0]  # (B, n, n)
            if fused_upd:
                dOp = np.ascontiguousarray(dOp)
            else:
                a = dOp[:, None] * pk  # (B, M, n, n)
            do_probe = k == 0 and update_probe
            if do_probe:
                gP = xp.conj(Ok)[:, None] * d
                if sub:
                    # sum_j shift_{-f_j}(g_j) = F^-1[sum_j F(g_j) conj(ry_j rx_j)]: B forward
                    # FFTs and one inverse (linearity), not B of each
                    G = fft.forward(gP)
                    dP = empty((M, n, n), xp)
                    if fused_upd:
                        dP.fill(0)
                        for b in range(B):
                            K.add_ramp_multiply(G[b], ry[b], rx[b], dP)
                    else:
                        G *= xp.conj(ry)[:, None, :, None]
                        G *= xp.conj(rx)[:, None, None, :]
                        dP[...] = G.sum(axis=0)
                    dP = fft.inverse(dP)
                else:
                    dP = gP.sum(axis=0)
                den = _abs2(Ok, xp).sum(axis=0)
                den += np.float32(reg_p * float(den.max()) + 1e-12)
                dP /= den
                if fused_upd:  # the five sums in one pass, no direction arrays
                    K.lsq_step_sums(dOp, pk, Ok, dP, d, True, sums[:B])
                    aO, aP = _steps2(np, *sums[:B].T, step_rule)
                else:
                    bvec = Ok[:, None] * dP[None]
                    if step_rule == "mean":
                        red = lambda u, v: (xp.conj(u) * v).real.sum(axis=(1, 2, 3))
                    else:  # batch totals: one BLAS inner product each
                        red = lambda u, v: xp.vdot(u.ravel(), v.ravel()).real
                    aO, aP = _steps2(xp, red(a, a), red(a, bvec), red(bvec, bvec), red(a, d),
                                     red(bvec, d), step_rule)
                aP = float(xp.clip(xp.nan_to_num(aP, nan=0.0, posinf=0.0), 0, max_step))
            elif fused_upd:
                K.lsq_step_sums(dOp, pk, Ok, no_dP, d, False, sums[:B])
                A11, r1 = sums[:B, 0] + 1e-30, sums[:B, 3]
                aO = (r1 / A11).mean() if step_rule == "mean" else r1.sum() / A11.sum()
            else:
                if step_rule == "mean":
                    A11 = (a.real ** 2 + a.imag ** 2).sum(axis=(1, 2, 3)) + 1e-30
                    aO = ((xp.conj(a) * d).real.sum(axis=(1, 2, 3)) / A11).mean()
                else:
                    aO = xp.vdot(a.ravel(), d.ravel()).real / (xp.vdot(a.ravel(), a.ravel()).real + 1e-30)
            aO = float(xp.clip(xp.nan_to_num(aO, nan=0.0, posinf=0.0), 0, max_step))
            if k > 0:
                # the incident wave's update: conj(O) chi / (|O|^2 + reg_wave max |O|^2) per
                # pixel (LSQMLOptions.reg_wave), from the slice as it was in the forward pass
                o2 = Ok.real ** 2 + Ok.imag ** 2
                omax = o2.reshape(B, -1).max(axis=1).reshape(B, 1, 1)
                o2 += np.float32(reg_w) * omax + np.float32(1e-12)
                dpsi = (xp.conj(Ok) / o2)[:, None] * d
                d = _propagate(dpsi, Hc, fft)
            numO *= np.float32(aO)
            obj[k] += numO
            if do_probe:
                dP *= np.float32(aP)
                probe += dP
    if refine:
        _refine_step(problem, state, pos_grad)
    return cost / problem.norm


_POOLS: dict = {}


def _pool(n: int):
    """A process-wide pool of ``n`` helper threads (the compiled LSQ-ML batch's workers)."""
    pool = _POOLS.get(n)
    if pool is None:
        from concurrent.futures import ThreadPoolExecutor

        pool = _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="ptynb-lsq")
    return pool


def lsq_worker_count(workers, B: int) -> int:
    """Worker threads of the compiled LSQ-ML batch of ``B`` patterns: ``workers`` (int), or
    for None the usable cores (at most ``ComputeOptions.MAX_WORKERS``); never more than
    ``B // 4`` (each worker gets at least 4 patterns), never fewer than 1."""
    from ..backend import cpu_workers
    from .options import ComputeOptions

    w = min(cpu_workers(), ComputeOptions.MAX_WORKERS) if workers is None else int(workers)
    return max(1, min(w, B // 4 or 1))


def _lsq_workers(problem, B: int) -> int:
    """:func:`lsq_worker_count` for the problem's ``workers`` option."""
    return lsq_worker_count(problem.options.get("workers"), B)


class _LsqWork:
    """Work arrays of :func:`_lsq_batch_compiled` for batches of up to ``bs`` patterns, ``M``
    modes, ``n x n`` windows, object frames ``frame`` (Y, X) and ``T`` worker threads (aligned
    for in-place FFTW transforms; one FFT object per worker, since a plan runs one transform
    at a time). Each worker scatters its patterns' object direction into its own frame
    ``num[t]`` and its probe sums into ``dP[t]``/``pden[t]``; the sums over workers happen
    where they are read."""

    def __init__(self, problem, bs, M, n, sub, frame, T):
        from .operators import FFT2

        self.key = (bs, M, n, sub, tuple(frame), T)
        self.T = T
        self.Psi = empty((bs, M, n, n))
        self.P = empty((bs, M, n, n)) if sub else None
        self.gP = empty((bs, M, n, n)) if sub else None
        self.phat = empty((M, n, n)) if sub else None
        self.dP = np.zeros((T, M, n, n), np.complex64)
        self.pden = np.zeros((T, n, n), np.float32)
        self.num = np.zeros((T, *frame), np.complex64)
        self.model = np.empty((bs, n, n), np.float32)
        self.g = np.empty((bs, n, n), np.float32)
        self.dsum = np.empty((bs, 3), np.float64)
        self.cost = np.zeros(bs, np.float64)
        self.c4 = np.zeros((1, 1, 1, 1), np.complex64)
        self.c3 = np.zeros((1, 1, 1), np.complex64)
        self.c2 = np.zeros((1, 1), np.complex64)
        self.f2 = np.zeros((1, 1), np.float32)
        self.f1 = np.zeros(1, np.float64)
        self.bits = np.zeros((T, n), np.int32)
        self.native = None  # (forward, inverse) FFTW plans of the one-call pipeline
        if M == 1 and problem.upsample == 1:
            from . import _native

            # the one-call pipeline costs ~2 s to compile once per process and saves ~14 us
            # per pattern update (128^2, measured): used once compiled, or for runs long
            # enough to repay the compilation
            if (_native.compiled() or problem.lsq_updates >= _native.WORTH_COMPILING) \
                    and _native.available():
                pf, pb, al = _native.plans(n, getattr(problem.fft, "effort", "measure"))
                bufs = [self.Psi] + ([self.P, self.gP] if sub else [])
                if all(_native.aligned(b_, al) for b_ in bufs):
                    self.native = (pf, pb)
        base = problem.fft
        self.ffts = [base] + [FFT2(np, threads=1, effort=getattr(base, "effort", "measure"))
                              for _ in range(T - 1)]

    @classmethod
    def get(cls, problem, bs, M, n, sub, frame, T):
        """The problem's work arrays for these sizes (made once per run)."""
        wk = problem.__dict__.get("_lsq_work")
        if wk is None or wk.key != (bs, M, n, sub, tuple(frame), T):
            wk = problem.__dict__["_lsq_work"] = cls(problem, bs, M, n, sub, frame, T)
        return wk


def _in_workers(T, fn):
    """Run ``fn(0) .. fn(T - 1)``: ``fn(0)`` on the calling thread, the rest on the pool;
    the first exception is raised after all have finished."""
    if T == 1:
        fn(0)
        return
    futs = [_pool(T - 1).submit(fn, t) for t in range(1, T)]
    err = None
    try:
        fn(0)
    except BaseException as e:  # noqa: BLE001 - re-raised below, after the others finish
        err = e
    for f in futs:
        try:
            f.result()
        except BaseException as e:  # noqa: BLE001
            err = err or e
    if err is not None:
        raise err


def _lsq_batch_compiled(problem, obj, probe, idx, iy, ix, ramps, inv_w, wk, update_probe,
                        sums, step_rule, reg_p, max_step) -> float:
    """One LSQ-ML batch (one slice, "scan" preconditioner ``inv_w`` (Y, X), fixed positions)
    with the compiled kernels of :mod:`ptynb.ptycho._kernels`; updates ``obj`` (1, Y, X) and
    ``probe`` (M, n, n) in place and returns the batch's unnormalised misfit.

    The batch's patterns are split into ``wk.T`` contiguous chunks, one per worker thread
    (the kernels and FFTW run without the GIL). Per chunk: the exit waves straight from the
    object into the FFT buffer, the forward FFT, the detector step, the inverse FFT, then one
    pass for the exit-wave update with the object sums (into the worker's own frame) and the
    probe sums; with one mode and no upsampling all of it in one compiled call per chunk
    (:mod:`ptynb.ptycho._native`, FFTW called from the compiled code), else one call per
    stage. Then the step-length sums (split between workers only from 32 patterns each) and,
    on the calling thread, one pass over the frame that sums the workers' directions into
    the object and resets them. The orthonormal FFT's scale
    is folded into the kernels (unnormalised transforms, no scaling passes). Sub-pixel
    positions (``ramps`` = (ry, rx) (B, n)): the probe shifted in Fourier space (one inverse
    FFT per pattern) and its update shifted back (one forward FFT per pattern), as in the
    generic loop of :func:`lsqml_iteration`, whose arithmetic this is.
    """
    from . import _kernels as K

    M, n = probe.shape[0], probe.shape[-1]
    B = idx.size
    T = wk.T
    f32 = np.float32
    s = f32(1.0 / n)  # 1 / sqrt(n^2): ortho scale of each unnormalised transform
    inv_npix = f32(1.0 / (n * n))
    O = obj[0]
    Psi = wk.Psi[:B]
    sub = ramps is not None
    cuts = [B * t // T for t in range(T + 1)]
    if sub:
        ry, rx = ramps
        phat = wk.phat
        phat[...] = probe
        problem.fft.forward(phat, norm=None)
    det = (_CompiledDetector.for_lsqml(problem) if M == 1 and problem.upsample == 1
           else None)
    idx64 = np.ascontiguousarray(idx, dtype=np.int64)
    wk.dP.fill(0)
    wk.pden.fill(0)
    mode = (2 if sub else 1) if update_probe else 0
    pclip = float(problem.options["poisson_clip"])

    def far_fields(t):
        a, b = cuts[t], cuts[t + 1]
        if a == b:
            return
        fft = wk.ffts[t]
        sl = slice(a, b)
        if wk.native is not None:  # the whole chunk in one compiled call, FFTW inside
            from . import _native

            _native.far_fields(
                wk.native[0], wk.native[1], sub, phat if sub else wk.c3,
                ry[sl] if sub else wk.c2, rx[sl] if sub else wk.c2, inv_npix,
                wk.P[sl] if sub else wk.c4, probe[None], O, iy[sl], ix[sl], s, Psi[sl],
                det.amp if det.gaussian else det.I, idx64[sl], det.valid, det.gaussian,
                det.eps, det.eps_p, det.gmin, wk.f1 if det.const is None else det.const,
                wk.model[a], wk.g[a], wk.bits[t], wk.cost[sl], wk.num[t],
                wk.gP[sl] if mode == 2 else wk.c4, wk.dP[t], wk.pden[t], wk.c4, wk.c3, mode)
            return
        if sub:
            Pc = wk.P[sl]
            K.ramp_multiply_batch(phat, ry[sl], rx[sl], inv_npix, Pc)
            fft.inverse(Pc, norm=None)  # the shifted probes, exactly
        else:
            Pc = probe[None]
        W = Psi[sl]
        K.lsq_exit_waves(Pc, O, iy[sl], ix[sl], s, W)
        fft.forward(W, norm=None)  # orthonormal far fields
        if det is not None:
            det.batch(idx64[sl], W.reshape(b - a, n, n), wk.model[sl], wk.g[sl], wk.dsum[sl],
                      wk.cost[sl])
        else:
            up = problem.upsample
            model = _abs2(W, np)
            model = model.sum(axis=1) if M > 1 else model[:, 0]
            if up > 1:
                model = bin_intensity(model, up)
            meas = problem.intensity[idx[sl]]
            wk.cost[sl] = data_cost(model, meas, problem.mask, problem.noise)
            f = _lsq_update_factor(model, meas, problem.mask, problem.noise, pclip, np)
            if up > 1:
                f = expand_ratio(f, up)
            W *= f[:, None]
        fft.inverse(W, norm=None)  # sqrt(n^2) x the updated exit waves
        if mode == 2:
            G = wk.gP[sl]
            K.lsq_update_sums(Pc, O, iy[sl], ix[sl], s, W, wk.num[t], G, wk.c3, wk.pden[t], 2)
            fft.forward(G, norm=None)
            K.add_ramp_multiply_batch(G, ry[sl], rx[sl], wk.dP[t])
        elif mode == 1:
            K.lsq_update_sums(Pc, O, iy[sl], ix[sl], s, W, wk.num[t], wk.c4, wk.dP[t],
                              wk.pden[t], 1)
        else:
            K.lsq_update_sums(Pc, O, iy[sl], ix[sl], s, W, wk.num[t], wk.c4, wk.c3, wk.f2, 0)

    _in_workers(T, far_fields)
    cost = float(wk.cost[:B].sum())
    if update_probe:
        dP = wk.dP[0]
        pden = wk.pden[0]
        for t in range(1, T):
            dP += wk.dP[t]
            pden += wk.pden[t]
        if sub:
            problem.fft.inverse(dP, norm=None)
            dP *= inv_npix
        pden += f32(reg_p * float(pden.max()) + 1e-12)
        dP /= pden
    else:
        dP = wk.c3

    def step_sums(t):
        a, b = cuts[t], cuts[t + 1]
        if a < b:
            sl = slice(a, b)
            K.lsq_step_sums_stack(wk.num, inv_w, wk.P[sl] if sub else probe[None], O, iy[sl],
                                  ix[sl], dP, Psi[sl], update_probe, sums[sl])

    # the step sums are ~1/6 of the far fields' work per pattern: split them only when each
    # worker gets enough patterns to outweigh waking it (measured: 8 patterns each were
    # slower than one thread)
    Ts = max(1, min(T, B // 32))
    cuts = [B * t // Ts for t in range(Ts + 1)]
    _in_workers(Ts, step_sums)
    if update_probe:
        aO, aP = _steps2(np, *sums[:B].T, step_rule)
        aP = float(np.clip(np.nan_to_num(aP, nan=0.0, posinf=0.0), 0, max_step))
    else:
        A11, r1 = sums[:B, 0] + 1e-30, sums[:B, 3]
        aO = (r1 / A11).mean() if step_rule == "mean" else r1.sum() / A11.sum()
    aO = float(np.clip(np.nan_to_num(aO, nan=0.0, posinf=0.0), 0, max_step))
    # the object update: one pass over the frame (a few us per pattern), on this thread
    K.lsq_apply_object_stack(O, wk.num, inv_w, f32(aO))
    if update_probe:
        dP *= f32(aP)
        probe += dP
    return cost


def _scan_preconditioner(probe, iy, ix, shape, reg, xp, compiled=False):
    """``1 / sqrt(w^2 + (reg max w)^2)`` (Y, X) float32, ``w`` the probe intensity
    ``sum_m |P_m|^2`` (M, n, n) summed over every window corner ``(iy, ix)`` (J,) (host ints)
    of the object frame ``shape`` (Y, X); sub-pixel shifts of the probe are left out.
    ``compiled``: the scatter in a numba kernel (CPU)."""
    n = probe.shape[-1]
    w = xp.zeros(shape, dtype=np.float32)
    p2 = _abs2(probe, xp).sum(axis=0)
    if compiled:
        from . import _kernels as K

        K.scatter_intensity(np.ascontiguousarray(p2, dtype=np.float32),
                            np.ascontiguousarray(iy, dtype=np.int64),
                            np.ascontiguousarray(ix, dtype=np.int64), w)
    elif xp is np:
        for y, x in zip(iy.tolist(), ix.tolist()):
            w[y:y + n, x:x + n] += p2
    else:
        scatter_add_patches(w, xp.broadcast_to(p2, (len(iy), n, n)), iy, ix)
    r = np.float32(reg * float(w.max()) + 1e-12)
    w *= w
    w += r * r
    xp.sqrt(w, out=w)
    return xp.divide(np.float32(1.0), w, out=w)


def _lsq_update_factor(model, meas, mask, noise, clip, xp, eps=1e-6):
    """LSQ-ML's far-field update factor (B, N, N) float32 for model intensities ``model`` and
    measured ``meas`` (B, N, N) (ortho units), ``mask`` (N, N) or None.

    Gaussian: :func:`~ptynb.ptycho.operators.fourier_update_factor` (amplitude projection).
    Poisson: ``1 - a g`` with ``g = max(1 - meas / model, -clip)`` and the per-pattern
    Newton step ``a`` along ``g`` (as there, whose clip is 1); the arithmetic of the compiled
    detector step (:func:`ptynb.ptycho._kernels.poisson_sums`).
    """
    if noise == "gaussian":
        return fourier_update_factor(model, meas, mask, noise, eps)
    model = model + np.float32(eps)
    g = xp.maximum(np.float32(1.0) - meas / model, np.float32(-clip))
    if mask is not None:
        g = g * mask
    g2 = g * g
    num = (g2 * model).sum(axis=(-2, -1), keepdims=True, dtype=np.float64)
    den = num + (g2 * meas).sum(axis=(-2, -1), keepdims=True, dtype=np.float64) + 1e-12
    a = xp.clip(num / den, 0.0, 1.0).astype(np.float32)
    f = np.float32(1.0) - a * g
    if mask is not None:
        f = xp.where(mask, f, np.float32(1.0))
    return f.astype(np.float32, copy=False)


def _steps2(xp, A11, A12, A22, r1, r2, rule):
    """Object/probe step lengths from the per-pattern 2x2 normal equations.

    ``rule="global"``: solve the equations summed over the batch (the least-squares optimum
    of the batch's linearised misfit); ``"mean"``: solve per pattern and average.
    """
    if rule != "mean":
        A11, A12, A22, r1, r2 = (v.sum() for v in (A11, A12, A22, r1, r2))
    det = A11 * A22 - A12 ** 2
    det = xp.where(det > 1e-9 * (A11 * A22 + 1e-30), det, xp.inf)
    aO = (A22 * r1 - A12 * r2) / det
    aP = (A11 * r2 - A12 * r1) / det
    if rule == "mean":
        aO, aP = aO.mean(), aP.mean()
    return aO, aP


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


ENGINES = {
    "epie": epie_iteration,
    "rpie": rpie_iteration,
    "lsqml": lsqml_iteration,
}
