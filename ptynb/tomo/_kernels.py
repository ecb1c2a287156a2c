"""Compiled CPU kernels (numba) of the tomography fast path's 2D Joseph slice operator: one
that fills the slice matrix (:func:`slice_csr`) and a matrix-free forward and adjoint
(:func:`slice_forward`, :func:`slice_adjoint`, at the end of this module) that apply the same
weights without storing them.

:meth:`ptynb.tomo.projector.Projector._build_blocks` knows, from
:meth:`~ptynb.tomo.projector.Projector._slice_rays`, every ray's range of voxel planes inside
the volume, hence every CSR row length. :func:`slice_csr` then writes ``data``, ``indices`` and
``indptr`` of a block of consecutive views in ONE pass (views, rays, planes), with no
temporaries. The numpy fill it replaces (kept in :mod:`ptynb.tomo.projector` as the fallback
where numba is missing or env ``PTYNB_TOMO_NUMBA=0``) makes about a dozen passes over float64
temporaries per chunk of rays. Both evaluate the same float64 expressions in the same order,
so they give bitwise the same matrix; ``tests/test_tomo_projector.py`` checks that. (The kernel
recognises the edge samples, ``floor(c) = -1`` or ``n_m - 1``, from ``floor(c)`` itself; the
numpy fill takes them from ``_slice_rays``' runs, which the tests compare with ``floor(c)``.)

Unlike :mod:`ptynb.ptycho._kernels` this kernel is compiled WITHOUT ``fastmath``: fastmath
lets LLVM contract ``j * s + c0`` into a fused multiply-add (one rounding instead of two),
which would move sample positions by an ulp, change ``floor`` at exact voxel boundaries and
break the agreement with :meth:`_slice_rays` (which decides the row lengths with the
two-rounding numpy expression). Without fastmath LLVM still vectorises the per-ray loop
(integer induction, edge cases as selects), and the kernel is memory bound anyway (8 bytes
stored per float32 nonzero, the first touch of the new arrays included). Compiled code is
cached on disk (numba ``cache=True``): the first process on a machine compiles (about a
second per dtype combination), later ones load it; every process still pays importing numba
and loading the kernel once (about 0.3-0.6 s on a loaded 2-core machine).
"""
from __future__ import annotations

import numpy as np

try:
    import numba as _nb
except ImportError:  # pragma: no cover - numba is a dependency; the numpy fill still works
    _nb = None

__all__ = ["available", "slice_csr"]


def available() -> bool:
    """True if the compiled kernel can be used (numba importable)."""
    return _nb is not None


if _nb is not None:
    # no fastmath: see the module docstring (bitwise the numpy fill's float64 arithmetic)
    _jit = _nb.njit(nogil=True, fastmath=False, cache=True, error_model="numpy",
                    boundscheck=False)
else:  # pragma: no cover
    def _jit(f):
        return f


@_jit
def _view_axes(kk, nz, nx):
    """Strides of one view's samples in the flat (z, x) column index ``z * nx + x``: per
    plane ``sj``, per interpolation step ``sf``, the neighbour ``step``, and the last valid
    interpolation index ``nm1`` (``kk`` = 0: planes along z, interpolation along x; 1: the
    reverse)."""
    if kk == 0:
        return nx, 1, 1, nx - 1
    return 1, nx, nx, nz - 1


