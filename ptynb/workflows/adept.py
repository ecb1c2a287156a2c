"""ADePt: deep self-supervised ptycho-laminography of integrated circuits, from few angles.

After Kang, Jiang, Holler, Guizar-Sicairos, Barbastathis et al., Optica (2023): the volume of
an integrated circuit is the output of a deep-image-prior 3D U-Net fed with fixed noise, whose
weights are fitted to the wavelet-high-passed phase projections through the laminographic
forward model, with a depth-dependent total variation; 1/8 and 1/16 of the dense angle set
suffice where filtered backprojection (FBP) on the same angles fails.

Pipeline (each step takes and returns xarray objects; :func:`run` chains them)::

    simulation (IC volume -> dense laminographic projections, noise)  |  projections=P
        |  measurement=ds -> ptychography (LSQ-ML per angle) -> phase (ramp, unwrap, offset)
        -> projections (the sub-sampled angle set | aligned, centre-cropped phases)
        -> reference (FBP of the dense set, simulations)
        -> fbp, sirt (baselines on the same angles) -> adept (DIP training) -> training
        -> metrics (BER, PCC per depth region, with a truth) -> psd (k-space cuts)

The ptychography-per-angle path (:mod:`ptynb.workflows.adept_ptycho`): a far-field X-ray
measurement ``intensity`` (angle, scan, qy, qx) in laminography geometry (the tilt in attrs,
angles in degrees) is reconstructed angle by angle with a few LSQ-ML iterations
(:func:`ptynb.ptycho.reconstruct`, fanned out by :func:`ptynb.parallel.map_blocks`: serially,
on a local dask cluster, or on a given ``client``); the phase of each object has its ramp
removed over the well-illuminated region (unwrapped where it wraps) and the dielectric level
set to zero; projection matching (:func:`ptynb.tomo.align`) removes each angle's sub-pixel
offset; the centre crop to the common field of view gives the projections the rest of the
pipeline reads unchanged. :func:`simulate_measurement` makes such a measurement of the
simulated IC (6.2 keV, tilt 61.108 deg) with its truth kept apart.

Loss of one iteration (``N`` angles of the subset, ``H_n`` ptynb's exact-adjoint Joseph
projector through :func:`ptynb.tomo.torch_ops.project_torch`, ``y_n`` the projections, ``u``
the network output in rad per voxel, ``x = u / dz`` the volume in rad/m)::

    L = 0.5 * mean_n ||H_n x - HPF(y_n)||^2 / mean(HPF(y)^2)
        + tv_weight * mean_z,y,x w(z) |grad(u / output_scale)|

with ``w(z) = 1`` in the coarse layers and ``tv_fine_factor`` (0.01, the paper's ratio
3e-8 / 3e-6) at depths ``z >= fine_depth``. The data term is normalised (relative misfit per
pixel) and the TV is a mean per voxel, so ``tv_weight`` does not depend on the volume size or
the number of angles (the paper sums both; its 3e-6 has no meaning outside its units).

Units and conventions
---------------------
* lengths in metres, photon energy in eV, angles in degrees, phases in radians; volumes are
  the phase per unit length ``k * delta`` (rad/m) of the refractive decrement relative to the
  dielectric, so a projection is the phase shift (rad).
* Geometry (:mod:`ptynb.tomo.geometry`): the sample turns about its own y axis, which is tilted
  from the beam by ``tilt`` (61.108 deg for LamNI); volumes are (z, y, x) in the sample frame,
  z across the IC's layers, centred coordinates.
* The simulated truth (volume, labels, the depth of the fine layers) sits in the ``truth``
  node and is read only by the ``metrics`` step; nothing in the reconstruction sees it.
* The TV boundary ``fine_depth`` comes from :attr:`Settings.fine_depth` or, when None, from the
  top ``fine_fraction`` of the reconstruction grid (a design assumption), never from a truth.
* A measurement is reduced to what a user knows (energy, pixel size, scan positions, detector
  geometry, nominal optics, tilt, angles; :func:`ptynb.workflows.adept_ptycho.check_measurement`)
  before anything reads it.
"""
from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable

import numpy as np
import param
import xarray as xr

from ..control import Cancelled
from ..data import ValidationError
from ._base import Run, Step, Workflow, WorkflowSettings

__all__ = [
    "METHODS",
    "REGIONS",
    "WORKFLOW",
    "Settings",
    "assemble",
    "baselines",
    "check_projections",
    "measured_angles",
    "psd_planes",
    "reconstruct",
    "run",
    "score",
    "simulate",
    "simulate_measurement",
    "subsample",
    "summarize",
    "volume_grid",
]

#: LamNI's angle between rotation axis and beam (degrees)
TILT = 61.108
METHODS = ("reference", "fbp", "sirt", "adept")
REGIONS = ("all", "coarse", "fine")
HC = 12.398419843320026e-7  # h c in eV m


