"""Alignment of laminography projections (ptynb.tomo.align) against known truth.

Geometry: the ADePt / LamNI tilt of 61.108 deg between rotation axis and beam, 360 deg
scans, noise-free projections made by the Joseph projector (``geometry="posed"`` for the
per-view errors), errors drawn free of the gauge motions (rigid translations and rotations of
the volume, which the data cannot see), so the estimate is compared with the truth directly.

What the measurements behind the thresholds say (2-core machine, float64 data):

* projection matching, 32^3 voxels / 60 views, shifts of 3 px rms: FBP-based matching stops
  at 0.087-0.097 px rms (4 seeds), limited by the FBP itself - with the missing cone its
  reprojection is 20 % off the data (12 % in scale) and shifts even perfectly aligned data
  by 0.06 px rms (test below); SIRT-based matching reaches 0.021-0.024 px, the 1/upsample
  = 0.05 px step of the registration. The volume PCC goes from 0.84-0.87 to 0.958, that of
  an FBP of perfectly aligned data.
* joint refinement, 3 px rms shifts + 1 deg rms Euler errors. 32^3 / 60 views (150 s):
  shifts to 0.002 px, (rx, ry, rz) to (0.029, 0.025, 0.014) deg rms, PCC 0.993 (FBP of the
  misaligned data 0.77). 24^3 / 40 views (the test below, ~25 s; 4 seeds): 0.004-0.005 px
  and 0.05-0.08 deg per component, PCC 0.997. The floor is the model mismatch between the Joseph projector of the
  data and the trilinear ray marching of the model (laminographic rays cross the grid
  obliquely in all three axes): with data made by the model itself the same run reaches
  (0.036, 0.017, 0.019) deg.
* conditioning (dense volume Jacobian, 16^3 / 24 views, generalised eigenproblem of the
  pose misfit left after the best volume change): in laminography only the 6 gauge motions
  are (near) free - fraction of the misfit left 6e-5..4e-3 -, the weakest other pose
  pattern (rx/ry varying as cos/sin 2 theta) keeps 15 % of its misfit, the median 78 %.
  Tomography over 180 deg has several weak non-gauge patterns below 2 % (ry varying slowly
  with the angle: 0.8 %), so laminography is not the harder case for the poses; the missing
  cone costs volume fidelity, not pose accuracy.
"""
import importlib

import numpy as np
import pytest
import xarray as xr
from scipy.spatial.transform import Rotation

from ptynb.data import ValidationError

A = importlib.import_module("ptynb.tomo.align")
J = importlib.import_module("ptynb.tomo.joint")

