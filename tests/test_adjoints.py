"""Dot-product (adjoint) and linearity tests of every linear operator in ptynb.

One harness (:mod:`adjoint_harness`): ``<A x, y> == <x, A^H y>`` for random x, y, relative to
``|A x| |y|``; float32 tolerance 1e-5, float64 1e-12; numpy, torch where the operator has a
torch path, cupy when a GPU is present (skipped otherwise). Measured mismatches (CPU, this
machine) are in each test's docstring; run with ``-s`` to print them all.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from adjoint_harness import REAL, assert_adjoint, assert_linear, backend, to_numpy

# modules by their full names (``ptynb.physics.multislice`` is also a function name there)
ms = importlib.import_module("ptynb.physics.multislice")
prop = importlib.import_module("ptynb.physics.propagation")
engines = importlib.import_module("ptynb.ptycho.engines")
ops = importlib.import_module("ptynb.ptycho.operators")
P = importlib.import_module("ptynb.tomo.projector")
from ptynb.tomo.geometry import Geometry

from ptynb.imaging import shift_image  # noqa: E402


MEASURED: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if MEASURED:
        w = max(len(k) for k in MEASURED)
        print("\nmeasured relative mismatch per operator / case:")
        for k, v in MEASURED.items():
            print(f"  {k:<{w}}  {v:.2e}")


def _check(label, fwd, adj, x, y, linear=True, rtol=None):
    MEASURED[label] = assert_adjoint(fwd, adj, x, y, rtol=rtol, label=label)
    if linear and to_numpy(x).dtype in (np.float64, np.complex128):  # precision-independent
        MEASURED[label + " [linearity]"] = assert_linear(fwd, x, copy_like(x), rtol=rtol,
                                                         label=label)


def copy_like(x):
    """A second input of the same kind: x rolled and scaled (not a multiple of x)."""
    a = to_numpy(x)
    b = np.roll(a[::-1], 3).copy() * 0.5 + np.sin(np.arange(a.size)).reshape(a.shape).astype(a.dtype)
    if hasattr(x, "detach"):
        import torch
        return torch.from_numpy(b.astype(a.dtype))
    if type(x).__module__.startswith("cupy"):
        import cupy
        return cupy.asarray(b.astype(a.dtype))
    return b.astype(a.dtype)


CPLX = [np.complex64, np.complex128]
ALL = [np.float32, np.float64, np.complex64, np.complex128]
XP = ["numpy", pytest.param("cupy", marks=pytest.mark.gpu)]  # operators without a torch path


def _name(dtype):
    return np.dtype(dtype).name


# ============================================================================ propagation
PS, LAM = 50e-9, 1e-10  # X-ray: 50 nm pixels, 12.4 keV


@pytest.mark.parametrize("xp", XP)
@pytest.mark.parametrize("dtype", CPLX, ids=_name)
@pytest.mark.parametrize("method", ["angular_spectrum", "fresnel"])
@pytest.mark.parametrize("band_limit,tilt", [(True, (0.0, 0.0)), (False, (0.0, 0.0)),
                                             (True, (0.01, -0.02))])
def test_propagate_adjoint_is_backward_propagation(xp, dtype, method, band_limit, tilt):
    """propagate(., z)^H = propagate(., -z) (same tilt): measured ~1e-8 (complex64: the
    float32 FFT) and ~1e-17 (complex128; the kernel itself is complex64 but H(-z) = conj H(z)
    bit for bit). z = 1 mm makes the band limit cut ~25 % of the spectrum."""
    B = backend(xp)
    rng = np.random.default_rng(0)
    x, y = B.random((2, 24, 31), dtype, rng), B.random((2, 24, 31), dtype, rng)
    z = 1e-3
    kw = {"method": method, "tilt": tilt, "band_limit": band_limit}
    _check(f"propagate {method} bl={band_limit} tilt={tilt} {_name(dtype)} {xp}",
           lambda w: prop.propagate(w, z, PS, LAM, **kw),
           lambda w: prop.propagate(w, -z, PS, LAM, **kw), x, y)


@pytest.mark.parametrize("method", ["angular_spectrum", "fresnel"])
def test_propagate_unitary_without_band_limit(method):
    """Without band limit (and no evanescent waves at 50 nm pixels) the propagator is unitary:
    the adjoint (backward propagation) is the inverse. Measured 3.5e-8 on complex128 data: the
    cached kernel is complex64, so |H| = 1 only to float32 rounding."""
    x = backend("numpy").random((24, 31), np.complex128, np.random.default_rng(1))
    w = prop.propagate(prop.propagate(x, 1e-3, PS, LAM, method=method, band_limit=False),
                       -1e-3, PS, LAM, method=method, band_limit=False)
    err = np.linalg.norm(w - x) / np.linalg.norm(x)
    MEASURED[f"propagate {method} inverse == adjoint"] = err
    assert err < 1e-6


@pytest.mark.parametrize("xp", XP)
@pytest.mark.parametrize("dtype", CPLX, ids=_name)
@pytest.mark.parametrize("shape", [(16, 16), (15, 22)])
def test_far_field_adjoint_is_inverse(xp, dtype, shape):
    """far_field^H = inverse_far_field (orthonormal FFT + fftshift, odd and even sizes)."""
    B = backend(xp)
    rng = np.random.default_rng(2)
    x, y = B.random((3, *shape), dtype, rng), B.random((3, *shape), dtype, rng)
    _check(f"far_field {shape} {_name(dtype)} {xp}", prop.far_field, prop.inverse_far_field, x, y)


# ============================================================================ multislice
def _slices(rng, S, shape, dtype):
    t = np.exp(1j * rng.uniform(-1, 1, (S, *shape))) * rng.uniform(0.5, 1.0, (S, *shape))
    return t.astype(dtype)


def _multislice_adjoint(slices, kernels):
    """The back-propagation through conjugate slices, written with the package's own
    multislice: ``A^H = T_0^* P^H ... P^H T_{S-1}^*`` = multislice over the reversed, conjugated
    slices with the conjugated (= backward, -dz) kernels in reverse order."""
    rs = np.conj(slices[::-1])
    rk = [np.conj(k) for k in kernels[::-1]]
    return lambda w: ms.multislice(w, rs, PS, LAM, 1.0, kernel=rk)


@pytest.mark.parametrize("dtype", CPLX, ids=_name)
@pytest.mark.parametrize("tilt", [(0.0, 0.0), (0.02, 0.01)])
@pytest.mark.parametrize("gaps", [[2e-7], [1e-7, 3e-7, 2e-7]])
def test_multislice_adjoint_is_conjugate_backpropagation(dtype, tilt, gaps):
    """Incident wave -> exit wave for a fixed object is linear; its adjoint is back-propagation
    through the conjugate slices (conjugate kernels = propagation over -dz). Measured ~1e-8
    (complex64) / ~1e-17 (complex128). The package has no standalone multislice adjoint (the
    engines inline it with ``conj(kernel)``); this pins the identity they rely on, and checks
    that the conjugate kernel equals the backward kernel ``angular_spectrum_kernel(-dz)``."""
    rng = np.random.default_rng(3)
    S = len(gaps) + 1 if len(gaps) > 1 else 4
    dz = gaps if len(gaps) > 1 else gaps[0]
    shape = (20, 23)
    t = _slices(rng, S, (2, *shape), dtype)  # (S, batch, py, px)
    kernels = ms.slice_kernels(shape, PS, LAM, dz, S, tilt=tilt)
    back = [prop.angular_spectrum_kernel(shape, PS, LAM, -float(d), tilt=tilt)
            for d in np.broadcast_to(dz, (S - 1,))]
    for k, kb in zip(kernels, back):
        np.testing.assert_array_equal(np.conj(k), kb)
    B = backend("numpy")
    x, y = B.random((2, *shape), dtype, rng), B.random((2, *shape), dtype, rng)
    _check(f"multislice S={S} tilt={tilt} {_name(dtype)}",
           lambda w: ms.multislice(w, t, PS, LAM, dz, tilt=tilt),
           _multislice_adjoint(t, kernels), x, y)


@pytest.mark.parametrize("dtype", CPLX, ids=_name)
def test_engine_propagate_and_fft2_adjoint(dtype):
    """The engines' FFT2 (pyfftw plans, in place) forward^H = inverse, and the LSQ-ML
    propagation ``_propagate(., H)`` has adjoint ``_propagate(., conj(H))``, as the engine uses
    for back-propagation. Measured ~1e-8 / ~1e-17."""
    fft = ops.FFT2(np)
    H = prop.angular_spectrum_kernel((16, 16), PS, LAM, 3e-7, tilt=(0.01, 0.0))

    def aligned(f):
        def g(w):
            b = ops.empty(w.shape, np, w.dtype)
            b[...] = w
            return f(b)
        return g

    rng = np.random.default_rng(4)
    B = backend("numpy")
    x, y = B.random((3, 2, 16, 16), dtype, rng), B.random((3, 2, 16, 16), dtype, rng)
    _check(f"FFT2 forward/inverse {_name(dtype)}", aligned(fft.forward), aligned(fft.inverse), x, y)
    _check(f"engines._propagate H/conj(H) {_name(dtype)}",
           aligned(lambda w: engines._propagate(w, H, fft)),
           aligned(lambda w: engines._propagate(w, np.conj(H), fft)), x, y)


# ============================================================================ sub-pixel shifts
@pytest.mark.parametrize("xp", XP)
@pytest.mark.parametrize("dtype", ALL, ids=_name)
@pytest.mark.parametrize("shape,batched", [((16, 16), False), ((15, 20), True)])
def test_shift_image_adjoint_is_negative_shift(xp, dtype, shape, batched):
    """shift_image(., s)^H = shift_image(., -s), complex and real (real: the real part of the
    shifted signal, a real-linear map whose adjoint is again Re of the negative shift; even
    sizes exercise the Nyquist term). Measured ~1e-8 (32-bit) / ~1e-17 (64-bit)."""
    B = backend(xp)
    rng = np.random.default_rng(5)
    s = np.array([[0.37, -1.61], [2.2, 0.05], [-0.5, 0.5]]) if batched else np.array([0.37, -1.61])
    x, y = B.random((3, *shape), dtype, rng), B.random((3, *shape), dtype, rng)
    sp = B.asarray(s)
    sm = B.asarray(-s)
    _check(f"shift_image {shape} batched={batched} {_name(dtype)} {xp}",
           lambda w: shift_image(w, sp), lambda w: shift_image(w, sm), x, y)


@pytest.mark.parametrize("xp", XP)
@pytest.mark.parametrize("dtype", CPLX, ids=_name)
def test_shift_waves_adjoint(xp, dtype):
    """Engines' sub-pixel probe shift shift_waves(., ramps) has adjoint shift_waves(., conj=True)
    (ramps from fourier_shift_ramps). Measured ~1e-8 (complex64) / ~2e-17 (complex128)."""
    B = backend(xp)
    fft = ops.FFT2(B.mod)
    ry, rx = ops.fourier_shift_ramps(np.array([0.3, -0.45, 0.0]), np.array([-0.2, 0.49, 0.1]), 16,
                                     B.mod)
    rng = np.random.default_rng(7)
    x, y = B.random((3, 2, 16, 16), dtype, rng), B.random((3, 2, 16, 16), dtype, rng)
    _check(f"shift_waves {_name(dtype)} {xp}", lambda w: ops.shift_waves(w, ry, rx, fft),
           lambda w: ops.shift_waves(w, ry, rx, fft, conj=True), x, y)


def test_compiled_ramp_multiply_adjoint():
    """The compiled LSQ-ML sub-pixel probe ops (ptynb.ptycho._kernels, numba, complex64):
    ``ramp_multiply`` (spectrum times ramps) has adjoint ``add_ramp_multiply`` into zeros
    (spectrum times conjugate ramps). Measured ~1e-8."""
    K = importlib.import_module("ptynb.ptycho._kernels")
    if not K.available():
        pytest.skip("numba unavailable")
    ry, rx = ops.fourier_shift_ramps(np.array([0.31]), np.array([-0.42]), 16)
    rng = np.random.default_rng(16)
    B = backend("numpy")
    x, y = B.random((2, 16, 16), np.complex64, rng), B.random((2, 16, 16), np.complex64, rng)

    def fwd(F):
        out = np.empty_like(F)
        K.ramp_multiply(F, ry[0], rx[0], np.float32(1.0), out)
        return out

    def adj(G):
        acc = np.zeros_like(G)
        K.add_ramp_multiply(G, ry[0], rx[0], acc)
        return acc

    _check("ptycho._kernels ramp_multiply/add_ramp_multiply complex64", fwd, adj, x, y)


# ============================================================================ patches
def _positions(Y, X, n):
    # overlapping, repeated, and at all four edges
    iy = np.array([0, 0, 3, 10, Y - n, Y - n, 7, 7])
    ix = np.array([0, X - n, 7, 12, 0, X - n, 5, 5])
    return iy, ix


@pytest.mark.parametrize("xp", XP)
@pytest.mark.parametrize("dtype", ALL, ids=_name)
@pytest.mark.parametrize("subpixel", [False, True])
def test_extract_scatter_patches_adjoint(xp, dtype, subpixel):
    """extract_patches^H = scatter_add_patches into zeros (overlapping, repeated and edge
    windows); sub-pixel: extract then shift_waves, adjoint shift_waves(conj) then scatter.
    Measured ~1e-8 (32-bit) / ~1e-17 (64-bit); exactly 0 for the integer real case."""
    if subpixel and np.dtype(dtype).kind != "c":
        pytest.skip("the sub-pixel shift is complex")
    B = backend(xp)
    L, Y, X, n = 2, 30, 27, 12
    iy, ix = _positions(Y, X, n)
    iyd, ixd = (B.asarray(iy), B.asarray(ix)) if xp == "cupy" else (iy, ix)
    fft = ops.FFT2(B.mod)
    ry, rx = ops.fourier_shift_ramps(np.linspace(-0.5, 0.5, iy.size), np.linspace(0.4, -0.3, iy.size),
                                     n, B.mod)

    def fwd(o):
        p = ops.extract_patches(o, iyd, ixd, n)
        return ops.shift_waves(p, ry, rx, fft) if subpixel else p

    def adj(p):
        if subpixel:
            p = ops.shift_waves(p, ry, rx, fft, conj=True)
        t = B.mod.zeros((L, Y, X), dtype=p.dtype)
        return ops.scatter_add_patches(t, p, iy, ix)

    rng = np.random.default_rng(8)
    x, y = B.random((L, Y, X), dtype, rng), B.random((iy.size, L, n, n), dtype, rng)
    _check(f"extract/scatter subpixel={subpixel} {_name(dtype)} {xp}", fwd, adj, x, y)


@pytest.mark.parametrize("s", [2, 3])
def test_bin_expand_adjoint(s):
    """bin_intensity^T = expand_ratio (detector binning in unshifted order, odd N)."""
    rng = np.random.default_rng(9)
    B = backend("numpy")
    x, y = B.random((2, 5 * s, 5 * s), np.float64, rng), B.random((2, 5, 5), np.float64, rng)
    _check(f"bin_intensity/expand_ratio s={s}", lambda a: ops.bin_intensity(a, s),
           lambda a: ops.expand_ratio(a, s), x, y)


# ============================================================================ tomography projector
def _geometry(kind, n=7):
    rng = np.random.default_rng(10)
    if kind == "tomography":
        return Geometry.make(np.linspace(0, 180, n, endpoint=False), "tomography")
    if kind == "laminography":
        return Geometry.make(np.linspace(0, 330, n), "laminography", 61.108)
    return Geometry.make(np.linspace(0, 170, n), "posed", 75.0, rng.normal(0, 4, (n, 3)),
                         rng.normal(0, 1.5, (n, 2)))


VOX = 1e-6
# (kind, path): tomography fast path by its three CPU implementations + the general code;
# laminography / posed only have the general path (cached sparse matrix or on the fly)
PATHS = [("tomography", "kernels"), ("tomography", "csr"), ("tomography", "csr-numpy-fill"),
         ("tomography", "general-sparse"), ("tomography", "general-on-the-fly"),
         ("laminography", "general-sparse"), ("laminography", "general-on-the-fly"),
         ("posed", "general-sparse"), ("posed", "general-on-the-fly")]
SHAPES = [(9, 1, 8), (6, 5, 7), (8, 4, 8)]  # 2D slice (tomography only), odd, even
CASES = [(k, p, s) for k, p in PATHS for s in SHAPES if k == "tomography" or s[1] > 1]


def _select_path(op, path, monkeypatch):
    """Force one implementation (the env vars PTYNB_TOMO_MATRIX_FREE / PTYNB_TOMO_NUMBA are
    read at import, so the module flags they set are patched instead); returns a list that
    records the kernel calls, to prove the path was taken."""
    P.clear_cache()
    calls = []
    if path == "kernels":
        from ptynb.tomo import _kernels

        if not _kernels.available():
            pytest.skip("numba kernels unavailable")
        monkeypatch.setattr(P, "_MATRIX_FREE", True)
        monkeypatch.setattr(P.Projector, "_cache_max_nnz", 0)  # always matrix-free
        orig = P.Projector._kernel_apply
        monkeypatch.setattr(P.Projector, "_kernel_apply",
                            lambda self, a, t: calls.append(t) or orig(self, a, t))
    elif path.startswith("csr"):
        monkeypatch.setattr(P, "_MATRIX_FREE", False)
        if path == "csr-numpy-fill":
            monkeypatch.setattr(P, "_USE_NUMBA", False)
    elif path.startswith("general"):
        op.fast = False
        if path == "general-on-the-fly":
            monkeypatch.setattr(P, "_SPARSE_MAX_NNZ", 0)
    if path in ("kernels", "csr", "csr-numpy-fill"):
        assert op.fast
    return calls


@pytest.mark.parametrize("dtype", ALL, ids=_name)
@pytest.mark.parametrize("kind,path,shape", CASES,
                         ids=[f"{k}-{p}-{'x'.join(map(str, s))}" for k, p, s in CASES])
def test_projector_adjoint(kind, path, shape, dtype, monkeypatch):
    """Projector.forward^T = Projector.adjoint on every CPU path, 2D (ny = 1) and 3D, odd and
    even sizes, real and complex, float32 and float64 operators (the operator precision follows
    the data's). Measured ~1e-8 (32-bit) / ~1e-16 (64-bit) on all paths."""
    op = P.Projector(_geometry(kind), shape, voxel_size=VOX, dtype=REAL[np.dtype(dtype).type])
    calls = _select_path(op, path, monkeypatch)
    rng = np.random.default_rng(11)
    B = backend("numpy")
    x, y = B.random(op.shape_in, dtype, rng), B.random(op.shape_out, dtype, rng)
    _check(f"Projector {kind} {path} {shape} {_name(dtype)}", op.forward, op.adjoint, x, y)
    if path == "kernels":
        assert True in calls and False in calls


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.complex128], ids=_name)
@pytest.mark.parametrize("kind", ["tomography", "laminography"])
def test_projector_adjoint_cupy(kind, dtype):
    """The GPU paths (cupyx sparse) of Projector."""
    B = backend("cupy")
    op = P.Projector(_geometry(kind), (6, 5, 7), voxel_size=VOX, dtype=REAL[np.dtype(dtype).type])
    rng = np.random.default_rng(12)
    x, y = B.random(op.shape_in, dtype, rng), B.random(op.shape_out, dtype, rng)
    _check(f"Projector {kind} {_name(dtype)} cupy", op.forward, op.adjoint, x, y)


