"""Shared helpers for the ptychography tests (+ the fast operator tests).

Other ``test_ptycho_*`` files import the helpers from here (pytest puts ``tests/`` on
``sys.path``).
"""
from __future__ import annotations

import numpy as np

from ptynb.ptycho import operators as ops


# ----------------------------------------------------------------------------- helpers
def aligned_crop(rec, ds, slice_index=0, shrink=0, true_slice=None):
    """(reconstructed, true) complex arrays over the bounding box of the probe centres.

    Uses the object coordinates of both datasets (same frame, metres) to align them. That box
    is covered by several overlapping probes: the "well-illuminated area".
    """
    dx = float(rec.attrs["pixel_size"])
    truth = ds["true_object"]
    ry0 = int(round(float(rec["y"].values[0]) / dx))
    rx0 = int(round(float(rec["x"].values[0]) / dx))
    ty0 = int(round(float(truth["y"].values[0]) / dx))
    tx0 = int(round(float(truth["x"].values[0]) / dx))
    sy = ds["scan_y"].values / dx
    sx = ds["scan_x"].values / dx
    y0, y1 = int(np.ceil(sy.min())) + shrink, int(np.floor(sy.max())) - shrink
    x0, x1 = int(np.ceil(sx.min())) + shrink, int(np.floor(sx.max())) - shrink
    ts = slice_index if true_slice is None else true_slice
    a = rec["object"].values[slice_index, y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0]
    b = truth.values[ts, y0 - ty0:y1 - ty0, x0 - tx0:x1 - tx0]
    return a, b


def remove_phase_ramp(a, b):
    """Remove from ``a`` the global complex factor and the linear phase ramp that best match
    ``b``: the ambiguities of ptychography (object x c with probe / c; a phase ramp on the
    object with a shifted far field)."""
    c = np.sum(a * np.conj(b))
    a = a * np.conj(c) / abs(c)
    ph = np.angle(a * np.conj(b))
    w = np.sqrt(np.abs(b) ** 2).ravel()
    yy, xx = np.mgrid[:a.shape[0], :a.shape[1]]
    A = np.stack([np.ones(a.size), yy.ravel(), xx.ravel()], 1) * w[:, None]
    coef = np.linalg.lstsq(A, ph.ravel() * w, rcond=None)[0]
    a = a * np.exp(-1j * (coef[0] + coef[1] * yy + coef[2] * xx))
    return a * (np.vdot(a, b) / np.vdot(a, a))


