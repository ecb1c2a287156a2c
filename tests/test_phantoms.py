"""Tests of ptynb.physics.materials, .atoms and .phantoms against known numbers."""
import numpy as np
import pytest
import xarray as xr
from scipy import constants as C
from scipy.ndimage import map_coordinates

from ptynb.data import ValidationError
from ptynb.physics import atoms, materials, phantoms
from ptynb.physics.units import interaction_constant, wavelength

# ----------------------------------------------------------------------------- materials


def test_gold_and_silicon_delta_at_8keV():
    # tabulated values (Henke/CXRO; the stereo paper quotes delta_Au = 4.77e-5 at 8 keV)
    d_au, b_au = materials.refractive_index("Au", 8000)
    assert d_au == pytest.approx(4.77e-5, rel=0.03)
    assert b_au == pytest.approx(4.6e-6, rel=0.05)
    d_si, b_si = materials.refractive_index("silicon", 8000)
    assert d_si == pytest.approx(7.57e-6, rel=0.03)
    assert b_si == pytest.approx(1.73e-7, rel=0.08)


def test_delta_scales_as_lambda_squared_and_density():
    # far above the Si K edge delta ~ lambda^2: doubling the energy divides delta by 4
    d8, _ = materials.refractive_index("Si", 8000)
    d16, _ = materials.refractive_index("Si", 16000)
    assert d16 / d8 == pytest.approx(0.25, rel=0.02)
    half, _ = materials.refractive_index("Au", 8000, density=materials.DENSITIES["Au"] / 2)
    assert half == pytest.approx(materials.refractive_index("Au", 8000)[0] / 2, rel=1e-6)
    d, _ = materials.refractive_index("Cu", np.array([8000.0, 9000.0]))
    assert d.shape == (2,) and d[1] < d[0]


def test_thickness_from_phase_reproduces_stereo_paper():
    # paper: mean phase -0.61 rad of the Au zone plate at 8 keV -> ~310 nm
    t = materials.thickness_from_phase(-0.61, "Au", 8000)
    assert t == pytest.approx(310e-9, rel=0.05)
    # the formula itself with the paper's delta
    lam = wavelength(8000, "xray")
    assert 0.61 * lam / (2 * np.pi * 4.77e-5) == pytest.approx(315e-9, rel=0.01)
    # round trip and sign convention (material -> negative phase)
    ph = materials.phase_from_thickness(t, "Au", 8000)
    assert ph == pytest.approx(-0.61, rel=1e-9)
    tr = materials.transmission(t, "Au", 8000)
    assert np.angle(tr) == pytest.approx(-0.61, rel=1e-6)
    assert abs(tr) < 1


def test_materials_bad_input():
    with pytest.raises(ValidationError, match="unknown material 'Unobtainium'"):
        materials.refractive_index("Unobtainium", 8000)
    with pytest.raises(ValidationError, match="energy_eV"):
        materials.refractive_index("Au", -5)
    with pytest.raises(ValidationError, match="energy_eV.*eV"):
        materials.refractive_index("Au", 8)  # keV given as eV
    with pytest.raises(ValidationError, match="density"):
        materials.refractive_index("Au", 8000, density=-1)
    with pytest.raises(ValidationError, match="thickness_m.*negative"):
        materials.transmission(-1e-9, "Au", 8000)
    with pytest.raises(ValidationError, match="phase_rad"):
        materials.thickness_from_phase(np.nan, "Au", 8000)
    # any formula works with an explicit density
    d, _ = materials.refractive_index("GaAs", 8000, density=5.32)
    assert d > 0


# ----------------------------------------------------------------------------- IC volume


def _ic(**kw):
    args = dict(shape=(27, 64, 64), voxel_size=14e-9, n_layers=4, via_fraction=0.5, seed=3)
    args.update(kw)
    return phantoms.ic_volume(**args)


