"""Image and volume quality metrics: PCC, SSIM/MS-SSIM, DSC, BER, FRC/FSC, power spectra.

Every function accepts numpy arrays, cupy arrays (copied to the host) or xarray DataArrays.
Metrics run in float64 on the host; they are evaluation tools, not inner loops.

Pixel sizes
-----------
Spectral functions (:func:`frc`, :func:`fsc`, :func:`psd`, :func:`psd_cuts`,
:func:`directional_resolution`) need the sampling of each axis. It is taken, in order, from
the ``pixel_size=`` argument (a number, or one number per axis, in metres), from the
DataArray's coordinates (uniform spacing of the dimension coordinate), or else set to 1, in
which case spatial frequencies are in cycles per pixel (attrs ``units = "1/pixel"``).

Thresholds for FRC/FSC
----------------------
``"half-bit"`` (van Heel & Schatz 2005), for a shell holding ``n`` Fourier voxels::

    T(n) = (0.2071 + 1.9102 / sqrt(n)) / (1.2071 + 0.9102 / sqrt(n))

``"one-bit"``: ``(0.5 + 2.4142 / sqrt(n)) / (1.5 + 1.4142 / sqrt(n))``; a number (e.g.
``0.143``) is a constant threshold. For two independent noisy halves of a signal with
spectral signal-to-noise ratio SNR(q) per half, the expected FSC is ``SNR / (1 + SNR)``.

Binary metrics (APT paper)
--------------------------
:func:`em_threshold` fits a two-class Gaussian mixture by expectation maximisation and
returns the Bayes decision threshold between the class means. :func:`ber` binarises the
reference with it and the test volume by Bayes' rule ``p(x|0) p(0) = p(x|1) p(1)`` with the
reference's priors ``p(0), p(1)`` (see :func:`ber` for which class densities are used).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import xarray as xr

from .data import ValidationError

__all__ = [
    "pcc",
    "ssim",
    "ms_ssim",
    "MS_SSIM_WEIGHTS",
    "dsc",
    "confusion",
    "ber",
    "em_threshold",
    "gaussian_threshold",
    "frc",
    "fsc",
    "half_bit_threshold",
    "one_bit_threshold",
    "resolution",
    "psd",
    "psd_cuts",
    "radial_profile",
    "directional_resolution",
]

#: Standard MS-SSIM scale weights (Wang, Simoncelli & Bovik 2003), finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

_PARTS = ("real", "imag", "abs", "amplitude", "phase")


# ----------------------------------------------------------------------------- input helpers
def _host(x, name):
    """``x`` as a numpy array (DataArray, cupy, torch, dask -> numpy); rejects non-numeric."""
    from .backend import to_host

    if x is None:
        raise ValidationError(name, "is None; expected an array")
    try:
        a = to_host(x)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise ValidationError(name, f"cannot be converted to an array ({e})") from None
    a = np.asarray(a)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValidationError(name, f"has non-numeric dtype {a.dtype}")
    return a


def _finite(a, name):
    if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        raise ValidationError(name, f"contains {bad} NaN or inf value(s)")


def _real(a, name, part=None):
    """Real float64 view of ``a``; complex needs ``part`` (real/imag/abs/amplitude/phase)."""
    if part is not None:
        if part not in _PARTS:
            raise ValidationError("part", f"must be one of {_PARTS}, got {part!r}")
        if part == "real":
            a = np.real(a)
        elif part == "imag":
            a = np.imag(a)
        elif part in ("abs", "amplitude"):
            a = np.abs(a)
        else:
            a = np.angle(a) if np.iscomplexobj(a) else np.zeros(a.shape)
    elif np.iscomplexobj(a):
        raise ValidationError(
            name, "is complex; pass part='real', 'imag', 'abs' or 'phase' to choose what to compare")
    return np.asarray(a, dtype=np.float64)


def _pair(a, b, names=("a", "b"), part=None, allow_complex=False, min_ndim=1):
    A = _host(a, names[0])
    B = _host(b, names[1])
    if A.shape != B.shape:
        raise ValidationError(names[1], f"has shape {B.shape} but {names[0]} has shape {A.shape}")
    if A.ndim < min_ndim:
        raise ValidationError(names[0], f"must be at least {min_ndim}-D, got shape {A.shape}")
    if A.size == 0:
        raise ValidationError(names[0], "is empty")
    _finite(A, names[0])
    _finite(B, names[1])
    if allow_complex and part is None:
        return A, B
    return _real(A, names[0], part), _real(B, names[1], part)


def _mask(mask, shape, name="mask"):
    if mask is None:
        return None
    m = _host(mask, name)
    if m.shape != tuple(shape):
        raise ValidationError(name, f"has shape {m.shape}; the data have shape {tuple(shape)}")
    if m.dtype != bool:
        if not np.all((m == 0) | (m == 1)):
            raise ValidationError(name, "must be boolean (True = use the voxel)")
        m = m.astype(bool)
    if not m.any():
        raise ValidationError(name, "selects no voxels (all False)")
    return m


def _spacing(x, ndim, pixel_size, name="pixel_size"):
    """Per-axis sampling (m) for the last ``ndim`` axes and whether it is physical."""
    if pixel_size is not None:
        ps = np.asarray(pixel_size, dtype=np.float64).reshape(-1)
        if ps.size == 1:
            ps = np.repeat(ps, ndim)
        if ps.size != ndim:
            raise ValidationError(name, f"needs 1 or {ndim} values, got {ps.size}")
        if not np.all(np.isfinite(ps)) or np.any(ps <= 0):
            raise ValidationError(name, f"must be positive and finite, got {pixel_size!r}")
        return ps, True
    if isinstance(x, xr.DataArray):
        out = []
        for d in x.dims[-ndim:]:
            if d in x.coords and x.sizes[d] >= 2:
                c = np.asarray(x[d].values, dtype=np.float64)
                dc = np.diff(c)
                if not np.allclose(dc, dc[0], rtol=1e-3, atol=0) or dc[0] == 0:
                    raise ValidationError(d, "coordinate is not uniformly spaced; pass pixel_size=")
                out.append(abs(float(dc[0])))
            else:
                out = None
                break
        if out is not None:
            return np.asarray(out), True
    return np.ones(ndim), False


def _qdims(x, ndim):
    if isinstance(x, xr.DataArray) and len(x.dims) >= ndim:
        return tuple("q" + str(d) for d in x.dims[-ndim:])
    return ("qz", "qy", "qx")[-ndim:] if ndim <= 3 else tuple(f"q{i}" for i in range(ndim))


# ----------------------------------------------------------------------------- PCC
def pcc(a, b, mask=None, *, part: str | None = None) -> float:
    """Pearson correlation coefficient between two arrays.

    Parameters
    ----------
    a, b : array (any shape, equal), real
        Reference and test (numpy/cupy/DataArray).
    mask : bool array, same shape, optional
        Voxels to use (True). An all-False mask is an error.
    part : {"real", "imag", "abs", "amplitude", "phase"}, optional
        Required for complex input: which real quantity to correlate.

    Returns
    -------
    float
        ``cov(a, b) / (std(a) std(b))`` in [-1, 1].

    Raises
    ------
    ValidationError
        Mismatched shapes, NaN/inf, complex input without ``part``, empty mask, constant input.
    """
    A, B = _pair(a, b, part=part)
    m = _mask(mask, A.shape)
    if m is not None:
        A, B = A[m], B[m]
    A = A.ravel() - A.mean()
    B = B.ravel() - B.mean()
    na, nb = np.sqrt(np.dot(A, A)), np.sqrt(np.dot(B, B))
    if na == 0 or nb == 0:
        raise ValidationError("a" if na == 0 else "b", "is constant (over the mask); PCC undefined")
    return float(np.dot(A, B) / (na * nb))


# ----------------------------------------------------------------------------- SSIM
def _ssim_setup(win_size, gaussian_weights, sigma):
    if sigma <= 0:
        raise ValidationError("sigma", f"must be positive, got {sigma}")
    if gaussian_weights:
        truncate = 3.5
        if win_size is None:
            win_size = 2 * int(truncate * sigma + 0.5) + 1
    else:
        truncate = None
        if win_size is None:
            win_size = 7
    win_size = int(win_size)
    if win_size < 3 or win_size % 2 == 0:
        raise ValidationError("win_size", f"must be an odd integer >= 3, got {win_size}")
    return win_size, truncate


def _ssim_maps(X, Y, win_size, gaussian_weights, sigma, truncate, data_range, K1, K2,
               use_sample_covariance):
    """Luminance and contrast-structure maps (float64) of windowed SSIM."""
    from scipy import ndimage as ndi

    if gaussian_weights:
        def filt(u):
            return ndi.gaussian_filter(u, sigma, mode="reflect", truncate=truncate)
    else:
        def filt(u):
            return ndi.uniform_filter(u, size=win_size, mode="reflect")
    NP = win_size ** X.ndim
    cov_norm = NP / (NP - 1) if use_sample_covariance else 1.0
    ux, uy = filt(X), filt(Y)
    vx = cov_norm * (filt(X * X) - ux * ux)
    vy = cov_norm * (filt(Y * Y) - uy * uy)
    vxy = cov_norm * (filt(X * Y) - ux * uy)
    C1 = (K1 * data_range) ** 2
    C2 = (K2 * data_range) ** 2
    lum = (2 * ux * uy + C1) / (ux * ux + uy * uy + C1)
    cs = (2 * vxy + C2) / (vx + vy + C2)
    return lum, cs


def _crop_mean(S, pad):
    sl = tuple(slice(pad, n - pad) for n in S.shape)
    return float(S[sl].mean(dtype=np.float64))


def _data_range(A, data_range):
    if data_range is None:
        r = float(A.max() - A.min())
        if r == 0:
            raise ValidationError("a", "is constant; pass data_range= explicitly")
        return r
    r = float(data_range)
    if not math.isfinite(r) or r <= 0:
        raise ValidationError("data_range", f"must be positive and finite, got {data_range!r}")
    return r


def ssim(a, b, *, win_size: int | None = None, gaussian_weights: bool = False,
         sigma: float = 1.5, data_range: float | None = None, K1: float = 0.01,
         K2: float = 0.03, use_sample_covariance: bool = True, part: str | None = None,
         full: bool = False):
    """Windowed structural similarity (Wang et al. 2004) of 2D images or 3D volumes.

    Same definition and defaults as :func:`skimage.metrics.structural_similarity`: local
    means/variances from a uniform ``win_size``-wide window (default 7) or, with
    ``gaussian_weights=True``, a Gaussian of ``sigma`` (default 1.5) truncated at 3.5 sigma
    (an 11-tap window); sample covariances (``N/(N-1)``, N = win_size**ndim); reflective
    boundaries; the mean taken after cropping ``(win_size - 1) // 2`` pixels at each border.

    Parameters
    ----------
    a, b : array (y, x) or (z, y, x), real
        Reference and test (equal shapes, every side >= win_size).
    data_range : float, optional
        Dynamic range ``L`` in ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2``. Default: the range
        (max - min) of the reference ``a``.
    part : str, optional
        For complex input: "real", "imag", "abs" or "phase".
    full : bool
        Also return the SSIM map (same shape as the inputs).

    Returns
    -------
    float, or (float, ndarray) with ``full=True``
    """
    A, B = _pair(a, b, part=part, min_ndim=2)
    win_size, truncate = _ssim_setup(win_size, gaussian_weights, sigma)
    if min(A.shape) < win_size:
        raise ValidationError("a", f"has shape {A.shape}; every side must be >= win_size={win_size}")
    L = _data_range(A, data_range)
    lum, cs = _ssim_maps(A, B, win_size, gaussian_weights, sigma, truncate, L, K1, K2,
                         use_sample_covariance)
    S = lum * cs
    val = _crop_mean(S, (win_size - 1) // 2)
    return (val, S) if full else val


def _downsample2(u):
    """Average over 2-wide blocks along every axis (odd trailing samples dropped)."""
    sl = tuple(slice(0, 2 * (n // 2)) for n in u.shape)
    u = u[sl]
    for ax in range(u.ndim):
        shp = u.shape[:ax] + (u.shape[ax] // 2, 2) + u.shape[ax + 1:]
        u = u.reshape(shp).mean(axis=ax + 1)
    return u


def ms_ssim(a, b, *, weights: Sequence[float] = MS_SSIM_WEIGHTS, win_size: int | None = None,
            gaussian_weights: bool = True, sigma: float = 1.5, data_range: float | None = None,
            K1: float = 0.01, K2: float = 0.03, use_sample_covariance: bool = True,
            part: str | None = None) -> float:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) of 2D images or 3D volumes.

    At scale ``j = 1..M`` (``M = len(weights)``, default 5 with the standard weights
    0.0448, 0.2856, 0.3001, 0.2363, 0.1333) the contrast-structure term ``cs_j`` (windowed as
    in :func:`ssim`, cropped mean) is computed; the luminance term ``l_M`` only at the
    coarsest scale. Between scales both inputs are averaged over 2x2 (2x2x2) blocks and
    decimated by 2. ``MS-SSIM = l_M^{w_M} * prod_j cs_j^{w_j}``. Negative ``cs_j`` (anti-
    correlated structure) are clipped to 0 before the power, so the result is in [0, 1].

    Parameters
    ----------
    a, b : array (y, x) or (z, y, x), real
        Every side must be >= ``win_size * 2**(M-1)`` (default Gaussian window of 11 taps:
        176 pixels for 5 scales); use fewer ``weights`` for small inputs.
    weights : sequence of float
        Exponents per scale, finest first (used as given, not renormalised).
    gaussian_weights : bool
        Gaussian window (default, as in the original paper) or uniform ``win_size`` window.
    data_range : float, optional
        Default: range of the reference ``a`` at full resolution (kept at every scale).

    Returns
    -------
    float
    """
    A, B = _pair(a, b, part=part, min_ndim=2)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size < 1 or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValidationError("weights", f"must be non-negative finite numbers, got {weights!r}")
    win_size, truncate = _ssim_setup(win_size, gaussian_weights, sigma)
    need = win_size * 2 ** (w.size - 1)
    if min(A.shape) < need:
        raise ValidationError(
            "a", f"has shape {A.shape}; {w.size}-scale MS-SSIM with a {win_size}-pixel window "
            f"needs every side >= {need} (pass fewer weights for small inputs)")
    L = _data_range(A, data_range)
    pad = (win_size - 1) // 2
    val = 1.0
    for j, wj in enumerate(w):
        lum, cs = _ssim_maps(A, B, win_size, gaussian_weights, sigma, truncate, L, K1, K2,
                             use_sample_covariance)
        c = max(_crop_mean(cs, pad), 0.0)
        val *= c ** wj
        if j == w.size - 1:
            val *= max(_crop_mean(lum, pad), 0.0) ** wj
        else:
            A, B = _downsample2(A), _downsample2(B)
    return float(val)


