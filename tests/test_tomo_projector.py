"""Projector: exact adjoint, analytic line integrals, conventions, torch autograd, bad input."""
import numpy as np
import pytest
import xarray as xr

import ptynb.tomo._kernels as P_kernels
import ptynb.tomo.projector as P
from ptynb import backend, tomo
from ptynb.data import ValidationError, volume
from ptynb.physics.rotations import euler_xyz
from ptynb.tomo.geometry import Geometry

RNG = np.random.default_rng(1234)
VOX = (1.0e-8, 1.2e-8, 0.9e-8)


def _geometries(n=7):
    rng = np.random.default_rng(5)
    return {
        "tomography": Geometry("tomography", np.linspace(0, 170, n)),
        "laminography": Geometry("laminography", np.linspace(0, 330, n), tilt=61.108),
        "posed": Geometry("posed", np.linspace(0, 170, n), tilt=75.0,
                          poses=rng.normal(0, 4, (n, 3)), shifts=rng.normal(0, 1.5, (n, 2))),
    }


# (dot-product tests of every projector path: tests/test_adjoints.py)


def test_fast_path_matches_general_path():
    g = Geometry("tomography", np.linspace(0, 180, 13, endpoint=False))
    # 21 y rows: the fast path works on cache-sized blocks of rows (complex: 42 real columns)
    fast = P.Projector(g, (16, 21, 14), voxel_size=VOX, dtype=np.float64)
    slow = P.Projector(g, (16, 21, 14), voxel_size=VOX, dtype=np.float64)
    slow.fast = False
    assert fast.fast
    x = RNG.normal(size=fast.shape_in) + 1j * RNG.normal(size=fast.shape_in)
    y = RNG.normal(size=fast.shape_out) + 1j * RNG.normal(size=fast.shape_out)
    for xx, yy in ((x.real.copy(), y.real.copy()), (x, y)):
        np.testing.assert_allclose(fast.forward(xx), slow.forward(xx), rtol=1e-10, atol=1e-22)
        np.testing.assert_allclose(fast.adjoint(yy), slow.adjoint(yy), rtol=1e-10, atol=1e-22)
    # float32 operator keeps float32; complex64 stays complex64
    assert fast.forward(x.real.astype(np.float32)).dtype == np.float64  # op is float64
    op32 = P.Projector(g, (16, 21, 14))
    assert op32.forward(x.real.astype(np.float32)).dtype == np.float32
    assert op32.forward(x.astype(np.complex64)).dtype == np.complex64


# ------------------------------------------------------------------ fast-path slice matrix
def _slice_cases():
    rng = np.random.default_rng(11)
    odd = np.array([0.0, 90.0, 45.0, 135.0, 180.0, -90.0, 270.0, 1e-12, 90 + 1e-12, 44.99999999])
    return [
        (np.linspace(0, 180, 24, endpoint=False), (20, 1, 20), {}),
        (rng.uniform(-360, 360, 17), (13, 1, 21), {"voxel_size": (1.0, 1.0, 1.3)}),
        (odd, (16, 1, 16), {"detector_shape": (1, 30), "det_origin": (0.0, -14.5)}),
        (rng.uniform(0, 180, 9), (11, 1, 7), {"voxel_size": VOX, "detector_shape": (1, 19),
                                              "pixel_size": (VOX[1], 0.7e-8)}),
        (np.linspace(0, 180, 11), (1, 1, 9), {}),
        (np.linspace(0, 180, 11), (9, 1, 1), {}),
        # rays through voxel centres beyond both edges: c hits -1 and n_m - 1 exactly
        (np.array([0.0, 90.0, 180.0, 270.0, 45.0]), (16, 1, 12),
         {"detector_shape": (1, 22), "det_origin": (0.0, -11.0)}),
    ]