def test_ic_volume_structure():
    ic = _ic()
    lab = ic.values
    assert ic.dims == ("z", "y", "x") and lab.dtype == np.uint8
    assert set(np.unique(lab)) <= {0, 1, 2}
    assert np.allclose(np.diff(ic.x.values), 14e-9)
    metal = ic.attrs["metal_layer_index"].reshape(-1, 2)
    vias = ic.attrs["via_layer_index"].reshape(-1, 2)
    dirs = ic.attrs["layer_direction"].split(",")
    assert len(metal) == 4 and len(vias) == 3 and dirs == ["x", "y", "x", "y"]
    zb = ic.attrs["metal_layer_z"].reshape(-1, 2)
    assert np.allclose(zb[:, 1] - zb[:, 0], (metal[:, 1] - metal[:, 0]) * 14e-9)
    inside = np.zeros(lab.shape[0], bool)
    for li, (a, b) in enumerate(metal):
        inside[a:b] = True
        layer = lab[a:b]
        assert np.all(layer == layer[0])               # wires run straight through the layer
        m = layer[0] == 1
        assert 0.08 < m.mean() < 0.6                   # metal fraction in range
        # wire direction: metal continues along the wire direction much more than across
        run_x = np.count_nonzero(m[:, 1:] & m[:, :-1]) / max(np.count_nonzero(m[:, 1:] ^ m[:, :-1]), 1)
        run_y = np.count_nonzero(m[1:, :] & m[:-1, :]) / max(np.count_nonzero(m[1:, :] ^ m[:-1, :]), 1)
        if dirs[li] == "x":
            assert run_x > 2 * run_y
        else:
            assert run_y > 2 * run_x
    for li, (a, b) in enumerate(vias):
        inside[a:b] = True
        assert a == metal[li][1] and b == metal[li + 1][0]
        v = lab[a:b]
        assert np.all(np.isin(v, (0, 2)))
        col = v[0] == 2
        assert col.any(), "every via layer gets at least one via"
        assert np.all(v == v[0])                          # vertical pillars
        # every via voxel column touches metal in the layer below and the layer above
        assert np.all(lab[a - 1][col] == 1) and np.all(lab[b][col] == 1)
        assert ic.attrs["n_vias"][li] >= 1
    assert np.all(lab[~inside] == 0)                      # dielectric outside the stack


def test_ic_volume_deterministic_and_complex():
    a, b, c = _ic(), _ic(), _ic(seed=4)
    assert np.array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values)
    z = _ic(energy_eV=8000, materials=("Cu", "SiO2"), via_material="W")
    assert z.dtype == np.complex64
    lab = a.values
    for label, mat in ((0, "SiO2"), (1, "Cu"), (2, "W")):
        d, beta = materials.refractive_index(mat, 8000)
        vals = np.unique(z.values[lab == label])
        assert vals.size == 1
        assert vals[0].real == pytest.approx(d, rel=1e-6) and vals[0].imag == pytest.approx(beta, rel=1e-6)
    truth = phantoms.ic_labels(z)
    assert np.array_equal(truth.values, (lab > 0).astype(np.uint8))
    assert np.array_equal(phantoms.ic_labels(a).values, truth.values)


def test_ic_volume_bad_input():
    with pytest.raises(ValidationError, match="cannot hold 6 metal layers"):
        phantoms.ic_volume((8, 32, 32), 1e-8, n_layers=6, metal_thickness=2e-8)
    with pytest.raises(ValidationError, match="wire_width"):
        phantoms.ic_volume((16, 32, 32), 1e-8, pitch=8e-8, wire_width=9e-8)
    with pytest.raises(ValidationError, match="via_fraction"):
        phantoms.ic_volume((16, 32, 32), 1e-8, via_fraction=1.5)
    with pytest.raises(ValidationError, match="materials"):
        phantoms.ic_volume((16, 32, 32), 1e-8, materials="Cu")
    with pytest.raises(ValidationError, match="voxel_size"):
        phantoms.ic_volume((16, 32, 32), -1e-8)
    with pytest.raises(ValidationError, match="shape"):
        phantoms.ic_volume((16, 32), 1e-8)
    with pytest.raises(ValidationError, match="unknown material"):
        phantoms.ic_volume((16, 32, 32), 1e-8, materials=("Xx", "SiO2"), energy_eV=8000)


# ----------------------------------------------------------------------------- stereo


