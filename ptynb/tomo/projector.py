"""Parallel-beam projector (forward ray transform) with an exact adjoint.

Discretisation
--------------
Joseph's method. For each view and each detector pixel the ray is sampled once per voxel
plane along the *dominant* volume axis ``k`` (the axis most parallel to the ray, in voxel
units); at each plane the volume is interpolated bilinearly in the two other axes (zero
outside the volume) and the sample is weighted by the ray length between planes,
``dt = voxel_size[k] / |cos(ray, axis k)|`` (metres). So the projections are line integrals in
metres times the volume's value. The forward operator is a *gather* with these weights; the
adjoint is a *scatter-add* of the same weights (``bincount``), so ``<A x, y> = <x, A^T y>``
holds to rounding by construction, for real and complex data.

Geometry and coordinates follow :mod:`ptynb.tomo.geometry`: volume coordinates are the
sample frame, detector coordinates the lab (y, x) plane, both in metres.

Fast path
---------
For plain tomography (rotation about y, no poses) whose detector rows coincide with the
volume's y rows, each y row is an independent 2D problem with the *same* matrix. The
operator then precomputes that 2D Joseph matrix once per geometry (``scipy.sparse`` CSR,
float32 or float64; ``cupyx.scipy.sparse`` on the GPU) and applies it to all rows at once as
sparse @ dense-matrix products. The matrix is built directly in CSR form by the worker
threads, one block of consecutive views each: the planes each ray crosses inside the volume
are found analytically, so every row length is known and the arrays are written in place
(no compaction, no format conversion) by a compiled one-pass kernel
(:mod:`ptynb.tomo._kernels`, numba). A numpy fill that gives bitwise the same matrix is used
where numba is missing or env ``PTYNB_TOMO_NUMBA=0`` (numba's per-process start, import and
loading the cached kernel, about 0.3-0.6 s, is not worth it for a short script that builds
one small operator). Products are split over threads by these row blocks (scipy's sparse
kernels release the GIL); the adjoint uses the blocks' transposes (CSC views, no copies). On
the GPU the blocks are stacked into one cupy CSR matrix whose transpose is converted on the
first adjoint call. On the CPU the first application of a geometry to a 2D slice (one or two
dense columns), and every application of an operator too large for the operator cache, runs
matrix-free instead: compiled kernels (:func:`ptynb.tomo._kernels.slice_forward` and
``slice_adjoint``) evaluate the same Joseph weights on the fly, so a one-off FBP of a slice
builds no matrix and a 1024^2 x 1000-view geometry never allocates its 16 GB of nonzeros
(env ``PTYNB_TOMO_MATRIX_FREE=0`` always uses the matrix). The general path (laminography, poses, other detectors) caches a sparse
matrix built from the per-view Joseph weights when it is small enough, else evaluates them
per view on the fly. All paths use the same weights (to
float64 rounding of the sample positions).
"""
from __future__ import annotations

import itertools
import math
import sys
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np
import xarray as xr

from .. import data as _data
from ..backend import cpu_workers, get_xp, is_gpu_array, to_host, xp_of
from ..data import ValidationError
from .geometry import Geometry

__all__ = ["Projector", "backproject", "project", "projector_for", "volume_grid_from_attrs"]

_MAX_ANGLE = 360.0
#: general path: precompute a sparse matrix when its estimated nnz is below this
#: (env PTYNB_TOMO_SPARSE_NNZ), else compute the Joseph weights on the fly per view.
_SPARSE_MAX_NNZ = int(float(__import__("os").environ.get("PTYNB_TOMO_SPARSE_NNZ", 6e7)))
#: fast path: fill the slice matrix with the compiled kernel (env PTYNB_TOMO_NUMBA=0: numpy)
_USE_NUMBA = __import__("os").environ.get("PTYNB_TOMO_NUMBA", "1").strip() != "0"
#: CPU fast path: apply the slice operator matrix-free with the compiled kernels (no matrix to
#: build or keep); env PTYNB_TOMO_MATRIX_FREE=0 uses the cached CSR matrix instead
_MATRIX_FREE = _USE_NUMBA and \
    __import__("os").environ.get("PTYNB_TOMO_MATRIX_FREE", "1").strip() != "0"
_RAYS: OrderedDict = OrderedDict()
_RAYS_LOCK = threading.Lock()


# ============================================================================ helpers
def _triple(v, name):
    a = np.broadcast_to(np.asarray(v, dtype=np.float64), (3,)).copy()
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValidationError(name, f"must be positive and finite, got {v!r}")
    return a


def _real_dtype(dtype):
    return np.float64 if np.dtype(dtype) in (np.float64, np.complex128) else np.float32


def _result_dtype(arr_dtype, op_dtype):
    rd = np.result_type(arr_dtype, op_dtype)
    if rd.kind == "c":
        return np.complex128 if rd == np.complex128 else np.complex64
    return np.float64 if rd == np.float64 else np.float32


