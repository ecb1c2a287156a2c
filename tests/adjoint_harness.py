"""Generic dot-product (adjoint) and linearity checks for ptynb's linear operators.

``assert_adjoint(forward, adjoint, x, y, rtol=...)`` checks ``<A x, y> == <x, A^H y>``; the
mismatch is measured relative to the norms, ``|<Ax, y> - <x, A^H y>| / (|Ax| |y|)``, so a
small inner product from cancellation does not inflate it (and a zero operator cannot pass
by dividing 0 by 0: ``|Ax|`` must be nonzero). ``assert_linear`` checks
``A(a x1 + b x2) == a A x1 + b A x2``. Arrays may be numpy, cupy or torch; inner products are
taken on the host in complex128. Both helpers return the measured relative mismatch (the
tests record it).

``BACKENDS`` / :func:`backend` give array constructors for numpy, torch (skipped without
torch) and cupy (skipped without cupy or a GPU).
"""
from __future__ import annotations

import numpy as np
import pytest

#: default tolerance by real precision: |<Ax,y> - <x,A^H y>| / (|Ax| |y|)
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
REAL = {np.complex64: np.float32, np.complex128: np.float64,
        np.float32: np.float32, np.float64: np.float64}
COMPLEX = {np.float32: np.complex64, np.float64: np.complex128}


def rtol_for(dtype) -> float:
    return RTOL[REAL[np.dtype(dtype).type]]


# ---------------------------------------------------------------------------- array kinds
def to_numpy(a) -> np.ndarray:
    """Host numpy copy of a numpy / cupy / torch array (torch: detached)."""
    if hasattr(a, "detach"):  # torch
        return a.detach().cpu().resolve_conj().numpy()
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def copy(a):
    return a.clone() if hasattr(a, "clone") else a.copy()


def vdot(a, b) -> complex:
    """``sum(conj(a) * b)`` in complex128 on the host."""
    a = to_numpy(a).astype(np.complex128).ravel()
    b = to_numpy(b).astype(np.complex128).ravel()
    if a.shape != b.shape:
        raise AssertionError(f"inner product of arrays with {a.size} and {b.size} elements")
    return complex(np.vdot(a, b))


def norm(a) -> float:
    return float(np.linalg.norm(to_numpy(a).astype(np.complex128).ravel()))


class Backend:
    """Array constructors of one library (``name`` in numpy / torch / cupy)."""

    def __init__(self, name):
        self.name = name
        if name == "torch":
            self.mod = pytest.importorskip("torch")
        elif name == "cupy":
            cupy = pytest.importorskip("cupy")
            try:
                ok = cupy.cuda.runtime.getDeviceCount() > 0
            except cupy.cuda.runtime.CUDARuntimeError:  # no driver / no device
                ok = False
            if not ok:
                pytest.skip("cupy installed but no CUDA device")
            self.mod = cupy
        else:
            self.mod = np

    def asarray(self, a: np.ndarray):
        a = np.ascontiguousarray(a)
        if self.name == "torch":
            return self.mod.from_numpy(a.copy())
        if self.name == "cupy":
            return self.mod.asarray(a)
        return a.copy()

    def random(self, shape, dtype, rng):
        """Standard normal array (complex: both parts) of numpy ``dtype`` on this backend."""
        dtype = np.dtype(dtype)
        a = rng.standard_normal(shape)
        if dtype.kind == "c":
            a = a + 1j * rng.standard_normal(shape)
        return self.asarray(a.astype(dtype))

    def __repr__(self):
        return self.name


BACKENDS = ("numpy", "torch", "cupy")


def backend(name) -> Backend:
    return Backend(name)


# ---------------------------------------------------------------------------- checks
def adjoint_mismatch(forward, adjoint, x, y) -> float:
    """``|<A x, y> - <x, A^H y>| / (|A x| |y|)`` (inputs are copied before each call)."""
    ax = forward(copy(x))
    ahy = adjoint(copy(y))
    if tuple(ax.shape) != tuple(y.shape):
        raise AssertionError(f"forward gives shape {tuple(ax.shape)}, y has {tuple(y.shape)}")
    if tuple(ahy.shape) != tuple(x.shape):
        raise AssertionError(f"adjoint gives shape {tuple(ahy.shape)}, x has {tuple(x.shape)}")
    lhs = vdot(y, ax)
    rhs = vdot(ahy, x)
    scale = norm(ax) * norm(y)
    if not scale > 0:
        raise AssertionError("forward(x) is zero: the dot-product test says nothing")
    return abs(lhs - rhs) / scale


def assert_adjoint(forward, adjoint, x, y, *, rtol=None, label="") -> float:
    """Assert ``<forward(x), y> == <x, adjoint(y)>`` to ``rtol`` (relative to the norms).

    ``rtol`` defaults to :data:`RTOL` of ``x``'s precision. Returns the relative mismatch.
    """
    if rtol is None:
        rtol = rtol_for(to_numpy(x).dtype)
    err = adjoint_mismatch(forward, adjoint, x, y)
    assert err <= rtol, (f"{label or 'operator'}: not the adjoint, relative mismatch "
                         f"|<Ax,y> - <x,A^H y>| / (|Ax||y|) = {err:.3e} > rtol {rtol:.1e}")
    return err


def assert_linear(forward, x1, x2, *, a=None, b=None, rtol=None, label="") -> float:
    """Assert ``forward(a x1 + b x2) == a forward(x1) + b forward(x2)`` (relative to the norms).

    ``a``, ``b`` default to complex scalars for complex ``x1`` and real ones otherwise.
    """
    cplx = np.iscomplexobj(to_numpy(x1))
    if a is None:
        a = 0.7 - 1.3j if cplx else 0.7
    if b is None:
        b = -1.9 + 0.4j if cplx else -1.9
    if rtol is None:
        rtol = rtol_for(to_numpy(x1).dtype)
    lhs = forward(a * x1 + b * x2)
    f1, f2 = forward(copy(x1)), forward(copy(x2))
    rhs = a * to_numpy(f1).astype(np.complex128) + b * to_numpy(f2).astype(np.complex128)
    scale = abs(a) * norm(f1) + abs(b) * norm(f2)
    if not scale > 0:
        raise AssertionError("forward is zero on both inputs")
    err = float(np.linalg.norm(to_numpy(lhs).astype(np.complex128).ravel() - rhs.ravel())) / scale
    assert err <= rtol, (f"{label or 'operator'}: not linear, relative deviation {err:.3e} "
                         f"> rtol {rtol:.1e}")
    return err