# ----------------------------------------------------------------------------- binary metrics
def _binary(x, name):
    a = _host(x, name)
    if a.size == 0:
        raise ValidationError(name, "is empty")
    if a.dtype == bool:
        return a
    if np.iscomplexobj(a):
        raise ValidationError(name, "is complex; expected a binary (bool or 0/1) array")
    _finite(a, name)
    if not np.all((a == 0) | (a == 1)):
        raise ValidationError(name, "is not binary; expected bool or 0/1 values (binarise first, "
                                    "or use ber() which thresholds by EM)")
    return a.astype(bool)


def confusion(reference, test, mask=None) -> dict:
    """Counts of true/false positives/negatives of a binary ``test`` against ``reference``.

    Parameters
    ----------
    reference, test : bool (or 0/1) arrays of equal shape
    mask : bool array, optional
        Voxels to count.

    Returns
    -------
    dict
        ``{"TP": int, "TN": int, "FP": int, "FN": int}``.
    """
    R = _binary(reference, "reference")
    T = _binary(test, "test")
    if R.shape != T.shape:
        raise ValidationError("test", f"has shape {T.shape} but reference has shape {R.shape}")
    m = _mask(mask, R.shape)
    if m is not None:
        R, T = R[m], T[m]
    tp = int(np.count_nonzero(R & T))
    tn = int(np.count_nonzero(~R & ~T))
    fp = int(np.count_nonzero(~R & T))
    fn = int(np.count_nonzero(R & ~T))
    return {"TP": tp, "TN": tn, "FP": fp, "FN": fn}