@pytest.mark.parametrize("kind", ["tomography", "laminography"])
def test_public_project_backproject_adjoint(kind):
    """ptynb.tomo.backproject is the adjoint of ptynb.tomo.project (DataArray level, the grid
    read back from the attrs). Measured ~1e-16 (float64 operator)."""
    from ptynb.tomo import backproject, project

    ang = np.linspace(0, 180 if kind == "tomography" else 330, 7)
    tilt = None if kind == "tomography" else 61.108
    rng = np.random.default_rng(13)
    x = rng.standard_normal((6, 5, 7))
    template = project(x, ang, geometry=kind, tilt=tilt, voxel_size=VOX, dtype=np.float64)
    y = rng.standard_normal(template.shape)
    _check(f"project/backproject {kind}",
           lambda v: project(v, ang, geometry=kind, tilt=tilt, voxel_size=VOX,
                             dtype=np.float64).values,
           lambda p: backproject(template.copy(data=p), dtype=np.float64).values, x, y)


# ---------------------------------------------------------------------------- torch
def _torch_adjoint(fn, shape_in, dtype):
    import torch

    def adj(y):
        x0 = torch.zeros(shape_in, dtype=dtype, requires_grad=True)
        (g,) = torch.autograd.grad(fn(x0), x0, grad_outputs=y)
        return g
    return adj


