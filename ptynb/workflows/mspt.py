"""Multislice electron ptychographic tomography (MSPT), end to end.

After Romanov, Cho, Scott & Pelz, J. Phys. Mater. 8, 015005 (2025): a 4D-STEM tilt series of
a Co3O4 nanocube; multislice ptychography at every tilt; the phases of the slices summed into
one projection per tilt; BM3D + Fourier-sparsity denoising; a tomogram refined jointly with a
rigid pose (3 Euler angles + 2 shifts) per tilt on a multi-scale schedule; the resolution
from the projected 3D spectrum; the spinel lattice registered to the volume to count the Co
sites found.

Pipeline (each step takes and returns xarray objects; :func:`run` chains them into an
:class:`xarray.DataTree`)::

    measurement (simulate / check) -> ptychography (per tilt, checkpointed) -> projections
        -> denoised -> tomography (joint refinement) -> volume, alignment -> resolution -> atoms

``run(..., projections=P)`` starts at the projections (phase images reconstructed elsewhere).

Units and conventions
---------------------
* lengths in metres, energies in eV, convergence semi-angle in radians, tilt angles and
  Euler angles in degrees, phases in radians; the volume is the electrostatic potential in
  volts (the tomogram of the phase, in rad/m, divided by the interaction constant of the
  beam energy).
* Geometry (:mod:`ptynb.tomo.geometry`): the sample turns about the lab y axis (tomography),
  beam along +z, the volume is (z, y, x) in the sample frame. The missing wedge lies about
  the z axis of the volume (the beam direction at 0 deg tilt): resolution along z is the
  "along the wedge" number, along x and y the "across" numbers.
* **Euler convention** of the per-tilt pose errors (truth and estimates alike): extrinsic
  x-y-z rotations about the *lab* axes applied after the nominal tilt, ``R = Rz(rz) Ry(ry)
  Rx(rx) Ry(angle)``, angles ``rx, ry, rz`` in degrees (``ptynb.tomo.geometry.EULER_CONVENTION``).
  ``shift_y``/``shift_x`` (m) are the displacement of the object in each projection (the
  measured projection is the nominal one moved by ``+shift``); the correction is its negative.
  A global rotation or translation of the volume cannot be seen in the data: estimates are
  reported with those patterns removed ("gauge free"), and compared with the truth after
  removing them from the truth too: ``angle_error_rms_deg_vs_truth`` is the Euler-angle error
  up to the volume's global orientation (a least-squares fit of the 3 first-order patterns of
  a global rotation removed), ``angle_error_rms_deg_raw_vs_truth`` the plain one; both also per
  axis (``angle_error_rms_deg_rx_vs_truth``, ``angle_error_rms_deg_raw_rx_vs_truth``, ...).

Ground truth of a simulation (atom positions, nuisance poses, true projections) is returned
in its own node ``truth``; nothing downstream of the measurement reads it except the scores
in :func:`summarize` (keys ending ``_vs_truth``).
"""
from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import param
import xarray as xr

from ..control import Cancelled, is_cancelled
from ..data import ValidationError
from . import mspt_steps as steps
from ._base import Run, Step, Workflow, WorkflowSettings

__all__ = [
    "Settings",
    "simulate",
    "check_mspt_measurement",
    "check_projections",
    "load_tilt_series",
    "load_tilt_files",
    "reconstruct_tilts",
    "phase_projections",
    "projections_from",
    "simulate_projections",
    "denoise",
    "tomography",
    "resolution",
    "single_tilt_stack",
    "axial_widths",
    "find_atoms",
    "summarize",
    "run",
    "assemble",
    "WORKFLOW",
]

ANGSTROM = 1e-10
#: Calibration a 4D-STEM tilt series needs: attr -> what it is
CALIBRATION = {
    "energy_eV": "beam energy (eV)",
    "convergence_semiangle": "probe convergence semi-angle (rad)",
    "scan_step": "scan step (m)",
    "reciprocal_pixel_size": "detector sampling (1/m per detector pixel; or pixel_size in m)",
}


class Settings(WorkflowSettings):
    """All parameters of the MSPT workflow (SI units; angles in degrees; semi-angle in rad).

    Defaults are CI-small (a 2-unit-cell Co3O4 cube, 0.7 A pixels); the preset "paper" has
    the paper's sizes (13 nm cube, 36 tilts, 5 slices of 3 nm), far beyond a laptop.
    """

    groups = {
        "Sample": ["cube_cells", "lattice_constant", "oxygen_u", "substrate", "substrate_thickness", "seed"],
        "Tilt series": ["n_tilts", "tilt_range", "shift_rms", "euler_rms"],
        "Optics and scan": ["energy_eV", "semiangle", "defocus", "pixel_size", "detector", "scan_step",
                            "field_of_view", "dose"],
        "Ptychography": ["engine", "iterations", "n_slices", "slice_thickness", "parallel", "run_dir"],
        "Denoising": ["denoise", "bm3d_sigma", "fourier_sparsity", "sparsity_keep"],
        "Tomography": ["rounds_shifts", "rounds_rotations", "rounds_full", "pose_steps", "euler_prior", "volume_steps",
                       "final_volume_steps", "atomic_refinement", "atomic_cycles",
                       "blur_sigma", "mask_threshold", "mask_smooth", "mask_margin", "coupled_iterations"],
        "Analysis": ["fsc", "single_tilt", "atoms", "peak_threshold", "match_radius"],
    }
    presets = {
        # the whole chain in well under a minute on 2 cores (notebook, app, browser test)
        "ci": dict(cube_cells=1, n_tilts=9, field_of_view=14 * ANGSTROM, iterations=8, denoise="gaussian",
                   rounds_shifts=1, rounds_rotations=1, rounds_full=2),
        # the 2-cell cube of the defaults (what `ptynb run mspt` runs): minutes
        "laptop": {},
        # the paper's sizes (13 nm cube, 36 tilts, 5 slices of 3 nm): a GPU cluster's work
        "paper": dict(cube_cells=16, n_tilts=36, n_slices=5, slice_thickness=3e-9, pixel_size=0.35 * ANGSTROM,
                      detector=128, field_of_view=182 * ANGSTROM, dose=4.6e4, iterations=50,
                      substrate=True, semiangle=25e-3, scan_step=0.6 * ANGSTROM),
    }

    # --- sample
    cube_cells = param.Integer(default=2, bounds=(1, 20), doc="Cube edge in unit cells (a = 8.08 A; 16 ~ 13 nm)")
    lattice_constant = param.Number(default=8.08e-10, bounds=(1e-10, 5e-9), doc="Spinel lattice constant (m)")
    oxygen_u = param.Number(default=0.2631, bounds=(0.24, 0.29),
                            doc="Oxygen 32e parameter u (Fd-3m, origin choice 2)")
    substrate = param.Boolean(default=False, doc="Add an amorphous-carbon substrate under the cube")
    substrate_thickness = param.Number(default=1e-9, bounds=(1e-10, 2e-8), doc="Substrate thickness (m)")
    seed = param.Integer(default=0, bounds=(0, None), doc="Random seed (nuisance, substrate, noise)")
    # --- tilt series
    n_tilts = param.Integer(default=36, bounds=(2, 720), doc="Number of tilts")
    tilt_range = param.Number(default=70.0, bounds=(1.0, 90.0), doc="Tilts span -range..+range (degrees)")
    shift_rms = param.Number(default=1.0 * ANGSTROM, bounds=(0.0, None),
                             doc="Simulated per-tilt translation error, rms per axis (m)")
    euler_rms = param.Number(default=0.3, bounds=(0.0, 5.0),
                             doc="Simulated per-tilt Euler-angle error, rms per angle (degrees)")
    # --- optics and scan (the nominal values are what a user knows; recorded as attrs)
    energy_eV = param.Number(default=200e3, bounds=(1e3, 1e6), doc="Electron energy (eV)")
    semiangle = param.Number(default=12e-3, bounds=(1e-3, 0.1), doc="Convergence semi-angle (rad)")
    defocus = param.Number(default=40 * ANGSTROM, doc="Defocus (m; positive = underfocus)")
    pixel_size = param.Number(default=0.7 * ANGSTROM, bounds=(1e-12, 1e-8),
                              doc="Reconstruction pixel = voxel (m); the detector then spans 1/pixel_size")
    detector = param.Integer(default=24, bounds=(8, 512), doc="Detector pixels per side")
    scan_step = param.Number(default=1.4 * ANGSTROM, bounds=(1e-12, 1e-8), doc="Raster scan step (m)")
    field_of_view = param.Number(default=28 * ANGSTROM, bounds=(1e-10, 1e-6),
                                 doc="Side of the scanned square = side of the projections (m)")
    dose = param.Number(default=1e5, bounds=(1.0, None), doc="Electron dose per projection (e/A^2)")
    # --- ptychography
    engine = param.Selector(objects=["epie", "rpie", "lsqml"], default="epie", doc="Ptychography engine per tilt")
    iterations = param.Integer(
        default=30, bounds=(1, 10_000),
        doc="Ptychography iterations per tilt. 30 rather than 12: on the default full chain (36 tilts, ePIE) the "
            "projections then resolve the O atoms, the atomic pose model fits them (relative misfit 0.12-0.13 "
            "against 0.29-0.35 after 12) and the angles end at 0.05-0.07 deg rms instead of 0.22-0.26 "
            "(seeds 0, 1), for about 45 s more (226 vs 180 s, one thread, two runs side by side)")
    n_slices = param.Integer(default=2, bounds=(1, 64), doc="Multislice slices per tilt")
    slice_thickness = param.Number(default=None, allow_None=True, bounds=(0.0, None), inclusive_bounds=(False, True),
                                   doc="Slice thickness (m); None: the cube's largest depth / n_slices")
    parallel = param.Boolean(default=False, doc="Reconstruct the tilts on a dask LocalCluster")
    run_dir = param.String(default=None, allow_None=True,
                           doc="Folder of per-tilt result files: finished tilts are read back, not redone")
    # --- denoising
    denoise = param.Selector(objects=["bm3d", "gaussian", "none"], default="bm3d",
                             doc="Denoiser of the projections (bm3d falls back to gaussian if missing)")
    bm3d_sigma = param.Number(default=None, allow_None=True, bounds=(0.0, None),
                              doc="BM3D noise level (rad); None: estimated per projection")
    fourier_sparsity = param.Boolean(default=True, doc="Keep only the strongest Fourier coefficients")
    sparsity_keep = param.Number(default=0.25, bounds=(0.001, 1.0),
                                 doc="Fraction of Fourier coefficients kept by the sparsity constraint")
    # --- tomography (tomo.joint_refinement on the MSPT schedule)
    rounds_shifts = param.Integer(default=1, bounds=(1, 100), doc="Rounds of the shift stage (10 % scale)")
    rounds_rotations = param.Integer(default=0, bounds=(0, 100),
                                     doc="Rounds of the rotation stage (20 % scale; 0: no such stage)")
    rounds_full = param.Integer(default=4, bounds=(1, 100), doc="Rounds at full scale (everything)")
    pose_steps = param.Integer(default=2, bounds=(1, 50), doc="Pose Gauss-Newton steps per round")
    euler_prior = param.Number(default=0.5, allow_None=True, bounds=(0.0, 10.0), inclusive_bounds=(False, True),
                               doc="Assumed rms of the holder's Euler-angle errors (degrees): the width of the "
                                   "Gaussian prior of the pose refinement, so rotations the data cannot see stay "
                                   "near zero (None: no prior)")
    volume_steps = param.Integer(default=30, bounds=(1, 200), doc="Volume CGLS steps per round")
    final_volume_steps = param.Integer(
        default=20, allow_None=True, bounds=(1, 500),
        doc="CGLS steps of the returned volume, reconstructed again from the start at the refined poses "
            "(early stopping keeps its noise down; None: the refinement's own volume)")
    atomic_refinement = param.Boolean(
        default=True,
        doc="Refine the poses once more against an atomic model of the volume (isotropic atoms; "
            "ptynb.tomo.atomic_refinement), fitted to the projections as measured: the voxel model has "
            "about as many unknowns as the data and takes up the pose errors. A fit that does not describe "
            "the data (relative misfit above 0.25) is rejected and the voxel poses kept")
    atomic_cycles = param.Integer(default=3, bounds=(0, 20),
                                  doc="Prune / add cycles of the atomic model after its first fit")
    blur_sigma = param.Number(default=0.5, bounds=(0.0, 3.0), doc="Volume blur at full scale (voxels)")
    mask_threshold = param.Number(default=0.25, bounds=(0.0, 0.99),
                                  doc="Support mask: level of the low-resolution volume (fraction of max)")
    mask_smooth = param.Number(default=2.0, allow_None=True, bounds=(0.0, 10.0),
                               doc="Support mask: Gaussian smoothing of the signed low-resolution volume "
                                   "before thresholding its magnitude (full-resolution voxels)")
    mask_margin = param.Number(default=3.0, bounds=(0.0, 20.0),
                               doc="Support mask: dilation of the thresholded core (full-resolution voxels)")
    coupled_iterations = param.Integer(default=0, bounds=(0, 1000),
                                       doc="CGLS iterations of the coupled volume-pose step per round (0: none)")
    # --- analysis
    fsc = param.Boolean(default=True, doc="FSC between the volumes of the even and odd tilts")
    single_tilt = param.Boolean(default=True, doc="Reconstruct the tilt nearest 0 deg with thin slices "
                                "(multislice alone) to compare the axial resolution")
    atoms = param.Boolean(default=True, doc="Find atoms and register the spinel lattice")
    peak_threshold = param.Number(default=0.25, bounds=(0.0, 1.0),
                                  doc="Local maxima above this fraction of the volume's 99.9th percentile")
    match_radius = param.Number(default=0.35, bounds=(0.05, 0.5),
                                doc="A Co site is found when a maximum lies within this fraction of the Co-Co distance")

    # ------------------------------------------------------------ derived
    @property
    def angles(self) -> np.ndarray:
        """Nominal tilt angles (degrees)."""
        r = float(self.tilt_range)
        return np.linspace(-r, r, int(self.n_tilts))

    @property
    def cube_edge(self) -> float:
        return int(self.cube_cells) * float(self.lattice_constant)

    def slice_dz(self) -> float:
        """Slice thickness (m): given, or the cube's largest depth over the series / n_slices."""
        if self.slice_thickness is not None:
            return float(self.slice_thickness)
        r = math.radians(min(float(self.tilt_range), 45.0))
        depth = self.cube_edge * (abs(math.cos(r)) + abs(math.sin(r)))
        return depth / int(self.n_slices)


