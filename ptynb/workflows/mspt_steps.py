"""Array-level helpers of the MSPT workflow (numpy in, numpy out; no xarray, no I/O).

Used by :mod:`ptynb.workflows.mspt`, which wraps them in labelled steps. Conventions:

* volumes are ``(z, y, x)`` arrays, images ``(y, x)``; atom positions are ``(N, 3)`` arrays of
  **(x, y, z)** in metres (the :mod:`ptynb.physics.atoms` column order); peak positions found
  in a volume are returned in the same (x, y, z) metre order;
* rotations are :func:`ptynb.physics.atoms.rotation_matrix` matrices acting on (x, y, z)
  column vectors (active, right-handed), which are the same rotations as
  :mod:`ptynb.tomo.geometry`'s (z, y, x) matrices.
"""
from __future__ import annotations

import math

import numpy as np

from ..data import ValidationError

__all__ = [
    "gauge_free",
    "fourier_sparsity",
    "denoise_bm3d",
    "radial_spectrum",
    "local_maxima",
    "spinel_co_sites",
    "register_lattice",
    "match_sites",
]


# ----------------------------------------------------------------------------- gauges
def gauge_free(values: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``values`` (angle, k) minus its projection on an orthonormal ``basis`` (m, angle, k).

    Used to compare per-view poses up to the invisible global rotation/translation
    (:func:`ptynb.tomo.rotation_gauge`, :func:`ptynb.tomo.rigid_null_space`).
    """
    x = np.asarray(values, dtype=np.float64).copy()
    for b in np.asarray(basis, dtype=np.float64):
        x -= np.sum(x * b) * b
    return x


# ----------------------------------------------------------------------------- denoising
def fourier_sparsity(image: np.ndarray, keep: float) -> np.ndarray:
    """Keep the ``keep`` fraction of largest-magnitude Fourier coefficients of a real image.

    The MSPT paper's Fourier-sparsity constraint: a single-grain crystal has a sparse
    spectrum (Bragg peaks plus the particle's shape transform), noise a flat one, so
    zeroing the weakest coefficients removes mostly noise. The zero frequency is always
    kept. ``keep`` in (0, 1]; 1 returns the image unchanged.
    """
    keep = float(keep)
    if not 0.0 < keep <= 1.0:
        raise ValidationError("sparsity_keep", f"must lie in (0, 1], got {keep!r}")
    a = np.asarray(image, dtype=np.float64)
    if keep >= 1.0:
        return a.astype(np.float32)
    F = np.fft.rfft2(a)
    mag = np.abs(F)
    # rfft stores the +-q pairs once (except the first/last columns): a quantile of the stored
    # half is the quantile of the full spectrum to within a few coefficients
    thr = np.quantile(mag, 1.0 - keep)
    F = np.where(mag >= thr, F, 0.0)
    F[0, 0] = np.fft.rfft2(a)[0, 0]
    return np.fft.irfft2(F, s=a.shape).astype(np.float32)


def bm3d_available() -> bool:
    """True when the ``bm3d`` package imports."""
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


def noise_sigma(image: np.ndarray) -> float:
    """Robust estimate of white-noise standard deviation (median absolute deviation of the
    finest-scale diagonal differences, Donoho's estimator on a Haar detail band)."""
    a = np.asarray(image, dtype=np.float64)
    ny, nx = (a.shape[0] // 2) * 2, (a.shape[1] // 2) * 2
    a = a[:ny, :nx]
    d = (a[0::2, 0::2] - a[0::2, 1::2] - a[1::2, 0::2] + a[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(d - np.median(d))) / 0.6745)


def denoise_bm3d(image: np.ndarray, sigma: float | None = None) -> tuple[np.ndarray, float]:
    """BM3D denoising of one real image (the ``bm3d`` package, Dabov et al. 2007).

    ``sigma`` (image units) defaults to :func:`noise_sigma` of the image. Returns
    ``(denoised float32, sigma used)``.

    Raises
    ------
    ImportError
        If ``bm3d`` is not installed (``pip install bm3d``).
    """
    try:
        import bm3d
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("denoise='bm3d' needs the bm3d package (pip install bm3d); "
                          "or use denoise='gaussian' / 'none'") from exc
    a = np.asarray(image, dtype=np.float64)
    s = noise_sigma(a) if sigma is None else float(sigma)
    if not s > 0:
        return a.astype(np.float32), 0.0
    out = bm3d.bm3d(a, sigma_psd=s, stage_arg=bm3d.BM3DStages.ALL_STAGES)
    return np.asarray(out, dtype=np.float32), s


def radial_spectrum(images: np.ndarray, pixel_size: float, n_bins: int | None = None):
    """Azimuthally averaged power spectrum of an image stack (angle, y, x), mean over angles.

    Returns ``(q in 1/m, power)``; the mean of each image is removed first.
    """
    a = np.asarray(images, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    ny, nx = a.shape[-2:]
    a = a - a.mean(axis=(-2, -1), keepdims=True)
    P = np.mean(np.abs(np.fft.fft2(a)) ** 2, axis=0) / (ny * nx)
    qy = np.fft.fftfreq(ny, pixel_size)
    qx = np.fft.fftfreq(nx, pixel_size)
    q = np.sqrt(qy[:, None] ** 2 + qx[None, :] ** 2)
    nb = int(n_bins or min(ny, nx) // 2)
    qmax = 0.5 / pixel_size
    idx = np.minimum((q / qmax * nb).astype(int), nb)
    s = np.bincount(idx.ravel(), P.ravel(), minlength=nb + 1)[:nb]
    c = np.bincount(idx.ravel(), minlength=nb + 1)[:nb]
    return (np.arange(nb) + 0.5) * qmax / nb, s / np.maximum(c, 1)


# ----------------------------------------------------------------------------- atoms
def local_maxima(vol: np.ndarray, voxel_size: float, origin, *, min_distance: float,
                 threshold: float, smooth: float = 0.5, mask=None):
    """Local maxima of a volume (z, y, x) above ``threshold`` (volume units), sub-voxel.

    A voxel is a peak when it is the maximum of the cube of half-width ``min_distance``
    (m) around it (after a Gaussian smoothing of ``smooth`` voxels) and inside ``mask``.
    The position is refined by a parabola through the neighbours along each axis.

    Returns
    -------
    positions : ndarray (P, 3) of (x, y, z) in metres (``origin`` = (z0, y0, x0) of voxel 0)
    values : ndarray (P,) smoothed peak heights
    """
    from scipy import ndimage as ndi

    v = np.asarray(vol, dtype=np.float64)
    if smooth > 0:
        v = ndi.gaussian_filter(v, smooth, mode="nearest")
    size = 2 * max(1, int(round(min_distance / voxel_size))) + 1
    mx = ndi.maximum_filter(v, size=size, mode="nearest")
    pk = (v == mx) & (v > threshold)
    if mask is not None:
        pk &= np.asarray(mask, bool)
    # not on the faces (no parabola there)
    pk[[0, -1], :, :] = pk[:, [0, -1], :] = pk[:, :, [0, -1]] = False
    idx = np.argwhere(pk)
    if idx.size == 0:
        return np.zeros((0, 3)), np.zeros(0)
    sub = np.zeros(idx.shape, dtype=np.float64)
    for ax in range(3):
        lo = idx.copy()
        hi = idx.copy()
        lo[:, ax] -= 1
        hi[:, ax] += 1
        f0 = v[tuple(idx.T)]
        fm = v[tuple(lo.T)]
        fp = v[tuple(hi.T)]
        den = fm - 2 * f0 + fp
        off = np.where(den < 0, 0.5 * (fm - fp) / np.where(den < 0, den, -1.0), 0.0)
        sub[:, ax] = idx[:, ax] + np.clip(off, -0.5, 0.5)
    zyx = np.asarray(origin, dtype=np.float64)[None, :] + sub * voxel_size
    return zyx[:, ::-1].copy(), v[tuple(idx.T)]


def spinel_co_sites(lattice_constant: float, extent: float, oxygen_u: float = 0.2631):
    """Co sites (8a + 16d) of a spinel lattice filling a cube of half-width ``extent`` (m)
    about the origin, with a lattice point at the origin. Returns (N, 3) (x, y, z) m."""
    from ..physics.phantoms import spinel_unit_cell

    frac, nums, _ = spinel_unit_cell(oxygen_u)
    co = frac[nums == 27]
    n = int(np.ceil(extent / lattice_constant)) + 1
    r = np.arange(-n, n)
    cells = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    pos = ((cells[:, None, :] + co[None, :, :]) * lattice_constant).reshape(-1, 3)
    return pos[np.all(np.abs(pos) <= extent, axis=1)]


def _sample(vol, origin, voxel_size, xyz):
    from scipy import ndimage as ndi

    zyx = (np.asarray(xyz)[:, ::-1] - np.asarray(origin)[None, :]) / voxel_size
    return ndi.map_coordinates(vol, zyx.T, order=1, mode="constant", cval=0.0)


def register_lattice(vol: np.ndarray, voxel_size: float, origin, *, lattice_constant: float,
                     support=None, oxygen_u: float = 0.2631, rotation0=(0.0, 0.0, 0.0),
                     max_rotation: float = 5.0):
    """Register the spinel Co sublattice to a volume: rotation + translation.

    The score is the mean of the (lightly smoothed) volume sampled at the model's Co sites
    inside ``support``. The translation is first found on a grid over one primitive cell
    (the F-centred Co sublattice repeats every (0, 1/2, 1/2) a), then rotation (extrinsic
    x-y-z Euler angles in degrees, starting at ``rotation0`` and allowed to move by
    ``max_rotation``) and translation are refined together by Nelder-Mead.

    Returns
    -------
    dict with ``rotation_deg`` (3,), ``translation`` (3,) (x, y, z) m, ``sites`` (N, 3) the
    fitted Co sites inside the support (x, y, z) m, ``score``.
    """
    from scipy import ndimage as ndi
    from scipy import optimize

    from ..physics.atoms import rotation_matrix

    v = ndi.gaussian_filter(np.asarray(vol, dtype=np.float64), 0.5)
    v = v / (np.abs(v).max() or 1.0)
    shape = np.asarray(v.shape)
    ext = float(np.max(shape) * voxel_size) * 0.9
    base = spinel_co_sites(lattice_constant, ext, oxygen_u)
    sup = np.ones(v.shape, bool) if support is None else np.asarray(support, bool)

    def sites(params):
        R = rotation_matrix(params[:3], "xyz")
        p = base @ R.T + params[3:6]
        zyx = np.round((p[:, ::-1] - np.asarray(origin)[None, :]) / voxel_size).astype(int)
        ok = np.all((zyx >= 0) & (zyx < shape[None, :]), axis=1)
        ok[ok] = sup[tuple(zyx[ok].T)]
        return p[ok]

    def score(params):
        p = sites(params)
        if len(p) < 4:
            return 0.0
        return -float(np.mean(_sample(v, origin, voxel_size, p)))

    a = float(lattice_constant)
    # the Co sublattice is F-centred: [0, a/2)^2 x [0, a) holds one representative of every
    # translation modulo the lattice (volume a^3/4, a primitive cell)
    grid = np.arange(0.0, a / 2, voxel_size / 2)
    grid_z = np.arange(0.0, a, voxel_size / 2)
    best = (np.inf, None)
    r0 = np.asarray(rotation0, float)
    for tx in grid:
        for ty in grid:
            for tz in grid_z:
                s = score(np.concatenate([r0, [tx, ty, tz]]))
                if s < best[0]:
                    best = (s, np.concatenate([r0, [tx, ty, tz]]))
    res = optimize.minimize(score, best[1], method="Nelder-Mead",
                            options=dict(xatol=1e-3 * voxel_size, fatol=1e-7, maxiter=600,
                                         initial_simplex=_simplex(best[1], 0.5, voxel_size / 2)))
    p = res.x if res.fun <= best[0] else best[1]
    if np.any(np.abs(p[:3] - r0) > max_rotation):
        p = best[1]
    return {"rotation_deg": p[:3].copy(), "translation": p[3:6].copy(), "sites": sites(p),
            "score": -float(score(p))}


def _simplex(x0, d_rot, d_tr):
    x0 = np.asarray(x0, float)
    pts = [x0]
    for i in range(6):
        e = x0.copy()
        e[i] += d_rot if i < 3 else d_tr
        pts.append(e)
    return np.asarray(pts)


def match_sites(sites: np.ndarray, peaks: np.ndarray, radius: float):
    """Assign peaks to sites one to one (nearest first) within ``radius`` (m).

    Returns ``(found bool (N,), matched peak index (N,) or -1, displacement (N, 3) peak - site
    (x, y, z) m, NaN where missing)``. A peak is used at most once, so two sites that would
    claim the same maximum count one as missing (as in the MSPT paper's procedure).
    """
    from scipy.spatial import cKDTree

    sites = np.asarray(sites, float).reshape(-1, 3)
    peaks = np.asarray(peaks, float).reshape(-1, 3)
    n = len(sites)
    found = np.zeros(n, bool)
    which = np.full(n, -1)
    disp = np.full((n, 3), np.nan)
    if n == 0 or len(peaks) == 0:
        return found, which, disp
    tree = cKDTree(peaks)
    d, j = tree.query(sites, k=min(4, len(peaks)), distance_upper_bound=radius)
    d = np.atleast_2d(d.T).T if d.ndim == 1 else d
    j = np.atleast_2d(j.T).T if j.ndim == 1 else j
    pairs = [(d[i, k], i, j[i, k]) for i in range(n) for k in range(d.shape[1]) if np.isfinite(d[i, k])]
    pairs.sort()
    used = set()
    for dist, i, jj in pairs:
        if found[i] or jj in used:
            continue
        found[i] = True
        which[i] = jj
        used.add(jj)
        disp[i] = peaks[jj] - sites[i]
    return found, which, disp


# ----------------------------------------------------------------------------- resolution
def cone_resolution(vol: np.ndarray, voxel_size: float, *, k_sigma: float = 5.0, cone_deg: float = 45.0,
                    window: bool = True) -> dict:
    """Directional resolution from the significant spectral peaks in a cone about each axis.

    The MSPT paper takes the last peak of the spectrum projected onto each axis; on a small
    volume (tens of voxels) the integration over the other two axes buries the Bragg peaks
    in the noise of the whole plane, so here the peaks are found in 3D first: local maxima
    (3 x 3 x 3) of ``|F|`` of the (Hann-windowed, mean-free) volume that exceed the spectrum's
    median by ``k_sigma`` robust standard deviations (1.4826 MAD). Along axis ``a`` the
    resolution is ``1 / max |q_a|`` over the significant peaks whose direction lies within
    ``cone_deg`` of that axis (NaN if none; the default 45 deg counts every peak nearer to the
    axis than to the plane normal to it).

    Returns ``{"resolution_z": m, "resolution_y": m, "resolution_x": m, "n_peaks": int}``.
    """
    from scipy import ndimage as ndi

    v = np.asarray(vol, dtype=np.float64)
    v = v - v.mean()
    if window:
        for ax, n in enumerate(v.shape):
            sh = [1, 1, 1]
            sh[ax] = n
            v = v * np.hanning(n).reshape(sh)
    F = np.abs(np.fft.fftshift(np.fft.fftn(v)))
    qs = [(np.arange(n) - n // 2) / (n * voxel_size) for n in v.shape]
    Q = np.meshgrid(*qs, indexing="ij")
    qn = np.sqrt(sum(q ** 2 for q in Q))
    med = np.median(F)
    mad = 1.4826 * np.median(np.abs(F - med))
    pk = (F == ndi.maximum_filter(F, size=3, mode="wrap")) & (F > med + k_sigma * mad)
    pk &= qn > 2.5 / (min(v.shape) * voxel_size)
    out = {"n_peaks": int(pk.sum())}
    c = math.cos(math.radians(cone_deg))
    for ax, name in enumerate("zyx"):
        qa = np.abs(Q[ax])
        sel = pk & (qa >= c * qn)
        out[f"resolution_{name}"] = float(1.0 / qa[sel].max()) if sel.any() else float("nan")
    return out


def fwhm_1d(profile: np.ndarray, spacing: float) -> tuple[float, bool]:
    """Full width at half maximum of a 1-D profile about its maximum (zero baseline), by
    linear interpolation of the half-maximum crossings. Returns ``(width, bounded)``: where a
    side never drops below half the maximum the profile's end is used (``bounded`` False,
    the width is then a lower bound)."""
    p = np.asarray(profile, dtype=np.float64)
    i = int(np.argmax(p))
    h = p[i] / 2.0
    bounded = True
    j = i
    while j > 0 and p[j - 1] > h:
        j -= 1
    if j == 0:
        left, bounded = 0.0 - 0.5, False
    else:
        left = j - 1 + (h - p[j - 1]) / (p[j] - p[j - 1])
    k = i
    while k < p.size - 1 and p[k + 1] > h:
        k += 1
    if k == p.size - 1:
        right, bounded = p.size - 1 + 0.5, False
    else:
        right = k + (p[k] - h) / (p[k] - p[k + 1])
    return float((right - left) * spacing), bounded


def peak_fwhm(vol: np.ndarray, index: np.ndarray, spacing, axis: int, half_window: int | None = None):
    """Median FWHM (m) along ``axis`` of the profiles through the voxels ``index`` (P, 3) of
    a (z, y, x) volume with per-axis ``spacing``; also the fraction of bounded widths.
    ``half_window`` limits each profile to that many voxels either side (default: whole axis)."""
    v = np.asarray(vol, dtype=np.float64)
    sp = np.broadcast_to(np.asarray(spacing, float), (3,))
    widths, ok = [], []
    for idx in np.asarray(index, int).reshape(-1, 3):
        sl = [int(idx[0]), int(idx[1]), int(idx[2])]
        lo, hi = 0, v.shape[axis]
        if half_window is not None:
            lo, hi = max(0, sl[axis] - half_window), min(v.shape[axis], sl[axis] + half_window + 1)
        sl[axis] = slice(lo, hi)
        w, b = fwhm_1d(v[tuple(sl)], sp[axis])
        widths.append(w)
        ok.append(b)
    if not widths:
        return float("nan"), 0.0
    return float(np.median(widths)), float(np.mean(ok))