TDT = {np.float32: "float32", np.float64: "float64", np.complex64: "complex64",
       np.complex128: "complex128"}


@pytest.mark.parametrize("dtype", ALL, ids=_name)
@pytest.mark.parametrize("kind", ["tomography", "laminography"])
def test_project_torch_autograd_adjoint(kind, dtype):
    """project_torch's backward (A^T through autograd) and backproject_torch are adjoints of
    project_torch. Measured ~1e-8 / ~1e-16."""
    torch = pytest.importorskip("torch")
    from ptynb.tomo.torch_ops import backproject_torch, project_torch

    op = P.Projector(_geometry(kind), (6, 5, 7), voxel_size=VOX, dtype=REAL[np.dtype(dtype).type])
    B = backend("torch")
    rng = np.random.default_rng(14)
    x, y = B.random(op.shape_in, dtype, rng), B.random(op.shape_out, dtype, rng)
    tdt = getattr(torch, TDT[dtype])
    fwd = lambda v: project_torch(v, op)
    _check(f"project_torch VJP {kind} {_name(dtype)}", fwd,
           _torch_adjoint(fwd, op.shape_in, tdt), x, y)
    _check(f"project_torch/backproject_torch {kind} {_name(dtype)}", fwd,
           lambda p: backproject_torch(p, op), x, y, linear=False)