class Settings(WorkflowSettings):
    """All parameters of ADePt (SI units: metres, eV; angles in degrees).

    The defaults are small but meaningful on a CPU (24 x 48 x 48 voxels, 128 dense angles,
    1/16 of them used, minutes); ``ci`` runs in well under a minute; ``paper`` has the
    paper's sizes (a 144 x 160 x 160 volume in a 256^2 detector frame, 2000 dense angles, 125
    used, 1500 iterations), for a GPU.
    """

    groups = {
        "Sample": ["volume_shape", "voxel_size", "fine_fraction", "coarse_pitch", "fine_pitch",
                   "energy_eV", "seed"],
        "Acquisition": ["tilt", "n_angles", "subsample", "noise"],
        "Network": ["width", "learnable_input", "output_scale", "auto_scale"],
        "Loss": ["hpf", "hpf_boost", "tv", "tv_weight", "tv_fine_factor", "fine_depth"],
        "Training": ["iterations", "learning_rate", "lr_step_every", "lr_gamma", "angles_per_iteration",
                     "train_seed", "checkpoint", "resume", "device", "threads"],
        "Baselines": ["sirt_iterations", "reference"],
        "Ptychography": ["ptycho_iterations", "ptycho_parallel", "ptycho_run_dir", "illumination_threshold",
                         "align", "align_iterations", "detector_pixels", "scan_step", "counts_per_pattern",
                         "probe_defocus"],
    }
    presets = {
        "default": {},
        # the whole chain in well under a minute on 2 cores (tests, notebook, app)
        "ci": dict(volume_shape=(16, 32, 32), n_angles=64, iterations=250, width=0.25, sirt_iterations=50),
        # the paper's sizes: a GPU's work
        "paper": dict(volume_shape=(144, 160, 160), n_angles=2000, subsample=16, iterations=1500,
                      width=1.0, learning_rate=2e-4, lr_step_every=1000, sirt_iterations=200),
    }
    units = {"voxel_size": "m", "coarse_pitch": "px", "fine_pitch": "px", "energy_eV": "eV", "tilt": "deg",
             "fine_depth": "m", "output_scale": "rad/voxel", "detector_pixels": "px", "scan_step": "m",
             "counts_per_pattern": "counts", "probe_defocus": "m"}

    # --- sample
    volume_shape = param.NumericTuple((24, 48, 48), length=3,
                                      doc="Simulated volume (nz, ny, nx) in voxels; z across the layers")
    voxel_size = param.Number(27.2e-9, bounds=(1e-10, 1e-5), doc="Voxel size (m); 27.2 nm in the paper")
    fine_fraction = param.Number(0.35, bounds=(0.0, 0.8),
                                 doc="Fraction of the depth (top layers) with the finer wiring")
    coarse_pitch = param.Integer(8, bounds=(3, 64), doc="Routing pitch of the coarse layers (voxels)")
    fine_pitch = param.Integer(4, bounds=(2, 64), doc="Routing pitch of the fine layers (voxels)")
    energy_eV = param.Number(6200.0, bounds=(100.0, 1e6), doc="Photon energy (eV); 6.2 keV in the paper")
    seed = param.Integer(0, bounds=(0, None), doc="Seed of the phantom and the noise")
    # --- acquisition
    tilt = param.Number(TILT, bounds=(1.0, 90.0), doc="Angle between the rotation axis and the beam (degrees)")
    n_angles = param.Integer(128, bounds=(2, 20000), doc="Dense angle set: this many angles over 360 degrees")
    subsample = param.Integer(16, bounds=(1, 1000), doc="Use every n-th angle of the dense set (8, 16 in the paper)")
    noise = param.Number(0.02, bounds=(0.0, None), doc="Gaussian noise on the projections, times their rms")
    # --- network (ptynb.learn.dip)
    width = param.Number(0.25, bounds=(0.01, 4.0), doc="Channel width factor of the U-Net (1: 32,64,96,96,96)")
    learnable_input = param.Boolean(False, doc="Train the noise input of the network with its weights")
    output_scale = param.Number(0.03, bounds=(1e-6, None), doc="Network output range +-s (rad per voxel)")
    auto_scale = param.Boolean(True, doc=(
        "Scale the data so that the 99.9th percentile of a SIRT reconstruction's phase per voxel is 0.8 of "
        "the output range (undone on the result): any input works without tuning output_scale"))
    # --- loss
    hpf = param.Boolean(True, doc="Wavelet high-pass (db8, 4 levels, detail boosting) on the projections")
    hpf_boost = param.Number(2.0, bounds=(0.0, 100.0), doc="Factor on the wavelet details (energy kept)")
    tv = param.Boolean(True, doc="Depth-dependent total variation in the loss")
    tv_weight = param.Number(1e-3, bounds=(0.0, None), doc="TV weight in the coarse layers (see module doc)")
    tv_fine_factor = param.Number(0.01, bounds=(0.0, 1.0),
                                  doc="TV weight of the fine layers relative to tv_weight (paper: 0.01)")
    fine_depth = param.Number(None, allow_None=True,
                              doc="Depth z (m) above which the TV is weak (assumed, from the chip's design); "
                                  "None: the top fine_fraction of the volume grid")
    # --- training (ptynb.learn.training)
    iterations = param.Integer(400, bounds=(1, 100000), doc="Training iterations (1500 in the paper)")
    learning_rate = param.Number(2e-3, bounds=(0.0, 1.0), inclusive_bounds=(False, True),
                                 doc="Adam's initial learning rate (2e-4 in the paper, for 1500 iterations)")
    lr_step_every = param.Integer(None, allow_None=True, bounds=(1, None),
                                  doc="Multiply the learning rate by lr_gamma every this many iterations "
                                      "(None: 2/3 of the iterations, as the paper's 1000 of 1500)")
    lr_gamma = param.Number(0.5, bounds=(0.0, 1.0), inclusive_bounds=(False, True), doc="Step-decay factor")
    angles_per_iteration = param.Integer(0, bounds=(0, None),
                                         doc="Angles drawn per iteration (0: all of the sub-sampled set)")
    train_seed = param.Integer(0, bounds=(0, None), doc="Seed of the network, its noise input and the sampling")
    checkpoint = param.String(None, allow_None=True,
                              doc="Checkpoint file of the training (a cancelled run keeps it; resume from it)")
    resume = param.Boolean(True, doc="Continue from an existing checkpoint (False: start afresh)")
    device = param.Selector(default="auto", objects=["auto", "cpu", "cuda"], doc="Where to train")
    threads = param.Integer(1, bounds=(0, None), doc=(
        "torch CPU threads while training (0: torch's default). One thread is fastest for small volumes, "
        "and many times faster than two on a loaded 2-core machine"))
    # --- baselines
    sirt_iterations = param.Integer(100, bounds=(1, 100000), doc="SIRT iterations (positivity) on the same angles")
    reference = param.Boolean(True, doc="FBP of the dense angle set as reference (simulations)")
    # --- ptychography per angle (measurements; ptynb.workflows.adept_ptycho)
    ptycho_iterations = param.Integer(30, bounds=(1, 100000), doc="LSQ-ML iterations per angle (measurements)")
    ptycho_parallel = param.Integer(0, bounds=(0, None), doc=(
        "Angles on a local dask cluster of this many worker processes (0: serially; a client= given to run() "
        "wins)"))
    ptycho_run_dir = param.String(None, allow_None=True, doc=(
        "Folder of per-angle results (angle_<deg>.h5, fingerprinted): a stopped run resumes there"))
    illumination_threshold = param.Number(0.3, bounds=(0.01, 0.99), doc=(
        "Well-illuminated region: summed probe intensity above this fraction of its maximum (ramp fit, "
        "field of view)"))
    align = param.Boolean(True, doc=(
        "Projection-matching alignment of the per-angle phases (each angle's object sits at an arbitrary "
        "sub-pixel offset)"))
    align_iterations = param.Integer(10, bounds=(1, 1000), doc="Projection-matching rounds")
    detector_pixels = param.Integer(16, bounds=(8, 4096), doc="Simulated measurement: detector side (pixels)")
    scan_step = param.Number(None, allow_None=True, bounds=(0.0, None), inclusive_bounds=(False, True), doc=(
        "Simulated measurement: raster step (m); None: a fifth of the probe window"))
    counts_per_pattern = param.Number(1e6, bounds=(1.0, None), doc="Simulated measurement: photons per pattern")
    probe_defocus = param.Number(60e-6, bounds=(0.0, None), doc=(
        "Simulated measurement: sample distance downstream of the zone plate's focus (m); sets the spot"))

    def _check(self):
        if min(int(n) for n in self.volume_shape) < 4:
            raise ValidationError("volume_shape", f"needs at least 4 voxels per axis, got {self.volume_shape}")