@_jit
def _ray(j0, n, si, ci, dti, sj, sf, step, nm1, d, ix):
    """Samples ``j = j0 .. j0 + n - 1`` of one ray into ``d``, ``ix`` (views, length ``2 n``).

    Branch-free (the edge cases are selects) and indexed by the loop counter, so LLVM
    vectorises it. The same samples as :func:`_ray_samples` (of the matrix-free kernels),
    written interleaved; calling that with strided views instead made the build 2.5x slower
    (49 vs 121 ms, 256^2 x 180 views, one thread), so the loop is kept here."""
    for t in range(n):
        j = j0 + t
        c = np.float64(j) * si + ci
        f = np.floor(c)
        w1 = (c - f) * dti
        w0 = dti - w1
        fi = np.int64(f)
        col = j * sj + fi * sf  # voxel f
        lo = fi < 0  # f = -1: voxel f outside, store voxel f + 1 twice
        hi = fi >= nm1  # f = n_m - 1: voxel f + 1 outside, store voxel f twice
        d[2 * t] = 0.0 if lo else w0
        d[2 * t + 1] = 0.0 if hi else w1
        ix[2 * t] = col + step if lo else col
        ix[2 * t + 1] = col if hi else col + step


@_jit
def slice_csr(k, s, c0, dt, ja, jb, nz, nx, v0, v1, data, ind, indptr):
    """Write the CSR arrays of the slice-matrix rows of views ``v0 <= i < v1``.

    Parameters (as returned by ``Projector._slice_rays``; all C-contiguous)
    ----------
    k : (angle,) int64
        Dominant axis of view ``i``: 0 (planes along z, interpolation along x) or 1 (planes
        along x, interpolation along z).
    s : (angle,) float64
        Slope: the sample position moves by ``s[i]`` voxels along the other axis per plane.
    c0 : (angle, nu) float64
        Position (voxel index units) of ray ``u`` on plane 0 along the other axis.
    dt : (angle,) float64
        Ray length between planes (m).
    ja, jb : (angle, nu) int64
        Planes ``ja <= j < jb`` where the sample touches the volume (``-1 < c < n_m``).
    nz, nx : int
        Volume size (columns are ``z * nx + x``).
    v0, v1 : int
        The block's views.
    data : (nnz,) float32 or float64, out
        Weights (m); ``nnz = 2 * sum(jb - ja)`` over the block.
    ind : (nnz,) int32 or int64, out
        Column indices.
    indptr : (nu * (v1 - v0) + 1,) int32 or int64, out
        Row pointers (rows ``(i - v0) * nu + u``).

    Every sample ``j`` of a ray stores two entries, in this order: voxel ``f = floor(c)``
    with weight ``dt - frac * dt`` and voxel ``f + 1`` (one step along the interpolation
    axis) with weight ``frac * dt``, where ``c = j * s + c0`` and ``frac = c - f`` are
    float64 and the weights are rounded to ``data``'s dtype once. At the volume edge the
    neighbour outside (``f = -1``, resp. ``f + 1 = n_m``) is stored as an explicit zero on
    the column of the neighbour inside, so the row lengths are ``2 (jb - ja)``.
    """
    nu = c0.shape[1]
    p = 0
    row = 0
    indptr[0] = 0
    for i in range(v0, v1):
        si = s[i]
        dti = dt[i]
        sj, sf, step, nm1 = _view_axes(k[i], nz, nx)
        for u in range(nu):
            a = ja[i, u]
            m = jb[i, u] - a
            if m > 0:
                _ray(a, m, si, c0[i, u], dti, sj, sf, step, nm1, data[p:p + 2 * m],
                     ind[p:p + 2 * m])
                p += 2 * m
            row += 1
            indptr[row] = p


# ---------------------------------------------------------------------------- matrix-free
# The same Joseph samples as :func:`slice_csr` (same float64 sample positions, weights rounded
# to the data's dtype once), applied on the fly to a dense block of columns instead of being
# stored: no matrix to build (the CSR arrays are 8 bytes per nonzero: 160 MB for 256^2 x 180
# views, 16 GB for 1024^2 x 1000), nothing to read back but the data.