def test_stereo_two_layer_geometry_and_phases():
    s = phantoms.stereo_two_layer((128, 128), 8.1e-9, 8000, n_particles=8, seed=1)
    assert s.layers.dims == ("layer", "y", "x") and s.layers.dtype == np.complex64
    assert list(s.layer.values) == ["particles", "zone_plate"]
    assert np.allclose(s.z.values, [0.0, 480e-9])
    assert s.attrs["slice_thickness"] == pytest.approx(480e-9)
    assert s.attrs["geometric_separation"] == pytest.approx(480e-9)  # 125 + 200 + 155 nm
    lam = wavelength(8000, "xray")
    k = 2 * np.pi / lam
    d_au, b_au = materials.refractive_index("Au", 8000)
    # zone-plate layer: full-height Au pixels have phase -k delta t for t = 310 nm
    zp = s.layers.sel(layer="zone_plate").values
    tz = s.thickness.sel(layer="zone_plate").values
    full = np.isclose(tz, 310e-9, rtol=1e-6)
    assert full.mean() > 0.2 and (tz == 0).mean() > 0.2
    expected = materials.phase_from_thickness(310e-9, "Au", 8000)
    assert np.allclose(np.angle(zp[full]), expected, atol=1e-5)
    assert np.allclose(zp[tz == 0], 1.0, atol=1e-6)
    # particle layer: membrane everywhere, plus spheres of diameter 250 nm
    d_m, b_m = materials.refractive_index("Si3N4", 8000)
    mem = np.exp(-1j * k * (d_m - 1j * b_m) * 200e-9)
    tp = s.thickness.sel(layer="particles").values
    lp = s.layers.sel(layer="particles").values
    assert np.allclose(lp, mem * np.exp(-1j * k * (d_au - 1j * b_au) * tp), rtol=2e-5, atol=2e-6)
    assert np.allclose(lp[tp == 0], mem, atol=1e-6)
    assert tp.max() == pytest.approx(250e-9, rel=0.02)
    assert tp.max() <= 250e-9 * (1 + 1e-6)
    # volume of the spheres: each fully inside particle has volume 4/3 pi R^3
    n = s.attrs["n_particles"]
    assert n == 8
    vol = tp.sum() * 8.1e-9**2
    assert vol <= n * 4 / 3 * np.pi * 125e-9**3 * 1.01


def test_stereo_two_layer_options_and_determinism():
    a = phantoms.stereo_two_layer((96, 96), 8.1e-9, 8000, seed=2)
    b = phantoms.stereo_two_layer((96, 96), 8.1e-9, 8000, seed=2)
    c = phantoms.stereo_two_layer((96, 96), 8.1e-9, 8000, seed=5)
    assert np.array_equal(a.layers.values, b.layers.values)
    assert not np.array_equal(a.layers.values, c.layers.values)
    r = phantoms.stereo_two_layer((96, 96), 8.1e-9, 8000, seed=2, order=("zone_plate", "particles"),
                                  separation=600e-9)
    assert list(r.layer.values) == ["zone_plate", "particles"] and np.allclose(r.z, [0, 600e-9])
    assert np.array_equal(r.thickness.sel(layer="particles").values, a.thickness.sel(layer="particles").values)
    with pytest.raises(ValidationError, match="separation"):
        phantoms.stereo_two_layer((64, 64), 8e-9, 8000, separation=-1)
    with pytest.raises(ValidationError, match="energy_eV"):
        phantoms.stereo_two_layer((64, 64), 8e-9, 0)
    with pytest.raises(ValidationError, match="order"):
        phantoms.stereo_two_layer((64, 64), 8e-9, 8000, order=("a", "b"))
    with pytest.raises(ValidationError, match="particle_radius"):
        phantoms.stereo_two_layer((64, 64), 8e-9, 8000, particle_radius=1e-9)


def test_layered_stack():
    s = phantoms.layered_stack((96, 96), 10e-9, 8000, n_layers=3, spacing=[1.1e-6, 0.3e-6],
                               thickness=[300e-9, 200e-9, 100e-9], seed=0)
    assert np.allclose(s.z.values, [0, 1.1e-6, 1.4e-6])
    assert "slice_thickness" not in s.attrs
    d, _ = materials.refractive_index("Cu", 8000)
    for i, t in enumerate([300e-9, 200e-9, 100e-9]):
        th = s.thickness.isel(layer=i).values
        assert set(np.unique(th)) <= {0.0, np.float32(t)} and (th > 0).mean() > 0.05
        ph = np.angle(s.layers.isel(layer=i).values[th > 0])
        assert np.allclose(ph, -2 * np.pi * d * t / wavelength(8000, "xray"), atol=1e-5)
    u = phantoms.layered_stack((64, 64), 10e-9, 8000, n_layers=4, spacing=250e-9)
    assert u.attrs["slice_thickness"] == pytest.approx(250e-9) and u.sizes["layer"] == 4
    with pytest.raises(ValidationError, match="spacing"):
        phantoms.layered_stack((64, 64), 10e-9, 8000, n_layers=3, spacing=[1e-7, 1e-7, 1e-7])