# ============================================================================ simulation
def _ic(shape, dx, pitch, n_layers, seed, energy):
    from ..physics.phantoms import ic_volume

    lab = ic_volume(shape, dx, n_layers=n_layers, pitch=pitch * dx, seed=seed)
    dec = ic_volume(shape, dx, n_layers=n_layers, pitch=pitch * dx, seed=seed, energy_eV=energy)
    return lab.values, dec.values.real.astype(np.float64)


def simulate(settings: Settings | None = None) -> xr.DataTree:
    """Simulate an IC volume and its dense laminographic phase projections.

    The volume stacks two :func:`ptynb.physics.phantoms.ic_volume` phantoms along z (Cu wires
    and vias in SiO2): coarse wiring (``coarse_pitch``) below and finer wiring
    (``fine_pitch``) in the top ``fine_fraction`` of the depth, like the finer layers of a real
    IC. The contrast is the phase per unit length ``k (delta - delta_SiO2)`` at ``energy_eV``
    (rad/m). ``n_angles`` projections over 360 degrees at ``tilt`` (:func:`ptynb.tomo.project`,
    Joseph, detector large enough for every view) get Gaussian noise of ``noise`` times their
    rms.

    Returns
    -------
    DataTree
        ``projections``: DataArray (angle, y, x) rad, angle in degrees, y/x in metres; attrs
        the geometry and volume grid as :func:`ptynb.tomo.project` writes them.
        ``truth``: Dataset with ``volume`` (z, y, x) rad/m, ``labels`` (z, y, x) uint8 (0
        dielectric, 1 wire, 2 via) and attrs ``fine_depth`` (m, first z of the fine layers).
    """
    from .. import tomo

    s = Settings() if settings is None else settings
    nz, ny, nx = (int(n) for n in s.volume_shape)
    dx = float(s.voxel_size)
    nzf = int(round(nz * float(s.fine_fraction)))
    nzc = nz - nzf
    energy = float(s.energy_eV)
    lab_c, dec_c = _ic((nzc, ny, nx), dx, int(s.coarse_pitch), max(1, round(nzc / 5)), int(s.seed), energy)
    parts_l, parts_d = [lab_c], [dec_c]
    if nzf:
        lab_f, dec_f = _ic((nzf, ny, nx), dx, int(s.fine_pitch), max(1, round(nzf / 5)), int(s.seed) + 1, energy)
        parts_l.append(lab_f)
        parts_d.append(dec_f)
    labels = np.concatenate(parts_l).astype(np.uint8)
    dec = np.concatenate(parts_d)
    background = float(np.median(dec[labels == 0])) if np.any(labels == 0) else 0.0
    k = 2 * math.pi * energy / HC
    vol = (k * np.clip(dec - background, 0, None)).astype(np.float32)
    coords = {d: (np.arange(n) - n // 2) * dx for d, n in zip("zyx", (nz, ny, nx))}
    fine_depth = float(coords["z"][nzc]) if nzf else float(coords["z"][-1] + dx)
    truth = xr.Dataset({"volume": (("z", "y", "x"), vol), "labels": (("z", "y", "x"), labels)},
                       coords=coords, attrs={"kind": "truth", "fine_depth": fine_depth, "energy_eV": energy,
                                             "units": "rad/m"})
    truth["volume"].attrs.update(units="rad/m", long_name="phase per unit length k (delta - delta_SiO2)")
    ang = np.arange(int(s.n_angles)) * (360.0 / int(s.n_angles))
    P = tomo.project(truth["volume"], ang, geometry="laminography", tilt=float(s.tilt))
    if s.noise > 0:
        rng = np.random.default_rng(int(s.seed))
        rms = float(np.sqrt(np.mean(P.values.astype(np.float64) ** 2)))
        P = P.copy(data=(P.values + float(s.noise) * rms * rng.standard_normal(P.shape)).astype(np.float32))
    P.name = "projections"
    P.attrs.update(units="rad", energy_eV=energy, noise=float(s.noise))
    return xr.DataTree(children={"projections": xr.DataTree(dataset=P.to_dataset()),
                                 "truth": xr.DataTree(dataset=truth)})


def measured_angles(settings: Settings | None = None) -> np.ndarray:
    """The angles (degrees) of the sub-sampled set: every ``subsample``-th of ``n_angles``."""
    s = Settings() if settings is None else settings
    return (np.arange(int(s.n_angles)) * (360.0 / int(s.n_angles)))[::int(s.subsample)]


def simulate_measurement(settings: Settings | None = None, *, progress: bool = False) -> xr.DataTree:
    """Simulate the IC of :func:`simulate` measured by far-field X-ray ptychography at every
    angle of the sub-sampled set (laminography at ``tilt``, ``energy_eV``).

    :func:`ptynb.workflows.adept_ptycho.simulate_measurement`: a zone-plate probe
    (``detector_pixels`` window, ``probe_defocus``), a jittered raster (``scan_step``) over the
    detector of :func:`ptynb.tomo.project` for ``volume_shape`` plus a margin,
    ``counts_per_pattern`` photons with Poisson noise.

    Returns
    -------
    DataTree
        ``measurement``: Dataset ``intensity`` (angle, scan, qy, qx) counts, ``scan_y``/``scan_x``
        (m), attrs only what a user knows (``energy_eV``, ``pixel_size``, nominal optics,
        ``lamino_tilt``, ``geometry``): pass it to :func:`run` as ``measurement``.
        ``truth``: as in :func:`simulate` (``volume`` rad/m, ``labels``, ``fine_depth``): pass
        it as ``truth`` (read by the metrics only), with ``volume_shape=settings.volume_shape``.
        ``truth_ptychography``: ``true_object`` (angle, y, x), ``true_probe``.
    """
    from . import adept_ptycho

    s = Settings() if settings is None else settings
    truth = simulate(s)["truth"].to_dataset()
    meas, pt = adept_ptycho.simulate_measurement(
        truth["volume"], measured_angles(s), tilt=float(s.tilt), energy_eV=float(s.energy_eV),
        detector_pixels=int(s.detector_pixels), scan_step=s.scan_step, counts_per_pattern=float(s.counts_per_pattern),
        probe_defocus=float(s.probe_defocus), seed=int(s.seed), progress=progress)
    return xr.DataTree(children={"measurement": xr.DataTree(dataset=meas), "truth": xr.DataTree(dataset=truth),
                                 "truth_ptychography": xr.DataTree(dataset=pt)})


# ============================================================================ checks
def _op_of(projections, volume_shape=None):
    from ..tomo.projector import projector_for

    return projector_for(projections, volume_shape=volume_shape)


def _box_fits(op, tol_px: float = 0.5) -> float:
    """Largest distance (detector pixels) by which the volume's box leaves the detector."""
    vs = np.asarray(op.volume_shape, float)
    lo = op.vol_origin - op.voxel_size / 2
    hi = op.vol_origin + (vs - 0.5) * op.voxel_size
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    lab = np.einsum("aij,cj->aci", op.geometry.rotations(), corners)[..., 1:]
    dlo = op.det_origin - op.pixel_size / 2
    dhi = op.det_origin + (np.asarray(op.detector_shape) - 0.5) * op.pixel_size
    over = np.maximum(dlo - lab, lab - dhi) / op.pixel_size
    return float(over.max())


def volume_grid(projections: xr.DataArray, volume_shape=None):
    """The reconstruction grid of laminographic projections, checked against the detector.

    Parameters
    ----------
    projections : DataArray (angle, y, x)
        With the geometry in attrs (``tilt``) and, if :func:`ptynb.tomo.project` made them, the
        volume grid (``volume_shape``, ``voxel_size``, ``volume_origin``), as
        :func:`ptynb.tomo.fbp` reads it.
    volume_shape : (nz, ny, nx), optional
        Override. Without one and without attrs: the largest centred box of the detector's
        pixel whose every view stays on the detector, with depth half its width.

    Returns
    -------
    (nz, ny, nx) tuple

    Raises
    ------
    ValidationError ("volume_shape")
        When the box of the grid leaves the detector in some view by more than half a pixel
        (its edges would be reconstructed from missing data).
    """
    from ..tomo.projector import Projector

    if "geometry" not in projections.attrs:
        projections = projections.assign_attrs(geometry="laminography")
    if volume_shape is None and "volume_shape" not in projections.attrs:
        op = _op_of(projections)
        nu = projections.sizes["x"]
        for n in range(nu, 3, -1):
            shape = (max(4, n // 2), n, n)
            cand = Projector(op.geometry, shape, op.detector_shape, op.voxel_size, op.pixel_size, None,
                             op.det_origin)
            if _box_fits(cand) <= 0.5:
                return shape
        raise ValidationError("projections", "no volume fits on the detector; pass volume_shape")
    op = _op_of(projections, volume_shape)
    over = _box_fits(op)
    if over > 0.5:
        raise ValidationError("volume_shape", f"{tuple(op.volume_shape)} voxels of {op.voxel_size[2]:.3g} m do not "
                              f"fit the detector {tuple(op.detector_shape)}: the box leaves it by {over:.1f} px "
                              f"in some view at tilt {op.geometry.tilt:g} deg; use a smaller volume or a larger "
                              "detector")
    return tuple(int(n) for n in op.volume_shape)


def check_projections(projections, volume_shape=None) -> xr.DataArray:
    """Validate laminographic phase projections for ADePt; raise specific ValidationErrors.

    Parameters
    ----------
    projections : DataArray (angle, y, x)
        Real phases (rad); ``angle`` in degrees (360-degree scan), y/x in metres; attrs
        ``tilt`` (degrees between rotation axis and beam) and ``geometry="laminography"``
        (assumed when missing).
    volume_shape : (nz, ny, nx), optional
        Checked to fit the detector (see :func:`volume_grid`).

    Returns
    -------
    DataArray (angle, y, x), float32, ``geometry`` attr set.

    Raises
    ------
    ValidationError
        ``projections``: not a DataArray, wrong dims, complex, NaN/inf; ``tilt``: missing or
        out of (0, 90]; ``geometry``: not laminography; ``angle``: missing, repeated, or all
        values below 2 pi in magnitude (radians given for degrees); ``y``/``x``: missing or
        irregular coordinates; ``volume_shape``: a volume that does not fit the detector.
    """
    if not isinstance(projections, xr.DataArray):
        raise ValidationError("projections", f"must be a DataArray (angle, y, x), got {type(projections).__name__}")
    if tuple(projections.dims) != ("angle", "y", "x"):
        raise ValidationError("projections", f"has dims {projections.dims}; expected ('angle', 'y', 'x')")
    if np.iscomplexobj(projections.values):
        raise ValidationError("projections", "are complex; give the phase (rad)")
    bad = int(np.count_nonzero(~np.isfinite(projections.values)))
    if bad:
        k = int(np.argmax(~np.isfinite(projections.values).all(axis=(1, 2))))
        raise ValidationError("projections", f"contain {bad} NaN/inf values (first at angle index {k}); "
                              "mask or interpolate them before the reconstruction")
    a = projections.attrs
    geom = str(a.get("geometry", "laminography"))
    if geom != "laminography":
        raise ValidationError("geometry", f"{geom!r}: ADePt needs laminography projections (geometry="
                              "'laminography' and a tilt in the attrs)")
    if "tilt" not in a or a["tilt"] is None:
        raise ValidationError("tilt", "missing from the projections' attrs: give the angle between the rotation "
                              f"axis and the beam in degrees (attrs['tilt'], e.g. {TILT} for LamNI)")
    tilt = float(a["tilt"])
    if not (0.0 < tilt <= 90.0) or not np.isfinite(tilt):
        raise ValidationError("tilt", f"{tilt!r} deg: must be in (0, 90]")
    from .adept_ptycho import check_angles

    check_angles(projections)
    for d in ("y", "x"):
        if d not in projections.coords:
            raise ValidationError(d, "coordinate missing (metres)")
        c = np.asarray(projections[d].values, float)
        st = np.diff(c)
        if c.size < 8 or not np.allclose(st, st[0], rtol=1e-4) or st[0] <= 0:
            raise ValidationError(d, "coordinate must have >= 8 increasing, regularly spaced values (m)")
    out = projections.astype(np.float32)
    out.attrs = dict(a, geometry="laminography", tilt=tilt)
    volume_grid(out, volume_shape)
    return out


def _grid_kw(projections: xr.DataArray, volume_shape=None):
    """``volume_shape`` to hand to tomo's functions: None when the attrs' grid is used as is."""
    if volume_shape is None and "volume_shape" in projections.attrs:
        return None
    return volume_grid(projections, volume_shape)


def subsample(projections: xr.DataArray, step: int) -> xr.DataArray:
    """Every ``step``-th angle of a dense set (angle, y, x), attrs kept (``subsample`` added)."""
    out = projections.isel(angle=slice(None, None, int(step)))
    out.attrs = dict(projections.attrs, subsample=int(step))
    return out


# ============================================================================ baselines
def baselines(projections: xr.DataArray, settings: Settings | None = None, *, volume_shape=None,
              progress: bool = False, cancel=None) -> dict:
    """FBP and SIRT (positivity) of the same projections on the same grid.

    Returns
    -------
    dict with ``fbp`` and ``sirt``: DataArrays (z, y, x) in rad/m (metres coords).
    """
    from .. import tomo

    s = Settings() if settings is None else settings
    volume_shape = _grid_kw(projections, volume_shape)
    f = tomo.fbp(projections, volume_shape=volume_shape)
    si = tomo.sirt(projections, int(s.sirt_iterations), positivity=True, progress=progress,
                   volume_shape=volume_shape, cancel=cancel)
    return {"fbp": f.rename("fbp"), "sirt": si.rename("sirt")}


# ============================================================================ ADePt
def _fingerprint(projections: xr.DataArray, shape) -> str:
    h = hashlib.sha256(np.ascontiguousarray(projections.values, dtype=np.float32).tobytes())
    h.update(np.asarray(projections["angle"].values, np.float64).tobytes())
    h.update(repr((tuple(shape), float(projections.attrs.get("tilt", 0)))).encode())
    return h.hexdigest()[:16]


def _fine_depth(s: Settings, z) -> float:
    """Where the TV weight drops (m): the setting, else the top ``fine_fraction`` of ``z``
    (a design assumption; never read from a simulation's truth)."""
    if s.fine_depth is not None:
        return float(s.fine_depth)
    z = np.asarray(z, float)
    return float(z[int(round(len(z) * (1 - float(s.fine_fraction))))]) if s.fine_fraction > 0 else float(z[-1]) + 1


def reconstruct(projections: xr.DataArray, settings: Settings | None = None, *, volume_shape=None,
                scale_volume: xr.DataArray | None = None, fine_depth: float | None = None, progress: bool = False,
                report=None, cancel=None, callback=None, callback_every: int = 10):
    """ADePt: fit a deep-image-prior U-Net to the (high-passed) projections.

    Parameters
    ----------
    projections : DataArray (angle, y, x)
        Laminographic phase projections (rad), checked by :func:`check_projections`.
    settings : Settings, optional
    volume_shape : (nz, ny, nx), optional
        Reconstruction grid (default: from the projections' attrs, :func:`volume_grid`).
    scale_volume : DataArray (z, y, x), optional
        A baseline reconstruction of the same projections (rad/m; SIRT with positivity: FBP from
        few angles overshoots) for ``auto_scale`` (a 30-iteration SIRT is computed if missing).
    fine_depth : float, optional
        Depth z (m) where the TV weight drops (default :attr:`Settings.fine_depth`, else the
        top ``fine_fraction`` of the grid).
    progress, report, cancel
        tqdm bar; ``report(fraction, message)``; a ``threading.Event``: the training stops
        after the current iteration and writes its checkpoint.
    callback : callable(volume, history, iteration), optional
        Live view: ``volume`` the current estimate (z, y, x) numpy in rad/m, ``history`` the
        dict of loss arrays so far, every ``callback_every`` iterations.

    Returns
    -------
    (volume, training, status)
        ``volume``: DataArray (z, y, x) rad/m (contrast-boosted by the HPF, so not quantitative:
        compare by correlation / binarisation); ``training``: Dataset over ``iteration`` with
        ``loss``, ``data``, ``tv``, ``lr``; ``status``: "complete" or "cancelled".
    """
    import torch

    from ..learn.dip import DIPOptions, build_dip
    from ..learn.filters import wavelet_highpass
    from ..learn.training import TrainOptions, train
    from ..learn.tv import depth_tv, depth_weights
    from ..tomo.torch_ops import project_torch

    s = Settings() if settings is None else settings
    P = check_projections(projections, volume_shape)
    shape = volume_grid(P, volume_shape)
    grid_kw = _grid_kw(P, volume_shape)
    op = _op_of(P, grid_kw)
    dz = float(op.voxel_size[0])
    z = op.vol_origin[0] + np.arange(shape[0]) * dz
    y = P.values.astype(np.float32)
    scale = 1.0
    if s.auto_scale:
        if scale_volume is None:
            from .. import tomo

            scale_volume = tomo.sirt(P, 30, positivity=True, progress=False, volume_shape=grid_kw)
        q = float(np.percentile(np.abs(np.asarray(scale_volume.values)), 99.9)) * dz
        if q > 0:
            scale = 0.8 * float(s.output_scale) / q
    y = y * np.float32(scale)
    if s.hpf:
        y = wavelet_highpass(y, boost=float(s.hpf_boost))
    Y = torch.as_tensor(np.ascontiguousarray(y))
    norm = float(np.mean(y.astype(np.float64) ** 2)) or 1.0
    fd = _fine_depth(s, z) if fine_depth is None else float(fine_depth)
    w = depth_weights(z, fd, 1.0, float(s.tv_fine_factor))
    Wt = torch.as_tensor(w)
    n_ang = P.sizes["angle"]
    k = int(s.angles_per_iteration) or n_ang
    k = min(k, n_ang)
    opts = TrainOptions(iterations=int(s.iterations), learning_rate=float(s.learning_rate), schedule="step",
                        step_every=int(s.lr_step_every or max(1, round(2 * int(s.iterations) / 3))),
                        step_gamma=float(s.lr_gamma), seed=int(s.train_seed), device=s.device,
                        checkpoint_every=max(1, min(50, int(s.iterations) // 4 or 1)))
    model = build_dip(shape, DIPOptions(width=float(s.width), learnable_input=bool(s.learnable_input),
                                        output_scale=float(s.output_scale)), seed=int(s.train_seed))
    out_scale = float(s.output_scale)
    use_tv = bool(s.tv) and float(s.tv_weight) > 0

    def loss_fn(m, ctx):
        u = m()
        x = (u / dz).to("cpu") if u.device.type != "cpu" else u / dz
        if k < n_ang:
            idx = np.sort(ctx.rng.choice(n_ang, k, replace=False))
            r = project_torch(x, op.subset(idx)) - Y[torch.as_tensor(idx)]
        else:
            r = project_torch(x, op) - Y
        data = 0.5 * (r * r).mean() / norm
        if use_tv:
            tvv = depth_tv(u / out_scale, Wt.to(u.device))
            loss = data.to(u.device) + float(s.tv_weight) * tvv
        else:
            tvv = torch.zeros(())
            loss = data
        return loss, {"data": float(data.detach()), "tv": float(tvv.detach())}

    cb = None
    if callback is not None:
        def cb(m, ctx, hist):
            with torch.no_grad():
                v = m().detach().cpu().numpy() / dz / scale
            callback(v, hist, ctx.iteration)

    threads_before = torch.get_num_threads()
    if int(s.threads) > 0:
        torch.set_num_threads(int(s.threads))
    try:
        res = train(model, loss_fn, opts, checkpoint=s.checkpoint, resume=bool(s.resume),
                    fingerprint={"data": _fingerprint(P, shape), "scale": scale, "hpf": bool(s.hpf),
                                 "boost": float(s.hpf_boost), "tv": use_tv, "tv_weight": float(s.tv_weight),
                                 "tv_fine_factor": float(s.tv_fine_factor), "fine_depth": fd, "k": k},
                    progress=progress, report=report, cancel=cancel, callback=cb, callback_every=callback_every,
                    desc="ADePt")
        with torch.no_grad():
            u = res.model().detach().cpu().numpy().astype(np.float32)
    finally:
        torch.set_num_threads(threads_before)
    coords = {"z": z, "y": op.vol_origin[1] + np.arange(shape[1]) * op.voxel_size[1],
              "x": op.vol_origin[2] + np.arange(shape[2]) * op.voxel_size[2]}
    vol = xr.DataArray(u / dz / np.float32(scale), dims=("z", "y", "x"), coords=coords, name="adept",
                       attrs={"kind": "volume", "method": "adept", "units": "rad/m", "data_scale": scale,
                              "fine_depth": fd, "hpf": int(bool(s.hpf)), "tv": int(use_tv),
                              "iterations_done": int(res.iterations_done), "resumed_from": int(res.resumed_from),
                              "train_seconds": float(res.seconds), "status": res.status})
    h = res.history
    it = np.asarray(h.get("iteration", np.zeros(0)), dtype=np.int64)
    training = xr.Dataset({key: ("iteration", np.asarray(h[key], dtype=np.float64))
                           for key in ("loss", "data", "tv", "lr") if key in h},
                          coords={"iteration": it},
                          attrs={"status": res.status, "seconds": float(res.seconds),
                                 "resumed_from": int(res.resumed_from), "angles_per_iteration": k})
    return vol, training, res.status


# ============================================================================ metrics
def _regions(z, fine_depth):
    z = np.asarray(z, float)
    fine = z >= fine_depth
    return {"all": np.ones_like(fine), "coarse": ~fine, "fine": fine}


def score(volumes: dict, truth: xr.Dataset) -> xr.Dataset:
    """BER and PCC of each volume against the truth, per depth region.

    Parameters
    ----------
    volumes : dict name -> DataArray (z, y, x)
        On the truth's grid.
    truth : Dataset
        ``volume`` (z, y, x) rad/m, ``labels`` (metal where > 0), attrs ``fine_depth`` (m).

    Returns
    -------
    Dataset with ``ber`` and ``pcc`` (method, region); regions ``all``, ``coarse`` (z below
    ``fine_depth``), ``fine``. BER: the metal mask of the truth against the volume binarised by
    EM + Bayes' rule with the truth's priors (:func:`ptynb.metrics.ber`).
    """
    from .. import metrics

    tv = np.asarray(truth["volume"].values, np.float64)
    tb = np.asarray(truth["labels"].values) > 0
    regs = _regions(truth["z"].values, float(truth.attrs.get("fine_depth", np.inf)))
    names = list(volumes)
    ber = np.full((len(names), len(REGIONS)), np.nan)
    pcc = np.full_like(ber, np.nan)
    for i, n in enumerate(names):
        v = np.asarray(volumes[n].values, np.float64)
        if v.shape != tv.shape:
            raise ValidationError(n, f"has shape {v.shape}; the truth has {tv.shape}")
        for j, r in enumerate(REGIONS):
            m = np.broadcast_to(regs[r][:, None, None], v.shape)
            if not m.any() or tb[m].all() or not tb[m].any():
                continue
            ber[i, j] = metrics.ber(tb, v, mask=m)
            pcc[i, j] = metrics.pcc(tv, v, m)
    return xr.Dataset({"ber": (("method", "region"), ber), "pcc": (("method", "region"), pcc)},
                      coords={"method": names, "region": list(REGIONS)},
                      attrs={"kind": "metrics", "fine_depth": float(truth.attrs.get("fine_depth", np.nan))})


def psd_planes(volumes: dict) -> xr.Dataset:
    """Central k-space planes of the log10 power spectral density of each volume.

    Returns
    -------
    Dataset: ``<name>_kykz`` (qz, qy) at qx = 0 and ``<name>_kxky`` (qy, qx) at qz = 0, in
    log10 of the PSD; q in cycles per metre.
    """
    from .. import metrics

    out = {}
    for n, v in volumes.items():
        c = metrics.psd_cuts(v, planes=True, log=True, subtract_mean=True)
        out[f"{n}_kykz"] = c["psd_qz_qy"]
        out[f"{n}_kxky"] = c["psd_qy_qx"]
    return xr.Dataset(out, attrs={"kind": "psd_planes", "log10": 1})


# ============================================================================ steps
def _has_projections(run: Run) -> bool:
    return run.inputs.get("projections") is not None


def _has_measurement(run: Run) -> bool:
    return run.inputs.get("measurement") is not None and not _has_projections(run)


def _simulating(run: Run) -> bool:
    return not _has_projections(run) and not _has_measurement(run)


def _step_simulation(run: Run):
    run.report(0.0, "simulating the IC and its projections")
    tree = simulate(run.settings)
    run.inputs["_truth"] = tree["truth"].to_dataset()
    return tree["projections"]["projections"]


def _step_truth(run: Run):
    t = run.inputs.get("_truth")
    if t is None:
        t = run.inputs.get("truth")
        if isinstance(t, xr.DataTree):
            t = t.to_dataset()
    return t


def _volume_shape(run: Run):
    vs = run.inputs.get("volume_shape")
    return None if vs is None else tuple(int(n) for n in vs)


def _step_ptychography(run: Run):
    from .adept_ptycho import reconstruct_angles

    s = run.settings
    return reconstruct_angles(run.inputs["measurement"], iterations=int(s.ptycho_iterations), seed=int(s.train_seed),
                              parallel=int(s.ptycho_parallel), client=run.inputs.get("client"),
                              run_dir=s.ptycho_run_dir, progress=run.progress, report=run.report, cancel=run.cancel)


def _step_phase(run: Run):
    from .adept_ptycho import phase_images

    return phase_images(run["ptychography"], threshold=float(run.settings.illumination_threshold))


def _step_projections(run: Run):
    if _has_measurement(run):
        from .adept_ptycho import projections_from_phase

        s = run.settings
        P = projections_from_phase(run["phase"], volume_shape=_volume_shape(run), align=bool(s.align),
                                   align_iterations=int(s.align_iterations), progress=run.progress,
                                   cancel=run.cancel)
        run.check_cancel()
        return check_projections(P, _volume_shape(run)).rename("projections")
    p = run.inputs.get("projections")
    if p is not None:
        P = check_projections(p, _volume_shape(run))
        if run.settings.subsample > 1 and "subsample" not in P.attrs and P.sizes["angle"] > 1:
            # a dense set given by the user: kept whole unless they asked for sub-sampling
            pass
        return P.rename("projections")
    dense = run["simulation"]
    return subsample(dense, int(run.settings.subsample)).rename("projections")


def _step_reference(run: Run):
    from .. import tomo

    return tomo.fbp(run["simulation"]).rename("reference")


def _step_baselines(run: Run):
    return baselines(run["projections"], run.settings, volume_shape=_volume_shape(run), cancel=run.cancel)


def _step_adept(run: Run):
    s = run.settings
    # the TV boundary: Settings.fine_depth, else the settings' design assumption (_fine_depth);
    # never the truth's
    vol, training, status = reconstruct(run["projections"], s, volume_shape=_volume_shape(run),
                                        scale_volume=run["baselines"]["sirt"], progress=run.progress,
                                        report=run.report, cancel=run.cancel,
                                        callback=run.inputs.get("callback"))
    run.results["training"] = training
    if status != "complete":
        raise Cancelled("cancelled", partial=vol)
    return vol


def _step_metrics(run: Run):
    vols = {}
    if run.get("reference") is not None:
        vols["reference"] = run["reference"]
    vols.update(run["baselines"])
    vols["adept"] = run["adept"]
    return score(vols, run["truth"])


def _step_psd(run: Run):
    vols = {k: run[k] for k in ("reference",) if run.get(k) is not None}
    vols.update(run["baselines"])
    vols["adept"] = run["adept"]
    if run.get("truth") is not None:
        vols["truth"] = run["truth"]["volume"]
    return psd_planes(vols)


def summarize(settings: Settings, results: dict) -> dict:
    """Root attrs: angles used, the alignment (measurements: rms shift in pixels, angles reconstructed),
    training iterations and time, and (with a truth) BER/PCC per
    method and region as ``ber_<method>_<region>`` / ``pcc_<method>_<region>``."""
    out = {}
    p = results.get("projections")
    if p is not None:
        out["n_angles_used"] = int(p.sizes["angle"])
        if "shift_x" in p.coords:
            sh = np.stack([p["shift_y"].values, p["shift_x"].values], axis=1)
            out["alignment_shift_rms"] = float(np.sqrt(np.mean(sh ** 2)))
    pt = results.get("ptychography")
    if pt is not None:
        out["ptycho_angles_done"] = int(pt.attrs.get("angles_done", 0))
    t = results.get("training")
    if t is not None and t.sizes.get("iteration", 0):
        out["iterations_done"] = int(t["iteration"].values[-1])
        out["final_loss"] = float(t["loss"].values[-1])
        out["train_seconds"] = float(t.attrs.get("seconds", np.nan))
    m = results.get("metrics")
    if m is not None:
        for meth in m["method"].values:
            for reg in m["region"].values:
                for q in ("ber", "pcc"):
                    out[f"{q}_{meth}_{reg}"] = float(m[q].sel({"method": meth, "region": reg}))
    return out


def _check_measurement(measurement):
    from .adept_ptycho import check_measurement

    return check_measurement(measurement)


def _node_fbp(run: Run):
    return run["baselines"]["fbp"]


def _node_sirt(run: Run):
    return run["baselines"]["sirt"]


WORKFLOW = Workflow(
    name="adept",
    title="ADePt: deep self-supervised ptycho-laminography",
    description="An integrated circuit from 1/16 of the laminographic angles: a deep-image-prior 3D U-Net "
                "fitted to wavelet-high-passed phase projections through the exact-adjoint laminography "
                "projector with a depth-dependent TV, against FBP and SIRT on the same angles, BER/PCC per "
                "depth region and 3D power spectra.",
    settings=Settings,
    steps=(
        Step("simulation", _step_simulation, "simulating the IC and its projections", weight=2, node=False,
             when=_simulating),
        Step("truth", _step_truth, "ground truth", weight=0.01,
             when=lambda r: r.inputs.get("truth") is not None or _simulating(r)),
        Step("ptychography", _step_ptychography, "LSQ-ML ptychography per angle", weight=10, when=_has_measurement),
        Step("phase", _step_phase, "phase: ramp removal, unwrapping, dielectric level", weight=0.5,
             when=_has_measurement),
        Step("projections", _step_projections, "projections", weight=0.1),
        Step("reference", _step_reference, "FBP of the dense angle set", weight=1,
             when=lambda r: _simulating(r) and bool(r.settings.reference)),
        Step("baselines", _step_baselines, "FBP and SIRT on the same angles", weight=3, node=False),
        Step("fbp", _node_fbp, "FBP", weight=0.01),
        Step("sirt", _node_sirt, "SIRT", weight=0.01),
        Step("adept", _step_adept, "training the deep image prior", weight=40),
        Step("training", lambda r: r["training"], "training history", weight=0.01),
        Step("metrics", _step_metrics, "BER and PCC per depth region", weight=1,
             when=lambda r: r.inputs.get("truth") is not None or _simulating(r)),
        Step("psd", _step_psd, "power spectral densities", weight=0.5),
    ),
    summarize=summarize,
    check_measurement=_check_measurement,
    views="ptynb.viz.adept:views",
    app="ptynb.apps.adept:app",
    summary_keys=(("n_angles_used", "angles used", 1.0, ""),
                  ("ber_fbp_all", "BER of FBP (all layers)", 1.0, ""),
                  ("ber_adept_all", "BER of ADePt (all layers)", 1.0, ""),
                  ("pcc_fbp_all", "PCC of FBP (all layers)", 1.0, ""),
                  ("pcc_adept_all", "PCC of ADePt (all layers)", 1.0, "")),
    inputs=("projections", "truth", "callback", "volume_shape", "client"),
)


def assemble(settings: Settings, *, status: str = "complete", **results) -> xr.DataTree:
    """The result tree from step results computed one by one (same code as :func:`run`)."""
    return WORKFLOW.assemble(settings, status=status, **results)


def run(settings: Settings | None = None, measurement: xr.Dataset | None = None, *,
        projections: xr.DataArray | None = None, progress: bool = True,
        report: Callable[[float, str], None] | None = None, cancel: threading.Event | None = None,
        truth: xr.Dataset | None = None, callback: Callable | None = None,
        volume_shape=None, client=None) -> xr.DataTree:
    """Run ADePt end to end and return an :class:`xarray.DataTree`.

    Parameters
    ----------
    settings : Settings, optional
        Defaults: small-but-meaningful on a CPU; ``Settings().apply_preset("ci")`` for seconds.
    measurement : Dataset, optional
        Far-field X-ray ptychography per angle: ``intensity`` (angle, scan, qy, qx) counts,
        ``angle`` in degrees, ``scan_y``/``scan_x`` (m), attrs ``energy_eV``, ``pixel_size``
        (or the detector geometry), the laminography tilt (``lamino_tilt`` or a scalar
        ``tilt``, degrees) and optionally the nominal optics (e.g. from
        :func:`simulate_measurement`). Reconstructed per angle (steps ``ptychography``,
        ``phase``) into the ``projections``; only what a user knows is read
        (:func:`ptynb.workflows.adept_ptycho.check_measurement`; bad input raises a
        ValidationError naming it: no angle dim, no tilt, radians, NaN counts). Leave it and
        ``projections`` None to simulate.
    projections : DataArray (angle, y, x), optional
        Laminographic phase projections (rad; angle in degrees; y/x in metres; attrs ``tilt``
        and, optionally, the volume grid as :func:`ptynb.tomo.project` records it). Used as
        given (no sub-sampling): skips the simulation.
    progress, report, cancel
        tqdm bars; ``report(fraction, message)``; a ``threading.Event`` that stops the run
        (training: after the current iteration, with its checkpoint written); the tree then has
        ``status == "cancelled"`` and every finished step (``adept`` holds the volume so far).
    truth : Dataset, optional
        Ground truth for user projections or a measurement (``volume`` rad/m, ``labels``,
        attrs ``fine_depth``): only the ``metrics`` node reads it (on the reconstruction grid:
        pass ``volume_shape`` too).
    callback : callable(volume, history, iteration), optional
        Live view during training (see :func:`reconstruct`).
    volume_shape : (nz, ny, nx), optional
        Reconstruction grid overriding the projections' attrs. With a measurement: the
        centred grid of the pixel size whose detector (as :func:`ptynb.tomo.project` makes
        it) the projections are cropped to; without one, the largest centred rectangle of the
        common field of view (the grid then from :func:`volume_grid`).
    client : distributed.Client or str, optional
        Run the per-angle ptychography on this dask cluster (default: serially, or
        ``settings.ptycho_parallel`` local workers).

    Returns
    -------
    DataTree with nodes ``truth`` (simulations), ``ptychography`` (measurements: ``object``
    (angle, y, x), ``probe``, ``cost`` per angle), ``phase`` (measurements: ``phase``, ``mask``
    (angle, y, x) on the object grid, ``ramp``), ``projections`` (angle, y, x) rad (from a
    measurement with coords ``shift_y``/``shift_x``, the alignment in pixels), ``reference``
    (FBP of the dense set, simulations), ``fbp``, ``sirt``, ``adept`` (z, y, x) rad/m,
    ``training`` (loss per iteration), ``metrics`` (``ber``, ``pcc`` over method x region, with a
    truth), ``psd`` (log10 PSD planes ky-kz and kx-ky per method); root attrs from
    :func:`summarize`.
    """
    kw = {}
    if projections is not None:
        kw["projections"] = projections
    if truth is not None:
        kw["truth"] = truth
    if callback is not None:
        kw["callback"] = callback
    if volume_shape is not None:
        kw["volume_shape"] = volume_shape
    if client is not None:
        kw["client"] = client
    return WORKFLOW.run(settings, measurement, progress=progress, report=report, cancel=cancel, **kw)