def dsc(a, b, mask=None) -> float:
    """Dice similarity coefficient ``2 TP / (2 TP + FN + FP)`` of two binary arrays.

    Parameters
    ----------
    a, b : bool (or 0/1) arrays of equal shape (reference, test)
    mask : bool array, optional

    Returns
    -------
    float
        In [0, 1]; 1.0 when both arrays are empty (identical).
    """
    c = confusion(a, b, mask)
    den = 2 * c["TP"] + c["FN"] + c["FP"]
    return 1.0 if den == 0 else 2.0 * c["TP"] / den


def _gauss_logpdf(x, mu, sd):
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)


def gaussian_threshold(means, stds, priors) -> float:
    """Bayes decision boundary between two weighted 1D Gaussians.

    Solves ``p0 N(t; m0, s0) = p1 N(t; m1, s1)`` for the root ``t`` lying between the two
    means (with equal variances the unique root). If no root lies between the means (one
    class dominates the whole interval), returns the mean of the dominated class, so that
    the dominating class takes the interval.
    """
    (m0, m1), (s0, s1), (p0, p1) = (np.asarray(v, dtype=np.float64) for v in (means, stds, priors))
    if m0 > m1:
        m0, m1, s0, s1, p0, p1 = m1, m0, s1, s0, p1, p0
    # log p0 N0 - log p1 N1 = a t^2 + b t + c
    a = 0.5 / s1 ** 2 - 0.5 / s0 ** 2
    b = m0 / s0 ** 2 - m1 / s1 ** 2
    c = (0.5 * m1 ** 2 / s1 ** 2 - 0.5 * m0 ** 2 / s0 ** 2 + np.log(p0) - np.log(p1)
         - np.log(s0) + np.log(s1))
    if abs(a) < 1e-12 * max(abs(b), 1e-300):
        roots = [-c / b] if b != 0 else []
    else:
        disc = b * b - 4 * a * c
        roots = [] if disc < 0 else [(-b + s * np.sqrt(disc)) / (2 * a) for s in (1.0, -1.0)]
    inside = [r for r in roots if m0 <= r <= m1]
    if inside:
        return float(inside[0]) if len(inside) == 1 else float(min(inside, key=lambda r: abs(r - 0.5 * (m0 + m1))))
    # no boundary between the means: the class with the larger weighted density there wins
    f = a * 0.25 * (m0 + m1) ** 2 + b * 0.5 * (m0 + m1) + c
    return float(m1 if f > 0 else m0)