# ============================================================================ 1. simulation
def _euler(values):
    from ..physics.atoms import rotation_matrix

    return rotation_matrix(np.asarray(values, float), "xyz")


def _carbon(settings: Settings, rng, extent: float):
    """Amorphous carbon: random C atoms at 2.0 g/cm^3 with a 1.3 A minimum separation,
    a slab of ``substrate_thickness`` below the cube (sample frame, normal along z)."""
    dens = 2.0e3 / (12.011 * 1.66054e-27)  # atoms per m^3
    t = float(settings.substrate_thickness)
    z0 = settings.cube_edge / 2
    n = int(dens * (2 * extent) ** 2 * t)
    pos = np.column_stack([rng.uniform(-extent, extent, n), rng.uniform(-extent, extent, n),
                           rng.uniform(z0, z0 + t, n)])
    from scipy.spatial import cKDTree

    keep = np.ones(n, bool)
    pairs = cKDTree(pos).query_pairs(1.3 * ANGSTROM, output_type="ndarray")
    keep[pairs[:, 1]] = False
    return pos[keep]


def simulate(settings: Settings | None = None, *, progress: bool = False,
             cancel: threading.Event | None = None) -> xr.DataTree:
    """Simulated MSPT experiment: a Co3O4 nanocube tilt series with per-tilt nuisance.

    Sample: the spinel cube of :func:`ptynb.physics.phantoms.spinel_co3o4_nanocube`
    (``cube_cells`` unit cells, centred at the origin; Co on 8a and 16d, O on 32e),
    optionally on amorphous carbon. Tilt ``k``: the atoms are turned by the nominal tilt
    about y, then by small Euler errors ``E_k`` and moved by ``(shift_x, shift_y)_k``
    (lab frame); the transmission per simulation slice (1 A) comes from
    :func:`ptynb.physics.atoms.projected_potential`; the 4D-STEM scan of a convergent
    ``energy_eV`` probe (``semiangle``, ``defocus``) over ``field_of_view`` with
    ``scan_step`` and Poisson noise at ``dose`` e/A^2 is :func:`ptynb.simulate.ptychography_series`.

    Returns
    -------
    DataTree with
        ``measurement``: ``intensity`` (angle, scan, qy, qx) counts, ``scan_y``/``scan_x``
        (scan) m; attrs: the *nominal* optics (``energy_eV``, ``convergence_semiangle`` rad,
        ``defocus`` m, ``scan_step`` m, ``reciprocal_pixel_size`` 1/m, ``pixel_size`` m,
        ``dose_e_per_A2``), ``missing_wedge_deg``, ``tilt_axis="y"``, ``geometry``.
        ``truth``: ``shift_y``, ``shift_x`` (angle) m, ``rx``, ``ry``, ``rz`` (angle) deg,
        ``atom_positions`` (atom, xyz) m in the sample frame, ``atom_numbers`` (atom),
        ``true_projection`` (angle, y, x) rad (sum of the slice phases, on the projection grid).
    """
    from ..physics import atoms as A
    from ..physics import phantoms, probes
    from ..physics.units import interaction_constant
    from ..simulate import ptychography_series

    s = settings or Settings()
    rng = np.random.default_rng(int(s.seed))
    dx = float(s.pixel_size)
    n_det = int(s.detector)
    ang = s.angles
    nt = ang.size
    pos, num = phantoms.spinel_co3o4_nanocube(s.cube_edge, lattice_constant=float(s.lattice_constant),
                                              oxygen_u=float(s.oxygen_u))
    fov = float(s.field_of_view)
    if s.cube_edge * math.sqrt(2) > fov:
        raise ValidationError("field_of_view", f"{fov * 1e10:.1f} A does not hold the cube's diagonal "
                              f"({s.cube_edge * math.sqrt(2) * 1e10:.1f} A) at 45 deg tilt")
    if s.substrate:
        c = _carbon(s, rng, fov / 2)
        pos = np.concatenate([pos, c])
        num = np.concatenate([num, np.full(len(c), 6)])
    # nuisance (lab frame)
    shifts = rng.normal(0.0, float(s.shift_rms), (nt, 2))  # (y, x) m
    euler = rng.normal(0.0, float(s.euler_rms), (nt, 3))   # (rx, ry, rz) deg
    # scan over the field of view, centred on the origin
    n_scan = int(round(fov / float(s.scan_step))) + 1
    c = (np.arange(n_scan) - (n_scan - 1) / 2) * float(s.scan_step)
    sy, sx = (v.ravel() for v in np.meshgrid(c, c, indexing="ij"))
    # object frame: every probe window inside, pixel 0 at a whole pixel
    half = (n_scan - 1) / 2 * float(s.scan_step) + (n_det // 2 + 2) * dx
    n_obj = int(math.ceil(2 * half / dx)) + 1
    origin = -(n_obj // 2) * dx
    depth = math.sqrt(3) * s.cube_edge + (2 * float(s.substrate_thickness) if s.substrate else 0.0)
    dz_sim = 1.0 * ANGSTROM
    n_sim = max(1, int(math.ceil(depth / dz_sim)))
    sigma = interaction_constant(float(s.energy_eV))
    objs, true_proj = [], []
    yc = origin + np.arange(n_obj) * dx
    np_ = int(round(fov / dx))
    crop = _crop_index(yc, np_, dx)
    for k, a in enumerate(ang):
        if is_cancelled(cancel):
            raise Cancelled("cancelled during the simulation")
        R = _euler(euler[k]) @ A.rotation_matrix(a, "y")
        p = pos @ R.T
        p[:, 0] += shifts[k, 1]
        p[:, 1] += shifts[k, 0]
        V = A.projected_potential(p, num, (n_obj, n_obj), dx, slice_thickness=dz_sim, n_slices=n_sim,
                                  z_origin=-depth / 2, origin=(origin, origin))
        ph = V.values.astype(np.float64) * sigma
        objs.append(np.exp(1j * ph).astype(np.complex64))
        true_proj.append(ph.sum(axis=0)[crop].astype(np.float32))
    probe = probes.electron_probe((n_det, n_det), dx, float(s.energy_eV), float(s.semiangle),
                                  defocus=float(s.defocus))
    objs = xr.DataArray(np.stack(objs), dims=("angle", "slice", "y", "x"),
                        coords={"y": ("y", yc), "x": ("x", yc),
                                "z": ("slice", np.arange(n_sim) * dz_sim)})
    ds = ptychography_series(objs, ang, probe, sy, sx, pixel_size=dx, radiation="electron",
                             energy_eV=float(s.energy_eV), slice_thickness=dz_sim,
                             dose=float(s.dose) * 1e20, seed=int(s.seed), progress=progress)
    meas = ds.drop_vars([v for v in ("true_object", "true_probe") if v in ds])
    meas = meas.drop_dims([d for d in ("slice", "mode", "py", "px", "y", "x") if d in meas.dims])
    # nominal optics only (what a microscopist knows); the simulated truth goes to `truth`
    drop = [k for k in meas.attrs if k.startswith("probe_") or k in ("tilt", "field_of_view")]
    for k in drop:
        meas.attrs.pop(k, None)
    meas.attrs.update(convergence_semiangle=float(s.semiangle),
                      scan_step=float(s.scan_step), scan_shape=np.asarray([n_scan, n_scan]),
                      dose_e_per_A2=float(s.dose), tilt_axis="y", geometry="tomography",
                      missing_wedge_deg=float(180.0 - np.ptp(ang)), simulated=1)
    yp = (np.arange(np_) - np_ // 2) * dx
    truth = xr.Dataset(
        {"shift_y": ("angle", shifts[:, 0], {"units": "m"}),
         "shift_x": ("angle", shifts[:, 1], {"units": "m"}),
         "rx": ("angle", euler[:, 0], {"units": "degree"}),
         "ry": ("angle", euler[:, 1], {"units": "degree"}),
         "rz": ("angle", euler[:, 2], {"units": "degree"}),
         "atom_positions": (("atom", "xyz"), pos, {"units": "m", "frame": "sample"}),
         "atom_numbers": ("atom", num.astype(np.int16)),
         "true_projection": (("angle", "y", "x"), np.stack(true_proj), {"units": "rad"})},
        coords={"angle": ("angle", ang, {"units": "degree"}), "xyz": ["x", "y", "z"],
                "y": ("y", yp, {"units": "m"}), "x": ("x", yp, {"units": "m"})},
        attrs={"euler_convention": "extrinsic x-y-z about lab axes after the nominal tilt (degrees)",
               "shift_convention": "object displacement in the projection (m)",
               "cube_edge": s.cube_edge, "lattice_constant": float(s.lattice_constant)})
    return xr.DataTree(children={"measurement": xr.DataTree(meas), "truth": xr.DataTree(truth)})


def simulate_projections(settings: Settings | None = None, *, noise: float = 0.0) -> xr.DataTree:
    """The cheap path: phase projections of the nanocube with the same nuisance as
    :func:`simulate`, without 4D-STEM or ptychography (the input of ``run(projections=...)``).

    Projection ``k`` is ``sigma * projected_potential`` (rad) of the atoms turned by the
    nominal tilt, the Euler errors ``E_k`` and moved by the shifts (exact atomic potentials,
    not a voxel projector), on a ``field_of_view`` square grid of ``pixel_size``, plus
    Gaussian phase noise of ``noise`` rad.

    Returns
    -------
    DataTree with ``projections`` (DataArray (angle, y, x) rad; attrs ``energy_eV``,
    ``geometry``) and ``truth`` (as :func:`simulate`).
    """
    from ..physics import atoms as A
    from ..physics import phantoms
    from ..physics.units import interaction_constant
    from ..data import projections as _projections

    s = settings or Settings()
    rng = np.random.default_rng(int(s.seed))
    dx = float(s.pixel_size)
    ang = s.angles
    nt = ang.size
    pos, num = phantoms.spinel_co3o4_nanocube(s.cube_edge, lattice_constant=float(s.lattice_constant),
                                              oxygen_u=float(s.oxygen_u))
    n = int(round(float(s.field_of_view) / dx))
    if s.substrate:
        c = _carbon(s, rng, n * dx / 2)
        pos = np.concatenate([pos, c])
        num = np.concatenate([num, np.full(len(c), 6)])
    shifts = rng.normal(0.0, float(s.shift_rms), (nt, 2))
    euler = rng.normal(0.0, float(s.euler_rms), (nt, 3))
    sigma = interaction_constant(float(s.energy_eV))
    P = np.empty((nt, n, n), np.float32)
    for k, a in enumerate(ang):
        R = _euler(euler[k]) @ A.rotation_matrix(a, "y")
        p = pos @ R.T
        p[:, 0] += shifts[k, 1]
        p[:, 1] += shifts[k, 0]
        V = A.projected_potential(p, num, (n, n), dx, slice_thickness=1.0, n_slices=1)
        P[k] = V.values[0] * sigma
    if noise > 0:
        P += rng.normal(0.0, float(noise), P.shape).astype(np.float32)
    da = _projections(P, ang, pixel_size=dx, geometry="tomography", energy_eV=float(s.energy_eV),
                      units="rad", missing_wedge_deg=float(180.0 - np.ptp(ang)))
    yp = da["y"].values
    truth = xr.Dataset(
        {"shift_y": ("angle", shifts[:, 0], {"units": "m"}), "shift_x": ("angle", shifts[:, 1], {"units": "m"}),
         "rx": ("angle", euler[:, 0], {"units": "degree"}), "ry": ("angle", euler[:, 1], {"units": "degree"}),
         "rz": ("angle", euler[:, 2], {"units": "degree"}),
         "atom_positions": (("atom", "xyz"), pos, {"units": "m", "frame": "sample"}),
         "atom_numbers": ("atom", num.astype(np.int16))},
        coords={"angle": ("angle", ang, {"units": "degree"}), "xyz": ["x", "y", "z"]},
        attrs={"euler_convention": "extrinsic x-y-z about lab axes after the nominal tilt (degrees)",
               "shift_convention": "object displacement in the projection (m)", "phase_noise_rad": float(noise),
               "cube_edge": s.cube_edge, "lattice_constant": float(s.lattice_constant), "grid_y0": float(yp[0])})
    return xr.DataTree(children={"projections": xr.DataTree(da.to_dataset(name="projections")),
                                 "truth": xr.DataTree(truth)})


def _crop_index(coord, n, dx):
    """Slice of ``n`` samples of a regular ``coord`` centred on 0 (zero at index n // 2)."""
    i0 = int(round((-(n // 2) * dx - coord[0]) / dx))
    if i0 < 0 or i0 + n > len(coord):
        raise ValidationError("field_of_view", "the projection grid does not fit in the object frame")
    return (slice(i0, i0 + n), slice(i0, i0 + n))


# ============================================================================ 2. real data
def _check_angles(ang, name="angle"):
    ang = np.asarray(ang, dtype=np.float64).reshape(-1)
    if ang.size < 2:
        raise ValidationError(name, f"a tilt series needs at least 2 tilts, got {ang.size}")
    if not np.all(np.isfinite(ang)):
        raise ValidationError(name, "contains NaN or inf")
    if np.unique(ang).size != ang.size:
        dup = np.unique(ang[np.unique(ang, return_counts=True)[1][np.searchsorted(np.unique(ang), ang)] > 1])
        raise ValidationError(name, f"duplicate tilt angles {dup.tolist()} (degrees)")
    d = np.diff(ang)
    if not (np.all(d > 0) or np.all(d < 0)):
        raise ValidationError(name, "tilt angles are not monotonic (sort the tilts by angle)")
    return ang


def check_mspt_measurement(ds) -> xr.Dataset:
    """Validate a 4D-STEM tilt series for MSPT.

    Needs ``intensity`` (angle, scan, qy, qx), finite non-negative counts, positions
    ``scan_y``/``scan_x`` (scan) in metres, ``angle`` in degrees (unique, monotonic) and the
    calibration of :data:`CALIBRATION` in attrs (``reciprocal_pixel_size`` or ``pixel_size``
    for the detector sampling; ``scan_step`` is derived from the positions when absent).

    Raises
    ------
    ValidationError
        Naming the missing or bad item (e.g. ``convergence_semiangle: missing ...``).
    """
    from ..data import validate

    if isinstance(ds, xr.DataTree):
        ds = ds["measurement"].to_dataset() if "measurement" in ds.children else ds.to_dataset()
    if not isinstance(ds, xr.Dataset):
        raise ValidationError("measurement", f"expected an xarray Dataset, got {type(ds).__name__}")
    if "intensity" not in ds:
        raise ValidationError("intensity", "missing: not a 4D-STEM measurement")
    if "angle" not in ds["intensity"].dims:
        raise ValidationError("angle", "the measurement has no angle dim: not a tilt series (give "
                              "intensity (angle, scan, qy, qx), or one file per tilt with load_tilt_files)")
    for key in ("energy_eV", "convergence_semiangle"):
        if ds.attrs.get(key) is None:
            raise ValidationError(key, f"missing calibration: {CALIBRATION[key]}")
    if ds.attrs.get("reciprocal_pixel_size") is None and ds.attrs.get("pixel_size") is None:
        raise ValidationError("reciprocal_pixel_size", f"missing calibration: {CALIBRATION['reciprocal_pixel_size']}")
    _check_angles(ds["angle"].values)
    inten = ds["intensity"]
    if not hasattr(inten.data, "dask"):
        bad = ~np.isfinite(np.asarray(inten.values))
        if bad.any():
            ia = np.unique(np.nonzero(bad)[0])
            raise ValidationError("intensity", f"NaN/inf in the patterns of tilt(s) "
                                  f"{ds['angle'].values[ia].tolist()} deg")
    validate(ds)
    if "angle" in ds["scan_y"].dims:
        raise ValidationError("scan_y", "positions must be shared by all tilts (scan,)")
    if ds.attrs.get("scan_step") is None:
        ds = ds.copy()
        ds.attrs["scan_step"] = float(_nearest_step(ds["scan_y"].values, ds["scan_x"].values))
    return ds


def _nearest_step(sy, sx):
    from scipy.spatial import cKDTree

    p = np.column_stack([sy, sx])
    d, _ = cKDTree(p).query(p, k=2)
    return float(np.median(d[:, 1]))


def _calibration(kw, *, where):
    missing = [k for k in ("energy_eV", "convergence_semiangle", "scan_step") if kw.get(k) is None]
    if kw.get("reciprocal_pixel_size") is None and kw.get("pixel_size") is None:
        missing.append("reciprocal_pixel_size")
    if missing:
        k = missing[0]
        raise ValidationError(k, f"missing calibration for {where}: {CALIBRATION[k]}")


def _read_4d(path):
    """(array (ry, rx, qy, qx), attrs) from a plain HDF5 4D dataset or an EMD 1.0 file."""
    import h5py

    p = Path(path)
    if not p.exists():
        raise ValidationError(str(path), "file not found")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise ValidationError(str(path), f"not an HDF5/EMD file ({exc})") from None
    with f:
        found = []

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.ndim == 4:
                found.append(name)
        f.visititems(visit)
        emd = [n for n in found if f[n].parent.attrs.get("emd_group_type") in (1, b"1", "1")]
        name = (emd or found or [None])[0]
        if name is None:
            raise ValidationError(str(path), "holds no 4D dataset (scan_y, scan_x, qy, qx): not a 4D-STEM file")
        d = f[name]
        attrs = {k: _scalar(v) for k, v in d.attrs.items()}
        attrs.update({k: _scalar(v) for k, v in d.parent.attrs.items() if k not in attrs})
        arr = np.asarray(d[()], dtype=np.float32)
    return arr, attrs


def _scalar(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.size == 1:
        return v.item()
    return v


def load_tilt_files(paths: Sequence, angles, *, energy_eV=None, convergence_semiangle=None,
                    scan_step=None, reciprocal_pixel_size=None, pixel_size=None, defocus=0.0,
                    **attrs) -> xr.Dataset:
    """A tilt series from one 4D-STEM file per tilt plus a table of tilt angles.

    Each file is a plain HDF5 file with one 4D dataset (scan_y, scan_x, qy, qx) or an EMD 1.0
    file (its 4D data group; read with h5py). Calibration comes from the arguments, else from
    the attrs of the first file's dataset (same names). Raster positions are centred on 0.

    Parameters
    ----------
    paths : sequence of paths, one per tilt
    angles : sequence of float (degrees) or path of a text table (one angle per line, or
        ``index angle`` columns)
    energy_eV, convergence_semiangle (rad), scan_step (m), reciprocal_pixel_size (1/m per
        detector pixel) or pixel_size (m), defocus (m)

    Raises
    ------
    ValidationError
        Missing calibration (naming it), angles not matching the files, duplicate or
        non-monotonic angles, scan or detector shapes that differ between tilts, NaN patterns,
        a file without a 4D dataset.
    """
    from ..data import measurement

    paths = [Path(p) for p in paths]
    if isinstance(angles, (str, os.PathLike)):
        tab = np.atleast_2d(np.loadtxt(angles, dtype=float))
        angles = tab[:, -1] if tab.shape[0] > 1 or tab.shape[1] <= 2 else tab.ravel()
    ang = np.asarray(angles, dtype=float).reshape(-1)
    if ang.size != len(paths):
        raise ValidationError("angles", f"{ang.size} angles for {len(paths)} files")
    ang = _check_angles(ang)
    arrs = []
    first_attrs = None
    for p in paths:
        a, at = _read_4d(p)
        if first_attrs is None:
            first_attrs = at
        if arrs and a.shape != arrs[0].shape:
            raise ValidationError(str(p), f"scan/detector shape {a.shape} differs from the first tilt's "
                                  f"{arrs[0].shape}")
        if not np.all(np.isfinite(a)):
            raise ValidationError(str(p), "NaN/inf in the diffraction patterns")
        arrs.append(a)
    kw = dict(energy_eV=energy_eV, convergence_semiangle=convergence_semiangle, scan_step=scan_step,
              reciprocal_pixel_size=reciprocal_pixel_size, pixel_size=pixel_size)
    for k in kw:
        if kw[k] is None and first_attrs.get(k) is not None:
            kw[k] = float(first_attrs[k])
    _calibration(kw, where=str(paths[0]))
    ry, rx, qy, qx = arrs[0].shape
    c_y = (np.arange(ry) - (ry - 1) / 2) * float(kw["scan_step"])
    c_x = (np.arange(rx) - (rx - 1) / 2) * float(kw["scan_step"])
    sy, sx = (v.ravel() for v in np.meshgrid(c_y, c_x, indexing="ij"))
    inten = np.stack([a.reshape(ry * rx, qy, qx) for a in arrs])
    geo = {"reciprocal_pixel_size": kw["reciprocal_pixel_size"]} if kw["reciprocal_pixel_size"] else {}
    ds = measurement(inten, sy, sx, radiation="electron", energy_eV=float(kw["energy_eV"]),
                     pixel_size=kw["pixel_size"], angle=ang, convergence_semiangle=float(kw["convergence_semiangle"]),
                     scan_step=float(kw["scan_step"]), scan_shape=np.asarray([ry, rx]), defocus=float(defocus),
                     geometry="tomography", tilt_axis="y", missing_wedge_deg=float(180 - np.ptp(ang)),
                     **geo, **attrs)
    return check_mspt_measurement(ds)


def load_tilt_series(path, **calibration) -> xr.Dataset:
    """A tilt series stored as one file (HDF5/Zarr written by :func:`ptynb.io.save`, or any
    netCDF/Zarr with ``intensity`` (angle, scan, qy, qx)). Calibration keywords fill attrs
    that the file lacks. Raises ValidationError for a file that is not a tilt series."""
    from .. import io

    try:
        obj = io.load(path)
    except ValueError as exc:
        raise ValidationError(str(path), f"cannot read: {exc}") from None
    if isinstance(obj, xr.DataTree):
        obj = obj["measurement"].to_dataset() if "measurement" in obj.children else obj.to_dataset()
    if isinstance(obj, xr.DataArray):
        raise ValidationError(str(path), "holds a single array, not a 4D-STEM tilt series")
    for k, v in calibration.items():
        if v is not None and obj.attrs.get(k) is None:
            obj.attrs[k] = v
    return check_mspt_measurement(obj)


# ============================================================================ 3. ptychography
def _reconstruct_one(block: xr.Dataset, *, opts: dict, crop_n: int, run_dir: str | None = None) -> xr.Dataset:
    """One tilt (map_blocks worker, module level for dask): multislice reconstruction, the
    summed-slice phase on the projection grid, the probe; read from / written to ``run_dir``."""
    from ..ptycho import reconstruct
    from ._checkpoints import block_path, fingerprint, load_block, save_block

    angle = float(block["angle"].values) if "angle" in block.coords else 0.0
    fp = fingerprint(block, opts)
    path = block_path(run_dir, "tilt", angle)
    old = load_block(path, fp)
    if old is not None:
        return old.drop_vars("angle", errors="ignore")
    data = block[[v for v in ("intensity", "mask") if v in block]]
    data = data.drop_vars("angle", errors="ignore")
    rec = reconstruct(data, engine=opts["engine"], iterations=int(opts["iterations"]),
                      slices=int(opts["n_slices"]), slice_thickness=opts["slice_thickness"] if int(opts["n_slices"]) > 1 else None,
                      seed=int(opts["seed"]), progress=False)
    out = phase_projections(rec, crop_n)
    out.attrs.update(fingerprint=fp, status=rec.attrs.get("status", "complete"))
    save_block(out, path)
    return out


def phase_projections(rec: xr.Dataset, n: int) -> xr.Dataset:
    """Summed-slice phase of one multislice reconstruction, cropped to ``n x n`` centred on 0.

    The phase of every slice is taken (``angle``), the vacuum level (median of a 3-pixel
    border ring of the crop, where the scanned field of view holds no sample) subtracted
    per slice, and the slices summed.

    Returns
    -------
    Dataset with ``phase`` (y, x) rad, ``slice_phase`` (slice, y, x) rad, ``probe``
    (mode, py, px), ``cost`` (iteration); y/x coords in m (zero at index n // 2).
    """
    obj = rec["object"]
    dx = float(rec.attrs["pixel_size"])
    yc = np.asarray(obj["y"].values)
    xc = np.asarray(obj["x"].values)
    iy = int(round((-(n // 2) * dx - yc[0]) / dx))
    ix = int(round((-(n // 2) * dx - xc[0]) / dx))
    if iy < 0 or ix < 0 or iy + n > yc.size or ix + n > xc.size:
        raise ValidationError("field_of_view", f"a {n}-pixel projection does not fit the reconstructed object")
    o = np.asarray(obj.values)[:, iy:iy + n, ix:ix + n]
    ph = np.angle(o).astype(np.float64)
    ring = np.zeros((n, n), bool)
    ring[:3] = ring[-3:] = True
    ring[:, :3] = ring[:, -3:] = True
    ph -= np.median(ph[:, ring], axis=1)[:, None, None]
    c = (np.arange(n) - n // 2) * dx
    cost = rec["cost"].values if "cost" in rec else np.zeros(0)
    return xr.Dataset(
        {"phase": (("y", "x"), ph.sum(0).astype(np.float32), {"units": "rad"}),
         "slice_phase": (("slice", "y", "x"), ph.astype(np.float32), {"units": "rad"}),
         "probe": (("mode", "py", "px"), np.asarray(rec["probe"].values, np.complex64)),
         "cost": ("iteration", np.asarray(cost, float))},
        coords={"y": ("y", c, {"units": "m"}), "x": ("x", c, {"units": "m"})},
        attrs={"pixel_size": dx, "slice_thickness": float(rec.attrs.get("slice_thickness") or 0.0)})


def reconstruct_tilts(measurement: xr.Dataset, settings: Settings | None = None, *, progress: bool = False,
                      cancel: threading.Event | None = None, client=None) -> xr.Dataset:
    """Multislice ptychography at every tilt, fanned out with :func:`ptynb.parallel.map_blocks`.

    ``settings.n_slices`` slices of ``settings.slice_dz()`` (m) each; ``settings.parallel``
    (or a dask ``client``) runs the tilts on a cluster, else serially. With ``settings.run_dir``
    each finished tilt is written to ``<run_dir>/tilt_<angle>.h5`` (with a fingerprint of its
    data and settings); a later run reads those back instead of recomputing them, so a
    stopped run resumes where it was.

    Returns
    -------
    Dataset: ``phase`` (angle, y, x) rad (summed slices), ``slice_phase`` (angle, slice, y, x),
    ``probe`` (angle, mode, py, px), ``cost`` (angle, iteration); attrs ``tilts_done``.

    Raises
    ------
    Cancelled
        When ``cancel`` is set (:func:`ptynb.parallel.map_blocks` starts no further tilt;
        on a cluster unfinished tilts are cancelled), carrying the finished tilts (NaN where
        not done; those already written to ``run_dir`` are kept there for the next run).
    """
    from ..parallel import map_blocks

    s = settings or Settings()
    m = check_mspt_measurement(measurement)
    dx = float(m.attrs.get("pixel_size") or 1.0 / (m.sizes["qy"] * float(m.attrs["reciprocal_pixel_size"])))
    n = int(round(float(s.field_of_view) / dx))
    sy, sx = m["scan_y"].values, m["scan_x"].values
    span = min(np.ptp(sy), np.ptp(sx))
    n = min(n, int(span / dx) + 1)
    opts = dict(engine=s.engine, iterations=int(s.iterations), n_slices=int(s.n_slices),
                slice_thickness=float(s.slice_dz()), seed=int(s.seed), detector=m.sizes["qy"])
    kw = dict(opts=opts, crop_n=n, run_dir=s.run_dir)
    data = m[[v for v in ("intensity", "mask") if v in m]]
    out = map_blocks(_reconstruct_one, data, dims=("angle",), client=client, cancel=cancel,
                     parallel=bool(s.parallel) if client is None else None, progress=progress,
                     pad=("iteration",), **kw)
    if "block_status" in out:
        out = out.drop_vars("block_status")
    done = np.isfinite(out["phase"].values).all(axis=(1, 2))
    out.attrs.update(tilts_done=int(done.sum()), n_slices=int(s.n_slices), slice_thickness=float(s.slice_dz()),
                     pixel_size=dx, energy_eV=float(m.attrs["energy_eV"]))
    for k in ("missing_wedge_deg", "geometry", "tilt_axis"):
        if k in m.attrs:
            out.attrs[k] = m.attrs[k]
    out.attrs.pop("fingerprint", None)
    out.attrs["status"] = "complete" if done.all() else "cancelled"
    if is_cancelled(cancel) and not done.all():
        raise Cancelled("cancelled during the per-tilt reconstructions", partial=out)
    return out


# ============================================================================ projections
def check_projections(projections) -> xr.DataArray:
    """Validate user projections: DataArray (angle, y, x) of real phases (rad), angle in
    degrees (unique, monotonic), y/x coords in metres with equal spacing, finite values."""
    if not isinstance(projections, xr.DataArray):
        raise ValidationError("projections", f"must be a DataArray (angle, y, x), got {type(projections).__name__}")
    if tuple(projections.dims) != ("angle", "y", "x"):
        raise ValidationError("projections", f"has dims {projections.dims}; expected ('angle', 'y', 'x')")
    if np.iscomplexobj(projections.values):
        raise ValidationError("projections", "are complex; give the (summed-slice) phase in rad")
    if "angle" not in projections.coords:
        raise ValidationError("angle", "coordinate missing (degrees)")
    _check_angles(projections["angle"].values)
    if not np.all(np.isfinite(projections.values)):
        raise ValidationError("projections", "contain NaN or inf")
    for d in ("y", "x"):
        if d not in projections.coords:
            raise ValidationError(d, "coordinate missing (metres)")
        c = np.asarray(projections[d].values, float)
        if c.size < 8:
            raise ValidationError(d, f"only {c.size} pixels")
        st = np.diff(c)
        if not np.allclose(st, st[0], rtol=1e-4) or st[0] <= 0:
            raise ValidationError(d, "coordinate must be increasing and regularly spaced (m)")
        if st[0] > 1e-6:
            raise ValidationError(d, f"spacing {st[0]:.3g}: coordinates must be in metres")
    geom = str(projections.attrs.get("geometry", "tomography"))
    if geom != "tomography":
        raise ValidationError("geometry", f"{geom!r}: the MSPT workflow reconstructs a tilt series about the "
                              "y axis ('tomography'); laminography/posed inputs are not supported")
    py = float(np.diff(projections["y"].values[:2])[0])
    px = float(np.diff(projections["x"].values[:2])[0])
    if not np.isclose(py, px, rtol=1e-3):
        raise ValidationError("y", f"pixels must be square (dy={py:.4g} m, dx={px:.4g} m)")
    return projections


def projections_from(ptycho: xr.Dataset) -> xr.DataArray:
    """The summed-slice phases of :func:`reconstruct_tilts` as a projections DataArray
    (angle, y, x) rad, geometry "tomography"; tilts not reconstructed (NaN) are left out."""
    ph = ptycho["phase"]
    keep = np.isfinite(ph.values).all(axis=(1, 2))
    ph = ph.isel(angle=np.nonzero(keep)[0])
    da = ph.copy()
    da.name = "projections"
    da.attrs = {"kind": "projections", "units": "rad", "geometry": "tomography",
                "pixel_size": float(ptycho.attrs["pixel_size"]), "energy_eV": float(ptycho.attrs["energy_eV"]),
                "long_name": "summed-slice phase"}
    return da


# ============================================================================ 4. denoising
def denoise(projections: xr.DataArray, settings: Settings | None = None, *, progress: bool = False,
            cancel: threading.Event | None = None) -> xr.Dataset:
    """BM3D (or Gaussian) denoising and the Fourier-sparsity constraint, per projection.

    Returns
    -------
    Dataset: ``denoised`` (angle, y, x) rad; ``spectrum_before``/``spectrum_after`` (q)
    azimuthally averaged power spectra (mean over tilts, q in 1/m); attrs ``denoiser``
    (what ran: "bm3d", "gaussian" - also when bm3d was asked for but is missing - or "none"),
    ``noise_sigma`` (rad, mean BM3D level), ``sparsity_keep``.
    """
    s = settings or Settings()
    P = np.asarray(projections.values, dtype=np.float64)
    dx = float(np.diff(projections["x"].values[:2])[0])
    method = s.denoise
    if method == "bm3d" and not steps.bm3d_available():
        method = "gaussian"
    out = np.empty_like(P, dtype=np.float32)
    sig = []
    for k in range(P.shape[0]):
        if is_cancelled(cancel):
            raise Cancelled("cancelled during denoising")
        img = P[k]
        if method == "bm3d":
            img, sg = steps.denoise_bm3d(img, s.bm3d_sigma)
            sig.append(sg)
        elif method == "gaussian":
            from scipy.ndimage import gaussian_filter

            img = gaussian_filter(img, 0.5)
        if s.fourier_sparsity:
            img = steps.fourier_sparsity(img, float(s.sparsity_keep))
        out[k] = img
    q, before = steps.radial_spectrum(P, dx)
    _, after = steps.radial_spectrum(out, dx)
    da = projections.copy(data=out)
    return xr.Dataset({"denoised": da.assign_attrs(units="rad"),
                       "spectrum_before": ("q", before), "spectrum_after": ("q", after)},
                      coords={"q": ("q", q, {"units": "1/m"})},
                      attrs={"denoiser": method, "requested_denoiser": s.denoise,
                             "noise_sigma": float(np.mean(sig)) if sig else 0.0,
                             "fourier_sparsity": int(bool(s.fourier_sparsity)),
                             "sparsity_keep": float(s.sparsity_keep)})


# ============================================================================ 5. tomography
def _sigma(energy_eV):
    from ..physics.units import interaction_constant

    return interaction_constant(float(energy_eV))


def tomography(projections: xr.DataArray, settings: Settings | None = None, *, energy_eV: float | None = None,
               progress: bool = False, cancel=None, raw: xr.DataArray | None = None) -> dict:
    """Joint tomography and rigid alignment (:func:`ptynb.tomo.joint_refinement`).

    ``cancel`` (threading.Event) stops the refinement after its current round (the result is
    then that round's, ``info["status"] == "cancelled"``).

    The MSPT schedule: pre-alignment by projection matching; shifts at 10 % scale
    (``rounds_shifts``); rotations at 20 % (``rounds_rotations``, default 0: no such stage);
    everything at full scale with a ``blur_sigma`` voxel blur (``rounds_full``), each round
    ``volume_steps`` CGLS steps for the volume, then ``pose_steps`` Gauss-Newton pose steps
    (MAP with the ``euler_prior``) and, with ``coupled_iterations`` > 0, a coupled volume-pose
    step. Support mask (``mask="auto"`` of :func:`ptynb.tomo.joint_refinement`) from the
    first-stage (low-resolution) volume: the signed volume smoothed by ``mask_smooth``
    voxels, its magnitude above ``mask_threshold`` of its maximum, dilated by
    ``mask_margin`` voxels. No truth enters.

    Defaults (measured on the 24-tilt, 32 px CI series of tests/test_mspt.py, seeds 0-2, a
    40 px field and a one-cell cube; issue #12): with the earlier defaults (|V| mask rule at
    0.1 + 3 voxels, which keeps 98-100 % of the voxels; 3 CGLS steps per round; a 20 %
    rotation stage; the coupled step) the angles ended at 0.38-0.83 deg rms. A volume
    converged further in every round (30 CGLS steps) matters most; the rotation stage at 20 %
    and the coupled step made the angles worse (0.69 and 0.42 deg instead of 0.26 on seed 0,
    and the coupled step costs 3-6x the time); the smoothed mask gains 0-0.04 deg on the
    2-cell cube (0.57-0.59 of the voxels, > 99.9 % of the true mass kept) and loses 0.1 deg on
    the one-cell cube (0.29 of the voxels).

    The returned volume is reconstructed once more from the start at the refined poses with
    ``final_volume_steps`` CGLS steps (None: the refinement's own volume). The poses want a
    volume converged far (noise and all); the atoms want one stopped early. Measured on the CI
    series: Co sites found 88.5 -> 100 %, mean displacement 0.42 -> 0.25 A (seed 0; seed 1:
    89.6 -> 100 %, 0.43 -> 0.21 A); the full 4D-STEM chain (36 tilts) 70.8 -> 94.3 %. The
    poses are unchanged.

    With ``atomic_refinement`` (default) the poses are then refined against an atomic model of
    that volume (:func:`ptynb.tomo.atomic_refinement`) fitted to ``raw``, the projections as
    measured (default: ``projections``), and the volume is reconstructed once more at the new
    poses. Measured on the CI series (issue #12): the voxel model's angles are 0.26 / 0.23 /
    0.32 deg rms (seeds 0-2, injected 0.24-0.29), the atomic model's 0.08 / 0.06 / 0.10; the
    shifts 0.14 -> 0.015 px. A fit with a relative misfit above 0.25 (a sample not resolved
    into atoms, or the O atoms of the chain's own ePIE projections unresolved: 0.30-0.42 there)
    is rejected and the voxel poses kept (``alignment.attrs["atomic_status"] == "rejected"``).

    Returns
    -------
    dict with ``volume`` (DataArray (z, y, x) volts, coords m), ``alignment`` (Dataset over
    angle: ``shift_y``, ``shift_x`` m, ``rx``, ``ry``, ``rz`` deg, and the voxel model's
    ``rx_voxel_model``, ``ry_voxel_model``, ``rz_voxel_model``; attrs ``final_loss``,
    ``pose_model`` ("atoms" or "voxels"), ``atomic_status``, ``atomic_n_atoms``,
    ``atomic_misfit_relative``, ``atomic_residual_rms`` (rad)), ``aligned`` (the
    shift-corrected projections) and ``atom_model`` (the atoms' Dataset, or None).
    """
    from ..tomo import joint_refinement

    s = settings or Settings()
    e = float(energy_eV or projections.attrs.get("energy_eV") or s.energy_eV)
    P = projections.copy()
    P.attrs = {k: v for k, v in projections.attrs.items() if k in ("pixel_size", "units")}
    P.attrs["geometry"] = "tomography"
    dx = float(np.diff(P["x"].values[:2])[0])
    sched = (("shifts", 0.1, int(s.rounds_shifts)),) \
        + ((("rotations", 0.2, int(s.rounds_rotations)),) if int(s.rounds_rotations) > 0 else ()) \
        + (("all", 1.0, int(s.rounds_full)),)
    aligned, shifts, poses, info = joint_refinement(
        P, schedule=sched, mask="auto", mask_threshold=float(s.mask_threshold), blur_sigma=float(s.blur_sigma),
        mask_smooth=None if s.mask_smooth is None else float(s.mask_smooth), mask_margin=float(s.mask_margin),
        coupled_iterations=int(s.coupled_iterations),
        pose_steps=int(s.pose_steps), volume_steps=int(s.volume_steps), progress=progress, cancel=cancel,
        pose_prior=None if s.euler_prior is None else float(s.euler_prior))
    sig = _sigma(e)
    vol = info["volume"]
    final_steps = s.final_volume_steps

    def final_volume(shifts, poses):
        # the volume again, from the start, at the refined poses, stopped early: the poses want
        # a converged volume, the atoms one whose noise has not been amplified yet
        _, _, _, info_v = joint_refinement(
            P, schedule=(("volume", 1.0, 1),), initial_shifts=shifts, initial_poses=poses,
            mask=info.get("mask"), blur_sigma=float(s.blur_sigma), volume_steps=int(final_steps),
            progress=False, cancel=cancel)
        return info_v["volume"] if info_v.get("status") != "cancelled" else None

    if final_steps and info.get("status") != "cancelled":
        v_ = final_volume(shifts, poses)
        vol = vol if v_ is None else v_
    atomic = None
    voxel_poses = np.asarray(poses, np.float64).copy()
    if s.atomic_refinement and info.get("status") != "cancelled" and not is_cancelled(cancel):
        from ..tomo import atomic_refinement

        R = P if raw is None else raw.copy(deep=False).assign_attrs(P.attrs)
        with warnings.catch_warnings():  # a rejected fit is reported in the alignment's attrs instead
            warnings.filterwarnings("ignore", message="atomic_refinement:", category=RuntimeWarning)
            shifts_a, poses_a, atomic = atomic_refinement(R, vol, shifts=shifts, poses=poses,
                                                          cycles=int(s.atomic_cycles), progress=progress,
                                                          cancel=cancel)
        if atomic["status"] == "complete":
            from ..imaging import shift_image

            shifts, poses = shifts_a, poses_a
            aligned = P.copy(data=np.real(np.asarray(shift_image(np.asarray(P.values, np.float64), shifts)))
                             .astype(np.float32))
            if final_steps:
                v_ = final_volume(shifts, poses)
                vol = vol if v_ is None else v_
    volv = vol.copy(data=np.asarray(vol.values, np.float32) / np.float32(sig))
    volv.name = "volume"
    volv.attrs.update(units="V", long_name="electrostatic potential", energy_eV=e,
                      interaction_constant=sig, method="joint_refinement")
    model = -np.asarray(shifts) * dx  # object displacement (m)
    ang = P["angle"].values
    al = xr.Dataset({"shift_y": ("angle", model[:, 0], {"units": "m"}),
                     "shift_x": ("angle", model[:, 1], {"units": "m"}),
                     "rx": ("angle", poses[:, 0], {"units": "degree"}),
                     "ry": ("angle", poses[:, 1], {"units": "degree"}),
                     "rz": ("angle", poses[:, 2], {"units": "degree"})},
                    coords={"angle": ("angle", ang, {"units": "degree"})},
                    attrs={"euler_convention": "extrinsic x-y-z about lab axes after the nominal tilt (degrees)",
                           "shift_convention": "object displacement in the projection (m); correction = -shift",
                           "final_loss": float(info["loss"][-1]) if len(info["loss"]) else float("nan"),
                           "gauge": "global rotation/translation removed"})
    al["rx_voxel_model"] = ("angle", voxel_poses[:, 0], {"units": "degree", "long_name": "rx of the voxel-model refinement"})
    al["ry_voxel_model"] = ("angle", voxel_poses[:, 1], {"units": "degree", "long_name": "ry of the voxel-model refinement"})
    al["rz_voxel_model"] = ("angle", voxel_poses[:, 2], {"units": "degree", "long_name": "rz of the voxel-model refinement"})
    if atomic is None:
        al.attrs["pose_model"] = "voxels"
    else:
        al.attrs.update(pose_model="atoms" if atomic["status"] == "complete" else "voxels",
                        atomic_status=atomic["status"], atomic_n_atoms=int(atomic["n_atoms"]),
                        atomic_misfit_relative=float(atomic["misfit"][-1]) if len(atomic["misfit"]) else float("nan"),
                        atomic_residual_rms=float(atomic["rms"][-1]) if len(atomic["rms"]) else float("nan"))
        if atomic.get("reason"):
            al.attrs["atomic_reason"] = atomic["reason"]
    model = atomic["atoms"] if atomic is not None and atomic["status"] == "complete" else None
    return {"volume": volv, "alignment": al, "aligned": aligned, "mask": info.get("mask"), "atom_model": model}


def single_tilt_stack(measurement: xr.Dataset, settings: Settings | None = None, *,
                      slice_thickness: float | None = None, progress: bool = False) -> xr.Dataset:
    """Multislice ptychography *alone*: the tilt nearest 0 deg with thin slices, for the
    axial-resolution comparison of the paper (MSPT vs single-tilt multislice).

    The slab of depth ``sqrt(3)`` cube edges (the deepest the cube gets) is cut into slices of
    ``slice_thickness`` (default four pixels: thinner slices made the multislice engines'
    cost grow after a few iterations on the CI cube) and reconstructed with the settings'
    engine and iterations. Returns a Dataset with ``stack`` (slice, y, x) phase per slice (rad)
    on the projection grid and coords ``z`` (m); attrs ``angle``, ``slice_thickness``,
    ``cost_first``/``cost_min``/``cost_last`` (the convergence, to judge the stack by).
    """
    from ..ptycho import reconstruct

    s = settings or Settings()
    m = check_mspt_measurement(measurement)
    k = int(np.argmin(np.abs(m["angle"].values)))
    dx = float(m.attrs.get("pixel_size") or 1.0 / (m.sizes["qy"] * float(m.attrs["reciprocal_pixel_size"])))
    dz = float(slice_thickness or 4 * dx)
    n_sl = max(2, int(math.ceil(math.sqrt(3) * s.cube_edge / dz)))
    n = min(int(round(float(s.field_of_view) / dx)),
            int(min(np.ptp(m["scan_y"].values), np.ptp(m["scan_x"].values)) / dx) + 1)
    block = m[[v for v in ("intensity", "mask") if v in m]].isel(angle=k, drop=True)
    rec = reconstruct(block, engine=s.engine, iterations=int(s.iterations), slices=n_sl, slice_thickness=dz,
                      seed=int(s.seed), progress=progress)
    out = phase_projections(rec, n)
    st = out["slice_phase"]
    return xr.Dataset({"stack": st.assign_attrs(units="rad")},
                      coords={"z": ("slice", (np.arange(n_sl) - (n_sl - 1) / 2) * dz, {"units": "m"})},
                      attrs={"angle": float(m["angle"].values[k]), "slice_thickness": dz, "pixel_size": dx,
                             "cost_first": float(out["cost"].values[0]), "cost_min": float(np.min(out["cost"].values)),
                             "cost_last": float(out["cost"].values[-1])})


def axial_widths(volume: xr.DataArray, *, threshold: float = 0.25) -> dict:
    """Median FWHM of the atomic peaks of a volume along z (axial) and x (lateral), in m.

    Peaks: local maxima above ``threshold`` of the 99.9th percentile, at least 2 A apart;
    profiles through each peak along z and along x (within 2 A either side laterally, the
    whole axis axially). ``bounded_z`` is the fraction of axial profiles that drop below
    half maximum on both sides (else the width is a lower bound).
    """
    v = np.asarray(volume.values, np.float64)
    dx = float(np.diff(volume["x"].values[:2])[0])
    dz = float(np.diff(volume["z"].values[:2])[0]) if volume.sizes["z"] > 1 else dx
    origin = (float(volume["z"].values[0]), float(volume["y"].values[0]), float(volume["x"].values[0]))
    top = float(np.percentile(v, 99.9)) or 1.0
    pk, _ = steps.local_maxima(v, dx, origin, min_distance=2 * ANGSTROM, threshold=threshold * top, smooth=0.0)
    if volume.sizes["z"] > 1 and dz != dx:  # anisotropic stack: 2D maxima of the sum
        from scipy import ndimage as ndi

        img = v.sum(0)
        size = 2 * max(1, int(round(2 * ANGSTROM / dx))) + 1
        mx = (img == ndi.maximum_filter(img, size=size)) & (img > threshold * float(np.percentile(img, 99.9)))
        iyx = np.argwhere(mx)
        idx = np.column_stack([np.argmax(v[:, iyx[:, 0], iyx[:, 1]], axis=0), iyx])
    else:
        idx = np.round((pk[:, ::-1] - np.asarray(origin)[None, :]) / dx).astype(int)
    idx = idx[np.all((idx >= 0) & (idx < np.asarray(v.shape)[None, :]), axis=1)]
    wz, bz = steps.peak_fwhm(v, idx, (dz, dx, dx), 0)
    wx, bx = steps.peak_fwhm(v, idx, (dz, dx, dx), 2, half_window=max(1, int(round(2 * ANGSTROM / dx))))
    return {"axial_fwhm": wz, "lateral_fwhm": wx, "bounded_z": bz, "n_peaks": int(len(idx))}


# ============================================================================ 6. resolution
def _paper_resolution(vol, dx):
    """The paper's estimator (:func:`ptynb.metrics.directional_resolution`) on the
    Hann-windowed volume zero-padded to twice its size (finer q sampling)."""
    from .. import metrics

    v = np.asarray(vol, np.float64)
    v = v - v.mean()
    for ax, n in enumerate(v.shape):
        sh = [1, 1, 1]
        sh[ax] = n
        v = v * np.hanning(n).reshape(sh)
    v = np.pad(v, [(n // 2, n - n // 2) for n in v.shape])
    return metrics.directional_resolution(v, pixel_size=dx)


def resolution(volume: xr.DataArray, *, aligned: xr.DataArray | None = None, ptycho: xr.Dataset | None = None,
               fsc: bool = True, energy_eV: float | None = None, semiangle: float | None = None,
               single_tilt: xr.Dataset | None = None) -> xr.Dataset:
    """Directional resolution of the volume, FSC of half tilt series, single-tilt comparison.

    * ``resolution_x/y/z`` (m): the paper's estimator, the last significant peak of the
      spectral amplitude projected onto each axis (:func:`ptynb.metrics.directional_resolution`,
      on the windowed volume padded to twice its size); where it finds no significant peak
      (small volumes: the integration over a plane buries the Bragg peaks) the value comes
      from :func:`mspt_steps.cone_resolution` (significant 3D spectral peaks within 45 deg of
      the axis) and ``resolution_method_<axis>`` says so. z lies along the missing wedge
      (``resolution_along_wedge``), x and y across it (``resolution_across_wedge``: the better).
    * ``fsc`` with ``aligned`` projections: FBP volumes of the even and odd tilts and their FSC;
      ``resolution_fsc`` (m) at the half-bit threshold, or two voxels (Nyquist) with
      ``fsc_at_nyquist = 1`` when the curve never crosses it.
    * single-tilt multislice comparison (with ``ptycho`` or the optics): the axial resolution
      of multislice ptychography at one tilt is *assumed* as the larger of the slice
      spacing used and the depth of field ``2 lambda / alpha^2`` (both derived from inputs,
      ``axial_resolution_single_tilt_assumed``); ``axial_ratio_assumed`` = that / ``resolution_z``.
    * measured comparison, with ``single_tilt`` (:func:`single_tilt_stack`): the median FWHM
      along z of the atomic peaks of the MSPT volume (``axial_fwhm_mspt``; ``lateral_fwhm_mspt``
      along x) and of the columns of the thin-slice multislice stack (``axial_fwhm_single_tilt``,
      :func:`axial_widths`, the same estimator); ``axial_ratio`` = single tilt / MSPT
      (``axial_ratio_is_lower_bound`` = 1 when the single-tilt profiles never fall to half
      maximum inside the stack, whose depth then bounds the width).
    """
    from .. import metrics
    from ..physics import wavelength

    dx = float(np.diff(volume["x"].values[:2])[0])
    v = np.asarray(volume.values, np.float64)
    dr = _paper_resolution(v, dx)
    cone = steps.cone_resolution(v, dx)
    ds = dr.copy()
    attrs = {}
    for a in ("z", "y", "x"):
        r = float(dr.attrs.get(f"resolution_{a}", np.nan))
        attrs[f"projected_resolution_{a}"] = r
        attrs[f"cone_resolution_{a}"] = cone[f"resolution_{a}"]
        if np.isfinite(r):
            attrs[f"resolution_{a}"], attrs[f"resolution_method_{a}"] = r, "projected spectrum"
        else:
            attrs[f"resolution_{a}"], attrs[f"resolution_method_{a}"] = cone[f"resolution_{a}"], "cone peaks"
    attrs["resolution_along_wedge"] = attrs["resolution_z"]
    across = [attrs["resolution_x"], attrs["resolution_y"]]
    attrs["resolution_across_wedge"] = float(np.nanmin(across)) if np.isfinite(across).any() else float("nan")
    if fsc and aligned is not None and aligned.sizes["angle"] >= 4:
        from ..tomo import fbp

        halves = []
        for k in (0, 1):
            sub = aligned.isel(angle=slice(k, None, 2)).copy()
            sub.attrs = {"geometry": "tomography", "pixel_size": dx}
            halves.append(np.asarray(fbp(sub, filter="hann").values))
        c = metrics.fsc(halves[0], halves[1], pixel_size=dx)
        ds["fsc"] = xr.DataArray(np.asarray(c.values), dims=("q_fsc",),
                                 coords={"q_fsc": ("q_fsc", np.asarray(c[c.dims[0]].values), {"units": "1/m"})})
        ds["fsc_threshold"] = xr.DataArray(np.asarray(c["threshold_half_bit"].values), dims=("q_fsc",))
        r = float(c.attrs.get("resolution_half_bit", np.nan))
        attrs["fsc_at_nyquist"] = int(not np.isfinite(r))
        attrs["resolution_fsc"] = r if np.isfinite(r) else 2 * dx
    dz = None
    if ptycho is not None:
        dz = float(ptycho.attrs.get("slice_thickness") or 0.0) or None
        energy_eV = energy_eV or ptycho.attrs.get("energy_eV")
    if energy_eV and semiangle:
        dof = 2 * wavelength(float(energy_eV), "electron") / float(semiangle) ** 2
        attrs["depth_of_field_assumed"] = dof
        ax = max(dof, dz or 0.0)
        attrs["axial_resolution_single_tilt_assumed"] = ax
        if np.isfinite(attrs["resolution_z"]):
            attrs["axial_ratio_assumed"] = ax / attrs["resolution_z"]
    w = axial_widths(volume)
    attrs.update(axial_fwhm_mspt=w["axial_fwhm"], lateral_fwhm_mspt=w["lateral_fwhm"])
    if single_tilt is not None:
        st = single_tilt["stack"]
        sv = xr.DataArray(np.asarray(st.values, np.float64), dims=("z", "y", "x"),
                          coords={"z": single_tilt["z"].values, "y": st["y"].values, "x": st["x"].values})
        w1 = axial_widths(sv)
        attrs.update(axial_fwhm_single_tilt=w1["axial_fwhm"], lateral_fwhm_single_tilt=w1["lateral_fwhm"],
                     axial_ratio_is_lower_bound=int(w1["bounded_z"] < 0.5),
                     single_tilt_angle=float(single_tilt.attrs["angle"]))
        if w["axial_fwhm"] > 0:
            attrs["axial_ratio"] = w1["axial_fwhm"] / w["axial_fwhm"]
    ds.attrs = {**{k: v for k, v in dr.attrs.items() if not k.startswith(("resolution_", "q_", "sigma_"))},
                **attrs, "units": "m"}
    return ds


# ============================================================================ 7. atoms
def find_atoms(volume: xr.DataArray, settings: Settings | None = None, *, mask=None) -> xr.Dataset:
    """Local maxima of the volume and the registered spinel Co lattice.

    Peaks: local maxima (cube of half-width 0.4 Co-Co distance) above ``peak_threshold``
    times the 99.9th percentile. The Co sublattice (8a + 16d, lattice constant from the
    settings) is registered to the volume (rotation + translation,
    :func:`mspt_steps.register_lattice`); its sites inside the object support (the
    thresholded, smoothed volume) are matched one to one to peaks within ``match_radius``
    times the Co-Co distance (2.86 A for a = 8.08 A).

    Returns
    -------
    Dataset: ``peaks`` (peak, xyz) m, ``sites`` (site, xyz) m, ``found`` (site) bool,
    ``displacement`` (site, xyz) m (NaN where missing); attrs ``n_sites``, ``n_found``,
    ``n_missing``, ``found_fraction``, ``mean_displacement_x/y/z`` (m, mean |d| per axis),
    ``mean_displacement`` (m, mean distance), ``lattice_rotation_deg``, ``lattice_translation``.
    """
    from scipy import ndimage as ndi

    s = settings or Settings()
    v = np.asarray(volume.values, np.float64)
    dx = float(np.diff(volume["x"].values[:2])[0])
    origin = (float(volume["z"].values[0]), float(volume["y"].values[0]), float(volume["x"].values[0]))
    a = float(s.lattice_constant)
    d_coco = a * math.sqrt(2) / 4  # 16d-16d nearest distance (2.86 A)
    top = float(np.percentile(v, 99.9)) or 1.0
    if mask is None:
        sm = ndi.gaussian_filter(v, 2.0)
        mask = sm > 0.2 * sm.max()
    mask = np.asarray(mask, bool)
    inner = ndi.binary_erosion(mask, iterations=1)
    pk, val = steps.local_maxima(v, dx, origin, min_distance=0.4 * d_coco, threshold=s.peak_threshold * top,
                                 mask=mask)
    reg = steps.register_lattice(v, dx, origin, lattice_constant=a, support=inner, oxygen_u=float(s.oxygen_u))
    sites = reg["sites"]
    found, which, disp = steps.match_sites(sites, pk, float(s.match_radius) * d_coco)
    n_f = int(found.sum())
    md = np.nanmean(np.abs(disp[found]), axis=0) if n_f else np.full(3, np.nan)
    attrs = {"n_sites": int(len(sites)), "n_found": n_f, "n_missing": int(len(sites) - n_f),
             "found_fraction": float(n_f / max(len(sites), 1)),
             "mean_displacement_x": float(md[0]), "mean_displacement_y": float(md[1]),
             "mean_displacement_z": float(md[2]),
             "mean_displacement": float(np.mean(np.linalg.norm(disp[found], axis=1))) if n_f else float("nan"),
             "lattice_rotation_deg": np.asarray(reg["rotation_deg"]), "lattice_translation": np.asarray(reg["translation"]),
             "lattice_score": float(reg["score"]), "voxel_size": dx, "co_co_distance": d_coco,
             "units": "m"}
    return xr.Dataset({"peaks": (("peak", "xyz"), pk, {"units": "m"}),
                       "peak_value": ("peak", val),
                       "sites": (("site", "xyz"), sites, {"units": "m"}),
                       "found": ("site", found),
                       "displacement": (("site", "xyz"), disp, {"units": "m"})},
                      coords={"xyz": ["x", "y", "z"]}, attrs=attrs)


# ============================================================================ pipeline
def _has_projections(run: Run) -> bool:
    return run.inputs.get("projections") is not None


def _step_measurement(run: Run):
    m = run.inputs.get("measurement")
    if m is None:
        run.report(0.0, "simulating the tilt series")
        tree = simulate(run.settings, progress=run.progress, cancel=run.cancel)
        run.inputs["_truth"] = tree["truth"].to_dataset()
        return tree["measurement"].to_dataset()
    run.report(0.0, "checking the tilt series")
    return check_mspt_measurement(m)


def _step_truth(run: Run):
    t = run.inputs.get("_truth")
    if t is None:
        t = run.inputs.get("truth")
        if isinstance(t, xr.DataTree):
            t = t.to_dataset()
    return t


def _step_ptychography(run: Run):
    s = run.settings
    return reconstruct_tilts(run["measurement"], s, progress=run.progress, cancel=run.cancel)


def _step_projections(run: Run):
    p = run.inputs.get("projections")
    if p is not None:
        return check_projections(p)
    return projections_from(run["ptychography"])


def _step_denoised(run: Run):
    return denoise(run["projections"], run.settings, progress=run.progress, cancel=run.cancel)


def _step_tomography(run: Run):
    p = run["denoised"]["denoised"]
    p.attrs.update(run["projections"].attrs)
    out = tomography(p, run.settings, progress=run.progress, cancel=run.cancel, raw=run["projections"])
    run.check_cancel()
    # the unfiltered projections, aligned with the found shifts, for the FSC of halves
    from ..tomo import shift_image

    P = run["projections"]
    dx = float(np.diff(P["x"].values[:2])[0])
    corr = -np.stack([out["alignment"]["shift_y"].values, out["alignment"]["shift_x"].values], 1) / dx
    out["aligned_raw"] = P.copy(data=np.real(np.asarray(shift_image(np.asarray(P.values, np.float64), corr)))
                                .astype(np.float32))
    run.check_cancel()
    return out


def _step_resolution(run: Run):
    t = run["tomography"]
    s = run.settings
    m = run.get("measurement")
    semi = m.attrs.get("convergence_semiangle") if m is not None else None
    energy = (m.attrs.get("energy_eV") if m is not None else None) or t["volume"].attrs.get("energy_eV")
    if semi is None:  # projections reconstructed elsewhere: optics only if their attrs give them
        semi = run["projections"].attrs.get("convergence_semiangle")
    return resolution(t["volume"], aligned=t["aligned_raw"], ptycho=run.get("ptychography"), fsc=bool(s.fsc),
                      energy_eV=energy, semiangle=semi, single_tilt=run.get("single_tilt"))


def _step_atoms(run: Run):
    t = run["tomography"]
    return find_atoms(t["volume"], run.settings)


def _truth_scores(settings, truth: xr.Dataset, results: dict) -> dict:
    """Alignment errors against the truth, gauge-free (never fed back into the run).

    A global rotation of the volume cannot be seen in the data: it changes every tilt's
    lab-frame Euler angles by the pattern :func:`ptynb.tomo.rotation_gauge` (to first order).
    ``angle_error_rms_deg_vs_truth`` (and per axis ``angle_error_rms_deg_{rx,ry,rz}_vs_truth``,
    degrees) is therefore the rms of the estimate minus the truth after the least-squares fit of
    those 3 patterns is removed (the error up to the volume's global orientation);
    ``angle_error_rms_deg_raw_vs_truth`` (and ``angle_error_rms_deg_raw_{rx,ry,rz}_vs_truth``)
    is the plain difference. The shift error likewise has the rigid translations
    removed. ``injected_angle_rms_deg`` is the truth with the same patterns removed.
    """
    from ..tomo import remove_null_space, rotation_gauge

    out = {}
    t = results.get("tomography")
    if t is None or truth is None:
        return out
    al = t["alignment"]
    ang = al["angle"].values
    tr = truth.sel(angle=ang, method="nearest")
    dx = float(np.diff(t["volume"]["x"].values[:2])[0])
    S_t = np.stack([tr["shift_y"].values, tr["shift_x"].values], 1) / dx
    S_e = np.stack([al["shift_y"].values, al["shift_x"].values], 1) / dx
    dS = remove_null_space(S_e - S_t, ang)
    out["shift_error_rms_px_vs_truth"] = float(np.sqrt(np.mean(np.sum(dS ** 2, 1))))
    E_t = np.stack([tr[k].values for k in ("rx", "ry", "rz")], 1)
    E_e = np.stack([al[k].values for k in ("rx", "ry", "rz")], 1)
    dE = steps.gauge_free(E_e - E_t, rotation_gauge(ang))
    out["angle_error_rms_deg_vs_truth"] = float(np.sqrt(np.mean(dE ** 2)))
    out["angle_error_rms_deg_raw_vs_truth"] = float(np.sqrt(np.mean((E_e - E_t) ** 2)))
    for i, k in enumerate(("rx", "ry", "rz")):
        out[f"angle_error_rms_deg_{k}_vs_truth"] = float(np.sqrt(np.mean(dE[:, i] ** 2)))
        out[f"angle_error_rms_deg_raw_{k}_vs_truth"] = float(np.sqrt(np.mean((E_e[:, i] - E_t[:, i]) ** 2)))
    out["injected_shift_rms_px"] = float(np.sqrt(np.mean(np.sum(remove_null_space(S_t, ang) ** 2, 1))))
    out["injected_angle_rms_deg"] = float(np.sqrt(np.mean(steps.gauge_free(E_t, rotation_gauge(ang)) ** 2)))
    a = results.get("atoms")
    if a is not None and "atom_positions" in truth:
        co = truth["atom_positions"].values[truth["atom_numbers"].values == 27]
        pk = a["peaks"].values
        r = float(settings.match_radius) * float(a.attrs["co_co_distance"])
        f, _, d = steps.match_sites(co, pk, 2 * r)
        if f.any():  # the volume's frame may differ from the truth's by the gauge: remove the mean offset
            co = co + np.nanmedian(d[f], axis=0)
        f, _, d = steps.match_sites(co, pk, r)
        out["atoms_found_fraction_vs_truth"] = float(f.mean()) if f.size else float("nan")
        out["atoms_mean_displacement_vs_truth"] = float(np.mean(np.linalg.norm(d[f], axis=1))) if f.any() else float("nan")
    return out


def summarize(settings: Settings, results: dict) -> dict:
    """Root attrs: resolutions (m), axial ratio, atoms found, alignment loss, truth scores."""
    out = {}
    r = results.get("resolution")
    if r is not None:
        for k in ("resolution_x", "resolution_y", "resolution_z", "resolution_along_wedge",
                  "resolution_across_wedge", "resolution_fsc", "axial_resolution_single_tilt_assumed",
                  "axial_ratio", "axial_ratio_assumed", "depth_of_field_assumed", "axial_fwhm_mspt",
                  "lateral_fwhm_mspt", "axial_fwhm_single_tilt", "axial_ratio_is_lower_bound"):
            if k in r.attrs:
                out[k] = float(r.attrs[k])
    a = results.get("atoms")
    if a is not None:
        for k in ("n_sites", "n_found", "n_missing", "found_fraction", "mean_displacement",
                  "mean_displacement_x", "mean_displacement_y", "mean_displacement_z"):
            out["atoms_" + k] = a.attrs[k]
    t = results.get("tomography")
    if t is not None:
        out["alignment_final_loss"] = float(t["alignment"].attrs["final_loss"])
        ala = t["alignment"].attrs
        out["alignment_pose_model"] = str(ala.get("pose_model", "voxels"))
        for k in ("atomic_status", "atomic_n_atoms", "atomic_misfit_relative", "atomic_residual_rms"):
            if k in ala:
                out["alignment_" + k] = ala[k]
    d = results.get("denoised")
    if d is not None:
        out["denoiser"] = d.attrs["denoiser"]
    truth = results.get("truth")
    if truth is not None:
        out.update(_truth_scores(settings, truth, results))
    return out


def _node_volume(run: Run):
    return run["tomography"]["volume"]


def _node_alignment(run: Run):
    return run["tomography"]["alignment"]


def _node_atom_model(run: Run):
    m = run["tomography"]["atom_model"]
    if m is None:  # the fit was rejected or cancelled: the node says so, with no atoms
        al = run["tomography"]["alignment"].attrs
        return xr.Dataset(attrs={"status": al.get("atomic_status", "not run"),
                                 "reason": al.get("atomic_reason", "")})
    return m.assign_attrs(status="complete")


WORKFLOW = Workflow(
    name="mspt",
    title="Multislice electron ptychographic tomography (MSPT)",
    description="A 4D-STEM tilt series of a Co3O4 nanocube: multislice ptychography per tilt, summed-slice "
                "phase projections, BM3D + Fourier-sparsity denoising, joint tomography with rigid alignment, "
                "directional resolution and the spinel lattice registered to the volume.",
    settings=Settings,
    steps=(
        Step("measurement", _step_measurement, "simulating the tilt series", weight=10,
             when=lambda r: not _has_projections(r)),
        Step("truth", _step_truth, "ground truth", weight=0.01,
             when=lambda r: r.inputs.get("truth") is not None or
             (not _has_projections(r) and r.inputs.get("measurement") is None)),
        Step("ptychography", _step_ptychography, "multislice ptychography per tilt", weight=50,
             when=lambda r: not _has_projections(r)),
        Step("single_tilt", lambda r: single_tilt_stack(r["measurement"], r.settings, progress=r.progress),
             "single-tilt multislice (thin slices) for comparison", weight=5,
             when=lambda r: not _has_projections(r) and bool(r.settings.single_tilt)),
        Step("projections", _step_projections, "summed-slice phase projections", weight=1),
        Step("denoised", _step_denoised, "denoising (BM3D + Fourier sparsity)", weight=5),
        Step("tomography", _step_tomography, "joint tomography and alignment", weight=30, node=False),
        Step("volume", _node_volume, "volume", weight=0.01),
        Step("alignment", _node_alignment, "alignment", weight=0.01),
        Step("atom_model", _node_atom_model, "atomic model of the pose refinement", weight=0.01,
             when=lambda r: bool(r.settings.atomic_refinement)),
        Step("resolution", _step_resolution, "resolution", weight=3),
        Step("atoms", _step_atoms, "atoms and lattice", weight=3, when=lambda r: bool(r.settings.atoms)),
    ),
    summarize=summarize,
    check_measurement=check_mspt_measurement,
    views="ptynb.viz.mspt:views",
    app="ptynb.apps.mspt:app",
    summary_keys=(("resolution_across_wedge", "resolution across the missing wedge", 1e10, "A"),
                  ("resolution_along_wedge", "resolution along the missing wedge", 1e10, "A"),
                  ("axial_ratio", "axial resolution gain over single-tilt multislice", 1.0, "x"),
                  ("atoms_found_fraction", "Co sites found", 100.0, "%"),
                  ("atoms_mean_displacement", "mean displacement of found Co", 1e10, "A")),
    inputs=("projections", "truth"),
)


def assemble(settings: Settings, *, status: str = "complete", **results) -> xr.DataTree:
    """The result tree from step results computed one by one (same code as :func:`run`)."""
    return WORKFLOW.assemble(settings, status=status, **results)


def run(settings: Settings | None = None, measurement: xr.Dataset | None = None, *,
        projections: xr.DataArray | None = None, progress: bool = True,
        report: Callable[[float, str], None] | None = None,
        cancel: threading.Event | None = None, truth: xr.Dataset | None = None) -> xr.DataTree:
    """Run MSPT end to end and return an :class:`xarray.DataTree`.

    Parameters
    ----------
    settings : Settings, optional
        CI-small defaults.
    measurement : Dataset, optional
        A 4D-STEM tilt series (:func:`check_mspt_measurement`); default: :func:`simulate`.
    projections : DataArray (angle, y, x), optional
        Phase projections (rad; angle in degrees, y/x in metres) reconstructed elsewhere:
        skips the simulation and the per-tilt ptychography (denoising stays a setting).
    progress, report, cancel
        tqdm bars; ``report(fraction, message)``; a ``threading.Event`` that stops the run at
        the next tilt/step (the tree then has ``status == "cancelled"`` and every finished step).
    truth : Dataset, optional
        Ground truth of simulated projections (:func:`simulate_projections`): stored in the
        ``truth`` node and used only for the ``*_vs_truth`` scores of the summary.

    Returns
    -------
    DataTree with nodes ``measurement`` and ``truth`` (simulated runs), ``ptychography``
    (per-tilt phases and probes), ``projections`` (angle, y, x) rad, ``denoised``, ``volume``
    (z, y, x) volts, ``alignment`` (per angle: ``shift_y``, ``shift_x`` m; ``rx``, ``ry``,
    ``rz`` degrees), ``resolution`` (attrs in metres), ``atoms``; root attrs from
    :func:`summarize`.
    """
    kw = {} if projections is None else {"projections": projections}
    if truth is not None:
        kw["truth"] = truth
    return WORKFLOW.run(settings, measurement, progress=progress, report=report, cancel=cancel, **kw)
