"""The one rotation convention (ptynb.physics.rotations) and every place that uses it."""
import numpy as np
import pytest

from ptynb.data import ValidationError
from ptynb.physics import rotations as rot

RNG = np.random.default_rng(20261202)


def _cases(n=6):
    return [(RNG.uniform(-360, 360, 5), RNG.uniform(20, 90), RNG.uniform(-30, 30, (5, 3)))
            for _ in range(n)]


def _textbook_xyz(axis, a):
    """Right-handed rotation matrices on (x, y, z) vectors, written out independently."""
    c, s = np.cos(a), np.sin(a)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def test_elementary_rotations_are_the_textbook_ones():
    for a in RNG.uniform(-7, 7, 5):
        for axis, f in (("x", rot.rotation_x), ("y", rot.rotation_y), ("z", rot.rotation_z)):
            np.testing.assert_allclose(rot.zyx_to_xyz(f(a)), _textbook_xyz(axis, a), atol=1e-14)


def test_physical_directions():
    """+90 deg about y moves +z to +x (and +x to -z); about x moves +y to +z; about z +x to +y
    (points written in (z, y, x) order)."""
    z, y, x = np.eye(3)
    q = np.pi / 2
    np.testing.assert_allclose(rot.rotation_y(q) @ z, x, atol=1e-15)
    np.testing.assert_allclose(rot.rotation_y(q) @ x, -z, atol=1e-15)
    np.testing.assert_allclose(rot.rotation_x(q) @ y, z, atol=1e-15)
    np.testing.assert_allclose(rot.rotation_z(q) @ x, y, atol=1e-15)
    # the same through the view rotation: tomography, angle +90
    np.testing.assert_allclose(rot.sample_to_lab(90.0, 90.0) @ np.array([1.0, 0.0, 0.0]),
                               [0.0, 0.0, 1.0], atol=1e-15)
    # laminography: the rotation axis (sample y) is (cos tilt, sin tilt, 0) in the lab
    t = 61.108
    axis = rot.sample_to_lab(np.array([0.0, 37.0, 200.0]), t) @ y
    np.testing.assert_allclose(axis, np.tile([np.cos(np.deg2rad(t)), np.sin(np.deg2rad(t)), 0.0], (3, 1)),
                               atol=1e-14)


@pytest.mark.parametrize("ang, tilt, eul", _cases())
def test_orthogonal_with_det_one(ang, tilt, eul):
    for R in (rot.sample_to_lab(ang, tilt, eul), rot.euler_xyz(eul), rot.rotation_about("zyx", eul[0])):
        R = np.asarray(R).reshape(-1, 3, 3)
        np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-13)
        np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-13)


def test_composition_order():
    """Nominal then extrinsic x-y-z Euler correction: R = Rz Ry Rx Rx(90 - tilt) Ry(angle)."""
    ang, tilt, (rx, ry, rz) = 33.0, 70.0, (4.0, -7.0, 11.0)
    d = np.deg2rad
    expect = (rot.rotation_z(d(rz)) @ rot.rotation_y(d(ry)) @ rot.rotation_x(d(rx))
              @ rot.rotation_x(d(90 - tilt)) @ rot.rotation_y(d(ang)))
    np.testing.assert_allclose(rot.sample_to_lab(ang, tilt, [rx, ry, rz]), expect, atol=1e-15)
    np.testing.assert_allclose(rot.rotation_about("xyz", [rx, ry, rz]), rot.euler_xyz([rx, ry, rz]), atol=1e-15)


@pytest.mark.parametrize("ang, tilt, eul", _cases())
def test_every_call_site_gives_the_same_matrices(ang, tilt, eul):
    from ptynb.physics import atoms, phantoms
    from ptynb.simulate import _rotation_matrix_zyx
    from ptynb.tomo.geometry import Geometry

    ref = rot.sample_to_lab(ang, tilt, eul)
    nominal = rot.sample_to_lab(ang, tilt)
    np.testing.assert_array_equal(Geometry("posed", ang, tilt, poses=eul).rotations(), ref)
    np.testing.assert_array_equal(Geometry("laminography", ang, tilt).rotations(), nominal)
    np.testing.assert_array_equal(Geometry("tomography", ang).rotations(), rot.sample_to_lab(ang, 90.0))
    for k, a in enumerate(ang):
        lam = phantoms.sample_rotation(a, "laminography", tilt)
        np.testing.assert_allclose(lam, rot.zyx_to_xyz(nominal[k]), atol=1e-14)
        np.testing.assert_allclose(atoms.rotation_matrix((a, 90.0 - tilt), "yx"), lam, atol=1e-14)
        np.testing.assert_allclose(phantoms.sample_rotation(a, "tomography"),
                                   atoms.rotation_matrix(a, "y"), atol=1e-14)
        # simulate rotates the sample-frame volume exactly as tomo does (one convention)
        Rs = _rotation_matrix_zyx(a, tilt)
        np.testing.assert_array_equal(Rs, nominal[k])
        # the sample's y axis goes to the tilted lab axis (cos tilt, sin tilt, 0) at every angle
        axis = np.array([np.cos(np.deg2rad(tilt)), np.sin(np.deg2rad(tilt)), 0.0])
        np.testing.assert_allclose(Rs @ np.array([0.0, 1.0, 0.0]), axis, atol=1e-14)
    np.testing.assert_allclose(atoms.rotation_matrix(eul[0], "xyz"), rot.zyx_to_xyz(rot.euler_xyz(eul[0])),
                               atol=1e-14)