def em_threshold(values, *, priors: Sequence[float] | None = None, max_iter: int = 500,
                 tol: float = 1e-10, mask=None) -> tuple[float, dict]:
    """Two-class Gaussian mixture fitted by expectation maximisation; Bayes threshold.

    Initialisation: split at the mean, class means/stds/priors from the two halves. The EM
    updates means, standard deviations and (unless ``priors`` is given, in which case they
    stay fixed) priors until the log-likelihood per sample changes by less than ``tol``.

    Parameters
    ----------
    values : array (any shape), real
        Voxel values (all of them are used; no subsampling).
    priors : (p0, p1), optional
        Fix the class priors (class 0 = lower mean) instead of fitting them.
    max_iter, tol
        EM stopping rule.
    mask : bool array, optional
        Voxels to use.

    Returns
    -------
    threshold : float
        Root of ``p0 N(t; m0, s0) = p1 N(t; m1, s1)`` between the means (see
        :func:`gaussian_threshold`). Values above it belong to class 1 (the higher mean).
    params : dict
        ``means``, ``stds``, ``priors`` (each a 2-tuple, class 0 first), ``log_likelihood``
        (mean per sample), ``iterations``, ``converged``.
    """
    x = _real(_host(values, "values"), "values")
    _finite(x, "values")
    m = _mask(mask, x.shape)
    x = (x[m] if m is not None else x).ravel()
    if x.size < 4:
        raise ValidationError("values", f"needs at least 4 samples for a 2-class fit, got {x.size}")
    if np.ptp(x) == 0:
        raise ValidationError("values", "are constant; cannot fit two classes")
    fixed = priors is not None
    if fixed:
        p = np.asarray(priors, dtype=np.float64).reshape(-1)
        if p.size != 2 or np.any(p <= 0) or not np.isclose(p.sum(), 1.0):
            raise ValidationError("priors", f"must be two positive numbers summing to 1, got {priors!r}")
    t0 = x.mean()
    lo, hi = x[x <= t0], x[x > t0]
    mu = np.array([lo.mean(), hi.mean()])
    floor = 1e-6 * np.ptp(x)
    sd = np.array([max(lo.std(), floor), max(hi.std(), floor)])
    pr = p.copy() if fixed else np.array([lo.size, hi.size], dtype=np.float64) / x.size
    ll_old = -np.inf
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        l0 = np.log(pr[0]) + _gauss_logpdf(x, mu[0], sd[0])
        l1 = np.log(pr[1]) + _gauss_logpdf(x, mu[1], sd[1])
        mx = np.maximum(l0, l1)
        lse = mx + np.log(np.exp(l0 - mx) + np.exp(l1 - mx))
        r1 = np.exp(l1 - lse)
        r0 = 1.0 - r1
        ll = float(lse.mean())
        n0, n1 = r0.sum(), r1.sum()
        if n0 <= 0 or n1 <= 0:
            raise ValidationError("values", "EM collapsed to one class; the data are not bimodal")
        mu = np.array([np.dot(r0, x) / n0, np.dot(r1, x) / n1])
        sd = np.sqrt(np.array([np.dot(r0, (x - mu[0]) ** 2) / n0, np.dot(r1, (x - mu[1]) ** 2) / n1]))
        sd = np.maximum(sd, floor)
        if not fixed:
            pr = np.array([n0, n1]) / x.size
        if abs(ll - ll_old) < tol:
            converged = True
            break
        ll_old = ll
    if mu[0] > mu[1]:
        mu, sd, pr = mu[::-1], sd[::-1], pr[::-1]
    thr = gaussian_threshold(mu, sd, pr)
    params = {"means": (float(mu[0]), float(mu[1])), "stds": (float(sd[0]), float(sd[1])),
              "priors": (float(pr[0]), float(pr[1])), "log_likelihood": ll,
              "iterations": it, "converged": converged}
    return thr, params


