"""Simulate a 4D-STEM data set of a thick SrTiO3 [001] crystal with abTEM (1.0); use the abTEM venv.

Usage::

    python abtem_sim.py OUT.npz [--n-det 96] [--grid 32] [--cells 12] [--dose 1e5] [--seed 0]

The crystal: cubic perovskite SrTiO3 (a = 3.905 A), ``--cells`` unit cells thick along [001]
(12 cells = 4.7 nm), wide enough for the scan plus one probe window, periodic; abTEM's
Lobato parametrisation, infinite projection, two slices per unit cell (1.95 A), no thermal
diffuse scattering (one static configuration). The probe: 300 keV, 21.4 mrad convergence
semi-angle, 100 A underfocus (abTEM ``defocus=100``, positive = underfocus), on the potential's
grid. The scan: a ``grid x grid`` raster with 1.9 A steps, centred on the cell. The detector:
abTEM's full far-field patterns (fine sampling ``1 / extent``), rolled so that the zero
frequency sits at the centre of an ``m x m`` block and integrated over ``m x m`` blocks to
``n_det x n_det`` pixels, so one detector pixel is ``1 / (n_det dx)`` (the real-space
pixel ``dx`` = extent / (m n_det), about 0.2 A). Poisson noise at ``--dose`` electrons per A^2
(dose x step^2 electrons per pattern).

OUT.npz: ``intensity`` (N, n_det, n_det) float32 counts, detector centred (zero frequency at
pixel n_det // 2), ``positions_m`` (N, 2) probe centres (row = y, column = x) in metres on the
potential's frame (its pixel (0, 0) at 0), ``pixel_size_m`` (dx), ``energy_eV``,
``semiangle_rad``, ``defocus_m`` (positive = underfocus), ``thickness_m``, ``true_phase``
(H, W) float32: interaction parameter sigma times abTEM's projected potential of the whole
crystal on the same pixel grid (rad; the phase a weak-phase object would have),
``projected_potential`` (H, W) (V A), ``grid``, ``dose_e_per_A2``, ``version``,
``sim_time`` (s).
"""
import argparse
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n-det", type=int, default=96)
    ap.add_argument("--grid", type=int, default=32)
    ap.add_argument("--step", type=float, default=1.9, help="scan step (A)")
    ap.add_argument("--cells", type=int, default=12, help="unit cells along the beam")
    ap.add_argument("--dx", type=float, default=0.2, help="target real-space pixel (A)")
    ap.add_argument("--dose", type=float, default=1e5, help="electrons per A^2")
    ap.add_argument("--energy", type=float, default=300e3, help="eV")
    ap.add_argument("--semiangle", type=float, default=21.4, help="mrad")
    ap.add_argument("--defocus", type=float, default=100.0, help="A, positive = underfocus")
    ap.add_argument("--batch", type=int, default=32, help="probe positions per abTEM batch")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.perf_counter()

    import abtem
    from abtem.core.energy import energy2sigma
    from ase import Atoms

    abtem.config.set({"device": "cpu", "fft": "fftw" if _has_pyfftw() else "numpy"})
    lat = 3.905
    n = a.n_det
    window = n * a.dx  # probe window (A) at the target pixel
    need = (a.grid - 1) * a.step + window
    m = int(np.ceil(need / window))
    if m % 2 == 0:
        m += 1  # odd, so that the zero frequency is the centre pixel of its block
    nc = int(np.ceil(m * window / lat))
    L = nc * lat
    G = m * n
    dx = L / G
    unit = Atoms("SrTiO3", scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0),
                                            (0.5, 0, 0.5), (0, 0.5, 0.5)],
                 cell=[lat, lat, lat], pbc=True)
    atoms = unit * (nc, nc, a.cells)
    atoms.positions[:, :2] += 0.25 * lat  # columns off the pixel grid edges
    atoms.wrap()
    potential = abtem.Potential(atoms, gpts=(G, G), slice_thickness=lat / 2,
                                parametrization="lobato", projection="infinite")
    probe = abtem.Probe(energy=a.energy, semiangle_cutoff=a.semiangle, defocus=a.defocus)
    probe.grid.match(potential)
    span = (a.grid - 1) * a.step
    start = (L - span) / 2
    yy, xx = np.meshgrid(start + a.step * np.arange(a.grid), start + a.step * np.arange(a.grid),
                         indexing="ij")
    pos = np.stack([yy.ravel(), xx.ravel()], 1)  # (row = y, column = x), A
    rng = np.random.default_rng(a.seed)
    per_pattern = a.dose * a.step * a.step
    inten = np.zeros((len(pos), n, n), np.float32)
    c = G // 2
    roll = (m // 2) - (c % m)  # put fine pixel c at the centre of its m x m block
    for s in range(0, len(pos), a.batch):
        # abTEM's CustomScan takes (x, y); its diffraction patterns are centred (fftshifted)
        scan = abtem.CustomScan(pos[s:s + a.batch, ::-1].copy())
        dp = probe.multislice(potential, scan=scan,
                              detectors=abtem.PixelatedDetector(max_angle="full"))
        arr = np.asarray(dp.compute().array, dtype=np.float64)  # (B, G, G) [x, y] axes order
        arr = np.swapaxes(arr, -1, -2)  # -> (B, ky, kx)
        if arr.shape[-1] != G or arr.shape[-2] != G:
            raise RuntimeError(f"abTEM patterns of {arr.shape[-2:]} px, expected {G}")
        arr = np.roll(arr, (roll, roll), axis=(-2, -1))
        b = arr.reshape(len(arr), n, m, n, m).sum((2, 4))
        b *= per_pattern  # abTEM's probe carries unit intensity
        inten[s:s + len(b)] = rng.poisson(b).astype(np.float32)
        print(f"patterns {s + len(b)}/{len(pos)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    proj = np.asarray(potential.project().compute().array, dtype=np.float64).T  # (y, x), V A
    sigma = energy2sigma(a.energy)  # rad / (V A)
    np.savez(a.out, intensity=inten, positions_m=pos * 1e-10, pixel_size_m=dx * 1e-10,
             energy_eV=a.energy, semiangle_rad=a.semiangle * 1e-3, defocus_m=a.defocus * 1e-10,
             thickness_m=a.cells * lat * 1e-10, true_phase=(sigma * proj).astype(np.float32),
             projected_potential=proj.astype(np.float32), grid=a.grid, dose_e_per_A2=a.dose,
             version=abtem.__version__, sim_time=time.perf_counter() - t0)
    print(f"abTEM: {len(pos)} patterns {n}x{n} (fine {G}x{G}, {m}x{m} binned), dx {dx:.4f} A, "
          f"{a.cells * lat / 10:.1f} nm thick, {time.perf_counter() - t0:.0f} s")


def _has_pyfftw():
    try:
        import pyfftw  # noqa: F401

        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
