"""Pose refinement against an atomic model (ptynb.tomo.atomic)."""

import threading
import warnings

import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")

from ptynb.data import ValidationError
from ptynb.tomo import (
    AtomicRefinementOptions,
    atomic_refinement,
    joint_refinement,
    remove_null_space,
    render_atoms,
    rotation_gauge,
)
from ptynb.tomo.atomic import STATUS_REJECTED
from ptynb.tomo.torch_ops import posed_project, rotation_matrices_torch
from ptynb.workflows import mspt_steps

A = 1e-10
PX = 0.8 * A


def _gauge_free_rms(dE, ang):
    return float(np.sqrt(np.mean(mspt_steps.gauge_free(dE, rotation_gauge(ang)) ** 2)))


def test_render_matches_the_voxel_projector():
    """One Gaussian atom: the analytic projection equals posed_project of the voxelised atom
    at oblique poses and shifts (same lab frame, rotation order and shift sign)."""
    n = 32
    sig = 2.5  # voxels (trilinear interpolation of the voxelised atom: < 3.5 % off)
    r0 = np.array([2.3, -3.1, 4.2])  # (z, y, x) voxels
    g = np.arange(n) - n // 2
    Z, Y, X = np.meshgrid(g, g, g, indexing="ij")
    vol = np.exp(-((Z - r0[0]) ** 2 + (Y - r0[1]) ** 2 + (X - r0[2]) ** 2) / (2 * sig ** 2))
    vol /= (2 * np.pi * sig ** 2) ** 1.5  # unit integral
    ang = np.array([-50.0, 10.0, 65.0])
    E = torch.tensor([[1.5, -4.0, 3.0], [0.0, 2.0, -5.0], [-3.0, 1.0, 2.0]], dtype=torch.float64)
    D = torch.tensor([[1.7, -2.2], [0.0, 0.6], [-1.1, 2.5]], dtype=torch.float64)
    ref = posed_project(torch.tensor(vol), ang, poses=E, shifts=D, step=0.25).numpy()
    c = torch.tensor(g, dtype=torch.float64)
    out = render_atoms(torch.tensor(r0[None]), torch.ones(1, dtype=torch.float64),
                       torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.long), [sig], ang,
                       poses=E, displacements=D, v=c, u=c).numpy()
    assert np.abs(out - ref).max() < 0.035 * ref.max()
    for a, b in zip(out, ref):  # centroids (pixels)
        ca = [(a.sum(1 - k) * g).sum() / a.sum() for k in (0, 1)]
        cb = [(b.sum(1 - k) * g).sum() / b.sum() for k in (0, 1)]
        assert np.allclose(ca, cb, atol=0.005)