def ber(reference, test, *, mask=None, test_fit: str = "em", return_details: bool = False):
    """Bit error rate ``(FP + FN) / (TP + TN + FP + FN)`` after EM binarisation (APT paper).

    The reference is binarised at the threshold of a two-class Gaussian mixture fitted to it
    by EM (:func:`em_threshold`), which also gives the class priors ``p(0), p(1)``. The test
    is binarised by Bayes' rule ``p(x|0) p(0) = p(x|1) p(1)`` with those reference priors:

    * ``test_fit="em"`` (default): the class densities ``p(x|c)`` are Gaussians fitted to the
      test values by EM with the priors held fixed at the reference's. This follows the APT
      paper (only the priors are carried over from the gold standard) and tolerates a test
      volume on a different intensity scale (FBP vs. network output).
    * ``test_fit="reference"``: the reference's Gaussians are used as well, so the test is cut
      at the reference threshold (test and reference must share a scale).

    Boolean (or 0/1) inputs are taken as already binary and are not thresholded.

    Parameters
    ----------
    reference, test : arrays of equal shape (2D or 3D), real
    mask : bool array, optional
        Voxels to evaluate (and to fit on), e.g. excluding ambiguous layers.
    test_fit : {"em", "reference"}
    return_details : bool
        Also return a dict with thresholds, fitted parameters, the confusion counts and DSC.

    Returns
    -------
    float, or (float, dict)
    """
    if test_fit not in ("em", "reference"):
        raise ValidationError("test_fit", f"must be 'em' or 'reference', got {test_fit!r}")
    R = _host(reference, "reference")
    T = _host(test, "test")
    if R.shape != T.shape:
        raise ValidationError("test", f"has shape {T.shape} but reference has shape {R.shape}")
    m = _mask(mask, R.shape)
    details: dict = {}
    if R.dtype == bool or (R.dtype.kind in "iu" and np.all((R == 0) | (R == 1))):
        Rb = R.astype(bool)
        p1 = float(Rb[m].mean() if m is not None else Rb.mean())
        if p1 in (0.0, 1.0) and test_fit == "em" and T.dtype != bool:
            raise ValidationError("reference", "has a single class; priors are undefined")
        ref_params = {"priors": (1.0 - p1, p1)}
        t_ref = None
    else:
        t_ref, ref_params = em_threshold(R, mask=m)
        Rb = _real(R, "reference") > t_ref
    details.update(reference_threshold=t_ref, reference_params=ref_params)
    if T.dtype == bool or (T.dtype.kind in "iu" and np.all((T == 0) | (T == 1))):
        Tb = T.astype(bool)
        t_test, test_params = None, None
    elif test_fit == "reference":
        if t_ref is None:
            raise ValidationError("test_fit", "'reference' needs a non-binary reference")
        t_test, test_params = t_ref, ref_params
        Tb = _real(T, "test") > t_test
    else:
        t_test, test_params = em_threshold(T, priors=ref_params["priors"], mask=m)
        Tb = _real(T, "test") > t_test
    details.update(test_threshold=t_test, test_params=test_params)
    c = confusion(Rb, Tb, m)
    n = c["TP"] + c["TN"] + c["FP"] + c["FN"]
    val = (c["FP"] + c["FN"]) / n
    if return_details:
        den = 2 * c["TP"] + c["FN"] + c["FP"]
        details.update(confusion=c, dsc=1.0 if den == 0 else 2.0 * c["TP"] / den,
                       reference_binary=Rb, test_binary=Tb)
        return val, details
    return val