# ----------------------------------------------------------------------------- spinel


def _min_image_distances(frac, a):
    d = np.mod(frac[:, None, :] - frac[None, :, :] + 0.5, 1.0) - 0.5
    r = np.linalg.norm(d, axis=-1) * a
    np.fill_diagonal(r, np.inf)
    return r


def test_spinel_unit_cell():
    frac, num, sites = phantoms.spinel_unit_cell()
    assert len(frac) == 56
    assert np.count_nonzero(num == 27) == 24 and np.count_nonzero(num == 8) == 32
    assert np.count_nonzero(sites == "8a") == 8 and np.count_nonzero(sites == "16d") == 16
    a = 8.084e-10
    r = _min_image_distances(frac, a)
    o = num == 8
    # Co2+ tetrahedral: 4 O at sqrt(3) a (u - 1/8); Co3+ octahedral: 6 O at ~1.92 A
    for site, cn, bond in (("8a", 4, np.sqrt(3) * a * (0.2631 - 0.125)), ("16d", 6, 1.921e-10)):
        rr = r[sites == site][:, o]
        assert np.all(np.sum(rr < 2.2e-10, axis=1) == cn)
        assert np.allclose(np.sort(rr, axis=1)[:, :cn], bond, rtol=0.01)
    assert r[sites == "16d"][:, sites == "16d"].min() == pytest.approx(a * np.sqrt(2) / 4, rel=1e-6)
    assert r.min() > 1.8e-10


def test_spinel_nanocube_counts():
    pos, num = phantoms.spinel_co3o4_nanocube(edge=2 * 8.08e-10)
    assert pos.shape == (56 * 8, 3)
    assert np.count_nonzero(num == 27) * 4 == np.count_nonzero(num == 8) * 3
    assert np.all(np.abs(pos) <= 8.08e-10 + 1e-15)        # centred cube of edge 2a
    p2, _, s2 = phantoms.spinel_co3o4_nanocube(return_sites=True)  # default: 4 cells
    assert len(p2) == 56 * 64 and np.count_nonzero(s2 == "16d") == 16 * 64
    d = np.linalg.norm(p2[:200, None] - p2[None, :], axis=-1)
    d[d == 0] = np.inf
    assert d.min() > 1.8e-10
    p3, _ = phantoms.spinel_co3o4_nanocube(edge=2 * 8.08e-10, displacement_rms=5e-12, seed=1)
    p4, _ = phantoms.spinel_co3o4_nanocube(edge=2 * 8.08e-10, displacement_rms=5e-12, seed=1)
    assert np.array_equal(p3, p4) and 2e-12 < np.std(p3 - pos) < 8e-12
    with pytest.raises(ValidationError, match="lattice_constant"):
        phantoms.spinel_co3o4_nanocube(lattice_constant=8.08)
    with pytest.raises(ValidationError, match="edge"):
        phantoms.spinel_co3o4_nanocube(edge=-1e-9)


# ----------------------------------------------------------------------------- atoms


@pytest.mark.parametrize("Z", [8, 27])
def test_scattering_factor_matches_mott_bethe(Z):
    """Peng fit vs Mott-Bethe from independent X-ray form factors (Waasmaier-Kirfel, xraydb)."""
    import xraydb

    s = np.array([0.3, 0.5, 1.0])  # 1/Angstrom
    pref = C.m_e * C.e**2 / (8 * np.pi * C.epsilon_0 * C.h**2) * 1e-10  # 1/A (0.023934)
    mott = pref * (Z - xraydb.f0(Z, s)) / s**2                          # Angstrom
    fe = atoms.scattering_factor(Z, s * 1e10) / 1e-10
    assert np.allclose(fe, mott, rtol=0.01)