@pytest.mark.parametrize("ang, tilt, eul", _cases(3))
def test_torch_same_matrices_and_gradients(ang, tilt, eul):
    torch = pytest.importorskip("torch")
    from ptynb.tomo.torch_ops import rotation_matrices_torch

    ref = rot.sample_to_lab(ang, tilt, eul)
    e = torch.tensor(eul, requires_grad=True)
    t = torch.tensor(tilt, dtype=torch.float64, requires_grad=True)
    R = rotation_matrices_torch(torch.tensor(ang), t, e)
    np.testing.assert_allclose(R.detach().numpy(), ref, atol=1e-13)
    np.testing.assert_allclose(rot.sample_to_lab(torch.tensor(ang), tilt, torch.tensor(eul)).numpy(), ref,
                               atol=1e-13)
    np.testing.assert_allclose(rotation_matrices_torch(ang).numpy(), rot.sample_to_lab(ang, 90.0), atol=1e-13)
    # gradients through the same formulas: d R / d rx by autograd = finite differences of numpy
    w = torch.tensor(RNG.normal(size=(ang.size, 3, 3)))
    (R * w).sum().backward()
    h = 1e-6
    for j in range(3):
        de = np.zeros_like(eul)
        de[:, j] = h
        fd = ((rot.sample_to_lab(ang, tilt, eul + de) - rot.sample_to_lab(ang, tilt, eul - de)) / (2 * h))
        np.testing.assert_allclose(e.grad.numpy()[:, j], (fd * w.numpy()).sum(axis=(1, 2)), rtol=1e-6, atol=1e-8)
    fd_t = (rot.sample_to_lab(ang, tilt + h, eul) - rot.sample_to_lab(ang, tilt - h, eul)) / (2 * h)
    np.testing.assert_allclose(float(t.grad), float((fd_t * w.numpy()).sum()), rtol=1e-6)
    # float32 tensors stay float32
    assert rot.sample_to_lab(torch.tensor(ang, dtype=torch.float32), tilt).dtype == torch.float32


def test_one_tilt_default():
    from ptynb import tomo
    from ptynb.tomo.geometry import Geometry

    assert rot.DEFAULT_TILT == 61.108 and tomo.DEFAULT_TILT is rot.DEFAULT_TILT
    assert rot.resolve_tilt("laminography") == rot.DEFAULT_TILT
    assert rot.resolve_tilt("tomography") == rot.resolve_tilt("posed") == 90.0
    assert Geometry("laminography", [0.0]).tilt == rot.DEFAULT_TILT
    assert Geometry.make([0.0], "laminography").tilt == rot.DEFAULT_TILT
    assert Geometry.from_attrs({"geometry": "laminography"}, [0.0]).tilt == rot.DEFAULT_TILT
    assert tomo.rigid_null_space([0.0, 50.0], geometry="laminography").shape == \
        tomo.rigid_null_space([0.0, 50.0], geometry="laminography", tilt=61.108).shape
    np.testing.assert_array_equal(tomo.rotation_gauge([0.0, 50.0, 90.0], geometry="laminography"),
                                  tomo.rotation_gauge([0.0, 50.0, 90.0], geometry="laminography", tilt=61.108))
    for bad in (0.0, 95.0, float("nan"), "steep"):
        with pytest.raises(ValidationError, match="tilt"):
            rot.resolve_tilt("laminography", bad)
    with pytest.raises(ValidationError, match="axes"):
        rot.rotation_about("xq", [1.0, 2.0])
    with pytest.raises(ValidationError, match="angles"):
        rot.rotation_about("xy", [1.0])


@pytest.mark.parametrize("geometry, tilt", [("tomography", 90.0), ("laminography", 61.108)])
def test_simulated_rotation_projects_like_the_tomo_projector(geometry, tilt):
    """A volume rotated by ``simulate.rotate_volume`` and summed along the beam gives the same
    projection as ``tomo.project`` of the unrotated volume (same frame, same centre voxel n // 2,
    same convention), to the interpolation error on smooth, off-centre blobs: measured 0.005-0.006
    (tomography) and 0.007-0.010 (laminography) relative. The former simulator convention (the
    volume in the angle-0 lab frame, i.e. turned by Rx(90 - tilt), rotated about (n - 1) / 2)
    gives 1.15 at 37 deg laminography, and 0.05-0.07 from the half-voxel centre alone."""
    from ptynb import data as pdata
    from ptynb import tomo
    from ptynb.simulate import rotate_volume

    n = 32
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    vol = (np.exp(-((z - 4) ** 2 + (y + 5) ** 2 + (x - 3) ** 2) / (2 * 3.0 ** 2))
           + 0.5 * np.exp(-((z + 6) ** 2 + (y - 2) ** 2 + (x + 4) ** 2) / (2 * 2.5 ** 2))).astype(np.float64)
    for a in (0.0, 37.0, 120.0):
        sim = rotate_volume(vol, a, tilt=tilt, order=3).sum(axis=0)
        proj = tomo.project(pdata.volume(vol, voxel_size=1.0), [a], geometry=geometry, tilt=tilt,
                            detector_shape=(n, n), dtype=np.float64).values[0]
        rel = np.linalg.norm(sim - proj) / np.linalg.norm(proj)
        assert rel < 0.02, (a, rel)
