"""Backend: device selection, FFT libraries agree with numpy, DLPack bridge to torch."""
import numpy as np
import pytest

from ptynb import backend as B


def test_resolve_device_and_env(monkeypatch):
    assert B.resolve_device("cpu") == "cpu"
    assert B.resolve_device("NumPy") == "cpu"
    monkeypatch.setenv("PTYNB_DEVICE", "cpu")
    assert B.resolve_device(None) == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        B.resolve_device("tpu")
    assert B.get_xp("cpu") is np


@pytest.mark.skipif(B.gpu_available(), reason="this test checks the no-GPU error")
def test_gpu_request_without_gpu_is_clear(monkeypatch):
    with pytest.raises(B.DeviceError, match="no usable CUDA GPU"):
        B.resolve_device("gpu")
    monkeypatch.setenv("PTYNB_DEVICE", "gpu")
    with pytest.raises(B.DeviceError):
        B.get_xp()


@pytest.mark.parametrize("lib", ["pyfftw", "scipy", "numpy"])
@pytest.mark.parametrize("dtype,tol", [(np.complex64, 2e-5), (np.complex128, 1e-12)])
def test_fft_libraries_match_numpy(lib, dtype, tol):
    old = B.fft_backend()
    try:
        B.set_fft_backend(lib)
        rng = np.random.default_rng(0)
        x = (rng.standard_normal((5, 48, 40)) + 1j * rng.standard_normal((5, 48, 40))).astype(dtype)
        ref = np.fft.fft2(x.astype(np.complex128), norm="ortho")
        y = B.fft2(x)
        assert y.dtype == dtype and y.shape == x.shape
        assert np.max(np.abs(y - ref)) < tol * np.max(np.abs(ref))
        # unitary: energy conserved; inverse recovers the input
        assert np.sum(np.abs(y) ** 2) == pytest.approx(np.sum(np.abs(x) ** 2), rel=1e-5)
        assert np.max(np.abs(B.ifft2(y) - x)) < 10 * tol
        for norm in ("backward", "forward"):
            np.testing.assert_allclose(B.fft2(x, norm=norm), np.fft.fft2(x, norm=norm),
                                       rtol=0, atol=tol * 100 * np.abs(ref).max() * 48)
        z = B.fftn(x[0], axes=(0, 1))
        np.testing.assert_allclose(z, ref[0], atol=tol * 10 * np.abs(ref).max())
    finally:
        B.set_fft_backend(old)


def test_fft_input_not_modified_and_bad_backend():
    x = np.ones((4, 4), np.complex64)
    before = x.copy()
    B.fft2(x)
    np.testing.assert_array_equal(x, before)
    with pytest.raises(ValueError, match="unknown FFT backend"):
        B.set_fft_backend("mkl-magic")
    with pytest.raises(ValueError, match="norm must be"):
        B.set_fft_backend("pyfftw")
        B.fft2(x, norm="weird")


def test_to_host_and_device_cpu():
    import xarray as xr

    da = xr.DataArray(np.arange(6.0).reshape(2, 3), dims=("y", "x"))
    a = B.to_device(da, "cpu", dtype=np.float32)
    assert isinstance(a, np.ndarray) and a.dtype == np.float32
    assert B.to_host(a) is a or np.shares_memory(B.to_host(a), a)


def test_torch_bridge_is_zero_copy_on_cpu():
    torch = pytest.importorskip("torch")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = B.to_torch(x)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    t[0, 0] = 42.0  # shares memory with x
    assert x[0, 0] == 42.0
    back = B.from_torch(t * 2)
    assert isinstance(back, np.ndarray) and back[0, 0] == 84.0
    c = (np.ones((2, 2)) + 1j).astype(np.complex64)
    np.testing.assert_array_equal(B.from_torch(B.to_torch(c)), c)


@pytest.mark.gpu
def test_gpu_roundtrip_fft_and_torch():
    import cupy as cp
    import torch

    x = (np.random.default_rng(0).standard_normal((3, 64, 64)) + 0j).astype(np.complex64)
    g = B.to_device(x, "gpu")
    assert B.xp_of(g) is cp
    np.testing.assert_allclose(B.to_host(B.fft2(g)), B.fft2(x), atol=1e-4)
    t = B.to_torch(g)
    assert t.is_cuda
    g2 = B.from_torch(t)
    assert g2.data.ptr == g.data.ptr  # zero-copy via DLPack


def test_fftw_wisdom_is_kept_between_sessions(tmp_path, monkeypatch):
    """A measured plan is written to the wisdom file, read back by a fresh process state, and
    the plan computes the same transform as numpy; bad effort and corrupt files are handled."""
    pyfftw = pytest.importorskip("pyfftw")
    import json

    path = tmp_path / "wisdom.json"
    monkeypatch.setenv("PTYNB_FFTW_WISDOM", str(path))
    monkeypatch.setattr(B, "_wisdom_state", {"loaded": False, "saved": None})
    pyfftw.forget_wisdom()
    a = pyfftw.empty_aligned((48, 40), np.complex64)
    b = pyfftw.empty_aligned((48, 40), np.complex64)
    plan = B.fftw_plan(a, b, effort="measure")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((48, 40)) + 1j * rng.standard_normal((48, 40))).astype(np.complex64)
    a[...] = x
    plan.execute()
    np.testing.assert_allclose(b, np.fft.fft2(x), rtol=1e-4, atol=1e-3)
    doc = json.loads(path.read_text())
    assert doc["pyfftw"] == pyfftw.__version__ and "(fftw-3" in doc["single"]
    # a new session: wisdom forgotten, then read from the file once
    pyfftw.forget_wisdom()
    monkeypatch.setattr(B, "_wisdom_state", {"loaded": False, "saved": None})
    assert B.load_fftw_wisdom() is True
    assert B.load_fftw_wisdom() is False  # once per process
    # the stored plan is found without measuring: FFTW_WISDOM_ONLY succeeds for this shape ...
    pyfftw.FFTW(a, b, axes=(-2, -1), flags=("FFTW_MEASURE", "FFTW_WISDOM_ONLY"))
    # ... and fails for a shape never planned
    c = pyfftw.empty_aligned((36, 36), np.complex64)
    with pytest.raises(RuntimeError):
        pyfftw.FFTW(c, c, axes=(-2, -1), flags=("FFTW_MEASURE", "FFTW_WISDOM_ONLY"))
    with pytest.raises(ValueError, match="effort"):
        B.fftw_plan(a, b, effort="quick")
    # a corrupt file is ignored (plans are measured again) and overwritten on the next save
    path.write_text("not json")
    monkeypatch.setattr(B, "_wisdom_state", {"loaded": False, "saved": None})
    assert B.load_fftw_wisdom() is False
    B.fftw_plan(c, c, effort="measure")
    assert json.loads(path.read_text())["pyfftw"] == pyfftw.__version__
    monkeypatch.setenv("PTYNB_FFTW_WISDOM", "off")
    assert B.fftw_wisdom_path() is None
    monkeypatch.delenv("PTYNB_FFTW_WISDOM")
    assert B.fftw_wisdom_path().name.startswith("fftw-wisdom-")
    pyfftw.forget_wisdom()