def object_error(rec, ds, slice_index=0, shrink=0):
    """NRMSE ``||a - b|| / ||b||`` after removing the global complex factor and phase ramp."""
    a, b = aligned_crop(rec, ds, slice_index, shrink)
    a = remove_phase_ramp(a, b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def phase_pcc(rec, ds, slice_index=0, true_slice=None, shrink=0):
    """Pearson correlation of reconstructed and true phases (global phase removed)."""
    a, b = aligned_crop(rec, ds, slice_index, shrink, true_slice)
    pa = np.angle(a * np.conj(np.mean(a)))
    pb = np.angle(b * np.conj(np.mean(b)))
    return float(np.corrcoef(pa.ravel(), pb.ravel())[0, 1])


def xray_data(n=64, grid=10, *, modes=1, upsample=1, seed=0, counts=1e6, jitter=0.3,
              defocus=0.3e-3, step_frac=1 / 6, noise="poisson"):
    """Zone-plate X-ray far-field data (8 keV, 30 nm pixels) with ground truth.

    ``n`` detector pixels; the simulation window is ``n * upsample`` pixels.
    """
    from ptynb import simulate as sim
    from ptynb.physics.probes import mixed_state_probe, zone_plate_probe
    from ptynb.physics.scan import raster_scan

    dx = 30e-9
    nw = n * upsample
    probe = zone_plate_probe(nw, dx, 8000.0, diameter=74.9e-6, outer_zone_width=60e-9,
                             central_stop_diameter=25e-6, defocus=defocus, check_window=False)
    if modes > 1:
        probe = mixed_state_probe(probe, modes, seed=seed)
    step_px = int(round(n * step_frac))
    margin = nw // 2 + step_px
    size = 2 * margin + (grid - 1) * step_px
    obj = sim.smooth_random_object((size, size), seed=seed, correlation=3.0,
                                   phase_range=(-0.6, 0.4), amplitude_range=(0.85, 1.0))
    sy, sx = raster_scan(grid, grid, step_px * dx, jitter=jitter, seed=seed,
                         origin=(margin * dx, margin * dx))
    return sim.ptychography(obj, probe, sy, sx, pixel_size=dx, radiation="xray",
                            energy_eV=8000.0, noise=noise, seed=seed, progress=False,
                            counts_per_pattern=counts, upsample=upsample)


# ----------------------------------------------------------------------------- operator tests
def test_fft2_matches_numpy_in_place():
    f = ops.FFT2(np)
    a = ops.empty((3, 2, 32, 32))
    rng = np.random.default_rng(0)
    a[...] = rng.standard_normal(a.shape) + 1j * rng.standard_normal(a.shape)
    ref = np.fft.fft2(a, norm="ortho")
    b = f.forward(a)
    assert b is a  # in place on an aligned buffer
    np.testing.assert_allclose(b, ref, atol=2e-5 * np.abs(ref).max())
    np.testing.assert_allclose(f.inverse(b), np.fft.ifft2(ref, norm="ortho"), atol=1e-5)
    c = ref[:, :1, ::2, ::2]  # non-contiguous input still works
    np.testing.assert_allclose(f.forward(c), np.fft.fft2(c, norm="ortho"), atol=1e-4)


def test_extract_patches_cuts_the_right_windows():
    """(The extract/scatter adjoint pair is tested in tests/test_adjoints.py.)"""
    rng = np.random.default_rng(1)
    obj = (rng.standard_normal((2, 40, 50)) + 1j * rng.standard_normal((2, 40, 50))).astype(np.complex64)
    iy = np.array([0, 3, 10, 24, 24])
    ix = np.array([0, 7, 34, 2, 2])
    n = 16
    P = ops.extract_patches(obj, iy, ix, n)
    assert P.shape == (5, 2, n, n)
    np.testing.assert_array_equal(P[2, 1], obj[1, 10:26, 34:50])


def test_bin_intensity_follows_the_simulator_convention():
    """(bin_intensity / expand_ratio as an adjoint pair: tests/test_adjoints.py.)"""
    rng = np.random.default_rng(2)
    s, N = 2, 8
    I = rng.random((3, s * N, s * N)).astype(np.float32)
    d = np.zeros((s * N, s * N), np.float32)
    d[0, 0] = 1  # fine zero frequency lands in the detector's zero-frequency pixel
    assert ops.bin_intensity(d, s)[0, 0] == 1
    from ptynb.simulate import bin_pattern

    c = np.fft.fftshift(I, axes=(-2, -1))
    np.testing.assert_allclose(np.fft.fftshift(ops.bin_intensity(I, s), axes=(-2, -1)),
                               bin_pattern(c, s), rtol=1e-6)


def test_fourier_shift_integer_equals_roll_and_inverse():
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((2, 1, 16, 16)) + 1j * rng.standard_normal((2, 1, 16, 16))).astype(np.complex64)
    f = ops.FFT2(np)
    ry, rx = ops.fourier_shift_ramps([2, -0.3], [-1, 0.45], 16)
    out = ops.shift_waves(w, ry, rx, f)
    np.testing.assert_allclose(out[0, 0], np.roll(w[0, 0], (2, -1), axis=(0, 1)), atol=1e-5)
    back = ops.shift_waves(out, ry, rx, f, conj=True)
    np.testing.assert_allclose(back, w, atol=1e-5)


def test_orthogonalize_modes_preserves_density_matrix():
    rng = np.random.default_rng(4)
    p = (rng.standard_normal((3, 8, 8)) + 1j * rng.standard_normal((3, 8, 8))).astype(np.complex64)
    q = ops.orthogonalize_modes(p)
    a, b = p.reshape(3, -1), q.reshape(3, -1)
    np.testing.assert_allclose(a.conj().T @ a, b.conj().T @ b, atol=1e-4)
    g = b.conj() @ b.T
    assert np.allclose(g - np.diag(np.diag(g)), 0, atol=1e-3)
    assert np.all(np.diff(np.sum(np.abs(q) ** 2, axis=(1, 2))) <= 0)