def _reference_slice_matrix(op):
    """Dense 2D matrix from the general path's per-view Joseph samples (one y row)."""
    A = np.zeros((op.geometry.n_angles * op.detector_shape[1], op.volume_shape[0] * op.volume_shape[2]))
    for i in range(op.geometry.n_angles):
        ray, idx, w = op._view_samples(np, i, np.float64)
        np.add.at(A, (np.broadcast_to(ray + i * op.detector_shape[1], w.shape), idx), w)
    return A


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_slice_matrix_matches_joseph_samples(dtype):
    """The fast path's directly built CSR matrix is the general path's Joseph operator (same
    weights to the operator's rounding), for odd angles, grids, pixels and detector offsets."""
    for ang, shape, kw in _slice_cases():
        op = P.Projector(Geometry("tomography", ang), shape, dtype=dtype, **kw)
        assert op.fast
        A = op.matrix()
        assert A.dtype == dtype and A.indices.min() >= 0 and A.indices.max() < A.shape[1]
        ref = _reference_slice_matrix(op)
        tol = (1e-6 if dtype == np.float32 else 1e-12) * ref.max()
        np.testing.assert_allclose(A.toarray(), ref, rtol=0, atol=tol)
        # built by several threads in blocks of views: the same arrays
        one = P._stack_rows(op._build_blocks(dtype, 1), np)
        for nb in (2, 3):
            blk = P._stack_rows(op._build_blocks(dtype, nb), np)
            for a, b in ((one.indptr, blk.indptr), (one.indices, blk.indices), (one.data, blk.data)):
                np.testing.assert_array_equal(a, b)


def _csr_arrays(blocks):
    return [(b.indptr, b.indices, b.data) for b in blocks]


@pytest.mark.skipif(not P_kernels.available(), reason="needs numba")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_slice_fill_equals_numpy_fill(dtype, monkeypatch):
    """The numba kernel and the numpy fallback write bitwise the same CSR arrays (same dtypes,
    same indptr and indices, weights equal bit for bit), block by block, also with int64
    indices."""
    rng = np.random.default_rng(17)
    cases = _slice_cases() + [
        (np.linspace(0, 180, 180, endpoint=False), (64, 1, 64), {}),
        (rng.uniform(-360, 360, 41), (37, 1, 23), {"voxel_size": (1.1, 1.0, 0.7),
                                                   "detector_shape": (1, 50), "pixel_size": (1.0, 0.6)}),
    ]
    for idt in (None, np.int64):
        if idt is not None:
            monkeypatch.setattr(P, "_index_dtype", lambda nnz, ncol, idt=idt: idt)
        for ang, shape, kw in cases:
            op = P.Projector(Geometry("tomography", ang), shape, dtype=dtype, **kw)
            for nb in (1, 3):
                fast = op._build_blocks(dtype, nb, compiled=True)
                ref = op._build_blocks(dtype, nb, compiled=False)
                assert len(fast) == len(ref)
                for a, b in zip(_csr_arrays(fast), _csr_arrays(ref)):
                    for x, y in zip(a, b):
                        assert x.dtype == y.dtype and x.shape == y.shape
                        np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))
                assert fast[0].data.dtype == dtype


@pytest.mark.parametrize("bad_guess", [False, True])
def test_slice_rays_match_brute_force(bad_guess, monkeypatch):
    """Planes where each ray touches the volume, and the edge runs, equal a dense evaluation
    of the same float64 sample positions (also when the analytic guess is wrong and the
    bisection fallback has to find them)."""
    if bad_guess:
        rng = np.random.default_rng(3)
        guess = P._root_guess
        monkeypatch.setattr(P, "_root_guess", lambda e, c0, s, nj, ceil: np.clip(
            guess(e, c0, s, nj, ceil) + rng.integers(-9, 9, c0.shape), 0, nj))
    for ang, shape, kw in _slice_cases():
        op = P.Projector(Geometry("tomography", ang), shape, **kw)
        k, s, c0, _, ja, jb, lo, hi = op._slice_rays()
        nz, _, nx = op.volume_shape
        for i in range(len(s)):
            nj, nm = (nz, nx) if k[i] == 0 else (nx, nz)
            j = np.arange(nj)
            c = c0[i][:, None] + s[i] * j.astype(np.float64)[None, :]
            inside = (c > -1) & (c < nm)
            for (a, b), want in (((ja, jb), inside), (lo, inside & (np.floor(c) == -1)),
                                 (hi, inside & (np.floor(c) == nm - 1))):
                np.testing.assert_array_equal((j >= a[i][:, None]) & (j < b[i][:, None]), want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex64])
