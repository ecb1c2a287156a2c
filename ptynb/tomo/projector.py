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
float32 or float64; ``cupyx.scipy.sparse`` on the GPU), keeps its transpose, and applies
them to all rows at once as sparse @ dense-matrix products, split over threads by row
blocks (scipy's sparse kernels release the GIL). The general path (laminography, poses,
other detectors) evaluates the Joseph weights per view on the fly. Both paths give the same
numbers (same weights).
"""
from __future__ import annotations

import itertools
import math
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
    vol_shape : (nz, ny, nx)
    det_shape : (nv, nu), optional
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

    def __init__(self, geometry: Geometry, vol_shape, det_shape=None, voxel_size=1.0,
                 pixel_size=None, vol_origin=None, det_origin=None, dtype=np.float32):
        if not isinstance(geometry, Geometry):
            raise ValidationError("geometry", f"must be a ptynb.tomo.Geometry, got {type(geometry).__name__}")
        self.geometry = geometry
        vs = tuple(int(n) for n in vol_shape)
        if len(vs) != 3 or min(vs) < 1:
            raise ValidationError("vol_shape", f"must be three positive sizes (nz, ny, nx), got {vol_shape!r}")
        self.vol_shape = vs
        self.voxel_size = _triple(voxel_size, "voxel_size")
        if vol_origin is None:
            vol_origin = [-(n // 2) * d for n, d in zip(vs, self.voxel_size)]
        self.vol_origin = np.asarray(vol_origin, dtype=np.float64).reshape(3)
        if pixel_size is None:
            pixel_size = self.voxel_size[1:]
        self.pixel_size = np.broadcast_to(np.asarray(pixel_size, dtype=np.float64), (2,)).copy()
        if not np.all(np.isfinite(self.pixel_size)) or np.any(self.pixel_size <= 0):
            raise ValidationError("pixel_size", f"must be positive and finite, got {pixel_size!r}")
        if det_shape is None:
            det_shape = self._default_det_shape()
        ds = tuple(int(n) for n in det_shape)
        if len(ds) != 2 or min(ds) < 1:
            raise ValidationError("detector_shape", f"must be two positive sizes (nv, nu), got {det_shape!r}")
        self.det_shape = ds
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
        return self.vol_shape

    @property
    def shape_out(self):
        return (self.geometry.n_angles,) + self.det_shape

    def _default_det_shape(self):
        _, ny, nx = self.vol_shape
        if self.geometry.tilt_deg == 90.0:
            return (ny, nx)
        lo = self.vol_origin - self.voxel_size / 2
        hi = self.vol_origin + (np.asarray(self.vol_shape) - 0.5) * self.voxel_size
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                            for c in (lo[2], hi[2])])
        lab = np.einsum("aij,cj->aci", self.geometry.rotations(), corners)
        ext_v = np.abs(lab[..., 1]).max() / self.pixel_size[0]
        ext_u = np.abs(lab[..., 2]).max() / self.pixel_size[1]
        return (int(2 * math.ceil(ext_v)), int(2 * math.ceil(ext_u)))

    def subset(self, index) -> Projector:
        """Operator for a subset of the views (same grids)."""
        return Projector(self.geometry.subset(index), self.vol_shape, self.det_shape,
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
        _, ny, nx = self.vol_shape
        shape = np.array(self.vol_shape)
        strides = np.array([ny * nx, nx, 1])
        M = self._rot[i].T  # lab -> sample
        d = M[:, 0]  # beam direction in the sample frame
        ev, eu = M[:, 1], M[:, 2]
        dir_i = d / self.voxel_size
        k = int(np.argmax(np.abs(dir_i)))
        a, b = [m for m in range(3) if m != k]
        nv, nu = self.det_shape
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
        return (g.angles_deg.tobytes(), self.vol_shape[0], self.vol_shape[2], self.det_shape[1],
                tuple(self.voxel_size), tuple(self.pixel_size), tuple(self.vol_origin[[0, 2]]),
                float(self.det_origin[1]), np.dtype(rdt).str, gpu, cpu_workers())

    def _build_matrix(self, rdt):
        import scipy.sparse as sp

        nz, _, nx = self.vol_shape
        nu = self.det_shape[1]
        # Same Joseph weights as _view_samples, specialised to the (z, x) plane: the ray of
        # detector column u at view i is s(t) = t d + u' e_u with d, e_u in the z-x plane.
        shape2 = (nz, nx)
        vs2 = self.voxel_size[[0, 2]]
        or2 = self.vol_origin[[0, 2]]
        u = self.det_origin[1] + np.arange(nu) * self.pixel_size[1]
        def view(i):
            M = self._rot[i].T
            d = M[[0, 2], 0]
            eu = M[[0, 2], 2]
            dir_i = d / vs2
            k = int(np.argmax(np.abs(dir_i)))
            m = 1 - k
            bk = (eu[k] * u - or2[k]) / vs2[k]
            bm = (eu[m] * u - or2[m]) / vs2[m]
            j = np.arange(shape2[k], dtype=np.float64)
            c = bm[:, None] + dir_i[m] * ((j[None, :] - bk[:, None]) / dir_i[k])  # (nu, nj)
            dt = 1.0 / abs(dir_i[k])
            f = np.floor(c)
            w1 = (c - f) * dt
            w0 = dt - w1
            f = f.astype(np.int64)
            stride_k, stride_m = (nx, 1) if k == 0 else (1, nx)
            jj = np.arange(shape2[k], dtype=np.int64)[None, :] * stride_k
            w = np.stack([np.where((f >= 0) & (f < shape2[m]), w0, 0.0),
                          np.where((f >= -1) & (f < shape2[m] - 1), w1, 0.0)], axis=-1)
            idx = np.stack([jj + f * stride_m, jj + (f + 1) * stride_m], axis=-1)
            w = w.reshape(nu, -1)
            idx = idx.reshape(nu, -1)
            keep = w != 0
            return keep.sum(axis=1), w[keep].astype(rdt), idx[keep].astype(np.int32)

        n = self.geometry.n_angles
        parts = list(_pool(cpu_workers()).map(view, range(n))) if cpu_workers() > 1 and n > 8 \
            else [view(i) for i in range(n)]
        counts = [p[0] for p in parts]
        data = [p[1] for p in parts]
        cols = [p[2] for p in parts]
        counts = np.concatenate(counts)
        indptr = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        if indptr[-1] < np.iinfo(np.int32).max:
            indptr = indptr.astype(np.int32)
        A = sp.csr_matrix((np.concatenate(data), np.concatenate(cols), indptr),
                          shape=(counts.size, nz * nx))
        return A

    def _matrices(self, xp, rdt):
        gpu = xp is not np
        key = self._matrix_key(rdt, gpu)
        with Projector._cache_lock:
            hit = Projector._cache.get(key)
            if hit is not None:
                Projector._cache.move_to_end(key)
                return hit
        return _cache_matrix(key, self._build_matrix(rdt), gpu)

    def matrix(self):
        """The 2D slice matrix (scipy CSR, rows (angle, u), columns (z, x)) of the fast path."""
        if not self.fast:
            raise ValueError("this geometry has no separable 2D matrix (not plain tomography)")
        return self._build_matrix(self.dtype)

    def _fast_apply(self, arr, transpose):
        xp = xp_of(arr)
        rdt = np.float64 if (self.dtype == np.float64 or arr.dtype in (np.float64, np.complex128)) \
            else np.float32
        A_blocks, AT_blocks = self._matrices(xp, rdt)
        out_dt = _result_dtype(arr.dtype, rdt)
        cplx = np.dtype(out_dt).kind == "c"
        nz, ny, nx = self.vol_shape
        na, nu = self.geometry.n_angles, self.det_shape[1]
        if not transpose:  # (z, y, x) -> (z*x, y)
            X = xp.ascontiguousarray(xp.transpose(arr, (0, 2, 1)).astype(out_dt, copy=False))
            X = X.reshape(nz * nx, ny)
        else:  # (angle, v, u) -> (angle*u, v)
            X = xp.ascontiguousarray(xp.transpose(arr, (0, 2, 1)).astype(out_dt, copy=False))
            X = X.reshape(na * nu, ny)
        if cplx:
            X = X.view(rdt)
        ncol = X.shape[1]
        step = ncol if xp is not np else _COL_CHUNK  # keep the dense block cache-sized
        if step >= ncol:
            Y = _blocks_matmul_T(AT_blocks, X, xp) if transpose else _blocks_matmul(A_blocks, X, xp)
        else:
            Y = np.empty(((nz * nx) if transpose else (na * nu), ncol), dtype=X.dtype)
            for c0 in range(0, ncol, step):
                Xc = np.ascontiguousarray(X[:, c0:c0 + step])
                Y[:, c0:c0 + step] = (_blocks_matmul_T(AT_blocks, Xc, xp) if transpose
                                      else _blocks_matmul(A_blocks, Xc, xp))
        if cplx:
            Y = Y.view(out_dt)
        if not transpose:
            return xp.ascontiguousarray(xp.transpose(Y.reshape(na, nu, ny), (0, 2, 1)))
        return xp.ascontiguousarray(xp.transpose(Y.reshape(nz, nx, ny), (0, 2, 1)))

    # ------------------------------------------------------------------ operators
    def _general_matrix(self, xp, rdt):
        """CSR matrix (angle*nv*nu, nz*ny*nx) of the general path, or None if too large."""
        n_vox = int(np.prod(self.vol_shape))
        est = 4 * self.geometry.n_angles * n_vox * 1.5
        if est > _SPARSE_MAX_NNZ or n_vox >= 2**31:
            return None
        gpu = xp is not np
        key = ("general", self.geometry.key(), self.vol_shape, self.det_shape,
               tuple(self.voxel_size), tuple(self.pixel_size), tuple(self.vol_origin),
               tuple(self.det_origin), np.dtype(rdt).str, gpu, cpu_workers())
        with Projector._cache_lock:
            hit = Projector._cache.get(key)
            if hit is not None:
                Projector._cache.move_to_end(key)
                return hit
        import scipy.sparse as sp

        nrays = self.det_shape[0] * self.det_shape[1]
        rows, cols, vals = [], [], []
        for i in range(self.geometry.n_angles):
            ray, idx, w = self._view_samples(np, i, rdt)
            nz_ = w != 0
            rows.append(np.broadcast_to(ray + i * nrays, w.shape)[nz_].astype(np.int32))
            cols.append(idx[nz_].astype(np.int32))
            vals.append(w[nz_])
        A = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(self.geometry.n_angles * nrays, n_vox)).tocsr()
        return _cache_matrix(key, A, gpu)

    def _sparse_apply(self, ent, arr, transpose, rdt):
        xp = xp_of(arr)
        out_dt = _result_dtype(arr.dtype, rdt)
        cplx = np.dtype(out_dt).kind == "c"
        X = xp.ascontiguousarray(arr.astype(out_dt, copy=False)).reshape(-1, 1)
        if cplx:
            X = X.view(rdt)
        Y = _blocks_matmul_T(ent[1], X, xp) if transpose else _blocks_matmul(ent[0], X, xp)
        if cplx:
            Y = xp.ascontiguousarray(Y).view(out_dt)
        return Y.reshape(self.vol_shape if transpose else self.shape_out)

    def _rdt(self, arr):
        return np.float64 if (self.dtype == np.float64 or arr.dtype in (np.float64, np.complex128)) \
            else np.float32

    def forward(self, vol):
        """Projections (angle, nv, nu) of a volume (nz, ny, nx): line integrals (m x value)."""
        self._check(vol, self.vol_shape, "volume")
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
        nrays = self.det_shape[0] * self.det_shape[1]
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
        n = int(np.prod(self.vol_shape))
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
        return out.reshape(self.vol_shape)

    __call__ = forward

    def normal(self, vol):
        """``A^T A vol``."""
        return self.adjoint(self.forward(vol))

    def describe(self) -> dict:
        """Attrs describing the volume grid (read back by :func:`backproject`)."""
        return {"volume_shape": np.asarray(self.vol_shape, dtype=np.int64),
                "voxel_size": self.voxel_size.copy(),
                "volume_origin": self.vol_origin.copy()}


def _entry_nnz(ent):
    return sum(int(b.nnz) for b in ent[0])


def _cache_matrix(key, A, gpu):
    """Store CSR matrix ``A`` in the operator cache as (forward blocks, adjoint blocks) and return
    that entry: one cupy CSR and its transpose on the GPU; on the CPU row blocks for the worker
    threads, the adjoint being the sum over blocks of ``block^T @ Y_block`` (CSC views, no copy)."""
    if gpu:
        import cupyx.scipy.sparse as csp

        Ag = csp.csr_matrix(A)
        ent = ([Ag], [Ag.T.tocsr()])
    else:
        blocks = _row_blocks(A, cpu_workers())
        ent = (blocks, [b.T for b in blocks])
    with Projector._cache_lock:
        Projector._cache[key] = ent
        _evict()
    return ent


def _evict():
    c = Projector._cache
    total = sum(_entry_nnz(e) for e in c.values())
    while len(c) > 1 and (len(c) > Projector._cache_max or total > Projector._cache_max_nnz):
        _, e = c.popitem(last=False)
        total -= _entry_nnz(e)


def clear_cache():
    """Drop the cached sparse operators (frees their memory)."""
    with Projector._cache_lock:
        Projector._cache.clear()


def _row_blocks(A, n):
    """Split a CSR matrix into ~equal-nnz row blocks that share A's arrays (no copies)."""
    import scipy.sparse as sp

    n = max(1, min(int(n), 8))
    if n == 1 or A.shape[0] < 2 * n:
        return [A]
    cum = A.indptr
    cuts = np.searchsorted(cum, np.linspace(0, cum[-1], n + 1)[1:-1])
    edges = [0, *sorted({int(c) for c in cuts}), A.shape[0]]
    out = []
    for r0, r1 in itertools.pairwise(edges):
        if r1 <= r0:
            continue
        p0, p1 = int(cum[r0]), int(cum[r1])
        ip = cum[r0:r1 + 1] - cum[r0]
        blk = sp.csr_matrix((A.data[p0:p1], A.indices[p0:p1], ip), shape=(r1 - r0, A.shape[1]))
        out.append(blk)
    return out