def test_fourier_update_factor_gaussian_poisson_and_mask():
    rng = np.random.default_rng(5)
    model = rng.random((2, 8, 8)).astype(np.float32) + 0.1
    meas = rng.poisson(model * 50).astype(np.float32) / 50
    mask = np.ones((8, 8), bool)
    mask[3, 4] = False
    f = ops.fourier_update_factor(model, meas, mask, "gaussian")
    np.testing.assert_allclose((model * f ** 2)[:, mask], meas[:, mask], rtol=1e-4, atol=1e-5)
    assert np.all(f[:, 3, 4] == 1.0)  # masked pixels keep the model
    fp = ops.fourier_update_factor(model, meas, mask, "poisson")
    assert np.all(fp[:, 3, 4] == 1.0)
    c0 = ops.data_cost(model, meas, mask, "poisson")
    c1 = ops.data_cost(model * fp ** 2, meas, mask, "poisson")
    assert np.all(c1 < c0)
    assert np.all(ops.data_cost(meas, meas, mask, "poisson") < 1e-4)


def two_layer_xray_data(n=64, grid=10, *, spacing=40e-6, seed=0, counts=1e6, noise="poisson",
                        defocus=0.3e-3, step_frac=1 / 6, layers=2):
    """Independent phase layers (two by default) ``spacing`` apart (X-ray, 30 nm pixels)."""
    from ptynb import simulate as sim
    from ptynb.physics.probes import zone_plate_probe
    from ptynb.physics.scan import raster_scan

    dx = 30e-9
    probe = zone_plate_probe(n, dx, 8000.0, diameter=74.9e-6, outer_zone_width=60e-9,
                             central_stop_diameter=25e-6, defocus=defocus, check_window=False)
    step_px = int(round(n * step_frac))
    margin = n // 2 + step_px
    size = 2 * margin + (grid - 1) * step_px
    layers = np.stack([
        sim.smooth_random_object((size, size), seed=seed + k, correlation=2.0,
                                 phase_range=(-0.4, 0.4), amplitude_range=(0.9, 1.0))
        for k in range(layers)])
    sy, sx = raster_scan(grid, grid, step_px * dx, jitter=0.3, seed=seed,
                         origin=(margin * dx, margin * dx))
    return sim.ptychography(layers, probe, sy, sx, pixel_size=dx, radiation="xray",
                            energy_eV=8000.0, noise=noise, seed=seed, progress=False,
                            counts_per_pattern=counts, slice_thickness=spacing)


def electron_crystal_data(*, n=48, grid=10, layers=1, spacing=None, seed=0, dose=1e26,
                          cell=3.9e-10, dx=25e-12, defocus=10e-9, semiangle=20e-3):
    """4D-STEM of a simple crystal (200 keV, cubic cell ``cell``), projected potential built
    with :func:`ptynb.physics.atoms.projected_potential`.

    Each layer has an atom on every lattice site (and one at the cell centre) with a random
    species out of C, Ti, Sr; layer ``k`` is shifted by ``k * cell / 4`` along y and x
    (a stacking that makes the layers' projections differ), ``spacing`` apart.
    """
    from ptynb import simulate as sim
    from ptynb.physics.atoms import projected_potential
    from ptynb.physics.multislice import electron_transmission
    from ptynb.physics.probes import electron_probe
    from ptynb.physics.scan import raster_scan

    rng = np.random.default_rng(seed)
    step_px = 4
    margin = n // 2 + step_px
    size = 2 * margin + (grid - 1) * step_px
    L = size * dx
    ncell = int(np.ceil(L / cell)) + 1
    sites = np.array([(i * cell, j * cell) for i in range(ncell) for j in range(ncell)]
                     + [((i + 0.5) * cell, (j + 0.5) * cell) for i in range(ncell) for j in range(ncell)])
    pots = []
    for k in range(layers):
        Z = rng.choice([6, 22, 38], size=len(sites))
        sh = k * cell / 4
        pos = np.c_[sites[:, 1] + sh, sites[:, 0] + sh, np.full(len(sites), 0.0)]
        v = projected_potential(pos, Z, (size, size), dx, slice_thickness=1e-9, n_slices=1,
                                origin=(0.0, 0.0), periodic=False)
        pots.append(np.asarray(v.values[0], dtype=np.float64))
    obj = np.stack([electron_transmission(p, 200e3) for p in pots])
    probe = electron_probe(n, dx, 200e3, semiangle, defocus=defocus)
    sy, sx = raster_scan(grid, grid, step_px * dx, jitter=0.2, seed=seed,
                         origin=(margin * dx, margin * dx))
    return sim.ptychography(obj if layers > 1 else obj[0], probe, sy, sx, pixel_size=dx,
                            radiation="electron", energy_eV=200e3, dose=dose, seed=seed,
                            progress=False, slice_thickness=spacing)