class Projector:
    """Plain-array ray transform ``A`` (volume -> projections) and its adjoint, for hot loops.

    Parameters
    ----------
    geometry : Geometry
        Views (angles, tilt, poses). See :mod:`ptynb.tomo.geometry` for the convention.
    volume_shape : (nz, ny, nx)
    detector_shape : (nv, nu), optional
        Detector rows and columns. Default ``(ny, nx)`` for tilt 90; for laminography the
        smallest centred detector that sees the whole volume from every view.
    voxel_size : float or (dz, dy, dx)
        Voxel size (m).
    pixel_size : float or (pv, pu), optional
        Detector pixel (m); default ``(dy, dx)``.
    vol_origin : (z0, y0, x0), optional
        Coordinates (m) of voxel (0, 0, 0); default centred (zero at n // 2).
    det_origin : (v0, u0), optional
        Coordinates (m) of detector pixel (0, 0); default centred (zero at n // 2).
    dtype : float32 (default) or float64
        Precision of the operator weights; complex inputs use the matching complex type.

    Notes
    -----
    ``forward(vol)`` takes (nz, ny, nx) and returns (angle, nv, nu); ``adjoint(proj)`` the
    reverse. Both accept numpy or cupy arrays (result on the same device), real or complex.
    """

    def __init__(self, geometry: Geometry, volume_shape, detector_shape=None, voxel_size=1.0,
                 pixel_size=None, vol_origin=None, det_origin=None, dtype=np.float32):
        if not isinstance(geometry, Geometry):
            raise ValidationError("geometry", f"must be a ptynb.tomo.Geometry, got {type(geometry).__name__}")
        self.geometry = geometry
        vs = tuple(int(n) for n in volume_shape)
        if len(vs) != 3 or min(vs) < 1:
            raise ValidationError("volume_shape", f"must be three positive sizes (nz, ny, nx), got {volume_shape!r}")
        self.volume_shape = vs
        self.voxel_size = _triple(voxel_size, "voxel_size")
        if vol_origin is None:
            vol_origin = [-(n // 2) * d for n, d in zip(vs, self.voxel_size)]
        self.vol_origin = np.asarray(vol_origin, dtype=np.float64).reshape(3)
        if pixel_size is None:
            pixel_size = self.voxel_size[1:]
        self.pixel_size = np.broadcast_to(np.asarray(pixel_size, dtype=np.float64), (2,)).copy()
        if not np.all(np.isfinite(self.pixel_size)) or np.any(self.pixel_size <= 0):
            raise ValidationError("pixel_size", f"must be positive and finite, got {pixel_size!r}")
        if detector_shape is None:
            detector_shape = self._default_detector_shape()
        ds = tuple(int(n) for n in detector_shape)
        if len(ds) != 2 or min(ds) < 1:
            raise ValidationError("detector_shape", f"must be two positive sizes (nv, nu), got {detector_shape!r}")
        self.detector_shape = ds
        if det_origin is None:
            det_origin = [-(n // 2) * p for n, p in zip(ds, self.pixel_size)]
        self.det_origin = np.asarray(det_origin, dtype=np.float64).reshape(2)
        self.dtype = _real_dtype(dtype)
        self._rot = geometry.rotations()
        self._shift_m = geometry.shifts_px() * self.pixel_size[None, :]
        tol = 1e-6 * self.voxel_size[1]
        self.fast = bool(
            geometry.is_plain_tomography and ds[0] == vs[1]
            and abs(self.pixel_size[0] - self.voxel_size[1]) < tol
            and abs(self.det_origin[0] - self.vol_origin[1]) < tol
        )

    # ------------------------------------------------------------------ shapes
    @property
    def shape_in(self):
        return self.volume_shape

    @property
    def shape_out(self):
        return (self.geometry.n_angles,) + self.detector_shape

    def _default_detector_shape(self):
        _, ny, nx = self.volume_shape
        if self.geometry.tilt == 90.0:
            return (ny, nx)
        lo = self.vol_origin - self.voxel_size / 2
        hi = self.vol_origin + (np.asarray(self.volume_shape) - 0.5) * self.voxel_size
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                            for c in (lo[2], hi[2])])
        lab = np.einsum("aij,cj->aci", self.geometry.rotations(), corners)
        ext_v = np.abs(lab[..., 1]).max() / self.pixel_size[0]
        ext_u = np.abs(lab[..., 2]).max() / self.pixel_size[1]
        return (int(2 * math.ceil(ext_v)), int(2 * math.ceil(ext_u)))

    def subset(self, index) -> Projector:
        """Operator for a subset of the views (same grids)."""
        return Projector(self.geometry.subset(index), self.volume_shape, self.detector_shape,
                         self.voxel_size, self.pixel_size, self.vol_origin, self.det_origin,
                         self.dtype)

    # ------------------------------------------------------------------ checks
    def _check(self, arr, shape, name):
        if tuple(arr.shape) != tuple(shape):
            raise ValidationError(name, f"has shape {tuple(arr.shape)}; the projector expects {tuple(shape)}")
        if arr.dtype.kind not in "fcbiu":
            raise ValidationError(name, f"has non-numeric dtype {arr.dtype}")

    # ------------------------------------------------------------------ Joseph weights
    def _view_samples(self, xp, i, rdt):
        """Joseph samples of view ``i`` that touch the volume.

        Returns ``ray`` (S,) flat detector-pixel index, ``idx`` (4, S) flat voxel index and
        ``w`` (4, S) weights (bilinear weight times the step length ``dt`` in metres);
        corners outside the volume have weight 0 and index 0.
        """
        _, ny, nx = self.volume_shape
        shape = np.array(self.volume_shape)
        strides = np.array([ny * nx, nx, 1])
        M = self._rot[i].T  # lab -> sample
        d = M[:, 0]  # beam direction in the sample frame
        ev, eu = M[:, 1], M[:, 2]
        dir_i = d / self.voxel_size
        k = int(np.argmax(np.abs(dir_i)))
        a, b = [m for m in range(3) if m != k]
        nv, nu = self.detector_shape
        v = self.det_origin[0] + np.arange(nv) * self.pixel_size[0] - self._shift_m[i, 0]
        u = self.det_origin[1] + np.arange(nu) * self.pixel_size[1] - self._shift_m[i, 1]

        def base(m):
            return xp.asarray((((ev[m] * v[:, None] + eu[m] * u[None, :]) - self.vol_origin[m])
                               / self.voxel_size[m]).reshape(-1), dtype=np.float64)

        bk, ba, bb = base(k), base(a), base(b)
        j = xp.arange(shape[k], dtype=np.float64)
        t = (j[None, :] - bk[:, None]) / dir_i[k]  # (rays, nj)
        ca = ba[:, None] + dir_i[a] * t
        cb = bb[:, None] + dir_i[b] * t
        keep = (ca > -1) & (ca < shape[a]) & (cb > -1) & (cb < shape[b])
        ray, jsel = xp.nonzero(keep)
        ca = ca[ray, jsel]
        cb = cb[ray, jsel]
        dt = 1.0 / abs(dir_i[k])
        fa = xp.floor(ca)
        fb = xp.floor(cb)
        wa1 = ca - fa
        wb1 = cb - fb
        fa = fa.astype(np.int64)
        fb = fb.astype(np.int64)
        base_idx = jsel.astype(np.int64) * int(strides[k]) + fa * int(strides[a]) + fb * int(strides[b])
        S = int(ray.size)
        idx = xp.empty((4, S), dtype=np.int64)
        w = xp.empty((4, S), dtype=rdt)
        c = 0
        for da, wa in ((0, 1.0 - wa1), (1, wa1)):
            va = (fa + da >= 0) & (fa + da < shape[a])
            for db, wb in ((0, 1.0 - wb1), (1, wb1)):
                ok = va & (fb + db >= 0) & (fb + db < shape[b])
                w[c] = xp.where(ok, wa * wb * dt, 0.0)
                idx[c] = xp.where(ok, base_idx + (da * int(strides[a]) + db * int(strides[b])), 0)
                c += 1
        return ray, idx, w

    # ------------------------------------------------------------------ sparse fast path
    _cache: ClassVar[OrderedDict] = OrderedDict()
    _cache_lock = threading.Lock()
    _cache_max = 32
    #: total nonzeros kept in the operator cache (float32 + int32 -> 8 bytes each)
    _cache_max_nnz = int(float(__import__("os").environ.get("PTYNB_TOMO_CACHE_NNZ", 1.2e8)))

    def _matrix_key(self, rdt, gpu):
        g = self.geometry
        return (g.angles.tobytes(), self.volume_shape[0], self.volume_shape[2], self.detector_shape[1],
                tuple(self.voxel_size), tuple(self.pixel_size), tuple(self.vol_origin[[0, 2]]),
                float(self.det_origin[1]), np.dtype(rdt).str, gpu, cpu_workers())

    def _slice_rays(self, runs=True):
        """Rays of the 2D (z, x) slice matrix, vectorised over views.

        Same Joseph sampling as :meth:`_view_samples`, specialised to the z-x plane: the ray of
        detector column ``u`` at view ``i`` crosses the voxel planes ``j = 0 .. nj - 1`` of its
        dominant axis ``k[i]`` (0: z, 1: x) at ``c = c0[i, u] + s[i] * j`` along the other axis
        ``m = 1 - k`` (voxel index units, float64) and is interpolated linearly there, each
        sample weighted by the step ``dt[i]`` (m).

        Returns ``k`` (angle,), ``s`` (angle,), ``c0`` (angle, nu), ``dt`` (angle,); ``ja``,
        ``jb`` (angle, nu) int64: the planes ``ja <= j < jb`` where ``-1 < c < n_m``, i.e.
        where the sample touches the volume (``c`` is monotone in ``j``); and ``lo``, ``hi``:
        pairs of (angle, nu) int64 arrays, the planes ``[start, stop)`` (at one end of
        ``[ja, jb)``) where ``floor(c) = -1``, resp. ``floor(c) = n_m - 1``. Every ``c`` is
        evaluated as ``c0 + s * j`` in float64, the same expression as in the matrix build.
        """
        nz, _, nx = self.volume_shape
        nu = self.detector_shape[1]
        n = self.geometry.n_angles
        vs2 = self.voxel_size[[0, 2]]
        or2 = self.vol_origin[[0, 2]]
        u = self.det_origin[1] + np.arange(nu) * self.pixel_size[1]
        rows = np.arange(n)
        Mt = np.transpose(self._rot, (0, 2, 1))  # lab -> sample
        dir_i = Mt[:, [0, 2], 0] / vs2  # beam direction, voxels per metre, (n, 2)
        eu = Mt[:, [0, 2], 2]  # detector u axis in the sample frame
        k = np.argmax(np.abs(dir_i), axis=1)
        m = 1 - k
        dk, dm = dir_i[rows, k], dir_i[rows, m]
        bk = (eu[rows, k][:, None] * u[None, :] - or2[k][:, None]) / vs2[k][:, None]
        bm = (eu[rows, m][:, None] * u[None, :] - or2[m][:, None]) / vs2[m][:, None]
        s = dm / dk
        c0 = bm - s[:, None] * bk
        dt = 1.0 / np.abs(dk)
        # flat over (angle, u)
        C0 = c0.reshape(-1)
        S = np.repeat(s, nu)
        NJ = np.repeat(np.where(k == 0, nz, nx), nu)
        NM = np.repeat(np.where(k == 0, nx, nz), nu).astype(np.float64)
        UP = S >= 0

        def first(pred, edge, ceil):
            # smallest j in [0, nj] with pred(c(j)), pred false then true along j: the root of
            # c(j) = edge as a guess, checked, and bisected where it is wrong
            def at(j, r):
                jj = np.minimum(np.maximum(j, 0), NJ[r] - 1).astype(np.float64)
                return pred(C0[r] + S[r] * jj, UP[r], NM[r])

            g = _root_guess(edge(UP, NM), C0, S, NJ, ceil)
            g[S == 0] = np.where(at(0, S == 0), 0, NJ[S == 0])
            every = slice(None)
            bad = np.flatnonzero(((g < NJ) & ~at(g, every)) | ((g > 0) & at(g - 1, every)))
            if bad.size:
                lo, hi = np.zeros(bad.size, dtype=np.int64), NJ[bad].astype(np.int64)
                while np.any(lo < hi):
                    mid = (lo + hi) // 2
                    t = at(mid, bad) & (lo < hi)
                    hi = np.where(t, mid, hi)
                    lo = np.where(t | (lo >= hi), lo, mid + 1)
                g[bad] = lo
            return g.reshape(n, nu)

        # the sample touches the volume where -1 < c < nm
        ja = first(lambda c, up, nm: np.where(up, c > -1.0, c < nm),
                   lambda up, nm: np.where(up, -1.0, nm), False)
        jb = np.maximum(first(lambda c, up, nm: np.where(up, c >= nm, c <= -1.0),
                              lambda up, nm: np.where(up, nm, -1.0), True), ja)
        if not runs:  # the compiled kernels find the edge samples themselves
            return k, s, c0, dt, ja, jb
        # runs at the ends of [ja, jb): f = -1 (c < 0) and f = nm - 1 (c >= nm - 1)
        j0 = np.clip(first(lambda c, up, nm: np.where(up, c >= 0.0, c < 0.0),
                           lambda up, nm: 0.0, True), ja, jb)
        j1 = np.clip(first(lambda c, up, nm: np.where(up, c >= nm - 1.0, c < nm - 1.0),
                           lambda up, nm: nm - 1.0, True), ja, jb)
        up = (s >= 0)[:, None]
        lo = (np.where(up, ja, j0), np.where(up, j0, jb))
        hi = (np.where(up, j1, ja), np.where(up, jb, j1))
        return k, s, c0, dt, ja, jb, lo, hi

    def _build_blocks(self, rdt, nblocks=1, compiled=None):
        """The 2D slice matrix (rows (angle, u), columns (z, x) = ``z * nx + x``, weights in
        metres) as CSR blocks of consecutive views.

        Every sample of ray ``u`` (planes ``ja <= j < jb``, see :meth:`_slice_rays`) stores the
        pair voxel ``f = floor(c)``, weight ``(1 - frac) dt`` and voxel ``f + 1``, weight
        ``frac dt``, next to each other; a voxel just outside the volume (at its edge) is kept
        as an explicit zero on a valid column. So every row length is known beforehand and the
        CSR arrays are written in place, without compaction. ``nblocks`` blocks with about
        equal nonzeros are built by the worker threads, one block each: by the compiled
        one-pass kernel :func:`ptynb.tomo._kernels.slice_csr` (releases the GIL), or, if
        ``compiled`` is False, by :func:`_fill_slice_numpy` (the same float64 arithmetic, so
        bitwise the same matrix; numpy releases the GIL too). Default: compiled if numba is
        importable and env ``PTYNB_TOMO_NUMBA`` is not ``0``. The arrays are allocated with
        ``np.empty`` (each entry is written exactly once); the kernel needs no temporaries, so
        the matrix's own arrays (8 bytes per nonzero for float32 weights and int32 indices)
        are the only memory touched.
        """
        import scipy.sparse as sp

        if compiled is None:
            compiled = _USE_NUMBA
        if compiled:  # imports numba (not at all with PTYNB_TOMO_NUMBA=0)
            from . import _kernels

            compiled = _kernels.available()
        nz, _, nx = self.volume_shape
        nu = self.detector_shape[1]
        n = self.geometry.n_angles
        rays = self._slice_rays(runs=not compiled)  # the kernel needs no edge runs
        k, s, c0, dt, ja, jb = rays[:6]
        lens = jb - ja  # (angle, nu) samples per ray
        vc = np.zeros(n + 1, dtype=np.int64)  # samples before view i
        np.cumsum(lens.sum(axis=1), out=vc[1:])
        nblocks = max(1, min(int(nblocks), n))
        cuts = np.searchsorted(vc, vc[-1] * np.arange(1, nblocks) / nblocks).tolist()
        edges = sorted({0, n, *(min(max(int(c), 1), n) for c in cuts)})
        ncol = nz * nx
        if compiled:
            k, s, c0, dt, ja, jb = (np.ascontiguousarray(a, dtype=d) for a, d in
                                    zip((k, s, c0, dt, ja, jb), (np.int64, np.float64, np.float64,
                                                                 np.float64, np.int64, np.int64)))

        def build(v0, v1):
            nnz = 2 * int(vc[v1] - vc[v0])
            idt = _index_dtype(nnz, ncol)
            data = np.empty(nnz, dtype=rdt)
            ind = np.empty(nnz, dtype=idt)
            indptr = np.empty(nu * (v1 - v0) + 1, dtype=idt)
            if compiled:
                _kernels.slice_csr(k, s, c0, dt, ja, jb, nz, nx, v0, v1, data, ind, indptr)
            else:
                indptr[0] = 0
                np.cumsum(2 * lens[v0:v1].reshape(-1), out=indptr[1:])
                _fill_slice_numpy(rays, nz, nx, v0, v1, data, ind)
            return sp.csr_matrix((data, ind, indptr), shape=(nu * (v1 - v0), ncol))

        groups = list(itertools.pairwise(edges))
        if len(groups) == 1:
            return [build(*groups[0])]
        return list(_pool(len(groups)).map(lambda g: build(*g), groups))

    def _matrices(self, xp, rdt):
        gpu = xp is not np
        key = self._matrix_key(rdt, gpu)
        with Projector._cache_lock:
            hit = Projector._cache.get(key)
            if hit is not None:
                Projector._cache.move_to_end(key)
                return hit
        nb = _build_threads()
        if self.geometry.n_angles * self.detector_shape[1] * max(self.volume_shape[0], self.volume_shape[2]) \
                < _THREAD_MIN_WORK:
            nb = 1
        return _cache_matrix(key, self._build_blocks(rdt, nb), gpu)

    def matrix(self):
        """The 2D slice matrix (scipy CSR, rows (angle, u), columns (z, x), weights in metres) of
        the fast path. Neighbours just outside the volume edge are stored as explicit zeros on
        a repeated column (about 1 % of the entries); call ``sum_duplicates()`` for canonical
        form."""
        if not self.fast:
            raise ValueError("this geometry has no separable 2D matrix (not plain tomography)")
        return _stack_rows(self._build_blocks(self.dtype, _build_threads()), np)

    def _kernel_rays(self):
        """The ray arrays of :meth:`_slice_rays` typed for the compiled kernels, plus the
        cumulative sample count per view (for balanced view blocks); cached per geometry."""
        key = self._matrix_key(np.float64, False)[:-3]  # the geometry only
        with _RAYS_LOCK:
            hit = _RAYS.get(key)
            if hit is not None:
                _RAYS.move_to_end(key)
                return hit
        k, s, c0, dt, ja, jb = self._slice_rays(runs=False)
        rays = tuple(np.ascontiguousarray(a, dtype=d) for a, d in
                     zip((k, s, c0, dt, ja, jb), (np.int64, np.float64, np.float64, np.float64,
                                                  np.int64, np.int64)))
        vc = np.zeros(self.geometry.n_angles + 1, dtype=np.int64)
        np.cumsum((jb - ja).sum(axis=1), out=vc[1:])
        with _RAYS_LOCK:
            _RAYS[key] = (rays, vc)
            while len(_RAYS) > 16:
                _RAYS.popitem(last=False)
        return rays, vc

    def _kernel_apply(self, arr, transpose):
        """CPU fast path without a matrix: the compiled kernels
        (:func:`ptynb.tomo._kernels.slice_forward` / ``slice_adjoint``) evaluate the Joseph
        weights on the fly (the same float64 sample positions as the CSR matrix, weights
        rounded to the data's real dtype once) and apply them to all y rows at once. Work is
        split over the worker threads by blocks of views (forward; adjoint on one column) or
        by blocks of columns (adjoint), so no two threads write the same output."""
        from . import _kernels

        rdt = self._rdt(arr)
        out_dt = _result_dtype(arr.dtype, rdt)
        cplx = np.dtype(out_dt).kind == "c"
        nz, ny, nx = self.volume_shape
        na, nu = self.geometry.n_angles, self.detector_shape[1]
        rays, vc = self._kernel_rays()
        X = np.ascontiguousarray(np.transpose(arr, (0, 2, 1)).astype(out_dt, copy=False))
        X = X.reshape(-1, ny)
        if cplx:
            X = X.view(rdt)
        ncol = X.shape[1]
        nt = _build_threads()
        if int(vc[-1]) * ncol < _THREAD_MIN_WORK:
            nt = 1
        nchunk = max(-(-ncol // _COL_CHUNK), min(nt, ncol))
        qs = [(int(q[0]), int(q[-1]) + 1) for q in np.array_split(np.arange(ncol), nchunk)]

        def view_blocks(nb):
            cuts = np.searchsorted(vc, vc[-1] * np.arange(1, nb) / nb).tolist()
            edges = sorted({0, na, *(min(max(int(c), 1), na) for c in cuts)})
            return list(itertools.pairwise(edges))

        def run(fn, units):
            if len(units) == 1:
                return [fn(units[0])]
            return list(_pool(len(units)).map(fn, units))

        if not transpose:
            Y = np.empty((na * nu, ncol), dtype=rdt)

            def fwd(vb):
                for q0, q1 in qs:
                    _kernels.slice_forward(*rays, nz, nx, vb[0], vb[1], q0, q1, X, Y)

            run(fwd, view_blocks(nt))
            out = Y
            shape = (na, nu, ny)
        else:
            Y = np.zeros((nz * nx, ncol), dtype=rdt)
            if len(qs) >= nt:  # columns in parallel: every thread all views

                def adj(qb):
                    for q0, q1 in qb:
                        _kernels.slice_adjoint(*rays, nz, nx, 0, na, q0, q1, X, Y)

                run(adj, [qs[t::nt] for t in range(min(nt, len(qs)))])
            else:  # fewer columns than threads: views in parallel, private sums
                blocks = view_blocks(nt)
                accs = [Y] + [np.zeros_like(Y) for _ in blocks[1:]]

                def adj_v(t):
                    for q0, q1 in qs:
                        _kernels.slice_adjoint(*rays, nz, nx, blocks[t][0], blocks[t][1],
                                               q0, q1, X, accs[t])

                run(adj_v, list(range(len(blocks))))
                for a in accs[1:]:
                    Y += a
            out = Y
            shape = (nz, nx, ny)
        if cplx:
            out = out.view(out_dt)
        return np.ascontiguousarray(np.transpose(out.reshape(shape), (0, 2, 1)))

    def _use_kernels(self, arr) -> bool:
        """CPU: apply matrix-free (compiled kernels) instead of through the cached CSR matrix?

        Building the matrix costs about as much as three applications with it, and on one or
        two dense columns (a 2D slice, real or complex) the matrix-free kernels are as fast as
        the matrix. So they are used for the first application of a geometry on at most two
        columns (one FBP of a slice never builds a matrix; an iterative solver builds it on its
        second call), and always when the matrix would not fit the operator cache (it would be
        rebuilt on every call, at 8 bytes per nonzero: 16 GB for 1024^2 x 1000 views). On
        many columns a cached matrix is 2-3x faster per application than the kernels.
        """
        if not _MATRIX_FREE:
            return False
        from . import _kernels

        if not _kernels.available():
            return False
        rdt = self._rdt(arr)
        if self._matrix_key(rdt, False) in Projector._cache:
            return False
        with _RAYS_LOCK:
            seen = self._matrix_key(np.float64, False)[:-3] in _RAYS
        ncol = self.volume_shape[1] * (2 if np.iscomplexobj(arr) else 1)
        if ncol <= 2 and not seen:
            return True
        nz, _, nx = self.volume_shape
        nnz = 2 * self.geometry.n_angles * self.detector_shape[1] * max(nz, nx)  # upper bound
        return nnz > Projector._cache_max_nnz

    def _fast_apply(self, arr, transpose):
        xp = xp_of(arr)
        if xp is np and self._use_kernels(arr):
            return self._kernel_apply(arr, transpose)
        rdt = np.float64 if (self.dtype == np.float64 or arr.dtype in (np.float64, np.complex128)) \
            else np.float32
        ent = self._matrices(xp, rdt)
        out_dt = _result_dtype(arr.dtype, rdt)
        cplx = np.dtype(out_dt).kind == "c"
        nz, ny, nx = self.volume_shape
        na, nu = self.geometry.n_angles, self.detector_shape[1]
        if not transpose:  # (z, y, x) -> (z*x, y)
            X = xp.ascontiguousarray(xp.transpose(arr, (0, 2, 1)).astype(out_dt, copy=False))
            X = X.reshape(nz * nx, ny)
        else:  # (angle, v, u) -> (angle*u, v)
            X = xp.ascontiguousarray(xp.transpose(arr, (0, 2, 1)).astype(out_dt, copy=False))
            X = X.reshape(na * nu, ny)
        if cplx:
            X = X.view(rdt)
        ncol = X.shape[1]

        def apply(Xc):
            if transpose:
                return _blocks_matmul_T(ent.adj(), Xc, xp)
            return _blocks_matmul(ent.fwd, Xc, xp)

        step = ncol if xp is not np else _COL_CHUNK  # keep the dense block cache-sized
        if step >= ncol:
            Y = apply(X)
        else:
            Y = np.empty(((nz * nx) if transpose else (na * nu), ncol), dtype=X.dtype)
            for c0 in range(0, ncol, step):
                Y[:, c0:c0 + step] = apply(np.ascontiguousarray(X[:, c0:c0 + step]))
        if cplx:
            Y = Y.view(out_dt)
        if not transpose:
            return xp.ascontiguousarray(xp.transpose(Y.reshape(na, nu, ny), (0, 2, 1)))
        return xp.ascontiguousarray(xp.transpose(Y.reshape(nz, nx, ny), (0, 2, 1)))

    # ------------------------------------------------------------------ operators
    def _general_matrix(self, xp, rdt):
        """The cached general-path operator (:class:`_SparseOp`: CSR row blocks of the
        (angle*nv*nu, nz*ny*nx) matrix, one block of consecutive views per worker thread), or
        None if too large."""
        n_vox = int(np.prod(self.volume_shape))
        est = 4 * self.geometry.n_angles * n_vox * 1.5
        if est > _SPARSE_MAX_NNZ or n_vox >= 2**31:
            return None
        gpu = xp is not np
        key = ("general", self.geometry.key(), self.volume_shape, self.detector_shape,
               tuple(self.voxel_size), tuple(self.pixel_size), tuple(self.vol_origin),
               tuple(self.det_origin), np.dtype(rdt).str, gpu, cpu_workers())
        with Projector._cache_lock:
            hit = Projector._cache.get(key)
            if hit is not None:
                Projector._cache.move_to_end(key)
                return hit
        import scipy.sparse as sp

        nrays = self.detector_shape[0] * self.detector_shape[1]

        def build(views):  # CSR rows of consecutive views
            rows, cols, vals = [], [], []
            for i in views:
                ray, idx, w = self._view_samples(np, i, rdt)
                nz_ = w != 0
                rows.append(np.broadcast_to(ray + (i - views[0]) * nrays, w.shape)[nz_].astype(np.int32))
                cols.append(idx[nz_].astype(np.int32))
                vals.append(w[nz_])
            return sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                 shape=(len(views) * nrays, n_vox)).tocsr()

        nb = max(1, min(_build_threads(), self.geometry.n_angles))
        groups = [g for g in np.array_split(np.arange(self.geometry.n_angles), nb) if g.size]
        blocks = list(_pool(len(groups)).map(build, groups)) if len(groups) > 1 \
            else [build(groups[0])]
        return _cache_matrix(key, blocks, gpu)

    def _sparse_apply(self, ent, arr, transpose, rdt):
        xp = xp_of(arr)
        out_dt = _result_dtype(arr.dtype, rdt)
        cplx = np.dtype(out_dt).kind == "c"
        X = xp.ascontiguousarray(arr.astype(out_dt, copy=False)).reshape(-1, 1)
        if cplx:
            X = X.view(rdt)
        Y = _blocks_matmul_T(ent.adj(), X, xp) if transpose else _blocks_matmul(ent.fwd, X, xp)
        if cplx:
            Y = xp.ascontiguousarray(Y).view(out_dt)
        return Y.reshape(self.volume_shape if transpose else self.shape_out)

    def _rdt(self, arr):
        return np.float64 if (self.dtype == np.float64 or arr.dtype in (np.float64, np.complex128)) \
            else np.float32

    def forward(self, vol):
        """Projections (angle, nv, nu) of a volume (nz, ny, nx): line integrals (m x value)."""
        self._check(vol, self.volume_shape, "volume")
        if self.fast:
            return self._fast_apply(vol, transpose=False)
        xp = xp_of(vol)
        rdt = self._rdt(vol)
        ent = self._general_matrix(xp, rdt)
        if ent is not None:
            return self._sparse_apply(ent, vol, False, rdt)
        out_dt = _result_dtype(vol.dtype, rdt)
        cplx = np.dtype(out_dt).kind == "c"
        f = vol.astype(out_dt, copy=False).reshape(-1)
        nrays = self.detector_shape[0] * self.detector_shape[1]
        out = xp.zeros((self.geometry.n_angles, nrays), dtype=out_dt)
        def one(i):
            ray, idx, w = self._view_samples(xp, i, rdt)
            vals = (w * f[idx]).sum(axis=0)
            if cplx:
                out[i] = (xp.bincount(ray, weights=vals.real, minlength=nrays)
                          + 1j * xp.bincount(ray, weights=vals.imag, minlength=nrays))
            else:
                out[i] = xp.bincount(ray, weights=vals, minlength=nrays)

        _map_views(one, self.geometry.n_angles, xp)
        return out.reshape(self.shape_out)

    def adjoint(self, proj):
        """Exact adjoint ``A^T`` (volume (nz, ny, nx)) of projections (angle, nv, nu)."""
        self._check(proj, self.shape_out, "projections")
        if self.fast:
            return self._fast_apply(proj, transpose=True)
        xp = xp_of(proj)
        rdt = self._rdt(proj)
        ent = self._general_matrix(xp, rdt)
        if ent is not None:
            return self._sparse_apply(ent, proj, True, rdt)
        out_dt = _result_dtype(proj.dtype, rdt)
        cplx = np.dtype(out_dt).kind == "c"
        n = int(np.prod(self.volume_shape))
        p = proj.astype(out_dt, copy=False).reshape(self.geometry.n_angles, -1)
        nthreads = 1 if xp is not np else max(1, min(cpu_workers(), self.geometry.n_angles, 8))
        accs = [[xp.zeros(n, dtype=np.float64), xp.zeros(n, dtype=np.float64) if cplx else None]
                for _ in range(nthreads)]

        def part(k):
            acc_r, acc_i = accs[k]
            for i in range(k, self.geometry.n_angles, nthreads):
                ray, idx, w = self._view_samples(xp, i, rdt)
                wp = w * p[i][ray][None, :]
                if cplx:
                    acc_r += xp.bincount(idx.reshape(-1), weights=wp.real.reshape(-1), minlength=n)
                    acc_i += xp.bincount(idx.reshape(-1), weights=wp.imag.reshape(-1), minlength=n)
                else:
                    acc_r += xp.bincount(idx.reshape(-1), weights=wp.reshape(-1), minlength=n)

        if nthreads == 1:
            part(0)
        else:
            list(_pool(nthreads).map(part, range(nthreads)))
        acc_r = sum(a[0] for a in accs[1:]) + accs[0][0] if nthreads > 1 else accs[0][0]
        out = acc_r.astype(out_dt)
        if cplx:
            acc_i = sum(a[1] for a in accs[1:]) + accs[0][1] if nthreads > 1 else accs[0][1]
            out = (acc_r + 1j * acc_i).astype(out_dt)
        return out.reshape(self.volume_shape)

    __call__ = forward

    def normal(self, vol):
        """``A^T A vol``."""
        return self.adjoint(self.forward(vol))

    def describe(self) -> dict:
        """Attrs describing the volume grid (read back by :func:`backproject`)."""
        return {"volume_shape": np.asarray(self.volume_shape, dtype=np.int64),
                "voxel_size": self.voxel_size.copy(),
                "volume_origin": self.vol_origin.copy()}


class _SparseOp:
    """A cached sparse operator: CSR row blocks ``fwd`` of ``A`` and ``adj()`` for ``A^T``.

    CPU: the blocks are separate arrays (built by different threads); ``adj()`` returns their
    transposes (CSC views of the same arrays, no copy) and the adjoint is the sum over blocks
    of ``block^T @ Y_block``. GPU: one cupy CSR matrix; its transpose is converted to CSR (a
    copy) on the first adjoint call and counted in the cache size from then on.
    """

    __slots__ = ("_adj", "fwd", "gpu")

    def __init__(self, fwd, gpu):
        self.fwd = fwd
        self.gpu = gpu
        self._adj = None if gpu else [b.T for b in fwd]

    def adj(self):
        if self._adj is None:
            adj = [self.fwd[0].T.tocsr()]
            with Projector._cache_lock:
                if self._adj is None:
                    self._adj = adj
                _evict()
        return self._adj

    @property
    def nnz(self) -> int:
        """Stored nonzeros (transposed copies included)."""
        n = sum(int(b.nnz) for b in self.fwd)
        if self.gpu and self._adj is not None:
            n += sum(int(b.nnz) for b in self._adj)
        return n


def _cache_matrix(key, blocks, gpu):
    """Store the operator given as CSR row blocks (scipy) in the operator cache and return its
    :class:`_SparseOp`; on the GPU the blocks are stacked into one cupy CSR matrix."""
    if gpu:
        import cupy

        ent = _SparseOp([_stack_rows(blocks, cupy)], True)
    else:
        ent = _SparseOp(list(blocks), False)
    with Projector._cache_lock:
        Projector._cache[key] = ent
        _evict()
    return ent


def _evict():
    c = Projector._cache
    total = sum(e.nnz for e in c.values())
    while len(c) > 1 and (len(c) > Projector._cache_max or total > Projector._cache_max_nnz):
        _, e = c.popitem(last=False)
        total -= e.nnz


def clear_cache():
    """Drop the cached sparse operators and ray tables (frees their memory)."""
    with Projector._cache_lock:
        Projector._cache.clear()
    with _RAYS_LOCK:
        _RAYS.clear()


def _stack_rows(blocks, xp):
    """One CSR matrix (scipy for numpy, cupyx for cupy) from scipy CSR row blocks."""
    if xp is np:
        import scipy.sparse as spmod

        if len(blocks) == 1:
            return blocks[0]
    else:
        import cupyx.scipy.sparse as spmod
    nnz = [int(b.nnz) for b in blocks]
    ncol = blocks[0].shape[1]
    idt = np.int32 if max(sum(nnz), ncol) < 2**31 else np.int64
    offs = np.cumsum([0, *nnz])
    data = xp.concatenate([xp.asarray(b.data) for b in blocks])
    indices = xp.concatenate([xp.asarray(b.indices.astype(idt, copy=False)) for b in blocks])
    indptr = xp.concatenate([xp.asarray((b.indptr[:-1] if j < len(blocks) - 1 else b.indptr)
                                        .astype(idt) + idt(offs[j])) for j, b in enumerate(blocks)])
    return spmod.csr_matrix((data, indices, indptr),
                            shape=(sum(b.shape[0] for b in blocks), ncol))


def _root_guess(edge, c0, s, nj, ceil):
    """Plane index (int64, clipped to [0, nj]) where ``c0 + s * j`` crosses ``edge``: ``ceil``
    of the root, else its floor + 1 (a guess, checked by the caller)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        g = (edge - c0) / s
    g = np.ceil(g) if ceil else np.floor(g) + 1
    return np.clip(np.nan_to_num(g, nan=0.0), 0, nj).astype(np.int64)


def _runs(starts, counts):
    """Concatenated ranges ``starts[r] .. starts[r] + counts[r] - 1`` (int64)."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(total)


def _index_dtype(nnz, ncol):
    """Index dtype of a slice-matrix block: int32 unless its nonzeros or columns need int64."""
    return np.int32 if max(nnz, ncol) < 2**31 else np.int64


def _fill_slice_numpy(rays, nz, nx, v0, v1, data, ind):
    """numpy fallback of :func:`ptynb.tomo._kernels.slice_csr`: fill ``data`` and ``ind`` of the
    slice-matrix rows of views ``v0 <= i < v1`` (``indptr`` is the caller's), vectorised over
    chunks of rays of one view. ``rays`` is :meth:`Projector._slice_rays`'s tuple; the edge
    samples come from its runs ``lo`` / ``hi``. Same float64 expressions in the same order as
    the kernel (``c = j * s + c0``, ``frac dt``, ``dt - frac dt``, one rounding to
    ``data``'s dtype), hence bitwise the same arrays (tested)."""
    k, s, c0, dt, ja, jb, lo_run, hi_run = rays
    nu = c0.shape[1]
    lens = jb - ja
    lo_a, lo_n = lo_run[0], lo_run[1] - lo_run[0]
    hi_a, hi_n = hi_run[0], hi_run[1] - hi_run[0]
    cum = np.zeros((v1 - v0, nu + 1), dtype=np.int64)  # samples before ray u in view i
    np.cumsum(lens[v0:v1], axis=1, out=cum[:, 1:])
    rows_per_unit = max(1, _UNIT_SAMPLES // max(nz, nx))
    ar = np.arange(max(1, min(int(cum[:, -1].max()), rows_per_unit * max(nz, nx))),
                   dtype=np.float64)
    # column pairs (col, col + step) packed into one int64 (little-endian int32 pairs) when
    # that is exact in float64
    pack = sys.byteorder == "little" and nz * nx < 2**20 and ind.dtype == np.int32
    J, c, f = np.empty(ar.size), np.empty(ar.size), np.empty(ar.size)
    off = 0  # samples before view i in the block
    for i in range(v0, v1):
        ci = cum[i - v0]
        for r0 in range(0, nu, rows_per_unit):
            r1 = min(r0 + rows_per_unit, nu)
            a = int(ci[r0])
            e = int(ci[r1]) - a
            if e == 0:
                continue
            ln = lens[i, r0:r1]
            Jv, cv, fv = J[:e], c[:e], f[:e]
            # plane j of every sample, and its coordinate c along the other axis
            base = ci[r0:r1] - a - ja[i, r0:r1]  # index of plane 0's sample
            np.subtract(ar[:e], np.repeat(base.astype(np.float64), ln), out=Jv)
            np.multiply(Jv, s[i], out=cv)
            cv += np.repeat(c0[i, r0:r1], ln)
            np.floor(cv, out=fv)
            cv -= fv
            cv *= dt[i]  # frac dt: weight of voxel f + 1
            p = 2 * (off + a)
            D = data[p:p + 2 * e].reshape(e, 2)
            I = ind[p:p + 2 * e]
            np.copyto(D[:, 1], cv, casting="same_kind")
            np.subtract(dt[i], cv, out=D[:, 0], casting="same_kind")
            # samples with f = -1 (voxel f outside) and f = nm - 1 (voxel f + 1 outside)
            lo = _runs(base + lo_a[i, r0:r1], lo_n[i, r0:r1])
            hi = _runs(base + hi_a[i, r0:r1], hi_n[i, r0:r1])
            if k[i] == 0:  # planes along z (stride nx), interpolation along x
                Jv *= nx
                step = 1
            else:  # planes along x, interpolation along z (stride nx)
                fv *= nx
                step = nx
            fv += Jv  # column of voxel f
            col_lo, col_hi = fv[lo] + step, fv[hi]
            if pack:
                fv *= 4294967297.0  # col + (col + step) * 2**32
                fv += step * 4294967296.0
                np.copyto(I.view(np.int64), fv, casting="unsafe")
            else:
                I = I.reshape(e, 2)
                np.copyto(I[:, 0], fv, casting="unsafe")
                np.add(I[:, 0], step, out=I[:, 1])
            I = I.reshape(e, 2)
            if lo.size:
                D[lo, 0] = 0
                I[lo, 0] = I[lo, 1] = col_lo
            if hi.size:
                D[hi, 1] = 0
                I[hi, 0] = I[hi, 1] = col_hi
        off += int(ci[-1])


def _build_threads():
    return max(1, min(cpu_workers(), 8))


#: samples (2 nonzeros each) per work unit when building the slice matrix: keeps the float64
#: temporaries of one unit in the CPU cache
_UNIT_SAMPLES = 1 << 16


_THREAD_MIN_WORK = 200_000
#: dense columns (y rows, complex counted twice) per sparse product on the CPU
_COL_CHUNK = 16
_POOL: ThreadPoolExecutor | None = None
_POOL_N = 0


def _pool(n):
    """The shared worker pool, with at least ``n`` threads."""
    global _POOL, _POOL_N
    if _POOL is None or _POOL_N < n:
        if _POOL is not None:
            _POOL.shutdown(wait=False)
        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="ptynb-tomo")
        _POOL_N = n
    return _POOL


def _map_views(fn, n_views, xp):
    """Run fn(i) for every view, on the CPU thread pool (numpy releases the GIL)."""
    nthreads = 1 if xp is not np else max(1, min(cpu_workers(), n_views, 8))
    if nthreads == 1:
        for i in range(n_views):
            fn(i)
    else:
        list(_pool(nthreads).map(fn, range(n_views)))


def _blocks_matmul(blocks, X, xp):
    """Forward: stack of row-block products."""
    if len(blocks) == 1:
        return blocks[0] @ X
    if xp is not np or sum(b.nnz for b in blocks) * X.shape[1] < _THREAD_MIN_WORK:
        return xp.concatenate([b @ X for b in blocks])
    return np.concatenate(list(_pool(len(blocks)).map(lambda b: b @ X, blocks)))


def _blocks_matmul_T(blocksT, Y, xp):
    """Adjoint: sum over row blocks b of b^T @ Y[rows of b]."""
    if len(blocksT) == 1:
        return blocksT[0] @ Y
    offs = np.cumsum([0] + [b.shape[1] for b in blocksT])

    def one(i):
        return blocksT[i] @ Y[offs[i]:offs[i + 1]]

    if xp is not np or sum(b.nnz for b in blocksT) * Y.shape[1] < _THREAD_MIN_WORK:
        parts = [one(i) for i in range(len(blocksT))]
    else:
        parts = list(_pool(len(blocksT)).map(one, range(len(blocksT))))
    out = parts[0]
    for p in parts[1:]:
        out += p
    return out


# ============================================================================ xarray API
def _coord_spacing(da, dim):
    c = np.asarray(da[dim].values, dtype=np.float64)
    if c.size < 2:
        return None
    d = np.diff(c)
    if not np.allclose(d, d[0], rtol=1e-4, atol=0) or d[0] <= 0:
        raise ValidationError(dim, "coordinate must be uniformly increasing (metres)")
    return float(d[0])


def _volume_grid(volume, voxel_size):
    """(array, voxel_size (3,), origin (3,)) of a volume DataArray or plain array."""
    if isinstance(volume, xr.DataArray):
        if tuple(volume.dims) != ("z", "y", "x"):
            raise ValidationError(str(volume.name or "volume"),
                                  f"has dims {volume.dims}; expected ('z', 'y', 'x')")
        arr = volume.data
        vs_attr = volume.attrs.get("voxel_size")
        sizes, origin = [], []
        for i, d in enumerate(("z", "y", "x")):
            sp_ = _coord_spacing(volume, d) if d in volume.coords else None
            if sp_ is None:
                if voxel_size is not None:
                    sp_ = float(np.broadcast_to(voxel_size, (3,))[i])
                elif vs_attr is not None:
                    sp_ = float(np.broadcast_to(np.asarray(vs_attr, dtype=float), (3,))[i])
                else:
                    sp_ = 1.0
            sizes.append(sp_)
            origin.append(float(volume[d].values[0]) if d in volume.coords
                          else -(volume.sizes[d] // 2) * sp_)
        return arr, np.asarray(sizes), np.asarray(origin)
    if hasattr(volume, "dims"):
        raise ValidationError("volume", f"must be a DataArray (z, y, x) or an array, got {type(volume).__name__}")
    arr = volume if is_gpu_array(volume) else np.asarray(volume)
    if arr.ndim != 3:
        raise ValidationError("volume", f"has shape {arr.shape}; expected (z, y, x)")
    vs = _triple(1.0 if voxel_size is None else voxel_size, "voxel_size")
    origin = np.array([-(n // 2) * d for n, d in zip(arr.shape, vs)])
    return arr, vs, origin


def _check_values(arr, name):
    if arr.dtype.kind not in "fciub":
        raise ValidationError(name, f"has non-numeric dtype {arr.dtype}")
    xp = xp_of(arr)
    if arr.dtype.kind in "fc" and not bool(xp.all(xp.isfinite(arr))):
        bad = int(arr.size - int(xp.count_nonzero(xp.isfinite(arr))))
        raise ValidationError(name, f"contains {bad} NaN or inf value(s)")


def _check_angle_range(g: Geometry):
    a = g.angles
    if np.any(np.abs(a) > _MAX_ANGLE):
        raise ValidationError("angles", f"must lie within +/-{_MAX_ANGLE:g} degrees for geometry "
                              f"{g.kind!r}; got values up to {np.abs(a).max():.6g} (degrees, not radians?)")


def _on_device(arr, device):
    if device is None:
        return arr
    xp = get_xp(device)
    if xp is np:
        return to_host(arr)
    return xp.asarray(arr)


def _wrap_projections(arr, geometry: Geometry, op: Projector, **attrs):
    host_placeholder = np.broadcast_to(np.zeros((), dtype=arr.dtype), arr.shape)
    centred = np.allclose(op.det_origin, [-(n // 2) * p for n, p in zip(op.detector_shape, op.pixel_size)],
                          rtol=0, atol=1e-9 * float(op.pixel_size.min()))
    da = _data.projections(host_placeholder, geometry.angles, pixel_size=float(op.pixel_size[1]),
                           origin=None if centred else tuple(op.det_origin), **attrs)
    if op.pixel_size[0] != op.pixel_size[1]:
        da = da.assign_coords(y=("y", (np.arange(op.detector_shape[0]) * op.pixel_size[0]
                                       + op.det_origin[0]), {"units": "m"}))
    da = da.copy(data=arr)
    da.attrs.update(geometry.to_attrs())
    da.attrs.update(op.describe())
    da.attrs["pixel_size_yx"] = op.pixel_size.copy()
    da.attrs["units"] = "m * (volume units)"
    return da


def _wrap_volume(arr, op: Projector, name="volume", **attrs):
    host_placeholder = np.broadcast_to(np.zeros((), dtype=arr.dtype), arr.shape)
    centred = np.allclose(op.vol_origin, [-(n // 2) * d for n, d in zip(op.volume_shape, op.voxel_size)],
                          rtol=0, atol=1e-9 * float(op.voxel_size.min()))
    da = _data.volume(host_placeholder, voxel_size=op.voxel_size,
                      origin=None if centred else tuple(op.vol_origin), name=name, **attrs)
    return da.copy(data=arr)


def project(volume, angles, *, geometry="tomography", tilt=None, poses=None, shifts=None,
            detector_shape=None, pixel_size=None, voxel_size=None, device=None,
            dtype=np.float32, warn_outside: bool = True) -> xr.DataArray:
    """Project a volume: parallel-beam line integrals for every view.

    Parameters
    ----------
    volume : DataArray (z, y, x) or array
        Real or complex. Voxel sizes and origin (m) come from the coordinates; a plain array
        uses ``voxel_size`` (default 1) and centred coordinates.
    angles : array (angle,)
        Rotation angles in degrees, within +/-360.
    geometry : {"tomography", "laminography", "posed"} or Geometry
        See :mod:`ptynb.tomo.geometry` for the convention.
    tilt : float, optional
        Angle between rotation axis and beam (degrees); 90 for tomography, default 61.108
        (ADePt) for laminography.
    poses : array (angle, 3) or (angle, 5), optional
        ``posed``: extrinsic x-y-z Euler angles (deg), optionally followed by shifts (px).
    shifts : array (angle, 2), optional
        ``posed``: detector shifts (s_y, s_x) in pixels.
    detector_shape : (nv, nu), optional
        Default (ny, nx) at tilt 90, else large enough for the whole volume.
    pixel_size : float or (pv, pu), optional
        Detector pixel (m); default the voxel size (dy, dx).
    voxel_size : float or (dz, dy, dx), optional
        Only for plain arrays (m); default 1.
    device : {"cpu", "gpu", None}
        Where to compute (default: where the data are). The result is on that device.
    dtype : float32 or float64
        Operator precision.
    warn_outside : bool
        Check that the volume stays on the detector (see Warns); False skips the check (e.g.
        reprojecting a reconstruction, whose noisy corners leave it by construction).

    Warns
    -----
    UserWarning
        When part of the volume misses the detector in some view (the fraction lost is in the
        message): every view rotates about coordinate 0 of the volume's coordinates, so a
        volume whose coordinates start at 0 (``np.arange(n) * pixel``) turns about its corner.
        Centre the coordinates or pass a larger ``detector_shape``. See
        :func:`volume_outside_detector`.

    Returns
    -------
    DataArray (angle, y, x)
        ``kind="projections"``, ``angle`` in degrees, detector coords (m); the geometry
        (``geometry``, ``tilt``, poses) and the volume grid (``volume_shape``,
        ``voxel_size``, ``volume_origin``) in attrs, so :func:`backproject`, :func:`fbp`
        and the solvers need no repeated arguments.
    """
    arr, vs, origin = _volume_grid(volume, voxel_size)
    _check_values(arr, "volume")
    g = Geometry.make(angles, geometry, tilt, poses, shifts)
    if isinstance(geometry, Geometry):
        ang = np.asarray(angles, dtype=np.float64).reshape(-1)
        if ang.size != g.n_angles or not np.allclose(ang, g.angles):
            raise ValidationError("angles", "disagree with the angles of the given Geometry")
    _check_angle_range(g)
    op = Projector(g, arr.shape, detector_shape, vs, pixel_size, origin, None, dtype)
    arr = _on_device(arr, device)
    out = op.forward(arr)
    lost = volume_outside_detector(op, arr) if warn_outside else None
    if lost is not None:
        import warnings

        k = int(np.argmax(lost))
        warnings.warn(
            f"tomo.project: the volume leaves the detector in {int((lost > 1e-3).sum())} of {lost.size} "
            f"views (up to {100 * lost[k]:.1f} % of its mass lost, at angle {g.angles[k]:g} deg). Views "
            "rotate about coordinate 0 of the volume's z/y/x coordinates: centre them "
            "(e.g. volume.assign_coords(x=volume.x - volume.x.mean(), ...)) if they are not, and "
            "pass a larger detector_shape for a volume that fills its box (its corners leave an "
            "(ny, nx) detector at oblique angles).", UserWarning, stacklevel=2)
    return _wrap_projections(out, g, op)


def volume_outside_detector(op: Projector, volume, *, tol: float = 1e-3) -> np.ndarray | None:
    """Fraction of the volume's mass (of ``|volume|``) that misses the detector, per view.

    A cheap geometric test first: the bounding box of the nonzero voxels, rotated into each
    view (:meth:`Geometry.rotations`, detector shifts included), against the detector's extent.
    Only if some view may clip is ``|volume|`` projected once and its total per view compared
    with the volume's integral (parallel-beam line integrals conserve mass).

    Parameters
    ----------
    op : Projector
    volume : array (z, y, x), real or complex (numpy or cupy)
    tol : float
        Fractions below this count as no loss.

    Returns
    -------
    None when every view keeps the whole volume (to ``tol``); else the lost fraction per view
    (angle,), in [0, 1].
    """
    a = np.abs(to_host(volume))
    nz = np.nonzero(a.max(axis=(1, 2)))[0], np.nonzero(a.max(axis=(0, 2)))[0], np.nonzero(a.max(axis=(0, 1)))[0]
    if any(ix.size == 0 for ix in nz):
        return None
    lo = np.array([ix[0] for ix in nz]) - 0.5
    hi = np.array([ix[-1] for ix in nz]) + 0.5
    corners = np.array(list(itertools.product(*zip(lo, hi))))  # (8, 3) in voxels, (z, y, x)
    pts = corners * op.voxel_size + op.vol_origin  # metres
    lab = np.einsum("aij,cj->aci", op.geometry.rotations(), pts)  # (angle, 8, 3)
    det = lab[..., 1:] + (op.geometry.shifts_px() * op.pixel_size)[:, None, :]
    dlo = op.det_origin - op.pixel_size / 2
    dhi = op.det_origin + (np.asarray(op.detector_shape) - 0.5) * op.pixel_size
    if np.all(det >= dlo - 1e-9 * op.pixel_size) and np.all(det <= dhi + 1e-9 * op.pixel_size):
        return None
    xp = xp_of(volume)
    proj = to_host(op.forward(xp.abs(volume).astype(op.dtype)))
    total = float(a.sum(dtype=np.float64) * np.prod(op.voxel_size))
    seen = proj.reshape(proj.shape[0], -1).sum(axis=1, dtype=np.float64) * float(np.prod(op.pixel_size))
    lost = np.clip(1.0 - seen / total, 0.0, 1.0)
    return lost if np.any(lost > tol) else None


def volume_grid_from_attrs(projections: xr.DataArray):
    """(volume_shape, voxel_size, vol_origin) recorded by :func:`project`, else a default grid."""
    a = projections.attrs
    pv = _coord_spacing(projections, "y") or float(a.get("pixel_size", 1.0))
    pu = _coord_spacing(projections, "x") or float(a.get("pixel_size", 1.0))
    if "volume_shape" in a:
        shape = tuple(int(n) for n in np.asarray(a["volume_shape"]).reshape(3))
        vs = _triple(a.get("voxel_size", (pu, pv, pu)), "voxel_size")
        origin = np.asarray(a.get("volume_origin", [-(n // 2) * d for n, d in zip(shape, vs)]),
                            dtype=np.float64).reshape(3)
        return shape, vs, origin
    nv, nu = projections.sizes["y"], projections.sizes["x"]
    shape = (nu, nv, nu)
    vs = np.array([pu, pv, pu])
    return shape, vs, np.array([-(n // 2) * d for n, d in zip(shape, vs)])


def check_projections(projections, name="projections") -> None:
    """Validate a projections DataArray (dims, finiteness, angles); raise ValidationError."""
    if not isinstance(projections, xr.DataArray):
        raise ValidationError(name, f"must be a DataArray (angle, y, x), got {type(projections).__name__}")
    if tuple(projections.dims) != ("angle", "y", "x"):
        raise ValidationError(name, f"has dims {projections.dims}; expected ('angle', 'y', 'x')")
    if "angle" not in projections.coords:
        raise ValidationError("angle", f"coordinate (degrees) missing on {name}")
    _check_values(projections.data, name)


def projector_for(projections: xr.DataArray, *, volume_shape=None, voxel_size=None,
                  volume_origin=None, dtype=np.float32, angle_index=None) -> Projector:
    """The :class:`Projector` described by a projections DataArray's coords and attrs.

    ``volume_shape`` / ``voxel_size`` / ``volume_origin`` override the grid recorded in
    attrs (a changed shape or voxel size re-centres the grid unless an origin is given).
    """
    check_projections(projections)
    g = Geometry.from_attrs(projections.attrs, projections["angle"].values)
    _check_angle_range(g)
    shape, vs, origin = volume_grid_from_attrs(projections)
    if volume_shape is not None or voxel_size is not None:
        if volume_shape is not None:
            shape = tuple(int(n) for n in volume_shape)
        if voxel_size is not None:
            vs = _triple(voxel_size, "voxel_size")
        origin = None
    if volume_origin is not None:
        origin = volume_origin
    pv = _coord_spacing(projections, "y") or float(projections.attrs.get("pixel_size", vs[1]))
    pu = _coord_spacing(projections, "x") or float(projections.attrs.get("pixel_size", vs[2]))
    det_origin = (float(projections["y"].values[0]), float(projections["x"].values[0])) \
        if ("y" in projections.coords and "x" in projections.coords) else None
    op = Projector(g, shape, (projections.sizes["y"], projections.sizes["x"]), vs, (pv, pu),
                   origin, det_origin, dtype)
    return op if angle_index is None else op.subset(angle_index)


def backproject(projections: xr.DataArray, *, volume_shape=None, voxel_size=None,
                device=None, dtype=np.float32) -> xr.DataArray:
    """Adjoint of :func:`project`: the (unfiltered) backprojection ``A^T p``.

    Parameters
    ----------
    projections : DataArray (angle, y, x)
        Geometry and volume grid are read from the attrs written by :func:`project`
        (tomography on a (nu, nv, nu) grid of the detector pixel if absent).
    volume_shape, voxel_size : optional
        Override the recorded volume grid.
    device : {"cpu", "gpu", None}

    Returns
    -------
    DataArray (z, y, x)
        ``A^T p`` (units of the projections times metres); ``kind="volume"``.
    """
    op = projector_for(projections, volume_shape=volume_shape, voxel_size=voxel_size, dtype=dtype)
    arr = _on_device(projections.data, device)
    out = op.adjoint(arr)
    return _wrap_volume(out, op, name="backprojection", method="backproject",
                        geometry=op.geometry.kind)
