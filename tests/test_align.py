"""Tests for ptynb.tomo.align and ptynb.tomo.joint: alignment, null space, joint refinement, cancel
(the 2D image tools are tested in test_imaging.py)."""
import importlib

import numpy as np
import pytest
from servers import cancel_at
import xarray as xr

from ptynb.data import ValidationError

# the package re-exports the function ``align``; take the modules themselves
A = importlib.import_module("ptynb.tomo.align")
J = importlib.import_module("ptynb.tomo.joint")


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# ----------------------------------------------------------------------------- alignment
def gaussian_blob_projections(angles_deg, n=48, blobs=None, tilt=90.0):
    """Analytic projections of 3D Gaussian blobs in the ptynb.tomo.geometry convention
    (r_lab = R s, beam along z, detector = lab (y, x)): a blob at s projects to a 2D
    Gaussian centred at (R s)[y, x], with integral amp * s^3 (2 pi)^(3/2)."""
    from ptynb.tomo.geometry import Geometry

    if blobs is None:
        blobs = [((4.0, -3.0, 5.0), 3.0, 1.0), ((-6.0, 6.0, -4.0), 2.5, 0.8),
                 ((2.0, 0.0, -7.0), 2.0, 1.2)]
    kind = "tomography" if tilt == 90 else "laminography"
    R = Geometry(kind, angles_deg, tilt).rotations()
    yy = (np.arange(n) - n // 2)[:, None]
    xx = (np.arange(n) - n // 2)[None, :]
    out = np.zeros((len(R), n, n))
    for k in range(len(R)):
        for p, s, amp in blobs:
            c = R[k] @ np.asarray(p)
            out[k] += amp * s * np.sqrt(2 * np.pi) * np.exp(-((yy - c[1]) ** 2 + (xx - c[2]) ** 2) / (2 * s ** 2))
    return out


@pytest.mark.parametrize("tilt", [90.0, 61.108])
def test_cross_correlation_alignment_recovers_shifts(rng, tilt):
    ang = np.linspace(0, 180 if tilt == 90 else 360, 60, endpoint=False)
    clean = gaussian_blob_projections(ang, tilt=tilt)
    err = rng.normal(0, 3.0 / np.sqrt(2), (ang.size, 2))  # 3 px rms in 2D
    meas = A.shift_image(clean, err)
    geometry = "tomography" if tilt == 90 else "laminography"
    da = xr.DataArray(meas, dims=("angle", "y", "x"), coords={"angle": ang},
                      attrs={"geometry": geometry, "tilt": tilt})
    out, info = A.align(da, method="cross_correlation", progress=False)
    est = np.stack([out["shift_y"].values, out["shift_x"].values], axis=1)
    # the correction undoes the error up to the rigid-translation null space
    resid = A.remove_null_space(est + err, ang, geometry=geometry, tilt=tilt)
    assert np.sqrt(np.mean(resid ** 2)) < 0.05
    assert np.abs(resid).max() < 0.15
    # the aligned data match the clean projections up to a rigid translation
    assert out.dims == ("angle", "y", "x") and out.attrs["alignment_method"] == "cross_correlation"


def test_null_space_tomography_basis():
    ang = np.linspace(0, 180, 30, endpoint=False)
    B = A.rigid_null_space(ang)
    assert B.shape == (3, 30, 2)
    th = np.deg2rad(ang)
    pattern = np.stack([np.full(30, 2.0), 1.5 * np.cos(th) - 0.5 * np.sin(th)], axis=1)
    np.testing.assert_allclose(A.remove_null_space(pattern, ang), 0, atol=1e-12)
    other = np.stack([np.zeros(30), np.cos(3 * th)], axis=1)
    assert np.abs(A.remove_null_space(other, ang)).max() > 0.5


def test_align_bad_input(rng):
    da = xr.DataArray(rng.random((4, 8, 8)), dims=("angle", "y", "x"), coords={"angle": [0, 1, 2, 3.0]})
    with pytest.raises(ValidationError, match="method"):
        A.align(da, method="magic")
    with pytest.raises(ValidationError, match="dims"):
        A.align(da.transpose("y", "angle", "x"))
    with pytest.raises(ValidationError, match="complex"):
        A.align(da * 1j)
    bad = da.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValidationError, match="NaN"):
        A.align(bad)
    with pytest.raises(ValidationError, match="iterations"):
        A.align(da, iterations=0)


# ----------------------------------------------------------------------------- projection matching
def blob_volume(n=32, blobs=None):
    if blobs is None:
        blobs = [((4.0, -3.0, 5.0), 3.0, 1.0), ((-6.0, 6.0, -4.0), 2.5, 0.8),
                 ((2.0, 0.0, -7.0), 2.0, 1.2), ((-3.0, -7.0, 1.0), 1.5, 1.0)]
    z, y, x = np.meshgrid(*(np.arange(n) - n // 2,) * 3, indexing="ij")
    vol = sum(a * np.exp(-((z - p[0]) ** 2 + (y - p[1]) ** 2 + (x - p[2]) ** 2) / (2 * s ** 2))
              for p, s, a in blobs)
    return xr.DataArray(vol, dims=("z", "y", "x"),
                        coords={d: (np.arange(n) - n // 2) * 1e-8 for d in "zyx"})


def _misaligned(vol, ang, rng, geometry="tomography", tilt=None, rms=3.0):
    from ptynb import tomo

    P = tomo.project(vol, ang, geometry=geometry, tilt=tilt, dtype=np.float64)
    err = A.remove_null_space(rng.standard_normal((ang.size, 2)), ang, geometry=geometry,
                              tilt=90.0 if tilt is None else tilt)
    err *= rms / np.sqrt(np.mean(np.sum(err ** 2, axis=1)))  # 3 px rms displacement
    return P, P.copy(data=A.shift_image(P.values, err)), err


def test_projection_matching_tomography_recovers_shifts_and_pcc(rng):
    from ptynb import metrics, tomo

    vol = blob_volume()
    ang = np.linspace(0, 180, 60, endpoint=False)
    P, meas, err = _misaligned(vol, ang, rng)
    seen = []
    out, info = A.align(meas, method="projection_matching", reconstruct="fbp", iterations=6,
                        progress=False, callback=lambda i, d: seen.append(d["shift_update_rms"]))
    est = np.stack([out["shift_y"].values, out["shift_x"].values], axis=1)
    resid = est + err  # correction should undo the error (no null-space part in err)
    assert np.sqrt(np.mean(np.sum(resid ** 2, axis=1))) < 0.3
    assert np.abs(resid).max() < 0.3
    assert len(seen) == len(info["history"]) >= 2 and seen[-1] < seen[0]
    np.testing.assert_allclose(out.values, A.shift_image(meas.values, est))
    pcc_before = metrics.pcc(vol, tomo.fbp(meas))
    pcc_after = metrics.pcc(vol, tomo.fbp(out))
    assert pcc_after > pcc_before + 0.05
    assert pcc_after > 0.97


def test_projection_matching_sirt_improves(rng):
    vol = blob_volume()
    ang = np.linspace(0, 180, 40, endpoint=False)
    P, meas, err = _misaligned(vol, ang, rng)
    out, info = A.align(meas, method="projection_matching", reconstruct="sirt", iterations=4,
                        recon_iterations=10, progress=False)
    resid = info["shifts"] + err
    assert np.sqrt(np.mean(np.sum(resid ** 2, axis=1))) < 0.5
    assert info["residual"][-1] < info["residual"][0]


@pytest.mark.slow
def test_projection_matching_laminography(rng):
    vol = blob_volume()
    ang = np.linspace(0, 360, 60, endpoint=False)
    P, meas, err = _misaligned(vol, ang, rng, geometry="laminography", tilt=61.108)
    out, info = A.align(meas, method="projection_matching", reconstruct="fbp", iterations=4,
                        progress=False)
    resid = info["shifts"] + err
    assert np.sqrt(np.mean(np.sum(resid ** 2, axis=1))) < 0.3


def test_rotation_gauge_tomography():
    ang = np.linspace(0, 180, 30, endpoint=False)
    B = A.rotation_gauge(ang)
    assert B.shape == (3, 30, 3)
    np.testing.assert_allclose(B.reshape(3, -1) @ B.reshape(3, -1).T, np.eye(3), atol=1e-12)
    # a global rotation about the tomographic axis y is a constant ry offset on every view
    const_ry = np.zeros((30, 3))
    const_ry[:, 1] = 0.7
    np.testing.assert_allclose(A._remove_basis(const_ry, B), 0, atol=1e-12)
    # a view-to-view rz jitter is not a gauge motion
    jit = np.zeros((30, 3))
    jit[::2, 2] = 1.0
    assert np.abs(A._remove_basis(jit, B)).max() > 0.5


# ----------------------------------------------------------------------------- joint refinement
def _rich_volume(n=32):
    r = np.random.default_rng(5)
    blobs = [(tuple(r.uniform(-9, 9, 3)), r.uniform(1.2, 2.2), r.uniform(0.5, 1.0)) for _ in range(12)]
    return blob_volume(n, blobs)


def _posed_setup(n=16, views=20, seed=3):
    """Small blob volume (SI units: 1e-8 m voxels) and the float32 torch model of
    joint_refinement (no blur) for unit tests of its solvers."""
    import torch

    from ptynb.tomo.torch_ops import posed_project

    r = np.random.default_rng(seed)
    blobs = [(tuple(r.uniform(-4, 4, 3)), r.uniform(1.0, 1.8), r.uniform(0.5, 1.0)) for _ in range(6)]
    vol = torch.tensor(blob_volume(n, blobs).values, dtype=torch.float32)
    ang = np.linspace(0, 180, views, endpoint=False)

    def fwd(v, q):
        q = torch.as_tensor(np.asarray(q), dtype=torch.float32)
        return posed_project(v, ang, poses=q[:, 2:], shifts=q[:, :2], voxel_size=1e-8, step=1.0)

    return vol, ang, fwd


def test_cgls_float32_si_units_and_ramp_preconditioner():
    """CGLS on float32 line integrals of 1e-8 m voxels: without rescaling the squared norms
    of A^T r are subnormal and the solve stalls; the ramp preconditioner converges faster."""
    import torch

    vol, ang, fwd = _posed_setup()
    q0 = np.zeros((ang.size, 5))
    data = fwd(vol, q0)

    def rel(v):
        return float(torch.sum((fwd(v, q0) - data) ** 2) / torch.sum(data ** 2))

    x0 = torch.zeros_like(vol)
    plain = J._cgls(lambda v: fwd(v, q0), data, x0, 5, torch)
    pre = J._cgls(lambda v: fwd(v, q0), data, x0, 5, torch,
                  precond=J._ramp_preconditioner(vol.shape, torch, vol.dtype, vol.device))
    assert rel(plain) < 1e-3  # without the rescaling: stuck at 1.5e-2 after the first step
    assert rel(pre) < 0.5 * rel(plain)
    # never worse than the start, also when started at the solution
    again = J._cgls(lambda v: fwd(v, q0), data, pre, 5, torch)
    assert rel(again) <= rel(pre)


def test_pose_gauss_newton_fixed_volume(rng):
    """With the volume fixed (and exact), the per-view Gauss-Newton pose solver recovers
    errors of 1 px and 1 deg rms in every view to float32 precision."""
    import torch

    vol, ang, fwd = _posed_setup(n=24)
    true = np.concatenate([rng.normal(0, 1.0, (ang.size, 2)), rng.normal(0, 1.0, (ang.size, 3))], axis=1)
    data = fwd(vol, true)
    est, nproj = J._pose_gauss_newton(lambda q: fwd(vol, q), data, np.zeros_like(true), [0, 1, 2, 3, 4],
                                      8, (0.05,) * 5, torch)
    err = np.abs(est - true)
    assert err[:, :2].max() < 1e-3  # px
    assert err[:, 2:].max() < 1e-3  # deg
    assert nproj <= 1 + 8 * (5 + 4)
    # only the requested columns move
    est, _ = J._pose_gauss_newton(lambda q: fwd(vol, q), data, np.zeros_like(true), [0, 1], 3, (0.05,) * 5, torch)
    assert np.all(est[:, 2:] == 0) and np.abs(est[:, :2]).max() > 0


def test_pose_gauss_newton_prior_is_the_map_estimate(rng):
    """On a linear model (exact Gauss-Newton) the per-view solve with ``prior`` lands on the
    closed-form MAP estimate ``(A^T A + W)^-1 A^T y``, W = sigma_k^2 / prior^2 on the
    rotation columns (sigma_k^2: view k's mean squared residual at entry); without the prior
    on the least-squares one. A weakly seen rotation column is pulled to zero, the shifts
    not at all."""
    import torch

    n, npix = 6, 50
    A = torch.tensor(rng.normal(size=(n, 5, npix)))
    A[:, 3] *= 0.05  # ry barely changes the data
    true = rng.normal(0, 1.0, (n, 5))
    base = torch.tensor(rng.normal(size=(n, npix)))
    noise = torch.tensor(rng.normal(0, 0.3, (n, npix)))

    def fwd(q):
        out = base + torch.einsum("ka,kap->kp", torch.as_tensor(q, dtype=torch.float64), A)
        return out.reshape(n, 5, npix // 5)  # (view, y, x) images, as the projector gives

    data = fwd(true) + noise.reshape(n, 5, -1)
    prior = 0.5
    p0 = np.zeros((n, 5))
    sig2 = ((fwd(p0) - data) ** 2).mean((1, 2)).numpy()
    est, _ = J._pose_gauss_newton(fwd, data, p0, [0, 1, 2, 3, 4], 30, (0.05,) * 5, torch, tol=1e-9, prior=prior)
    ls, _ = J._pose_gauss_newton(fwd, data, p0, [0, 1, 2, 3, 4], 30, (0.05,) * 5, torch, tol=1e-9)
    An = A.numpy()
    y = (data.reshape(n, -1) - base).numpy()
    for k in range(n):
        H = An[k] @ An[k].T
        W = np.diag([0, 0, 1, 1, 1]) * sig2[k] / prior ** 2
        np.testing.assert_allclose(est[k], np.linalg.solve(H + W, An[k] @ y[k]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ls[k], np.linalg.solve(H, An[k] @ y[k]), rtol=1e-5, atol=1e-6)
    # the weak column: the prior keeps it far closer to the truth's scale than least squares
    assert np.abs(est[:, 3]).max() < 2.5 and np.abs(ls[:, 3]).max() > 3


def test_joint_refinement_bad_solver():
    da = xr.DataArray(np.ones((4, 8, 8)), dims=("angle", "y", "x"), coords={"angle": [0, 1, 2, 3.0]})
    with pytest.raises(ValidationError, match="pose_solver"):
        J.joint_refinement(da, pose_solver="lbfgs", progress=False)


@pytest.mark.slow
def test_joint_refinement_recovers_shifts_and_rotations(rng):
    """MSPT-style joint refinement on 32^3 / 60 views: per-view shifts of 3 px rms and Euler
    errors of 1 deg rms (gauge-free), simulated with the Joseph projector (posed geometry),
    recovered to < 0.3 px and < 0.2 deg rms (the acceptance target)."""
    from ptynb import metrics, tomo

    vol = _rich_volume()
    ang = np.linspace(0, 180, 60, endpoint=False)
    E = A._remove_basis(rng.normal(0, 1.0, (60, 3)), A.rotation_gauge(ang))
    E *= 1.0 / np.sqrt(np.mean(E ** 2))
    S = A.remove_null_space(rng.normal(0, 1.0, (60, 2)), ang)
    S *= 3.0 / np.sqrt(np.mean(np.sum(S ** 2, axis=1)))
    P = tomo.project(vol, ang, geometry="posed", poses=E, shifts=S, dtype=np.float64)
    P.attrs["geometry"] = "tomography"  # the measured data carry the nominal geometry only
    for k in ("pose_euler_deg", "pose_shift_px", "euler_convention"):
        P.attrs.pop(k, None)
    losses = []
    out, info = A.align(P, method="joint", iterations=2, progress=False,
                        schedule=(("shifts", 0.1, 1), ("rotations", 0.2, 2), ("all", 1.0, 4)),
                        pose_steps=2, volume_steps=3,
                        callback=lambda i, d: losses.append(d["loss"]))
    shifts = np.stack([out["shift_y"].values, out["shift_x"].values], axis=1)
    poses = np.stack([out["pose_rx"].values, out["pose_ry"].values, out["pose_rz"].values], axis=1)
    shift_err = np.sqrt(np.mean(np.sum((shifts + S) ** 2, axis=1)))
    rot_err = np.sqrt(np.mean((poses - E) ** 2))
    ry_err = np.sqrt(np.mean((poses[:, 1] - E[:, 1]) ** 2))
    print(f"joint refinement: shift error {shift_err:.3f} px rms, rotation error {rot_err:.3f} deg rms "
          f"(ry {ry_err:.3f})")
    assert shift_err < 0.3
    # Gauss-Newton poses + coupled volume-pose steps: 0.03-0.07 deg over random draws
    # (Adam poses with alternation alone: 0.17-0.31); rotation about the tomographic axis
    # (ry) is the weakest direction, so it gets its own bound
    assert rot_err < 0.2
    assert ry_err < 0.2
    assert len(losses) == 7
    # every round ends lower than it started at full scale
    assert losses[-1] < losses[-2] < losses[-3] < losses[-4]
    pcc_joint = metrics.pcc(vol, info["volume"])
    print(f"volume PCC {pcc_joint:.4f}")
    assert pcc_joint > 0.99
    assert pcc_joint > metrics.pcc(vol, tomo.fbp(P))


# ----------------------------------------------------------------------------- cancel
def _small_series(rng, n=16, views=20):
    vol = blob_volume(n, [((2.0, -1.0, 3.0), 2.0, 1.0), ((-3.0, 3.0, -2.0), 1.5, 0.8)])
    ang = np.linspace(0, 180, views, endpoint=False)
    return _misaligned(vol, ang, rng, rms=1.5)[1]


def test_align_cancel_projection_matching(rng):
    """Setting the event in round k returns the shifts after k + 1 rounds, marked cancelled."""
    meas = _small_series(rng)
    k = 1
    ev, cb, seen = cancel_at(k)
    kw = dict(method="projection_matching", reconstruct="fbp", tol=0.0, progress=False)
    out, info = A.align(meas, iterations=8, callback=cb, cancel=ev, **kw)
    assert info["status"] == "cancelled" and out.attrs["status"] == "cancelled"
    assert seen == [0, 1] and len(info["history"]) == k + 1
    ref_out, ref = A.align(meas, iterations=k + 1, **kw)
    assert ref["status"] == "complete" and ref_out.attrs["status"] == "complete"
    np.testing.assert_allclose(info["shifts"], ref["shifts"], atol=1e-9)
    np.testing.assert_allclose(info["history"], ref["history"], atol=1e-9)
    # a truthy callback return does not stop
    _, full = A.align(meas, iterations=3, callback=lambda i, d: True, **kw)
    assert len(full["history"]) == 3 and full["status"] == "complete"
    with pytest.raises(TypeError, match="cancel"):
        A.align(meas, iterations=1, cancel="stop", **kw)


def test_align_cancel_cross_correlation(rng):
    meas = _small_series(rng)
    ev, cb, seen = cancel_at(0)
    _, info = A.align(meas, method="cross_correlation", iterations=10, upsample=1000,
                      callback=cb, cancel=ev, progress=False)
    assert info["status"] == "cancelled" and seen == [0] and len(info["history"]) == 1


def test_joint_refinement_cancel_and_options(rng):
    """Cancel in round k: k + 1 rounds of history, poses of a (k + 1)-round run; options object
    and keywords give the same run."""
    meas = _small_series(rng, views=12)
    k = 1
    ev, cb, seen = cancel_at(k)
    opts = J.JointRefinementOptions(schedule=(("shifts", 1.0, 4),), prealign=None, volume_steps=2,
                                    pose_steps=1, coupled_iterations=0)
    _, s1, e1, info = J.joint_refinement(meas, options=opts, callback=cb, cancel=ev, progress=False)
    assert info["status"] == "cancelled" and seen == [0, 1]
    assert info["loss"].size == k + 1 and info["stages"] == [("shifts", 1, k + 1)]
    # the same run as keywords (overriding the rounds of the schedule), not cancelled
    _, s2, e2, info2 = J.joint_refinement(meas, schedule=(("shifts", 1.0, k + 1),), prealign=None,
                                          volume_steps=2, pose_steps=1, coupled_iterations=0,
                                          progress=False)
    assert info2["status"] == "complete" and info2["loss"].size == k + 1
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    np.testing.assert_allclose(info["loss"], info2["loss"], rtol=1e-4)
    assert info2["options"] == opts.copy(schedule=(("shifts", 1.0, k + 1),))


def test_joint_refinement_options_object():
    O = J.JointRefinementOptions
    d = O.defaults()
    assert d["iterations"] == 4 and d["schedule"] == J.MSPT_SCHEDULE and d["coupled_iterations"] == 40
    # keywords override the options object, the object itself is not changed
    base = O(iterations=2, mask="auto")
    o = O.resolve(base, {"iterations": 3})
    assert (o.iterations, o.mask, base.iterations) == (3, "auto", 2)
    assert O.resolve(None, {}).values() == d
    # unknown keywords: ValidationError with a suggestion
    with pytest.raises(ValidationError, match="did you mean 'pose_steps'"):
        O.resolve(None, {"pose_step": 3})
    da = xr.DataArray(np.ones((4, 8, 8)), dims=("angle", "y", "x"), coords={"angle": [0, 1, 2, 3.0]})
    with pytest.raises(ValidationError, match="did you mean 'mask_margin'"):
        J.joint_refinement(da, mask_margn=2, progress=False)
    with pytest.raises(ValidationError, match="iterations"):
        O(iterations=0)
    with pytest.raises(ValidationError, match="volume_solver"):
        O().volume_solver = "lbfgs"
    with pytest.raises(ValidationError, match="options"):
        J.joint_refinement(da, options={"iterations": 2}, progress=False)


def test_joint_refinement_docstring_defaults_come_from_the_class():
    """Every option is documented once in joint_refinement's docstring, with the class default,
    and the function signature repeats none of them."""
    import inspect

    O = J.JointRefinementOptions
    doc = J.joint_refinement.__doc__
    for name, default in O.defaults().items():
        assert doc.count(f"\n    {name} : default {default!r}\n") == 1, name
    sig = inspect.signature(J.joint_refinement).parameters
    assert not set(O.fields()) & set(sig)