def projected_error(rec, ds, shrink=0):
    """NRMSE of the slice product (the projected transmission, what a thin multislice sample's
    data determine best) against the truth's, after the same ambiguity removal as
    :func:`object_error`."""
    n = rec.sizes["slice"]
    a = b = 1.0
    for s in range(n):
        ra, tb = aligned_crop(rec, ds, s, shrink, true_slice=min(s, ds["true_object"].sizes["slice"] - 1))
        a = a * ra
    for s in range(ds["true_object"].sizes["slice"]):
        b = b * aligned_crop(rec, ds, 0, shrink, true_slice=s)[1]
    a = remove_phase_ramp(a, b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def thick_crystal_data(*, n=64, grid=12, cells=20, sim_slices=20, seed=0):
    """4D-STEM of a thick SrTiO3-like [001] crystal: 300 keV, 21.4 mrad, 10 nm underfocus,
    20 pm pixels, 1.9 A raster steps, Poisson noise at 1e5 e/A^2.

    ``cells`` unit cells (a = 3.905 A) along the beam, simulated with ``sim_slices`` slices;
    the true projected phase reaches about 16 rad on the Sr columns for 20 cells (7.8 nm),
    far beyond the weak-phase regime. ``true_object`` holds the ``sim_slices`` slices.
    """
    from ptynb import simulate as sim
    from ptynb.physics.atoms import projected_potential
    from ptynb.physics.multislice import electron_transmission
    from ptynb.physics.probes import electron_probe
    from ptynb.physics.scan import raster_scan

    dx, a, energy, semi, defocus, step = 20e-12, 3.905e-10, 300e3, 21.4e-3, 10e-9, 1.9e-10
    margin = n // 2 + 4
    size = int(np.ceil(2 * margin + (grid - 1) * step / dx))
    nc = int(np.ceil(size * dx / a)) + 1
    basis = [(38, (0, 0, 0)), (22, (0.5, 0.5, 0.5)), (8, (0.5, 0.5, 0)), (8, (0.5, 0, 0.5)),
             (8, (0, 0.5, 0.5))]
    ii, jj, kk = np.meshgrid(np.arange(nc), np.arange(nc), np.arange(cells), indexing="ij")
    cell_xyz = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], 1).astype(float)
    pos = np.concatenate([(cell_xyz + np.asarray(f)) * a for _, f in basis])
    Z = np.concatenate([np.full(len(cell_xyz), z) for z, _ in basis])
    pos[:, :2] -= 0.25 * a  # columns off the pixel grid
    dz = cells * a / sim_slices
    v = projected_potential(pos, Z, (size, size), dx, slice_thickness=dz, n_slices=sim_slices,
                            z_origin=0.0, origin=(0.0, 0.0), periodic=False)
    obj = electron_transmission(np.asarray(v), energy)
    probe = electron_probe(n, dx, energy, semi, defocus=defocus)
    sy, sx = raster_scan(grid, grid, step, origin=(margin * dx, margin * dx))
    return sim.ptychography(obj, probe, sy, sx, pixel_size=dx, radiation="electron",
                            energy_eV=energy, slice_thickness=dz, dose=1e25, noise="poisson",
                            seed=seed, progress=False, convergence_semiangle=semi,
                            defocus=defocus)


def unwrapped_gain(rec, ds, slices, true_slices):
    """Fitted gain (least-squares slope) and PCC of the unwrapped reconstructed phase summed
    over ``slices`` against the true phase summed over ``true_slices``, over the box of the
    probe centres (global phase removed per slice)."""
    from skimage.restoration import unwrap_phase

    pa = pb = 0.0
    for s in slices:
        a, _ = aligned_crop(rec, ds, s)
        pa = pa + unwrap_phase(np.angle(a * np.conj(np.mean(a))))
    for s in true_slices:
        pb = pb + np.angle(aligned_crop(rec, ds, 0, true_slice=s)[1])
    pa, pb = pa - np.mean(pa), pb - np.mean(pb)
    return float(np.sum(pa * pb) / np.sum(pb * pb)), float(np.corrcoef(pa.ravel(), pb.ravel())[0, 1])