@pytest.mark.parametrize("Z", [8, 27])
def test_projected_potential_integral(Z):
    px = 0.04e-10
    pos = np.array([[0.013e-10, -0.021e-10, 0.0]])
    v = atoms.projected_potential(pos, [Z], (320, 320), px, slice_thickness=2e-10)
    assert v.dims == ("slice", "y", "x") and v.dtype == np.float32 and v.attrs["units"] == "V m"
    fe0 = atoms.scattering_factor(Z, 0.0)
    integral = v.values.astype(float).sum() * px**2
    # h^2 / (2 pi m0 e) f_e(0): 47.88 V A^3 per Angstrom of f_e(0)
    assert atoms.POTENTIAL_CONSTANT * 1e-10 / 1e-30 == pytest.approx(47.878, rel=1e-4)
    assert integral == pytest.approx(atoms.POTENTIAL_CONSTANT * fe0, rel=2e-4)
    # with the interaction constant the integrated phase is gamma * lambda * f_e(0)
    E = 200e3
    gamma = 1 + E * C.e / (C.m_e * C.c**2)
    phase_integral = interaction_constant(E) * integral
    assert phase_integral == pytest.approx(gamma * wavelength(E, "electron") * fe0, rel=2e-4)
    # same total when the atom is shared between finite slices
    vf = atoms.projected_potential(pos + [0, 0, 0.9e-10], [Z], (320, 320), px, slice_thickness=0.5e-10,
                                   n_slices=4, z_origin=0.0, integration="finite")
    per = vf.values.astype(float).sum(axis=(1, 2)) * px**2
    assert np.all(per > 0) and per[1] == per.max()
    assert per.sum() == pytest.approx(integral, rel=1e-5)
    assert np.allclose(vf.values.sum(0), v.values, rtol=1e-4, atol=1e-6 * v.values.max())


def test_projected_potential_crystal_and_volume():
    pos, num = phantoms.spinel_co3o4_nanocube(edge=8.08e-10)
    n_co, n_o = np.count_nonzero(num == 27), np.count_nonzero(num == 8)
    total = atoms.POTENTIAL_CONSTANT * (n_co * atoms.scattering_factor(27, 0) + n_o * atoms.scattering_factor(8, 0))
    px = 0.1e-10
    v = atoms.projected_potential(pos, num, (160, 160), px, slice_thickness=2e-10)
    assert v.sizes["slice"] == 4          # cube 8.08 A thick (atoms at z in [-4.04, 4.04) A)
    assert v.values.sum() * px**2 == pytest.approx(total, rel=1e-3)
    # rotating the atoms by +90 degrees about z rotates the image: I'(x, y) = I(y, -x)
    sym = (-79.5 * px, -79.5 * px)          # pixel centres symmetric about 0
    ref = atoms.projected_potential(pos, num, (160, 160), px, slice_thickness=2e-10, origin=sym)
    rot = atoms.projected_potential(atoms.rotate_atoms(pos, 90, "z"), num, (160, 160), px,
                                    slice_thickness=2e-10, origin=sym)
    assert np.allclose(rot.values, np.rot90(ref.values, k=-1, axes=(1, 2)), rtol=1e-4,
                       atol=1e-5 * ref.values.max())
    assert not np.allclose(rot.values, ref.values, atol=0.1 * ref.values.max())
    vol = atoms.crystal_volume(pos, num, (40, 40, 40), 0.4e-10)
    assert vol.dims == ("z", "y", "x") and vol.attrs["units"] == "V"
    assert vol.values.sum() * 0.4e-10**3 == pytest.approx(total, rel=2e-3)
    proj = vol.sum("z").values * 0.4e-10
    pv = atoms.projected_potential(pos, num, (40, 40), 0.4e-10, slice_thickness=20e-10).values[0]
    assert np.allclose(proj, pv, rtol=1e-3, atol=1e-3 * pv.max())


def test_rotate_atoms_convention():
    p = np.array([[1e-10, 0, 0], [0, 0, 1e-10]])
    r = atoms.rotate_atoms(p, 90.0)  # tomography: about +y
    assert np.allclose(r, [[0, 0, -1e-10], [1e-10, 0, 0]], atol=1e-20)
    back = atoms.rotate_atoms(atoms.rotate_atoms(p, (30, 40), "zx"), (-40, -30), "xz")
    assert np.allclose(back, p, atol=1e-22)
    assert np.allclose(atoms.rotate_atoms(p, 180, "z", center=(1e-10, 0, 0))[0], p[0])