def test_matrix_free_kernels_apply_the_slice_matrix(dtype, monkeypatch):
    """The compiled matrix-free forward and adjoint apply exactly the Joseph weights of the
    slice matrix (dense reference from the general path), on one and three y rows, real and
    complex, over every edge case of ``_slice_cases``, split over threads."""
    pytest.importorskip("numba")
    monkeypatch.setattr(P, "_THREAD_MIN_WORK", 0)  # thread blocks even for tiny problems
    rng = np.random.default_rng(5)
    cplx = np.dtype(dtype).kind == "c"
    tol = 1e-12 if dtype == np.float64 else 2e-6

    def rand(shape):
        a = rng.standard_normal(shape)
        return (a + 1j * rng.standard_normal(shape) if cplx else a).astype(dtype)

    for ang, shape, kw in _slice_cases():
        A = _reference_slice_matrix(P.Projector(Geometry("tomography", ang), shape, **kw))
        for ny in ((1, 3) if not kw else (1,)):
            nz, _, nx = shape
            op = P.Projector(Geometry("tomography", ang), (nz, ny, nx), **kw)
            assert op.fast
            na, nu = op.geometry.n_angles, op.detector_shape[1]
            vol, proj = rand((nz, ny, nx)), rand((na, ny, nu))
            want_f = (A @ vol.transpose(0, 2, 1).reshape(nz * nx, ny)).reshape(na, nu, ny)
            want_a = (A.T @ proj.transpose(0, 2, 1).reshape(na * nu, ny)).reshape(nz, nx, ny)
            got_f, got_a = op._kernel_apply(vol, False), op._kernel_apply(proj, True)
            assert got_f.dtype == got_a.dtype == dtype
            np.testing.assert_allclose(got_f, want_f.transpose(0, 2, 1),
                                       atol=tol * np.abs(want_f).max())
            np.testing.assert_allclose(got_a, want_a.transpose(0, 2, 1),
                                       atol=tol * np.abs(want_a).max())


def test_matrix_free_first_slice_then_cached_matrix(monkeypatch):
    """CPU policy: the first application of a 2D geometry runs matrix-free (no matrix built),
    the second builds and caches the matrix; many y rows use the matrix at once; an operator
    too large for the cache always runs matrix-free. Results agree throughout."""
    pytest.importorskip("numba")
    monkeypatch.setattr(P, "_MATRIX_FREE", True)
    P.clear_cache()
    rng = np.random.default_rng(2)
    g = Geometry("tomography", np.linspace(0, 180, 40, endpoint=False))
    op = P.Projector(g, (32, 1, 32))
    vol = rng.standard_normal((32, 1, 32)).astype(np.float32)
    p1 = op.forward(vol)
    assert not P.Projector._cache
    p2 = op.forward(vol)
    assert len(P.Projector._cache) == 1
    np.testing.assert_allclose(p1, p2, rtol=0, atol=2e-6 * np.abs(p2).max())
    P.clear_cache()
    op8 = P.Projector(g, (32, 8, 32))
    vol8 = rng.standard_normal((32, 8, 32)).astype(np.float32)
    ref = op8.forward(vol8)
    assert len(P.Projector._cache) == 1
    P.clear_cache()
    monkeypatch.setattr(P.Projector, "_cache_max_nnz", 1000)
    for _ in range(2):
        got = op8.forward(vol8)
        op8.adjoint(got)
        assert not P.Projector._cache
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * np.abs(ref).max())
    P.clear_cache()


def test_operator_cache_counts_stored_nonzeros(monkeypatch):
    monkeypatch.setattr(P, "_THREAD_MIN_WORK", 0)  # build in blocks even for a small problem
    P.clear_cache()
    g = Geometry("tomography", np.linspace(0, 180, 30, endpoint=False))
    op = P.Projector(g, (24, 2, 24))
    ent = op._matrices(np, np.float32)
    assert len(ent.fwd) == P._build_threads()
    assert ent.nnz == sum(b.nnz for b in ent.fwd) == sum(b.nnz for b in ent.adj())
    assert all(np.shares_memory(b.data, bt.data) for b, bt in zip(ent.fwd, ent.adj()))
    assert op._matrices(np, np.float32) is ent  # cached
    # the cache keeps at most _cache_max_nnz nonzeros (but always the newest operator)
    monkeypatch.setattr(P.Projector, "_cache_max_nnz", int(1.5 * ent.nnz))
    for n in (25, 26, 27):
        P.Projector(g, (n, 2, n))._matrices(np, np.float32)
        assert sum(e.nnz for e in P.Projector._cache.values()) <= 1.5 * ent.nnz or \
            len(P.Projector._cache) == 1
    P.clear_cache()