# ----------------------------------------------------------------------------- Fourier shells
def half_bit_threshold(n):
    """Half-bit threshold (van Heel & Schatz 2005) for shells of ``n`` Fourier voxels."""
    s = np.sqrt(np.asarray(n, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (0.2071 + 1.9102 / s) / (1.2071 + 0.9102 / s)


def one_bit_threshold(n):
    """One-bit threshold (van Heel & Schatz 2005) for shells of ``n`` Fourier voxels."""
    s = np.sqrt(np.asarray(n, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (0.5 + 2.4142 / s) / (1.5 + 1.4142 / s)


def _freq_grids(shape, spacing):
    """Unshifted FFT frequency grids (1/m) per axis, broadcastable."""
    grids = []
    for ax, (n, d) in enumerate(zip(shape, spacing)):
        f = np.fft.fftfreq(n, d)
        sh = [1] * len(shape)
        sh[ax] = n
        grids.append(f.reshape(sh))
    return grids


def _shell_index(shape, spacing):
    """Shell index per Fourier voxel (unshifted order), shell width, number of shells."""
    grids = _freq_grids(shape, spacing)
    q = np.sqrt(sum(g ** 2 for g in grids))
    dq = max(1.0 / (n * d) for n, d in zip(shape, spacing))  # coarsest frequency step
    q_nyq = min(0.5 / d for d in spacing)
    nshell = int(np.floor(q_nyq / dq + 1e-9)) + 1
    idx = np.rint(q / dq).astype(np.int64)
    return idx, dq, nshell


def _threshold_label(t):
    if isinstance(t, str):
        key = t.lower().replace("_", "-")
        if key not in ("half-bit", "one-bit"):
            raise ValidationError("thresholds", f"unknown threshold {t!r}: use 'half-bit', "
                                                "'one-bit' or a number")
        return key.replace("-", "_"), key
    v = float(t)
    if not 0 < v < 1:
        raise ValidationError("thresholds", f"a constant threshold must be in (0, 1), got {t!r}")
    return f"{v:g}", v


def _threshold_curve(kind, n):
    if kind == "half-bit":
        return half_bit_threshold(n)
    if kind == "one-bit":
        return one_bit_threshold(n)
    return np.full(np.shape(n), float(kind))


def resolution(curve, threshold, q=None) -> tuple[float, float]:
    """First crossing of a correlation curve below a threshold, linearly interpolated.

    Parameters
    ----------
    curve : array (nshell,) or DataArray over ``q``
        FRC/FSC values; shell 0 (q = 0) is skipped.
    threshold : float or array (nshell,)
        Constant or per-shell threshold.
    q : array (nshell,), optional
        Shell frequencies (taken from the DataArray's ``q`` coordinate if omitted).

    Returns
    -------
    (q_cross, resolution) : (float, float)
        Crossing frequency (1/m or 1/pixel) and its inverse (m or pixels). Both NaN if the
        curve stays above the threshold up to the last shell.
    """
    if q is None:
        if isinstance(curve, xr.DataArray) and "q" in curve.coords:
            q = curve["q"].values
        else:
            raise ValidationError("q", "is required for a plain-array curve")
    c = np.asarray(curve, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    t = np.broadcast_to(np.asarray(threshold, dtype=np.float64), c.shape)
    d = c - t
    for k in range(1, c.size):
        if np.isfinite(d[k]) and d[k] < 0:
            if k == 1 or not np.isfinite(d[k - 1]):
                qc = q[k]
            else:
                f = d[k - 1] / (d[k - 1] - d[k])
                qc = q[k - 1] + f * (q[k] - q[k - 1])
            return float(qc), float(1.0 / qc) if qc > 0 else float("inf")
    return float("nan"), float("nan")


def _shell_correlation(x1, x2, ndim, pixel_size, thresholds, names, kind):
    A = _host(x1, names[0])
    B = _host(x2, names[1])
    if A.shape != B.shape:
        raise ValidationError(names[1], f"has shape {B.shape} but {names[0]} has shape {A.shape}")
    if A.ndim != ndim:
        raise ValidationError(names[0], f"must be {ndim}-D, got shape {A.shape}")
    if min(A.shape) < 4:
        raise ValidationError(names[0], f"has shape {A.shape}; need at least 4 samples per axis")
    _finite(A, names[0])
    _finite(B, names[1])
    spacing, physical = _spacing(x1, ndim, pixel_size)
    F1 = np.fft.fftn(A.astype(np.complex128 if np.iscomplexobj(A) else np.float64))
    F2 = np.fft.fftn(B.astype(np.complex128 if np.iscomplexobj(B) else np.float64))
    idx, dq, nshell = _shell_index(A.shape, spacing)
    keep = idx < nshell
    ii = idx[keep]
    num = np.bincount(ii, weights=np.real(F1 * np.conj(F2))[keep], minlength=nshell)
    p1 = np.bincount(ii, weights=(np.abs(F1) ** 2)[keep], minlength=nshell)
    p2 = np.bincount(ii, weights=(np.abs(F2) ** 2)[keep], minlength=nshell)
    cnt = np.bincount(ii, minlength=nshell).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        curve = num / np.sqrt(p1 * p2)
    q = np.arange(nshell) * dq
    unit = "1/m" if physical else "1/pixel"
    coords = {"q": ("q", q, {"units": unit, "long_name": "spatial frequency"}),
              "n_voxels": ("q", cnt, {"long_name": "Fourier voxels in shell"})}
    attrs = {"kind": kind, "units": "1", "pixel_size": spacing,
             "resolution_units": "m" if physical else "pixel", "thresholds": []}
    for t in thresholds:
        label, key = _threshold_label(t)
        tc = _threshold_curve(key, cnt)
        coords["threshold_" + label] = ("q", tc, {"long_name": f"{key} threshold"})
        qc, res = resolution(curve, tc, q)
        attrs["q_" + label] = qc
        attrs["resolution_" + label] = res
        attrs["thresholds"].append(label)
    return xr.DataArray(curve, dims=("q",), coords=coords, name=kind, attrs=attrs)


def frc(image1, image2, *, pixel_size=None, thresholds=("half-bit", 0.143)) -> xr.DataArray:
    """Fourier ring correlation of two 2D images (e.g. independent half-data reconstructions).

    ``FRC(q) = Re sum F1 F2* / sqrt(sum |F1|^2 sum |F2|^2)`` over rings of width
    ``dq = max_i 1 / (n_i d_i)`` (the coarsest frequency step; rings are centred on
    ``k dq`` and reach the smallest Nyquist frequency). Complex images are allowed.

    Parameters
    ----------
    image1, image2 : array (y, x), equal shapes
    pixel_size : float or (dy, dx), optional
        Metres; default from DataArray coords, else 1 (frequencies in 1/pixel).
    thresholds : sequence of {"half-bit", "one-bit", float}

    Returns
    -------
    xarray.DataArray (q,)
        The curve over ``q`` (1/m) with coords ``n_voxels`` (pixels per ring) and
        ``threshold_<label>`` (``threshold_half_bit``, ``threshold_0.143``, ...); attrs
        ``q_<label>`` (crossing, 1/m) and ``resolution_<label>`` (m; = 1/q, NaN if the curve
        never crosses).
    """
    return _shell_correlation(image1, image2, 2, pixel_size, thresholds, ("image1", "image2"), "frc")


def fsc(vol1, vol2, *, pixel_size=None, thresholds=("half-bit", 0.143)) -> xr.DataArray:
    """Fourier shell correlation of two 3D volumes (z, y, x); see :func:`frc` for the output."""
    return _shell_correlation(vol1, vol2, 3, pixel_size, thresholds, ("vol1", "vol2"), "fsc")


# ----------------------------------------------------------------------------- spectra
def _image_for_spectrum(x, name):
    a = _host(x, name)
    if a.ndim not in (2, 3):
        raise ValidationError(name, f"must be 2-D or 3-D, got shape {a.shape}")
    if a.size == 0:
        raise ValidationError(name, "is empty")
    _finite(a, name)
    if a.dtype == bool:
        a = a.astype(np.float64)
    return a


def psd(volume_or_image, *, pixel_size=None, log: bool = False, subtract_mean: bool = False,
        window: str | None = None) -> xr.DataArray:
    """Power spectral density of a 2D image or 3D volume (periodogram), zero frequency centred.

    ``PSD(q) = (prod_i d_i / N) |DFT(x)(q)|^2`` so that ``sum PSD * prod dq_i`` equals the
    mean square of ``x`` (Parseval): units of ``x^2 m^ndim``.

    Parameters
    ----------
    volume_or_image : array (y, x) or (z, y, x), real or complex
    pixel_size : float or per-axis sequence (m), optional
    log : bool
        Return ``log10(PSD)``; exact zeros are set to the smallest positive value first.
    subtract_mean : bool
        Remove the mean before the transform (suppresses the zero-frequency peak).
    window : {None, "hann"}
        Optional separable Hann taper against edge leakage (the PSD is then of the tapered
        data, rescaled by the window's mean square).

    Returns
    -------
    xarray.DataArray (qz, qy, qx) or (qy, qx)
        Coordinates in 1/m (or 1/pixel), zero at index ``n // 2``.
    """
    a = _image_for_spectrum(volume_or_image, "volume_or_image")
    spacing, physical = _spacing(volume_or_image, a.ndim, pixel_size)
    x = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)
    if subtract_mean:
        x = x - x.mean()
    norm = 1.0
    if window is not None:
        if window != "hann":
            raise ValidationError("window", f"must be None or 'hann', got {window!r}")
        w = np.ones(1)
        for ax, n in enumerate(x.shape):
            sh = [1] * x.ndim
            sh[ax] = n
            w = w * np.hanning(n).reshape(sh)
        x = x * w
        norm = float(np.mean(w ** 2))
    F = np.fft.fftshift(np.fft.fftn(x))
    p = (np.abs(F) ** 2) * (np.prod(spacing) / x.size) / norm
    if log:
        pos = p[p > 0]
        p = np.log10(np.maximum(p, pos.min() if pos.size else 1e-300))
    dims = _qdims(volume_or_image, a.ndim)
    unit = "1/m" if physical else "1/pixel"
    coords = {d: (d, (np.arange(n) - n // 2) / (n * s), {"units": unit})
              for d, n, s in zip(dims, a.shape, spacing)}
    return xr.DataArray(p, dims=dims, coords=coords, name="psd",
                        attrs={"kind": "psd", "log10": int(log), "pixel_size": spacing,
                               "units": "log10(x^2 m^ndim)" if log else "x^2 m^ndim"})


def psd_cuts(volume_or_image, *, pixel_size=None, log: bool = False, planes: bool = False,
             subtract_mean: bool = False) -> xr.Dataset:
    """Central k-space cuts of the PSD: lines along each axis, or central planes.

    Parameters
    ----------
    volume_or_image : array (y, x) / (z, y, x), or a DataArray returned by :func:`psd`
        (recognised by ``attrs["kind"] == "psd"``; then no transform is done).
    planes : bool
        3D only: return the central planes (``qy_qx`` at qz=0, ``qz_qx`` at qy=0, ``qz_qy``
        at qx=0; variables prefixed ``psd_``) instead of lines (ADePt-style k_y-k_z and k_x-k_y cuts).

    Returns
    -------
    xarray.Dataset
        Lines: one variable per axis, ``psd_qz``, ``psd_qy``, ``psd_qx``; e.g.
        ``ds["psd_qx"]`` is PSD(qz=0, qy=0, qx) over ``qx``. Planes: ``psd_qy_qx`` (at qz=0),
        ``psd_qz_qx`` (qy=0), ``psd_qz_qy`` (qx=0).
    """
    if isinstance(volume_or_image, xr.DataArray) and volume_or_image.attrs.get("kind") == "psd":
        P = volume_or_image
        if log and not P.attrs.get("log10"):
            P = np.log10(P.where(P > 0, float(P.where(P > 0).min())))
    else:
        P = psd(volume_or_image, pixel_size=pixel_size, log=log, subtract_mean=subtract_mean)
    centre = {d: P.sizes[d] // 2 for d in P.dims}
    out = {}
    if planes:
        if P.ndim != 3:
            raise ValidationError("planes", "needs a 3-D volume")
        for d in P.dims:
            keep = [e for e in P.dims if e != d]
            out["psd_" + "_".join(keep)] = P.isel({d: centre[d]}, drop=True)
    else:
        for d in P.dims:
            out["psd_" + d] = P.isel({e: centre[e] for e in P.dims if e != d}, drop=True)
    return xr.Dataset(out, attrs=dict(P.attrs, kind="psd_cuts"))


def radial_profile(array, *, spacing=None, bin_width=None, center=None) -> xr.DataArray:
    """Azimuthal (spherical) average of a 2D/3D array about its centre.

    Parameters
    ----------
    array : array (..,) 2-D or 3-D, or a DataArray (e.g. from :func:`psd`, whose centred
        ``q`` coordinates give the radius)
    spacing : float or per-axis sequence, optional
        Sample spacing in the radius units (default from coords, else 1).
    bin_width : float, optional
        Shell width; default the coarsest axis spacing.
    center : sequence of float, optional
        Centre in index units; default ``n // 2`` per axis (the zero of centred coords).

    Returns
    -------
    xarray.DataArray (r,)
        Mean over each shell ``[k w - w/2, k w + w/2)``; coord ``n_samples``.
    """
    a = _image_for_spectrum(array, "array")
    a = np.real(a) if not np.iscomplexobj(a) else np.abs(a)
    sp, _ = _spacing(array, a.ndim, spacing, name="spacing")
    if center is None:
        center = [n // 2 for n in a.shape]
    if len(center) != a.ndim:
        raise ValidationError("center", f"needs {a.ndim} values")
    r2 = 0.0
    for ax, (n, c, s) in enumerate(zip(a.shape, center, sp)):
        sh = [1] * a.ndim
        sh[ax] = n
        r2 = r2 + (((np.arange(n) - c) * s) ** 2).reshape(sh)
    r = np.sqrt(r2)
    w = float(bin_width) if bin_width is not None else float(max(sp))
    if not w > 0:
        raise ValidationError("bin_width", f"must be positive, got {bin_width!r}")
    idx = np.rint(r / w).astype(np.int64).ravel()
    nb = int(idx.max()) + 1
    s = np.bincount(idx, weights=a.ravel().astype(np.float64), minlength=nb)
    cnt = np.bincount(idx, minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        prof = s / cnt
    return xr.DataArray(prof, dims=("r",),
                        coords={"r": np.arange(nb) * w, "n_samples": ("r", cnt)},
                        name="radial_profile", attrs={"bin_width": w})


def _running_median(y, width):
    from scipy.ndimage import median_filter

    return median_filter(y, size=width, mode="nearest")


def directional_resolution(volume, *, pixel_size=None, k_sigma: float = 5.0,
                           baseline_width: int = 9, amplitude: bool = True,
                           subtract_mean: bool = True) -> xr.Dataset:
    """Resolution along each axis from the last significant peak of the projected spectrum.

    Following the MSPT paper: the spectral amplitude ``|F(q)|`` of the volume (image) is
    integrated over all axes but one, giving a 1D profile ``P_i(q_i)`` per axis. Positive
    and negative frequencies are averaged (``P(q) = (P(+q) + P(-q)) / 2``, q > 0). A sample
    ``q_p`` is a **significant peak** when

    1. it is a strict local maximum of ``P`` (larger than both neighbours), and
    2. ``P(q_p) - B(q_p) > k_sigma * sigma``, where ``B`` is the running median of ``P``
       over ``baseline_width`` samples (the smooth background / noise floor) and ``sigma``
       is the robust sample-to-sample noise of ``P``:
       ``sigma = 1.4826 * MAD(diff(P)) / sqrt(2)`` (the median absolute deviation of the
       first differences removes the smooth background; isolated peaks barely move it).

    The resolution along the axis is ``1 / q_p`` for the highest-frequency significant
    peak (NaN if there is none). This suits crystalline samples (Bragg peaks); for
    amorphous samples use :func:`fsc`.

    Parameters
    ----------
    volume : array (z, y, x) or (y, x), real or complex
    pixel_size : float or per-axis sequence (m), optional
    k_sigma : float
        Significance level in robust standard deviations (default 5).
    baseline_width : int
        Running-median window (odd, samples) of the background estimate.
    amplitude : bool
        Integrate the amplitude ``|F|`` (default, as in the paper) or the power ``|F|^2``.
    subtract_mean : bool
        Remove the mean first (default), so the q = 0 term does not dominate.

    Returns
    -------
    xarray.Dataset
        One variable per axis, ``profile_<q-dim>`` over that q (q >= 0), with ``baseline_*``
        and ``peaks_*`` (bool); attrs ``resolution_<dim>`` (m or pixel), ``q_<dim>``,
        ``sigma_<dim>``, ``k_sigma``.
    """
    a = _image_for_spectrum(volume, "volume")
    spacing, physical = _spacing(volume, a.ndim, pixel_size)
    if k_sigma <= 0:
        raise ValidationError("k_sigma", f"must be positive, got {k_sigma}")
    bw = int(baseline_width)
    if bw < 3 or bw % 2 == 0:
        raise ValidationError("baseline_width", f"must be an odd integer >= 3, got {baseline_width}")
    x = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)
    if subtract_mean:
        x = x - x.mean()
    F = np.abs(np.fft.fftn(x))
    if not amplitude:
        F = F ** 2
    dims = _qdims(volume, a.ndim)
    in_dims = [d[1:] if d.startswith("q") else d for d in dims]
    ds = xr.Dataset(attrs={"k_sigma": float(k_sigma), "amplitude": int(amplitude),
                           "resolution_units": "m" if physical else "pixel"})
    for ax, (d, dn, n, s) in enumerate(zip(dims, in_dims, a.shape, spacing)):
        other = tuple(i for i in range(a.ndim) if i != ax)
        prof = F.sum(axis=other)
        nh = n // 2
        pos = prof[1:nh + 1].copy()
        neg = prof[::-1][:nh]  # frequencies -1, -2, ..., -nh
        pos[:neg.size] = 0.5 * (pos[:neg.size] + neg)
        q = np.arange(1, nh + 1) / (n * s)
        base = _running_median(pos, bw)
        res = pos - base
        dif = np.diff(pos)
        sigma = 1.4826 * np.median(np.abs(dif - np.median(dif))) / np.sqrt(2) if dif.size else 0.0
        peak = np.zeros(pos.size, bool)
        if pos.size >= 3:
            peak[1:-1] = (pos[1:-1] > pos[:-2]) & (pos[1:-1] > pos[2:])
        sig = peak & (res > k_sigma * sigma) if sigma > 0 else peak & (res > 0)
        unit = "1/m" if physical else "1/pixel"
        ds["profile_" + d] = xr.DataArray(pos, dims=(d,), coords={d: (d, q, {"units": unit})})
        ds["baseline_" + d] = xr.DataArray(base, dims=(d,), coords={d: q})
        ds["peaks_" + d] = xr.DataArray(sig, dims=(d,), coords={d: q})
        if sig.any():
            qp = float(q[np.nonzero(sig)[0][-1]])
            ds.attrs["q_" + dn], ds.attrs["resolution_" + dn] = qp, 1.0 / qp
        else:
            ds.attrs["q_" + dn], ds.attrs["resolution_" + dn] = float("nan"), float("nan")
        ds.attrs["sigma_" + dn] = float(sigma)
    return ds