def test_atoms_bad_input():
    with pytest.raises(ValidationError, match="positions.*\\(N, 3\\)"):
        atoms.projected_potential(np.zeros((3, 2)), 8, (8, 8), 1e-11, slice_thickness=1e-10)
    with pytest.raises(ValidationError, match="numbers.*92"):
        atoms.projected_potential(np.zeros((1, 3)), [92], (8, 8), 1e-11, slice_thickness=1e-10)
    with pytest.raises(ValidationError, match="numbers.*2 entries for 1"):
        atoms.projected_potential(np.zeros((1, 3)), [8, 8], (8, 8), 1e-11, slice_thickness=1e-10)
    with pytest.raises(ValidationError, match="metres"):
        atoms.projected_potential(np.ones((1, 3)), [8], (8, 8), 1e-11, slice_thickness=1e-10)
    with pytest.raises(ValidationError, match="slice_thickness"):
        atoms.projected_potential(np.zeros((1, 3)), [8], (8, 8), 1e-11, slice_thickness=0)
    with pytest.raises(ValidationError, match="integration"):
        atoms.projected_potential(np.zeros((1, 3)), "O", (8, 8), 1e-11, slice_thickness=1e-10,
                                  integration="exact")
    with pytest.raises(ValidationError, match="axes"):
        atoms.rotate_atoms(np.zeros((1, 3)), 10, "q")


# ----------------------------------------------------------------------------- ellipsoids


def test_sphere_and_ellipsoid_chords_exact():
    R = 3e-8
    sph = [phantoms.Ellipsoid((1e-8, 0, 0), (R, R, R), (10, 20, 30), 2.0)]
    y = np.linspace(-4e-8, 4e-8, 17)
    x = np.linspace(-4e-8, 4e-8, 17)
    p = phantoms.ellipsoid_line_integrals(sph, [0, 90], y, x, dtype=np.float64)
    # angle 0: centre at x = 1e-8; angle 90 about y: centre moves to z, x = 0
    for ia, cx in ((0, 1e-8), (1, 0.0)):
        rho2 = (x[None, :] - cx) ** 2 + y[:, None] ** 2
        assert np.allclose(p.values[ia], 2.0 * 2 * np.sqrt(np.clip(R**2 - rho2, 0, None)), atol=1e-18)
    e = [phantoms.Ellipsoid((0, 0, 0), (1e-8, 2e-8, 3e-8), (0, 0, 0), 1.0)]
    q = phantoms.ellipsoid_line_integrals(e, [0, 90, 45], [0.0], [0.0], dtype=np.float64).values[:, 0, 0]
    c45 = 2 / np.sqrt(np.sin(np.pi / 4) ** 2 / 1e-16 + np.cos(np.pi / 4) ** 2 / 9e-16)
    assert np.allclose(q, [6e-8, 2e-8, c45], rtol=1e-12)
    # laminography with tilt 90 is tomography
    lam90 = phantoms.ellipsoid_line_integrals(sph, [35], y, x, geometry="laminography", tilt=90)
    tomo = phantoms.ellipsoid_line_integrals(sph, [35], y, x)
    assert np.allclose(lam90.values, tomo.values)
    # tilt 30, angle 50: the sphere centre (x0, 0, 0) turns about y, then the axis tilts by
    # 90 - 30 = 60 deg about x; a sphere projects to a disc around the rotated centre
    a, b = np.deg2rad(50), np.deg2rad(60)
    cx, cz = 1e-8 * np.cos(a), -1e-8 * np.sin(a)           # Ry(50)
    cy = -np.sin(b) * cz                                   # Rx(60): y' = y cos b - z sin b
    lam = phantoms.ellipsoid_line_integrals(sph, [50], y, x, geometry="laminography", tilt=30,
                                            dtype=np.float64)
    rho2 = (x[None, :] - cx) ** 2 + (y[:, None] - cy) ** 2
    assert np.allclose(lam.values[0], 4 * np.sqrt(np.clip(R**2 - rho2, 0, None)), atol=1e-18)
    assert lam.attrs["tilt"] == 30.0 and lam.dims == ("angle", "y", "x")


def test_rotation_convention_matches_tomo_geometry():
    geometry = pytest.importorskip("ptynb.tomo.geometry")
    angles = np.array([0.0, 20.0, 135.0])
    perm = [2, 1, 0]  # (z, y, x) <-> (x, y, z)
    for kind, tilt in (("tomography", 90.0), ("laminography", 61.108)):
        g = geometry.Geometry(kind, angles, tilt)
        for a, r_zyx in zip(angles, g.rotations()):
            r = phantoms.sample_rotation(a, kind, None if kind == "tomography" else tilt)
            assert np.allclose(r, r_zyx[np.ix_(perm, perm)], atol=1e-12)