TILT = 61.108


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def blob_volume(n, blobs):
    """Sum of isotropic 3D Gaussians ((z, y, x) centre in voxels from n // 2, sigma, amplitude)
    on an n^3 grid of 10 nm voxels."""
    z, y, x = np.meshgrid(*(np.arange(n) - n // 2,) * 3, indexing="ij")
    vol = sum(a * np.exp(-((z - p[0]) ** 2 + (y - p[1]) ** 2 + (x - p[2]) ** 2) / (2 * s ** 2))
              for p, s, a in blobs)
    return xr.DataArray(vol, dims=("z", "y", "x"),
                        coords={d: (np.arange(n) - n // 2) * 1e-8 for d in "zyx"})


FOUR_BLOBS = [((4.0, -3.0, 5.0), 3.0, 1.0), ((-6.0, 6.0, -4.0), 2.5, 0.8),
              ((2.0, 0.0, -7.0), 2.0, 1.2), ((-3.0, -7.0, 1.0), 1.5, 1.0)]


def random_blobs(n, count, seed=5):
    r = np.random.default_rng(seed)
    c = 9.0 * n / 32
    return [(tuple(r.uniform(-c, c, 3)), r.uniform(1.2, 2.2), r.uniform(0.5, 1.0)) for _ in range(count)]


def gauge_free_errors(rng, ang, shift_rms=3.0, euler_rms=None):
    """Per-view shifts (angle, 2) px with ``shift_rms`` (2D rms) and Euler errors (angle, 3)
    deg with ``euler_rms`` (rms over all components), both free of the laminography gauge."""
    S = A.remove_null_space(rng.standard_normal((ang.size, 2)), ang, geometry="laminography", tilt=TILT)
    S *= shift_rms / np.sqrt(np.mean(np.sum(S ** 2, axis=1)))
    if euler_rms is None:
        return S, None
    E = A._remove_basis(rng.standard_normal((ang.size, 3)),
                        A.rotation_gauge(ang, geometry="laminography", tilt=TILT))
    E *= euler_rms / np.sqrt(np.mean(E ** 2))
    return S, E


def analytic_projections(blobs, rotations, n=48):
    """Exact projections of isotropic Gaussian blobs for sample-to-lab matrices ``rotations``
    (angle, 3, 3) in (z, y, x) order: a blob at s projects to a 2D Gaussian centred at
    (R s)[y, x] (the ptynb.tomo.geometry convention)."""
    yy = (np.arange(n) - n // 2)[:, None]
    xx = (np.arange(n) - n // 2)[None, :]
    out = np.zeros((len(rotations), n, n))
    for k, R in enumerate(rotations):
        for p, s, amp in blobs:
            c = R @ np.asarray(p)
            out[k] += amp * s * np.sqrt(2 * np.pi) * np.exp(-((yy - c[1]) ** 2 + (xx - c[2]) ** 2) / (2 * s ** 2))
    return out


# ----------------------------------------------------------------------------- gauges
def test_laminography_gauges_are_the_rigid_motions():
    """The translation null space and the rotation gauge of laminography are what a rigid
    motion of the object does to the projections (exact analytic blob projections)."""
    from ptynb.physics.rotations import euler_xyz
    from ptynb.tomo.geometry import Geometry

    ang = np.linspace(0, 360, 36, endpoint=False)
    Rk = Geometry("laminography", ang, TILT).rotations()
    # the default tilt of the helpers is the ADePt one, as for ptynb.tomo.project
    np.testing.assert_allclose(A.rigid_null_space(ang, geometry="laminography"),
                               A.rigid_null_space(ang, geometry="laminography", tilt=TILT))
    # translation t (voxels = pixels) -> projection k moves by (R_k t)[y, x]
    tb = A.rigid_null_space(ang, geometry="laminography", tilt=TILT)
    assert tb.shape == (3, ang.size, 2)
    t = np.array([1.3, -0.7, 2.1])
    moved = [((np.asarray(p) + t), s, a) for p, s, a in FOUR_BLOBS]
    P0, P1 = analytic_projections(FOUR_BLOBS, Rk), analytic_projections(moved, Rk)
    pattern = np.stack([R @ t for R in Rk])[:, 1:]
    # (Fourier shift: the sigma = 1.5 px blob is band-limited to 1.5e-5 at Nyquist)
    np.testing.assert_allclose(A.shift_image(P0, pattern), P1, atol=1e-4 * P0.max())
    np.testing.assert_allclose(A.remove_null_space(pattern, basis=tb), 0, atol=1e-12)
    # rotation W of the object = per-view pose R_k W R_k^T (exact); its Euler angles lie in
    # the rotation gauge up to second order in the angle
    rb = A.rotation_gauge(ang, geometry="laminography", tilt=TILT)
    assert rb.shape == (3, ang.size, 3)
    w = np.deg2rad(0.5) * np.array([0.3, -0.8, 0.52]) / np.linalg.norm([0.3, -0.8, 0.52])  # (x, y, z)
    W = Rotation.from_rotvec(w).as_matrix()[::-1, ::-1]  # to (z, y, x) component order
    eul = np.stack([Rotation.from_matrix((R @ W @ R.T)[::-1, ::-1]).as_euler("xyz", degrees=True)
                    for R in Rk])
    np.testing.assert_allclose(euler_xyz(eul) @ Rk, Rk @ W, atol=1e-12)  # same convention
    rotated = [((W @ np.asarray(p)), s, a) for p, s, a in FOUR_BLOBS]
    posed = Geometry("posed", ang, TILT, poses=eul).rotations()
    np.testing.assert_allclose(analytic_projections(FOUR_BLOBS, posed), analytic_projections(rotated, Rk),
                               atol=1e-9)
    left = A._remove_basis(eul, rb)
    assert np.abs(left).max() < 0.01 * np.abs(eul).max()  # O(0.5 deg^2) = 0.004 deg
    # a rotation about the tilted rotation axis is a constant (0, sin tilt, cos tilt)
    axis = np.zeros((ang.size, 3))
    axis[:, 1], axis[:, 2] = np.sin(np.deg2rad(TILT)), np.cos(np.deg2rad(TILT))
    np.testing.assert_allclose(A._remove_basis(axis, rb), 0, atol=1e-12)
    # and per-view rotations are not a gauge motion
    jitter = np.zeros((ang.size, 3))
    jitter[::2, 0] = 1.0
    assert np.abs(A._remove_basis(jitter, rb)).max() > 0.5


# ----------------------------------------------------------------------------- projection matching
def _misaligned_laminography(rng, n=32, views=60, blobs=FOUR_BLOBS):
    from ptynb import tomo

    vol = blob_volume(n, blobs)
    ang = np.linspace(0, 360, views, endpoint=False)
    P = tomo.project(vol, ang, geometry="laminography", tilt=TILT, dtype=np.float64)
    S, _ = gauge_free_errors(rng, ang)
    return vol, ang, P, P.copy(data=A.shift_image(P.values, S)), S


def _rms2(s):
    return float(np.sqrt(np.mean(np.sum(s ** 2, axis=1))))


def test_projection_matching_laminography_fbp(rng):
    """3 px rms shifts over 60 views / 360 deg to < 0.15 px rms with FBP-based matching.

    Measured: 0.087-0.097 px rms (max 0.15) over 4 seeds after 5 rounds, converged (the FBP
    bias, next test); volume PCC 0.84-0.87 -> 0.958 = FBP of the perfectly aligned data."""
    from ptynb import metrics, tomo

    vol, _, P, meas, S = _misaligned_laminography(rng)
    assert meas.attrs["geometry"] == "laminography" and meas.attrs["tilt"] == TILT
    out, info = A.align(meas, method="projection_matching", reconstruct="fbp", iterations=5,
                        progress=False)
    resid = info["shifts"] + S  # the correction undoes the error (no gauge part in S)
    rms = _rms2(resid)
    pcc_before, pcc_after = metrics.pcc(vol, tomo.fbp(meas)), metrics.pcc(vol, tomo.fbp(out))
    pcc_ideal = metrics.pcc(vol, tomo.fbp(P))
    print(f"laminography PM (FBP): {rms:.3f} px rms (max {np.abs(resid).max():.3f}); "
          f"PCC {pcc_before:.3f} -> {pcc_after:.4f} (ideal {pcc_ideal:.4f})")
    assert rms < 0.15
    assert np.abs(resid).max() < 0.3
    assert pcc_after > pcc_before + 0.05
    assert pcc_after > pcc_ideal - 0.005


def test_projection_matching_laminography_fbp_bias():
    """Why FBP-based matching stops near 0.1 px in laminography: on perfectly aligned data
    the FBP reprojection (missing cone) moves the shifts by ~0.06 px rms, a SIRT one not."""
    from ptynb import tomo

    vol = blob_volume(32, FOUR_BLOBS)
    ang = np.linspace(0, 360, 60, endpoint=False)
    P = tomo.project(vol, ang, geometry="laminography", tilt=TILT, dtype=np.float64)
    _, fbp_info = A.align(P, method="projection_matching", reconstruct="fbp", iterations=1, progress=False)
    _, sirt_info = A.align(P, method="projection_matching", reconstruct="sirt", iterations=1,
                           recon_iterations=20, progress=False)
    fbp_bias, sirt_bias = _rms2(fbp_info["shifts"]), _rms2(sirt_info["shifts"])
    print(f"one round on aligned data: FBP {fbp_bias:.3f} px rms, SIRT {sirt_bias:.3f} px rms")
    assert fbp_bias < 0.1  # measured 0.061
    assert sirt_bias < 0.02  # measured 0.000 (below the 0.05 px registration step)


@pytest.mark.slow
def test_projection_matching_laminography_sirt(rng):
    """SIRT-based matching: 3 px rms to < 0.05 px rms (measured 0.021-0.024 over 3 seeds, the
    0.05 px step of the upsampled registration; 5-9 s)."""
    *_, meas, S = _misaligned_laminography(rng)
    _, info = A.align(meas, method="projection_matching", reconstruct="sirt", iterations=6,
                        recon_iterations=20, progress=False)
    rms = _rms2(info["shifts"] + S)
    print(f"laminography PM (SIRT): {rms:.3f} px rms")
    assert rms < 0.05
    assert info["residual"][-1] < 0.5 * info["residual"][0]


# ----------------------------------------------------------------------------- auto mask
def test_auto_support_keeps_the_object():
    """The auto mask of joint refinement must not cut the object: what it cuts is a misfit
    only the poses can absorb. From a 2x binned, blurred 32^3 blob volume (a stand-in for the
    first-stage volume) it keeps > 99.7 % of the mass; the earlier rule (signed volume > 0.2
    max, one binned voxel of dilation) lost several per cent."""
    from scipy import ndimage as ndi

    vol = blob_volume(32, random_blobs(32, 12)).values
    vb = ndi.gaussian_filter(vol, 1.0).reshape(16, 2, 16, 2, 16, 2).mean(axis=(1, 3, 5))
    m = J._auto_support(vb, 2, (32, 32, 32), 0.1, 3.0)
    assert m.shape == (32, 32, 32) and m.dtype == bool
    lost = vol[~m].sum() / vol.sum()
    old = np.kron(ndi.binary_dilation(vb > 0.2 * vb.max(), iterations=1), np.ones((2, 2, 2), bool))
    lost_old = vol[~old].sum() / vol.sum()
    print(f"mass outside the auto mask: {lost:.4f} (earlier rule {lost_old:.3f}); mask {m.mean():.2f} of the volume")
    assert lost < 3e-3  # measured 1e-3
    assert lost_old > 0.02  # measured 0.06
    assert m.mean() < 0.5  # still a support, not everything
    # sign does not matter (phase objects may be negative); empty volume -> no constraint;
    # a grid that is not a multiple of the binning is padded
    np.testing.assert_array_equal(J._auto_support(-vb, 2, (32, 32, 32), 0.1, 3.0), m)
    assert J._auto_support(np.zeros((8, 8, 8)), 2, (16, 16, 16), 0.1, 3.0).all()
    assert J._auto_support(vb, 2, (33, 32, 33), 0.1, 3.0).shape == (33, 32, 33)


def test_auto_mask_bad_parameters():
    da = xr.DataArray(np.ones((4, 8, 8)), dims=("angle", "y", "x"), coords={"angle": [0, 1, 2, 3.0]})
    with pytest.raises(ValidationError, match="mask_threshold"):
        J.joint_refinement(da, mask="auto", mask_threshold=1.5, progress=False)
    with pytest.raises(ValidationError, match="mask_margin"):
        J.joint_refinement(da, mask="auto", mask_margin=-1, progress=False)
    with pytest.raises(ValidationError, match="mask"):
        J.joint_refinement(da, mask="everything", progress=False)


# ----------------------------------------------------------------------------- joint refinement
def _posed_data(vol, ang, geometry, S, E):
    from ptynb import tomo

    tilt = TILT if geometry == "laminography" else 90.0
    P = tomo.project(vol, ang, geometry="posed", tilt=tilt, poses=E, shifts=S, dtype=np.float64)
    P.attrs["geometry"] = geometry  # the measured data carry the nominal geometry only
    for k in ("pose_euler_deg", "pose_shift_px", "euler_convention"):
        P.attrs.pop(k, None)
    return P


def _pose_errors(out, S, E):
    shifts = np.stack([out["shift_y"].values, out["shift_x"].values], axis=1)
    poses = np.stack([out["pose_rx"].values, out["pose_ry"].values, out["pose_rz"].values], axis=1)
    return _rms2(shifts + S), np.sqrt(np.mean((poses - E) ** 2, axis=0))


@pytest.mark.slow
def test_joint_refinement_laminography(rng):
    """Joint refinement in laminography, 24^3 voxels / 40 views over 360 deg: shifts of 3 px
    rms and Euler errors of 1 deg rms (gauge-free) recovered per component.

    Measured (seeds 7, 1, 2, 3): shifts 0.0035-0.0047 px rms; every Euler component 0.049-
    0.079 deg rms - the projector-mismatch floor of this small grid (32^3 / 60 views: 0.03
    deg) -, volume PCC 0.997 (FBP of the misaligned data 0.78-0.80, of perfectly aligned
    data 0.92). Bounds: 0.05 px and 0.15 deg per component (the issue's target for
    tomography is 0.3 px and 0.2 deg)."""
    from ptynb import metrics, tomo

    vol = blob_volume(24, random_blobs(24, 6))
    ang = np.linspace(0, 360, 40, endpoint=False)
    S, E = gauge_free_errors(rng, ang, 3.0, 1.0)
    P = _posed_data(vol, ang, "laminography", S, E)
    losses = []
    out, info = A.align(P, method="joint", iterations=3, schedule=(("all", 1.0, 3),), pose_steps=2,
                        volume_steps=3, progress=False, callback=lambda i, d: losses.append(d["loss"]))
    shift_err, rot_err = _pose_errors(out, S, E)
    pcc, pcc_fbp = metrics.pcc(vol, info["volume"]), metrics.pcc(vol, tomo.fbp(P))
    print(f"laminography joint: shifts {shift_err:.4f} px rms, (rx, ry, rz) {np.round(rot_err, 3)} deg rms, "
          f"PCC {pcc:.4f} (FBP of the data {pcc_fbp:.3f})")
    assert shift_err < 0.05
    assert np.all(rot_err < 0.15)
    assert losses[-1] < losses[0]
    assert pcc > 0.99 and pcc > pcc_fbp + 0.1


@pytest.mark.slow
def test_joint_refinement_auto_mask_tomography():
    """``mask="auto"`` must not hurt the rotation about the tomographic axis (ry).

    24^3 voxels / 40 views over 180 deg, 3 px + 1 deg rms errors, the mask made after a
    shifts stage and used in 4 full rounds. Measured: ry 0.129 deg rms with the mask, 0.166
    without; the earlier auto mask raised the loss tenfold and drove the poses away (ry 2.0
    deg). Bounds: ry < 0.2 deg, rx and rz < 0.1 deg (measured 0.024, 0.023)."""
    from ptynb import metrics

    r = np.random.default_rng(7)
    vol = blob_volume(24, random_blobs(24, 6))
    ang = np.linspace(0, 180, 40, endpoint=False)
    E = A._remove_basis(r.standard_normal((40, 3)), A.rotation_gauge(ang))
    E *= 1.0 / np.sqrt(np.mean(E ** 2))
    S = A.remove_null_space(r.standard_normal((40, 2)), ang)
    S *= 3.0 / _rms2(S)
    P = _posed_data(vol, ang, "tomography", S, E)
    losses = []
    out, info = A.align(P, method="joint", iterations=4, schedule=(("shifts", 0.1, 1), ("all", 1.0, 4)),
                        pose_steps=2, volume_steps=3, mask="auto", progress=False,
                        callback=lambda i, d: losses.append(d["loss"]))
    shift_err, rot_err = _pose_errors(out, S, E)
    m = info["mask"]
    lost = float(vol.values[~m].sum() / vol.values.sum())
    print(f"tomography joint, auto mask: shifts {shift_err:.4f} px, (rx, ry, rz) {np.round(rot_err, 3)} deg, "
          f"mask {m.mean():.2f} of the volume, mass outside {lost:.4f}, losses {np.round(losses, 7)}")
    assert lost < 0.01  # measured 0.003 (the earlier auto mask: 0.05-0.09)
    assert m.mean() < 0.6
    # the masked model fits as well as the unmasked one did: no loss jump at the switch
    assert max(losses[1:]) < losses[0]
    assert shift_err < 0.05
    assert rot_err[1] < 0.2
    assert rot_err[0] < 0.1 and rot_err[2] < 0.1
    assert metrics.pcc(vol, info["volume"]) > 0.99