# ------------------------------------------------------------------ analytic phantom
def _ellipsoid_volume(shape, vox, centre, semi, value, sub=4):
    """Supersampled (partial-volume) voxelisation of an axis-aligned ellipsoid."""
    out = np.zeros(shape)
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    coords = [(np.arange(n) - n // 2) * d for n, d in zip(shape, vox)]
    for oz in offs:
        for oy in offs:
            for ox in offs:
                z = (coords[0] + oz * vox[0])[:, None, None]
                y = (coords[1] + oy * vox[1])[None, :, None]
                x = (coords[2] + ox * vox[2])[None, None, :]
                e = (((z - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2
                     + ((x - centre[2]) / semi[2]) ** 2)
                out += e <= 1
    return value * out / sub ** 3


def _chords(op, centre, semi, value):
    """Analytic line integrals of the ellipsoid for every detector pixel of ``op``."""
    R = op.geometry.rotations()
    nv, nu = op.detector_shape
    v = op.det_origin[0] + np.arange(nv) * op.pixel_size[0]
    u = op.det_origin[1] + np.arange(nu) * op.pixel_size[1]
    sh = op.geometry.shifts_px() * op.pixel_size
    out = np.zeros(op.shape_out)
    q = 1 / np.asarray(semi) ** 2
    for i in range(R.shape[0]):
        M = R[i].T
        d = M[:, 0]
        vv, uu = np.meshgrid(v - sh[i, 0], u - sh[i, 1], indexing="ij")
        p = M[:, 1, None, None] * vv + M[:, 2, None, None] * uu - np.asarray(centre)[:, None, None]
        a = np.sum(q * d ** 2)
        b = 2 * np.sum(q[:, None, None] * d[:, None, None] * p, axis=0)
        c = np.sum(q[:, None, None] * p ** 2, axis=0) - 1
        disc = np.maximum(b * b - 4 * a * c, 0)
        out[i] = value * np.sqrt(disc) / a  # |t2 - t1| with |d| = 1
    return out


@pytest.mark.parametrize("kind", ["tomography", "laminography", "posed"])
def test_projection_of_ellipsoid_matches_analytic_line_integrals(kind):
    """Joseph projections of a partial-volume ellipsoid vs its closed-form chord lengths.

    Away from the rim (chord > half the longest) the relative error is < 1% for 95% of the
    rays (< 1.5% for 99%), < 0.3% on average and < 3% for the worst ray: a linearly interpolating projector
    misplaces each crossing of a sharp boundary by a fraction of a voxel, i.e. ~1% of a
    40-80 voxel chord. The mean signed error (bias) is < 0.2%.
    """
    vox = np.array([2e-9, 2e-9, 2e-9])
    shape = (64, 64, 64)
    centre = (2e-9, -3e-9, 4e-9)
    semi = (52e-9, 44e-9, 34e-9)
    f = _ellipsoid_volume(shape, vox, centre, semi, 3.0)
    g = _geometries(5)[kind]
    op = P.Projector(g, shape, voxel_size=vox, dtype=np.float64)
    num = op.forward(f)
    ana = _chords(op, centre, semi, 3.0)
    inner = ana > 0.5 * ana.max()  # away from the ellipsoid's rim
    err = (num - ana)[inner] / ana[inner]
    assert inner.sum() > 4000
    assert np.percentile(np.abs(err), 95) < 0.01
    assert np.percentile(np.abs(err), 99) < 0.015
    assert np.mean(np.abs(err)) < 0.003
    assert abs(np.mean(err)) < 0.002
    assert np.abs(err).max() < 0.03
    # line integrals are in metres: the longest chord is 2 * semi-axis * value
    assert ana.max() <= 2 * max(semi) * 3.0 * (1 + 1e-9)


def test_convention_matches_scikit_image_radon_with_negated_angles():
    from skimage.transform import radon

    n = 48
    yy, xx = np.mgrid[:n, :n] - n // 2
    img = np.exp(-((yy - 5) ** 2 / 40 + (xx + 3) ** 2 / 15)) + (np.abs(yy + 8) < 3) * (np.abs(xx) < 10)
    img = img * ((yy ** 2 + xx ** 2) < (n // 2 - 1) ** 2)
    ang = np.array([0.0, 23.0, 71.0, 130.0])
    p = tomo.project(volume(img[:, None, :].astype(np.float64), voxel_size=1.0), ang,
                     dtype=np.float64).values[:, 0, :]
    s = radon(img, -ang, circle=True).T
    assert np.abs(p - s).max() / np.abs(s).max() < 0.03


def test_geometry_conventions():
    ang = np.array([0.0, 33.0, 91.0])
    g = Geometry("laminography", ang, tilt=61.108)
    R = g.rotations()
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0)
    # the rotation axis (sample y) makes the angle `tilt` with the beam (lab z), in the y-z plane
    axis_lab = R[:, :, 1]
    np.testing.assert_allclose(axis_lab[:, 0], np.cos(np.deg2rad(61.108)), atol=1e-12)
    np.testing.assert_allclose(axis_lab[:, 2], 0.0, atol=1e-12)
    # laminography at 90 deg is tomography, and runs on the separable fast path
    t90 = Geometry("laminography", ang, tilt=90)
    np.testing.assert_allclose(t90.rotations(), Geometry("tomography", ang).rotations())
    assert P.Projector(t90, (4, 5, 6)).fast
    # Euler convention: extrinsic x-y-z, R = Rz Ry Rx; a pure ry pose adds to the angle
    e = euler_xyz([[0.0, 12.0, 0.0]])
    np.testing.assert_allclose(e @ Geometry("tomography", [20.0]).rotations(),
                               Geometry("tomography", [32.0]).rotations(), atol=1e-12)
    # attrs round trip
    gp = Geometry("posed", ang, tilt=80, poses=RNG.normal(0, 2, (3, 3)), shifts=RNG.normal(0, 1, (3, 2)))
    back = Geometry.from_attrs(gp.to_attrs(), ang)
    np.testing.assert_allclose(back.rotations(), gp.rotations())
    np.testing.assert_allclose(back.shifts_px(), gp.shifts_px())


def test_posed_shift_and_rotation_equivalences():
    n = 24
    f = _ellipsoid_volume((n, n, n), (1, 1, 1), (1, 0, -2), (6, 8, 5), 1.0, sub=2)
    ang = np.array([10.0, 60.0])
    base = tomo.project(f, ang, dtype=np.float64).values
    # a shift of whole pixels moves the projection by that many pixels (+x, +y)
    sh = tomo.project(f, ang, geometry="posed", shifts=[[0, 3], [2, 0]], dtype=np.float64).values
    np.testing.assert_allclose(sh[0, :, 3:], base[0, :, :-3], atol=1e-12)
    np.testing.assert_allclose(sh[1, 2:, :], base[1, :-2, :], atol=1e-12)
    # rotation about lab y by ry adds to the nominal angle
    po = tomo.project(f, ang, geometry="posed", poses=[[0, 5, 0], [0, -7, 0]], dtype=np.float64).values
    ref = tomo.project(f, ang + [5, -7], dtype=np.float64).values
    np.testing.assert_allclose(po, ref, atol=1e-9)
    # a rotation about the beam (rz) rotates the projection image in the detector plane
    pz = tomo.project(f, [0.0], geometry="posed", poses=[[0, 0, 90]], dtype=np.float64).values[0]
    p0 = tomo.project(f, [0.0], dtype=np.float64).values[0]
    # Rz(90): lab (y, x) = (x_s, -y_s), so pz(v, u) = p0(y=-u, x=v); centred coords -> index n - j
    i, j = np.meshgrid(np.arange(n), np.arange(1, n), indexing="ij")
    np.testing.assert_allclose(pz[i, j], p0[n - j, i], atol=1e-9)


def test_project_backproject_dataarrays_and_units():
    n = 16
    vs = 5e-9
    cube = volume(np.ones((n, n, n), dtype=np.float32), voxel_size=vs)
    p = tomo.project(cube, [0.0, 90.0])
    assert p.dims == ("angle", "y", "x")
    assert p.attrs["geometry"] == "tomography" and p.attrs["tilt"] == 90.0
    np.testing.assert_allclose(p.attrs["voxel_size"], [vs] * 3)
    # line integral through a cube of value 1: n * voxel (metres)
    assert float(p.values[0, 5, 8]) == pytest.approx(n * vs, rel=1e-5)
    np.testing.assert_allclose(p["x"].values, cube["x"].values)
    bp = tomo.backproject(p)
    assert bp.dims == ("z", "y", "x") and bp.shape == (n, n, n)
    np.testing.assert_allclose(bp["z"].values, cube["z"].values)
    # a volume with non-centred coordinates keeps its origin
    shifted = cube.assign_coords(x=cube["x"] + 3 * vs)
    assert not np.allclose(tomo.project(shifted, [0.0]).values, p.values[:1])


# ------------------------------------------------------------------ bad input
def test_bad_input_raises_validation_errors():
    vol = np.zeros((8, 8, 8), dtype=np.float32)
    with pytest.raises(ValidationError, match="angles"):
        tomo.project(vol, [0.0, 400.0])
    with pytest.raises(ValidationError, match="angles"):
        tomo.project(vol, [0.0, np.nan])
    with pytest.raises(ValidationError, match="angles"):
        tomo.project(vol, [])
    bad = vol.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValidationError, match="NaN"):
        tomo.project(bad, [0.0])
    with pytest.raises(ValidationError, match="expected"):
        tomo.project(np.zeros((8, 8)), [0.0])
    with pytest.raises(ValidationError, match="dims"):
        tomo.project(xr.DataArray(vol, dims=("a", "b", "c")), [0.0])
    with pytest.raises(ValidationError, match="tilt"):
        tomo.project(vol, [0.0], geometry="laminography", tilt=120)
    with pytest.raises(ValidationError, match="tilt"):
        tomo.project(vol, [0.0], geometry="tomography", tilt=60)
    with pytest.raises(ValidationError, match="geometry"):
        tomo.project(vol, [0.0], geometry="helical")
    with pytest.raises(ValidationError, match="poses"):
        tomo.project(vol, [0.0, 10.0], geometry="posed", poses=np.zeros((3, 3)))
    with pytest.raises(ValidationError, match="poses"):
        tomo.project(vol, [0.0], geometry="tomography", poses=np.zeros((1, 3)))
    op = P.Projector(Geometry("tomography", [0.0, 10.0]), (8, 8, 8))
    with pytest.raises(ValidationError, match="volume"):
        op.forward(np.zeros((8, 8, 9), dtype=np.float32))
    with pytest.raises(ValidationError, match="projections"):
        op.adjoint(np.zeros((3, 8, 8), dtype=np.float32))
    p = tomo.project(vol, [0.0, 10.0])
    with pytest.raises(ValidationError, match="NaN"):
        tomo.backproject(p.where(p.x < 0))
    with pytest.raises(ValidationError, match="dims"):
        tomo.backproject(p.transpose("y", "angle", "x"))


# ------------------------------------------------------------------ torch
def test_torch_gradcheck_volume():
    torch = pytest.importorskip("torch")
    for kind in ("tomography", "laminography"):
        op = P.Projector(_geometries(3)[kind], (4, 5, 6), dtype=np.float64)
        x = torch.randn(4, 5, 6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda v, op=op: tomo.project_torch(v, op), (x,))
        xc = torch.randn(4, 5, 6, dtype=torch.complex128, requires_grad=True)
        assert torch.autograd.gradcheck(lambda v, op=op: tomo.project_torch(v, op), (xc,), fast_mode=True)
        y = torch.randn(*op.shape_out, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda p, op=op: tomo.backproject_torch(p, op), (y,),
                                        fast_mode=True)


def test_torch_gradcheck_pose():
    """grid_sample projector: full Jacobian check for the pose (3 Euler angles + 2 shifts per
    view), and a randomised (fast-mode) check jointly with the 6^3 volume."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    vol = torch.randn(6, 6, 6, dtype=torch.float64, requires_grad=True)
    eul = torch.tensor(rng.normal(0, 5, (2, 3)), requires_grad=True)
    sh = torch.tensor(rng.normal(0, 0.7, (2, 2)), requires_grad=True)

    def f(v, e, s):
        return tomo.posed_project(v, [10.0, 130.0], tilt=70.0, poses=e, shifts=s)

    assert torch.autograd.gradcheck(lambda e, s: f(vol.detach(), e, s), (eul, sh), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(f, (vol, eul, sh), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("kind", ["tomography", "laminography", "posed"])
def test_torch_pose_projector_agrees_with_joseph(kind):
    torch = pytest.importorskip("torch")
    n = 28
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    blob = np.exp(-((z - 2) ** 2 / 30 + (y + 1) ** 2 / 50 + (x - 3) ** 2 / 20))
    g = _geometries(4)[kind]
    op = P.Projector(g, (n, n, n), voxel_size=2e-9, dtype=np.float64)
    ref = op.forward(blob)
    e = None if g.poses is None else torch.tensor(g.poses)
    s = None if g.shifts is None else torch.tensor(g.shifts)
    out = tomo.posed_project(torch.tensor(blob), g.angles, tilt=g.tilt, poses=e,
                             shifts=s, detector_shape=op.detector_shape, voxel_size=2e-9).numpy()
    assert np.abs(out - ref).max() / np.abs(ref).max() < 0.01


def test_torch_module_optimises_volume():
    torch = pytest.importorskip("torch")
    op = P.Projector(Geometry("tomography", np.linspace(0, 180, 20, endpoint=False)), (12, 2, 12))
    truth = np.zeros((12, 2, 12), np.float32)
    truth[3:8, :, 4:9] = 1
    b = torch.from_numpy(op.forward(truth))
    x = torch.zeros(12, 2, 12, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.05)
    mod = tomo.torch_ops.ProjectorModule(op)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = ((mod(x) - b) ** 2).sum()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.05 * losses[0]


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(), reason="needs a CUDA GPU with cupy")
def test_gpu_matches_numpy():
    import cupy

    rng = np.random.default_rng(2)
    for g in _geometries(5).values():
        op = P.Projector(g, (10, 11, 12), dtype=np.float64)
        x = rng.normal(size=op.shape_in)
        y = rng.normal(size=op.shape_out)
        np.testing.assert_allclose(op.forward(cupy.asarray(x)).get(), op.forward(x), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(op.adjoint(cupy.asarray(y)).get(), op.adjoint(y), rtol=1e-9, atol=1e-12)
    p = tomo.project(np.ones((16, 4, 16), np.float32), np.linspace(0, 180, 30, endpoint=False))
    np.testing.assert_allclose(tomo.fbp(p, device="gpu").data.get(), tomo.fbp(p).values, atol=1e-4)


def test_project_warns_when_the_volume_leaves_the_detector():
    """A volume with coordinates starting at 0 (the common ``np.arange(n) * pixel``) rotates
    about its corner: half of it misses the default detector at 0 deg. project() says so, with
    the fraction lost (checked against a detector large enough for everything); a centred volume
    gives no warning, and its projections keep the mass (line integrals conserve it)."""
    import warnings

    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    from ptynb import data as pdata
    from ptynb.tomo.projector import Projector, volume_outside_detector

    n, px = 96, 1e-9
    sl = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True).astype(np.float32)
    vol = pdata.volume(sl[:, None, :], voxel_size=px)  # (z, y=1, x): the slice the views turn in
    ang = np.linspace(0, 180, 30, endpoint=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = tomo.project(vol, ang)
    mass = float(sl.sum(dtype=np.float64)) * px ** 3
    got = p.values.reshape(ang.size, -1).sum(axis=1, dtype=np.float64) * px ** 2
    np.testing.assert_allclose(got, mass, rtol=2e-3)
    corner = vol.assign_coords(z=np.arange(n) * px, x=np.arange(n) * px)
    with pytest.warns(UserWarning, match=r"leaves the detector in \d+ of 30 views \(up to (\d+\.\d) %") as rec:
        clipped = tomo.project(corner, ang)
    big = tomo.project(corner, ang, detector_shape=(1, 4 * n))
    truth = 1 - clipped.values.reshape(30, -1).sum(1) / big.values.reshape(30, -1).sum(1)
    import re

    reported = float(re.search(r"up to (\d+\.\d) %", str(rec[0].message)).group(1))
    assert reported == pytest.approx(100 * truth.max(), abs=0.2)
    assert truth.max() > 0.3  # about half the object is lost at some angles
    op = Projector(tomo.Geometry("tomography", ang), (n, 1, n), None, px,
                   vol_origin=(0.0, 0.0, 0.0))
    lost = volume_outside_detector(op, sl[:, None, :])
    np.testing.assert_allclose(lost, np.clip(truth, 0, 1), atol=3e-3)