def _ray_sums(vol, angles, geometry, tilt, vs):
    """Brute-force line integrals of a voxel volume: trilinear samples along each rotated ray."""
    nz = vol.shape[0]
    zc, yc, xc = (vol[d].values for d in ("z", "y", "x"))
    step = vs / 3
    t = np.arange(-1.0 * nz * vs, 1.0 * nz * vs, step)
    Y, X, T = np.meshgrid(yc, xc, t, indexing="ij")
    lab = np.stack([X, Y, T], axis=-1)
    out = []
    for a in angles:
        Rs = phantoms.sample_rotation(a, geometry, tilt)
        s = lab @ Rs          # rotated sample evaluated at lab point r is f(Rs^T r)
        idx = [(s[..., 2] - zc[0]) / vs, (s[..., 1] - yc[0]) / vs, (s[..., 0] - xc[0]) / vs]
        v = map_coordinates(vol.values.astype(float), idx, order=1, mode="constant", cval=0.0)
        out.append(v.sum(axis=-1) * step)
    return np.stack(out)


GEOMETRIES = [("tomography", None, [0.0, 30.0, 77.0]), ("laminography", 60.0, [0.0, 50.0, 140.0])]


@pytest.mark.parametrize("geometry,tilt,angles", GEOMETRIES)
def test_shepp_logan_line_integrals_vs_brute_force(geometry, tilt, angles):
    """Exact projections vs brute-force integration of the continuous and voxelised phantom."""
    n, vs = 48, 1e-8
    vol = phantoms.shepp_logan_3d((n, n, n), vs, oversample=4)
    assert vol.dtype == np.float32 and vol.dims == ("z", "y", "x")
    assert vol.attrs["ellipsoids"].size == 100
    ells = phantoms.ellipsoids_from_attrs(vol)
    # (1) continuous phantom: fine steps along every 3rd ray of the rotated sample
    y, x = vol.y.values[::4], vol.x.values[::4]
    dt = 5e-10
    t = np.arange(-0.5e-6, 0.5e-6, dt) + dt / 2
    ana = phantoms.ellipsoid_line_integrals(ells, angles, y, x, geometry=geometry, tilt=tilt, dtype=np.float64)
    assert ana.attrs["geometry"] == geometry
    Y, X, T = np.meshgrid(y, x, t, indexing="ij")
    lab = np.stack([X, Y, T], axis=-1)
    for i, a in enumerate(angles):
        s = lab @ phantoms.sample_rotation(a, geometry, tilt)   # sample point seen at lab point
        num = phantoms.ellipsoid_values(ells, s[..., 0], s[..., 1], s[..., 2]).sum(-1) * dt
        assert np.linalg.norm(num - ana.values[i]) < 0.01 * np.linalg.norm(ana.values[i])
    # (2) voxelised phantom: at tomography angle 0 the projection is the sum over z; compare with the
    # pixel-averaged exact integrals (thin skull: partial volumes matter)
    avg = phantoms.ellipsoid_line_integrals(vol, [0.0], vol.y, vol.x, subpixel=4,
                                            dtype=np.float64).values[0]
    vsum = vol.values.astype(float).sum(0) * vs
    assert np.linalg.norm(vsum - avg) < 0.01 * np.linalg.norm(avg)