def _posed(volume, angles, tilt, det_shape=None, euler=None, shifts=None, voxel_size=VOX):
    from ptynb.tomo.torch_ops import posed_project

    return posed_project(volume, angles, tilt=tilt, voxel_size=voxel_size,
                         detector_shape=None if det_shape is None else tuple(det_shape),
                         poses=euler, shifts=shifts)


@pytest.mark.parametrize("dtype", ALL, ids=_name)
@pytest.mark.parametrize("tilt", [90.0, 61.108])
@pytest.mark.parametrize("posed", [False, True])
def test_posed_project_vjp_adjoint(tilt, dtype, posed):
    """The grid_sample projector is linear in the volume for fixed poses; its autograd VJP is
    its adjoint (dot-product test), with and without pose corrections / shifts. Measured
    ~1e-8 (32-bit) / ~1e-16 (64-bit)."""
    torch = pytest.importorskip("torch")
    n = 5
    ang = np.linspace(0, 170, n)
    rng = np.random.default_rng(15)
    euler = torch.as_tensor(rng.normal(0, 3, (n, 3))) if posed else None
    shifts = torch.as_tensor(rng.normal(0, 1, (n, 2))) if posed else None
    shape = (6, 7, 8)
    tdt = getattr(torch, TDT[dtype])
    fwd = lambda v: _posed(v, ang, tilt, (9, 10), euler, shifts)
    B = backend("torch")
    x, y = B.random(shape, dtype, rng), B.random((n, 9, 10), dtype, rng)
    _check(f"posed_project VJP tilt={tilt} posed={posed} {_name(dtype)}", fwd,
           _torch_adjoint(fwd, shape, tdt), x, y)