_THREAD_MIN_WORK = 200_000
#: dense columns (y rows, complex counted twice) per sparse product on the CPU
_COL_CHUNK = 16
_POOL: ThreadPoolExecutor | None = None
_POOL_N = 0


def _pool(n):
    global _POOL, _POOL_N
    if _POOL is None or _POOL_N != n:
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
    a = g.angles_deg
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
    centred = np.allclose(op.det_origin, [-(n // 2) * p for n, p in zip(op.det_shape, op.pixel_size)],
                          rtol=0, atol=1e-9 * float(op.pixel_size.min()))
    da = _data.projections(host_placeholder, geometry.angles_deg, pixel_size=float(op.pixel_size[1]),
                           origin=None if centred else tuple(op.det_origin), **attrs)
    if op.pixel_size[0] != op.pixel_size[1]:
        da = da.assign_coords(y=("y", (np.arange(op.det_shape[0]) * op.pixel_size[0]
                                       + op.det_origin[0]), {"units": "m"}))
    da = da.copy(data=arr)
    da.attrs.update(geometry.to_attrs())
    da.attrs.update(op.describe())
    da.attrs["pixel_size_yx"] = op.pixel_size.copy()
    da.attrs["units"] = "m * (volume units)"
    return da


def _wrap_volume(arr, op: Projector, name="volume", **attrs):
    host_placeholder = np.broadcast_to(np.zeros((), dtype=arr.dtype), arr.shape)
    centred = np.allclose(op.vol_origin, [-(n // 2) * d for n, d in zip(op.vol_shape, op.voxel_size)],
                          rtol=0, atol=1e-9 * float(op.voxel_size.min()))
    da = _data.volume(host_placeholder, voxel_size=op.voxel_size,
                      origin=None if centred else tuple(op.vol_origin), name=name, **attrs)
    return da.copy(data=arr)


def project(volume, angles, *, geometry="tomography", tilt=None, poses=None, shifts=None,
            detector_shape=None, pixel_size=None, voxel_size=None, device=None,
            dtype=np.float32) -> xr.DataArray:
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
        if ang.size != g.n_angles or not np.allclose(ang, g.angles_deg):
            raise ValidationError("angles", "disagree with the angles of the given Geometry")
    _check_angle_range(g)
    op = Projector(g, arr.shape, detector_shape, vs, pixel_size, origin, None, dtype)
    arr = _on_device(arr, device)
    out = op.forward(arr)
    return _wrap_projections(out, g, op)


def volume_grid_from_attrs(projections: xr.DataArray):
    """(vol_shape, voxel_size, vol_origin) recorded by :func:`project`, else a default grid."""
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