@pytest.mark.parametrize("geometry,tilt,angles", GEOMETRIES)
def test_ellipsoid_line_integrals_vs_voxelised_rays(geometry, tilt, angles):
    """Oblique rays through a voxelised phantom (trilinear samples) vs the exact integrals.

    Interpolating a voxel grid along oblique rays blurs sharp edges by about a voxel, so the
    agreement is ~1-2 % at oblique angles on a 48^3 grid (0.4 % at tomography angle 0); a wrong
    rotation convention gives tens of %.
    """
    E = phantoms.Ellipsoid
    ells = [E((0, 0, 0), (1.6e-7, 1.2e-7, 0.9e-7), (20, 30, 40), 1.0),
            E((0.6e-7, -0.4e-7, 0.3e-7), (0.7e-7, 0.45e-7, 0.5e-7), (70, 10, 0), 0.5),
            E((-0.7e-7, 0.5e-7, -0.2e-7), (0.5e-7, 0.8e-7, 0.4e-7), (0, 60, 120), -0.4)]
    vs = 1e-8
    vol = phantoms.ellipsoids_phantom((48, 48, 48), vs, ells, oversample=3)
    ana = phantoms.ellipsoid_line_integrals(vol, angles, vol.y, vol.x, geometry=geometry, tilt=tilt,
                                            subpixel=4).values
    num = _ray_sums(vol, angles, geometry, tilt, vs)
    err = [np.linalg.norm(num[i] - ana[i]) / np.linalg.norm(ana[i]) for i in range(len(angles))]
    assert max(err) < 0.025
    if geometry == "tomography":
        assert err[0] < 0.01  # angle 0: rays along voxel columns, no interpolation blur
    # the wrong sense of rotation is far off
    wrong = _ray_sums(vol, [-a for a in angles[1:]], geometry, tilt, vs)
    assert np.linalg.norm(wrong[0] - ana[1]) > 0.1 * np.linalg.norm(ana[1])


def test_ellipsoids_phantom_and_values():
    ph = phantoms.ellipsoids_phantom((32, 32, 32), 1e-8, n_random=5, seed=7)
    ells = phantoms.ellipsoids_from_attrs(ph)
    assert len(ells) == 5
    assert np.array_equal(ph.values, phantoms.ellipsoids_phantom((32, 32, 32), 1e-8, n_random=5, seed=7).values)
    # voxel-volume integral equals the analytic sum of value * 4/3 pi abc
    exact = sum(e.value * 4 / 3 * np.pi * np.prod(e.semi_axes) for e in ells)
    assert ph.values.sum() * 1e-24 == pytest.approx(exact, rel=0.02)
    z, y, x = np.meshgrid(ph.z, ph.y, ph.x, indexing="ij")
    centre_vals = phantoms.ellipsoid_values(ells, x, y, z)
    assert np.mean(np.abs(centre_vals - ph.values)) < 0.05 * np.abs(centre_vals).max()
    # projections of the whole phantom at angle 0 = sum over z
    p = phantoms.ellipsoid_line_integrals(ph, [0.0], ph.y, ph.x, subpixel=4)
    assert np.linalg.norm(p.values[0] - ph.values.sum(0) * 1e-8) < 0.02 * np.linalg.norm(p.values[0])


def test_ellipsoid_bad_input():
    e = [phantoms.Ellipsoid((0, 0, 0), (1, 1, 1))]
    with pytest.raises(ValidationError, match="tilt"):
        phantoms.ellipsoid_line_integrals(e, [0], [0.0], [0.0], geometry="laminography")
    with pytest.raises(ValidationError, match="geometry"):
        phantoms.ellipsoid_line_integrals(e, [0], [0.0], [0.0], geometry="fan")
    with pytest.raises(ValidationError, match="tilt"):
        phantoms.ellipsoid_line_integrals(e, [0], [0.0], [0.0], tilt=30)
    with pytest.raises(ValidationError, match="tilt.*\\(0, 90\\]"):
        phantoms.ellipsoid_line_integrals(e, [0], [0.0], [0.0], geometry="laminography", tilt=120)
    with pytest.raises(ValidationError, match="angles_deg"):
        phantoms.ellipsoid_line_integrals(e, [np.nan], [0.0], [0.0])
    with pytest.raises(ValidationError, match="semi-axes"):
        phantoms.Ellipsoid((0, 0, 0), (1, -1, 1))
    with pytest.raises(ValidationError, match="ellipsoids"):
        phantoms.ellipsoid_line_integrals(np.zeros((2, 3)), [0], [0.0], [0.0])
    with pytest.raises(ValidationError, match="subpixel"):
        phantoms.ellipsoid_line_integrals(e, [0], [0.0, 1.0], [0.0, 1.0], subpixel=0)
    with pytest.raises(ValidationError, match="contrast"):
        phantoms.shepp_logan_3d((8, 8, 8), contrast="vivid")
    with pytest.raises(ValidationError, match="ellipsoids"):
        phantoms.ellipsoids_from_attrs(xr.DataArray(np.zeros((2, 2, 2)), dims=("z", "y", "x")))