def _blobs(shape, vox):
    """Smooth test volume: three Gaussian blobs (sigma 1.5-2.5 voxels) inside the volume."""
    z, y, x = np.meshgrid(*[(np.arange(n) - n // 2) for n in shape], indexing="ij")
    v = np.zeros(shape)
    for (cz, cy, cx), s, a in (((1, -2, 2), 2.5, 1.0), ((-3, 2, -1), 1.5, 0.7),
                               ((2, 3, -3), 2.0, -0.5)):
        v += a * np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * s * s))
    return v


@pytest.mark.parametrize("tilt,bound", [(90.0, 5e-3), (61.108, 7e-3)])
def test_posed_project_agrees_with_projector(tilt, bound):
    """With zero pose corrections, posed_project (trilinear ray marching, step 0.5 voxel) and
    the Joseph Projector give the same projections of a smooth volume (Gaussian blobs,
    16^3 voxels, 9 views) to interpolation error: measured relative L2 difference
    4.2e-3 (tomography; bound 5e-3) and 5.9e-3 (laminography, tilt 61.108, on the
    Projector's default detector; bound 7e-3). The posed_project step is 0.5 voxel."""
    torch = pytest.importorskip("torch")
    shape = (16, 16, 16)
    ang = np.linspace(0, 180 if tilt == 90.0 else 330, 9)
    geom = Geometry.make(ang, "tomography" if tilt == 90.0 else "laminography", tilt)
    op = P.Projector(geom, shape, voxel_size=VOX, dtype=np.float64)
    vol = _blobs(shape, VOX)
    ref = op.forward(vol)
    got = _posed(torch.as_tensor(vol), ang, tilt, op.shape_out[1:]).numpy()
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    MEASURED[f"posed_project vs Projector tilt={tilt}"] = err
    assert err < bound, f"posed_project differs from Projector by {err:.3e} (bound {bound})"