@_jit
def _ray_samples(j0, n, si, ci, dti, sj, sf, step, nm1, w0, w1, i0, i1):
    """Samples ``j = j0 .. j0 + n - 1`` of one ray: voxel ``i0[t]`` with weight ``w0[t]`` and
    voxel ``i1[t]`` with weight ``w1[t]`` (weights in the buffers' dtype; a neighbour outside
    the volume gets weight 0 on a valid voxel). Branch-free, so LLVM vectorises it."""
    for t in range(n):
        j = j0 + t
        c = np.float64(j) * si + ci
        f = np.floor(c)
        b = (c - f) * dti
        a = dti - b
        fi = np.int64(f)
        col = j * sj + fi * sf
        lo = fi < 0
        hi = fi >= nm1
        w0[t] = 0.0 if lo else a
        w1[t] = 0.0 if hi else b
        i0[t] = col + step if lo else col
        i1[t] = col if hi else col + step


@_jit
def slice_forward(k, s, c0, dt, ja, jb, nz, nx, v0, v1, q0, q1, X, Y):
    """``Y[i * nu + u, q0:q1] = sum_j w0 X[col, q0:q1] + w1 X[col + step, q0:q1]`` for views
    ``v0 <= i < v1``: the forward slice operator on columns ``q0 <= q < q1``.

    ``X`` (nz * nx, ncol) is the volume (rows ``z * nx + x``), ``Y`` (angle * nu, ncol) the
    projections; both C-contiguous, same real dtype (complex data as interleaved columns).
    The ray arrays are those of :func:`slice_csr`. Rows of ``Y`` of other views, and other
    columns, are not touched, so disjoint (view, column) blocks can run in parallel.
    """
    nu = c0.shape[1]
    nmax = max(nz, nx)
    w0 = np.empty(nmax, X.dtype)
    w1 = np.empty(nmax, X.dtype)
    i0 = np.empty(nmax, np.int64)
    i1 = np.empty(nmax, np.int64)
    zero = np.zeros(1, X.dtype)[0]
    for i in range(v0, v1):
        sj, sf, step, nm1 = _view_axes(k[i], nz, nx)
        for u in range(nu):
            row = i * nu + u
            a = ja[i, u]
            m = jb[i, u] - a
            _ray_samples(a, m, s[i], c0[i, u], dt[i], sj, sf, step, nm1, w0, w1, i0, i1)
            yr = Y[row]
            for q in range(q0, q1):
                acc = zero
                for t in range(m):
                    acc += w0[t] * X[i0[t], q] + w1[t] * X[i1[t], q]
                yr[q] = acc


@_jit
def slice_adjoint(k, s, c0, dt, ja, jb, nz, nx, v0, v1, q0, q1, Y, X):
    """``X[:, q0:q1] += A_views^T Y[:, q0:q1]``: the adjoint of :func:`slice_forward` over views
    ``v0 <= i < v1`` and columns ``q0 <= q < q1``, accumulated into ``X`` (scatter-add with
    the same weights). Blocks that share columns must not run in parallel on the same ``X``.
    """
    nu = c0.shape[1]
    nmax = max(nz, nx)
    w0 = np.empty(nmax, X.dtype)
    w1 = np.empty(nmax, X.dtype)
    i0 = np.empty(nmax, np.int64)
    i1 = np.empty(nmax, np.int64)
    one = q1 - q0 == 1
    for i in range(v0, v1):
        sj, sf, step, nm1 = _view_axes(k[i], nz, nx)
        for u in range(nu):
            row = i * nu + u
            a = ja[i, u]
            m = jb[i, u] - a
            _ray_samples(a, m, s[i], c0[i, u], dt[i], sj, sf, step, nm1, w0, w1, i0, i1)
            yr = Y[row]
            if one:
                y = yr[q0]
                for t in range(m):
                    X[i0[t], q0] += w0[t] * y
                    X[i1[t], q0] += w1[t] * y
                continue
            for t in range(m):
                x0 = X[i0[t]]
                x1 = X[i1[t]]
                a0 = w0[t]
                a1 = w1[t]
                for q in range(q0, q1):
                    v = yr[q]
                    x0[q] += a0 * v
                    x1[q] += a1 * v