def _random_atoms(seed=5, n_atoms=40, n_views=24, noise=0.01):
    """Projections of random atoms of two kinds (a radial profile that is not the model's
    basis: two Gaussians of 0.33 and 0.8 A), computed with numpy from the atom list."""
    rng = np.random.default_rng(seed)
    pts = []
    while len(pts) < n_atoms:
        p = rng.uniform(-6, 6, 3)
        if all(np.linalg.norm(p - q) > 2.0 for q in pts):
            pts.append(p)
    pts = np.array(pts) * A
    amp = np.where(rng.random(n_atoms) < 0.5, 1.0, 0.35) * 1e-20  # rad m^2
    ang = np.linspace(-70, 70, n_views)
    E_t = rng.normal(0, 0.3, (n_views, 3))  # degrees
    S_t = rng.normal(0, 1.0, (n_views, 2))  # object displacement, pixels
    ny = 24
    c = (np.arange(ny) - ny // 2) * PX
    R = rotation_matrices_torch(torch.tensor(ang), 90.0, torch.tensor(E_t)).numpy()
    lab = np.einsum("kij,aj->kai", R, pts)
    cv = lab[..., 1] + S_t[:, None, 0] * PX
    cu = lab[..., 2] + S_t[:, None, 1] * PX
    d2 = (c[None, None, :, None] - cv[..., None, None]) ** 2 + (c[None, None, None, :] - cu[..., None, None]) ** 2

    def prof(w):
        return np.exp(-d2 / (2 * (w * A) ** 2)) / (2 * np.pi * (w * A) ** 2)

    P = np.einsum("kavu,a->kvu", 0.6 * prof(0.33) + 0.4 * prof(0.8), amp) + rng.normal(0, noise, (n_views, ny, ny))
    da = xr.DataArray(P.astype(np.float32), dims=("angle", "y", "x"), coords={"angle": ang, "y": c, "x": c},
                      attrs={"geometry": "tomography", "units": "rad"})
    return da, E_t, S_t, pts


@pytest.fixture(scope="module")
def random_atoms_start():
    """The series and the voxel model's start (shift-only joint refinement, poses zero)."""
    da, E_t, S_t, pts = _random_atoms()
    _, S0, E0, info = joint_refinement(da, schedule=(("shifts", 1.0, 3),), volume_steps=20, progress=False)
    return da, E_t, S_t, pts, S0, E0, info["volume"]


@pytest.mark.slow
def test_recovers_poses_and_atoms_of_an_atomic_sample(random_atoms_start):
    da, E_t, S_t, pts, S0, E0, vol = random_atoms_start
    ang = da["angle"].values
    start = _gauge_free_rms(E0 - E_t, ang)
    S, E, info = atomic_refinement(da, vol, shifts=S0, poses=E0)
    after = _gauge_free_rms(E - E_t, ang)
    shift_err = float(np.sqrt(np.mean(np.sum(remove_null_space(-S - S_t, ang) ** 2, 1))))
    print(f"atomic refinement: angles {start:.3f} -> {after:.3f} deg rms, shifts {shift_err:.4f} px, "
          f"{info['n_atoms']} atoms, misfit {info['misfit'][-1]:.3f}")
    assert info["status"] == "complete"
    assert start > 0.2 and after < 0.08  # measured 0.289 -> 0.031
    assert shift_err < 0.05
    # every true atom has a model atom within 0.2 A (up to the common offset of the gauge)
    from scipy.spatial import cKDTree

    fit = info["atoms"]["position"].values[:, ::-1]  # (x, y, z) -> (z, y, x)
    d, i = cKDTree(fit).query(pts)
    off = np.median(fit[i] - pts, axis=0)
    d, _ = cKDTree(fit).query(pts + off)
    assert d.max() < 0.2 * A and info["n_atoms"] <= 1.2 * len(pts)
    # the two kinds are told apart
    strong = info["atoms"]["strong"].values[i]
    amp = info["atoms"]["amplitude"].values[i]
    assert np.corrcoef(strong, amp)[0, 1] > 0.9
    assert np.allclose(np.sort(amp)[[0, -1]], [0.35e-20, 1e-20], rtol=0.1)  # measured within 3 %


def test_start_is_checked(random_atoms_start):
    da, _, _, _, S0, E0, vol = random_atoms_start
    with pytest.raises(ValidationError, match="shifts"):
        atomic_refinement(da, vol, shifts=S0[:-1], poses=E0)
    with pytest.raises(ValidationError, match="poses"):
        atomic_refinement(da, vol, shifts=S0, poses=np.full_like(E0, np.nan))
    with pytest.raises(ValidationError, match="volume"):
        atomic_refinement(da, vol.rename(z="depth"), shifts=S0, poses=E0)
    bad = da.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValidationError, match="NaN"):
        atomic_refinement(bad, vol)
    sq = da.assign_coords(y=da["y"].values * 1.5)
    with pytest.raises(ValidationError, match="square pixels"):
        atomic_refinement(sq, vol)
    with pytest.raises(ValidationError, match="widths"):
        AtomicRefinementOptions(widths=(0.5, -1.0))
    with pytest.raises(ValidationError):
        atomic_refinement(da, vol, iterations=0)


def test_not_atomic_is_rejected_and_poses_kept():
    """A smooth blob (10 px wide) is no set of atoms: the fit is rejected with a warning and
    the input poses and shifts come back unchanged."""
    n = 24
    ang = np.linspace(-60, 60, 9)
    c = (np.arange(n) - n // 2) * PX
    yy, xx = np.meshgrid(c, c, indexing="ij")
    P = np.repeat(np.exp(-(yy ** 2 + xx ** 2) / (2 * (6 * PX) ** 2))[None], ang.size, 0)
    da = xr.DataArray(P.astype(np.float32), dims=("angle", "y", "x"), coords={"angle": ang, "y": c, "x": c},
                      attrs={"geometry": "tomography"})
    zz, vy, vx = np.meshgrid(c, c, c, indexing="ij")
    vol = xr.DataArray(np.exp(-(zz ** 2 + vy ** 2 + vx ** 2) / (2 * (6 * PX) ** 2)), dims=("z", "y", "x"),
                       coords={"z": c, "y": c, "x": c})
    S0 = np.full((ang.size, 2), 0.3)
    E0 = np.full((ang.size, 3), 0.1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        S, E, info = atomic_refinement(da, vol, shifts=S0, poses=E0, cycles=0, iterations=30)
    assert info["status"] == STATUS_REJECTED and "not resolved into atoms" in info["reason"]
    assert any("input poses are kept" in str(x.message) for x in w)
    assert np.array_equal(S, S0) and np.array_equal(E, E0)
    # no positive value to take atoms from
    with pytest.warns(RuntimeWarning, match="no positive values"):
        _, _, info = atomic_refinement(da, -vol, cycles=0)
    assert info["status"] == STATUS_REJECTED


def test_cancel_before_the_first_fit_returns_the_start(random_atoms_start):
    da, _, _, _, S0, E0, vol = random_atoms_start
    ev = threading.Event()
    ev.set()
    S, E, info = atomic_refinement(da, vol, shifts=S0, poses=E0, cancel=ev)
    assert info["status"] == "cancelled"
    assert np.array_equal(S, S0) and np.array_equal(E, E0)
