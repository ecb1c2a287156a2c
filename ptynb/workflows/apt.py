"""Attentional ptycho-tomography (APT): a physics Approximant refined by a 3D U-Net, end to end.

After Kang, Wu et al. (APT): from few tomographic angles N over a limited range +-theta, a
cheap physics reconstruction (the "Approximant") is refined by a 3D U-Net with a ResNet-like
encoder and axial self-attention (:mod:`ptynb.learn.unet3d`), trained with the NPCC loss. The
paper trains against a 349-angle gold standard that nobody else has; ptynb trains from
simulated integrated circuits (random layouts, layer counts, feature sizes and materials),
so the shipped weights (``ptynb/learn/weights/apt_small.pt``, made by ``ptynb train apt``)
run on any phase projections at once.

Pipeline (each step takes and returns xarray objects; :func:`run` chains them)::

    truth (simulated IC, held-out seed) -> projections (angle, y, x) rad
        -> approximant (z, y, x) -> apt (network, stitched patches)
        -> fbp, sirt, sart (baselines at the same angles) -> metrics (vs truth, when known)

Approximant, two paths (the ``approximant`` step branches on the input):

* **ptychographic** (the paper's; ``run(settings, measurement=ds)`` with a ptycho-tomography
  measurement (angle, scan, qy, qx), or ``source="ptychography"`` to simulate one):
  ``ptycho_iterations`` (2) gradient iterations of mixed-state (``ptycho_modes``) multislice
  (``ptycho_slices`` = L = 5) ptychography per angle (ptynb's ePIE, fanned out over the
  angles), the L slice phases rotated back to the sample frame, averaged over the angles and
  dilated along z to the network's slice count (:mod:`ptynb.workflows.apt_ptycho`). The
  FBP/SIRT/SART baselines then use the per-angle summed slice phases (offset and ramp removed
  on vacuum rows) as phase projections.
* **projections** (``projections=`` or the default simulation): from phase projections
  (angle, y, x) the equivalent is a backprojection (``approximant="backprojection"``: the
  rotated-back, averaged, z-dilated phases without ptychography) or its filtered form
  (``"fbp"``, the default and what the shipped weights use).

Two shipped weights (their json's ``architecture.approximant`` says which input they were
trained on; the ``apt`` node records ``network_trained_on`` and ``network_input``):

* ``apt_small.pt``: the ``fbp`` Approximant of ideal phase projections (the projections path's
  default);
* ``apt_ptycho_small.pt`` (``ptynb train apt --set approximant=ptychography``: 32 training ICs x 1
  angle draw, N in [7, 45], +-8..45 deg, simulated ptycho-tomography with M = 2, L = 5, 1e6
  counts, 2 ePIE iterations per angle; 480 iterations; its json has the recipe): the
  ptychographic Approximant, the default for diffraction data (``run(measurement=...)``,
  ``source="ptychography"``), fed that Approximant directly.

Measured on held-out ICs (test seeds 200000-200003, 32 x 64 x 64, N = 29, +-17 deg, simulated
diffraction data, 2026-12-03; PCC / BER against the truth, means over the 4 ICs):

=======================================================  =====  =======  =====  =====
input / method                                           PCC    MS-SSIM  DSC    BER
=======================================================  =====  =======  =====  =====
ptychographic Approximant                                0.336  0.000    0.315  0.110
apt_ptycho_small on it (default)                         0.728  0.656    0.586  0.104
apt_small on it (``ptycho_network="approximant"``)       0.431  0.243    0.364  0.229
apt_small on FBP of the ptychographic phase projections  0.675  0.550    0.528  0.130
FBP of those projections                                 0.285  0.000    0.314  0.110
SIRT (100 it.) of those projections                      0.406  0.000    0.407  0.095
SART (10 it., 10 subsets) of those projections           0.406  0.000    0.405  0.094
=======================================================  =====  =======  =====  =====

The network trained on the ptychographic Approximant lifts its PCC
from 0.34 to 0.73 and beats every other row on PCC, MS-SSIM and DSC on the mean (and PCC on
each IC), but not on BER: SIRT/SART have the lowest mean BER (0.095) and on IC 200002 FBP/SIRT
(0.045/0.047) beat it (0.081); it is no longer 2-3x worse than the Approximant (0.104 vs 0.110).
(MS-SSIM 0.000: negative contrast-structure terms at some scale, clipped to 0 by
:func:`ptynb.metrics.ms_ssim`.) ``apt_small`` on the ptychographic Approximant warns; with fbp-trained weights
``ptycho_network="matched"`` (the default) feeds them the FBP of the ptychographic phase
projections instead.

Units: the volume quantity is the phase decrement per metre ``q = k delta`` (rad/m, positive
in metal); projections are phases ``-integral q dz`` (rad); lengths in metres, angles in
degrees. The ``apt`` volume is the network output (standardised units) mapped back to rad/m
with the Approximant's mean and std and the training set's std ratio (an estimate: NPCC
fixes neither scale nor offset); metrics are scale-free (PCC, DSC, BER) or computed on
standardised volumes (MS-SSIM).

The truth never feeds the reconstruction: it is used only in the ``metrics`` node.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import param
import xarray as xr

from ..data import ValidationError
from ..options import Options
from . import apt_steps as steps
from ._base import Run, Step, Workflow, WorkflowSettings

__all__ = [
    "METHODS",
    "WORKFLOW",
    "Settings",
    "TrainSettings",
    "assemble",
    "baselines",
    "check_projections",
    "default_weights",
    "evaluate",
    "reconstruct",
    "run",
    "simulate",
    "summarize",
    "sweep",
    "train_model",
]

METHODS = ("approximant", "apt", "fbp", "sirt", "sart")
NM = 1e-9


class Settings(WorkflowSettings):
    """Parameters of the APT workflow (SI units; angles in degrees).

    The defaults (a 32 x 64 x 64 voxel IC, 14 nm voxels, N = 29 over +-17 deg) run in tens of
    seconds on a laptop CPU; ``ci`` is a 32^3 volume with fewer baseline iterations; ``paper``
    has the paper's test-volume depth and angles (GPU sizes).
    """

    groups = {
        "Sample": ["nz", "n_lateral", "voxel_size", "energy_eV", "seed", "noise"],
        "Angles": ["n_angles", "angle_range"],
        "Ptychography": ["source", "ptycho_iterations", "ptycho_slices", "ptycho_modes", "ptycho_engine",
                         "ptycho_step", "ptycho_counts", "ptycho_network"],
        "Network": ["approximant", "weights", "overlap", "batch"],
        "Baselines": ["baselines", "sirt_iterations", "sart_iterations", "sart_subsets"],
    }
    presets = {
        "default": {},
        "ci": dict(n_lateral=32, sirt_iterations=30, sart_iterations=4),
        "paper": dict(nz=280, n_lateral=320, sirt_iterations=100, sart_iterations=10),
    }
    units = {"voxel_size": "m", "energy_eV": "eV", "angle_range": "deg", "noise": "rad",
             "ptycho_counts": "counts"}

    nz = param.Integer(default=32, bounds=(4, 1024), doc="Voxels along the beam (z) of the simulated IC")
    n_lateral = param.Integer(default=64, bounds=(8, 4096), doc="Voxels along y and x of the simulated IC")
    voxel_size = param.Number(default=14 * NM, bounds=(1e-10, 1e-6), doc="Voxel size (m; the paper's 14 nm)")
    energy_eV = param.Number(default=8800.0, bounds=(100.0, 1e6), doc="Photon energy (eV)")
    seed = param.Integer(default=0, bounds=(0, 99_999), doc="Which held-out test IC (never a training seed)")
    noise = param.Number(default=0.005, bounds=(0.0, None), doc="Phase noise on the projections, rms (rad)")
    n_angles = param.Integer(default=29, bounds=(2, 2000), doc="Number of projections N")
    angle_range = param.Number(default=17.0, bounds=(0.5, 90.0), doc="Angles span -range..+range (degrees)")
    source = param.Selector(default="projections", objects=["projections", "ptychography"], doc=(
        "What a simulated run measures: phase projections, or diffraction data (ptycho-tomography, "
        "the ptychographic Approximant); a given measurement= always takes the ptychographic path"))
    ptycho_iterations = param.Integer(default=2, bounds=(1, 10_000),
                                      doc="Gradient (ePIE) iterations per angle of the ptychographic Approximant")
    ptycho_slices = param.Integer(default=5, bounds=(1, 256),
                                  doc="Multislice slices L across the slab (the paper's 5; also the simulation's)")
    ptycho_modes = param.Integer(default=2, bounds=(1, 32), doc="Mixed-state probe modes M (simulation and inversion)")
    ptycho_engine = param.Selector(default="epie", objects=["epie", "rpie", "lsqml"],
                                   doc="Ptychography engine of the Approximant")
    ptycho_step = param.Number(default=None, allow_None=True, bounds=(0.0, 2.0), inclusive_bounds=(False, True),
                               doc="ePIE/rPIE object step per slice (None: 1/slices for ePIE)")
    ptycho_counts = param.Number(default=1e6, bounds=(1.0, None),
                                 doc="Simulated incident counts per diffraction pattern (Poisson noise)")
    ptycho_network = param.Selector(default="matched", objects=["matched", "approximant"], doc=(
        "Network input on the ptychographic path: 'matched' = the Approximant kind the weights were trained "
        "on (the default apt_ptycho_small.pt: the ptychographic Approximant itself; fbp-trained weights such "
        "as apt_small.pt: the fbp of the ptychographic phase projections), 'approximant' = the ptychographic "
        "Approximant whatever the weights (a warning when they were trained on another kind)"))
    approximant = param.Selector(default="fbp", objects=["fbp", "backprojection"],
                                 doc="Approximant from the projections (must match the weights)")
    weights = param.String(default=None, allow_None=True, doc=(
        "Network weights file (None: the shipped ones: ptynb/learn/weights/apt_small.pt for projections, "
        "apt_ptycho_small.pt, trained on the ptychographic Approximant, for diffraction data)"))
    overlap = param.Number(default=0.5, bounds=(0.0, 0.9), doc="Lateral overlap of the stitched patches")
    batch = param.Integer(default=4, bounds=(1, 256), doc="Patches per network call")
    baselines = param.Boolean(default=True, doc="Also reconstruct FBP, SIRT and SART at the same angles")
    sirt_iterations = param.Integer(default=100, bounds=(1, 10_000), doc="SIRT iterations")
    sart_iterations = param.Integer(default=10, bounds=(1, 10_000), doc="SART iterations (the paper's 10)")
    sart_subsets = param.Integer(default=10, bounds=(1, 1000), doc="SART ordered subsets")

    @property
    def angles(self) -> np.ndarray:
        """The N angles (degrees), uniform over -range..+range."""
        return np.linspace(-float(self.angle_range), float(self.angle_range), int(self.n_angles))


class TrainSettings(Options):
    """Recipe of ``ptynb train apt`` (simulated training data, network size, optimiser).

    Defaults are the shipped CPU model (about 10 minutes on 2 cores); ``width=1`` with more
    volumes and iterations is the paper's network size (a GPU's work).
    """

    n_train = param.Integer(default=48, bounds=(1, 99_999), doc="Training IC volumes (seeds 0..n_train-1)")
    n_val = param.Integer(default=6, bounds=(1, 99_999), doc="Validation IC volumes (their own seed range)")
    draws = param.Integer(default=2, bounds=(1, 100), doc="Angle sets drawn per training volume")
    nz = param.Integer(default=32, bounds=(4, 1024), doc="Voxels along z of the training volumes")
    n_lateral = param.Integer(default=64, bounds=(8, 4096), doc="Voxels along y, x of the training volumes")
    patch_lateral = param.Integer(default=32, bounds=(8, 1024), doc="Lateral patch size (voxels, multiple of 4)")
    voxel_size = param.Number(default=14 * NM, bounds=(1e-10, 1e-6), doc="Voxel size (m)")
    energy_eV = param.Number(default=8800.0, bounds=(100.0, 1e6), doc="Photon energy (eV)")
    noise = param.Number(default=0.005, bounds=(0.0, None), doc="Phase noise rms (rad)")
    n_min = param.Integer(default=7, bounds=(2, 2000), doc="Fewest angles drawn (and accepted at inference)")
    n_max = param.Integer(default=61, bounds=(2, 2000), doc="Most angles drawn")
    theta_min = param.Number(default=8.0, bounds=(0.5, 90.0), doc="Smallest half range drawn (degrees)")
    theta_max = param.Number(default=70.0, bounds=(0.5, 90.0), doc="Largest half range drawn (degrees)")
    approximant = param.Selector(default="fbp", objects=["fbp", "backprojection", "ptychography"], doc=(
        "Network input: the fbp or backprojection Approximant of phase projections, or the "
        "ptychographic Approximant of simulated diffraction data (ptycho-tomography per volume and "
        "angle draw; minutes of CPU per ten volumes)"))
    # the Approximant's settings: defaults stated once, in Settings (the workflow's)
    ptycho_iterations = param.Integer(default=Settings.param["ptycho_iterations"].default, bounds=(1, 10_000),
                                      doc="approximant=ptychography: ePIE iterations per angle")
    ptycho_slices = param.Integer(default=Settings.param["ptycho_slices"].default, bounds=(1, 256),
                                  doc="approximant=ptychography: multislice slices L (simulation and inversion)")
    ptycho_modes = param.Integer(default=Settings.param["ptycho_modes"].default, bounds=(1, 32),
                                 doc="approximant=ptychography: probe modes M (simulation and inversion)")
    ptycho_counts = param.Number(default=Settings.param["ptycho_counts"].default, bounds=(1.0, None),
                                 doc="approximant=ptychography: incident counts per diffraction pattern (Poisson)")
    width = param.Number(default=0.125, bounds=(0.01, 4.0), doc="Channel factor (1: the paper's 32..512)")
    blocks = param.NumericTuple(default=(3, 4, 6), length=3, doc="Bottleneck blocks per encoder stage")
    heads = param.Integer(default=2, bounds=(1, 64), doc="Attention heads")
    iterations = param.Integer(default=600, bounds=(1, 10_000_000), doc="Optimiser steps")
    batch = param.Integer(default=4, bounds=(1, 1024), doc="Patches per step (the paper's 4)")
    learning_rate = param.Number(default=2e-4, bounds=(0, None), inclusive_bounds=(False, True),
                                 doc="Adam's initial learning rate (poly decay, power 0.9)")
    seed = param.Integer(default=0, bounds=(0, None), doc="Seed of the angle draws and the training loop")
    device = param.Selector(default="auto", objects=["auto", "cpu", "cuda"], doc="Training device")
    threads = param.Integer(default=1, bounds=(1, 256), doc=(
        "torch CPU threads while training (1 is fastest on a shared machine: more threads than free "
        "cores slow torch's OpenMP convolutions many times)"))

    def _check(self):
        if self.patch_lateral % 4:
            raise ValidationError("patch_lateral", f"must be a multiple of 4, got {self.patch_lateral}")
        if self.patch_lateral > self.n_lateral:
            raise ValidationError("patch_lateral", "is larger than the training volumes")
        if self.n_min > self.n_max or self.theta_min > self.theta_max:
            raise ValidationError("n_min", "the angle ranges are empty (min > max)")

    def architecture(self) -> dict:
        """The network's architecture dict (what the weights file stores and is checked against)."""
        from ..learn.unet3d import architecture

        return architecture(self.width, self.blocks, self.heads, max_length=64, residual=True,
                            patch=[int(self.nz), int(self.patch_lateral), int(self.patch_lateral)],
                            approximant=self.approximant)


# ============================================================================ inputs
def check_projections(projections, *, min_angles: int = 2) -> xr.DataArray:
    """Validate phase projections: DataArray (angle, y, x) real rad, angle in degrees, y/x in
    metres, finite, at least ``min_angles`` angles. Raises :class:`ValidationError`."""
    from ..tomo.projector import check_projections as _tomo_check

    if not isinstance(projections, xr.DataArray):
        raise ValidationError("projections", f"must be a DataArray (angle, y, x), got {type(projections).__name__}")
    if tuple(projections.dims) != ("angle", "y", "x"):
        raise ValidationError("projections", f"has dims {projections.dims}; expected ('angle', 'y', 'x')")
    if np.iscomplexobj(projections.values):
        raise ValidationError("projections", "are complex; give the phase in rad")
    if not np.all(np.isfinite(projections.values)):
        n = int((~np.isfinite(projections.values)).sum())
        raise ValidationError("projections", f"contain {n} NaN or inf values; mask or fill them first")
    _tomo_check(projections)
    n = projections.sizes["angle"]
    if n < min_angles:
        raise ValidationError("projections", f"have {n} angles; the network was trained on at least "
                              f"{min_angles} (use other weights or more angles)")
    for d in ("y", "x"):
        if d not in projections.coords:
            raise ValidationError(d, "coordinate missing (metres)")
        st = np.diff(np.asarray(projections[d].values, float))
        if st.size and (st[0] <= 0 or st[0] > 1e-3):
            raise ValidationError(d, f"spacing {st[0]:.3g}: coordinates must be increasing, in metres")
    return projections


# ============================================================================ steps as functions
def simulate(settings: Settings | None = None) -> xr.DataTree:
    """A held-out simulated IC and its phase projections.

    Returns a DataTree with ``truth`` (``q`` (z, y, x) rad/m, ``labels``) and ``projections``
    (angle, y, x) rad at ``settings.angles``. The seed is from the test range
    (``apt_steps.seeds_for("test", ...)``), disjoint from training and validation.
    """
    s = settings or Settings()
    seed = steps.seeds_for("test", 1, int(s.seed))[0]
    truth = steps.simulate_ic(seed, (s.nz, s.n_lateral, s.n_lateral), s.voxel_size, energy_eV=s.energy_eV)
    p = steps.phase_projections(truth["q"], s.angles, noise=float(s.noise), seed=seed)
    return xr.DataTree.from_dict({"truth": truth, "projections": p.to_dataset()})


def _wrap(like: xr.DataArray, arr, name, **attrs) -> xr.DataArray:
    da = xr.DataArray(np.asarray(arr, np.float32), dims=("z", "y", "x"),
                      coords={d: like[d].values for d in ("z", "y", "x")}, name=name)
    for d in ("z", "y", "x"):
        da[d].attrs["units"] = "m"
    da.attrs = {"units": "rad/m", **attrs}
    return da


def reconstruct(projections: xr.DataArray, *, weights=None, approximant: str | None = None,
                overlap: float = 0.5, batch: int = 4, cancel=None) -> xr.Dataset:
    """Approximant and APT volumes from phase projections.

    Parameters
    ----------
    projections : DataArray (angle, y, x) rad
        The volume grid comes from its attrs (as :func:`ptynb.tomo.fbp` reads it).
    weights : path, optional
        Default: the shipped weights.
    approximant : {"fbp", "backprojection"}, optional
        Must be the one the weights were trained on (default: theirs).
    overlap, batch : stitching overlap (fraction) and patches per call.

    Returns
    -------
    Dataset with ``approximant`` and ``apt`` (z, y, x) rad/m; attrs ``seconds_approximant``,
    ``seconds_network``, ``patch``.
    """
    model, arch, meta = steps.load_model(weights)
    kind = arch.get("approximant", "fbp")
    if approximant is not None and approximant != kind:
        raise ValidationError("approximant", f"{approximant!r} but the weights were trained on {kind!r}")
    check_projections(projections, min_angles=int(meta.get("min_angles", 2)))
    t0 = time.perf_counter()
    a = steps.approximant(projections, kind)
    t1 = time.perf_counter()
    xa, m, sd = steps.standardize(a.values)
    out = steps.apply_model(model, xa, arch["patch"], overlap=overlap, batch=batch,
                            calibration=tuple(meta.get("calibration", (1.0, 0.0))), cancel=cancel)
    t2 = time.perf_counter()
    ratio = float(meta.get("std_ratio", 1.0))
    apt = _wrap(a, m + ratio * sd * out, "apt", method="apt", long_name="APT (network on the Approximant)",
                patch=list(arch["patch"]))
    return xr.Dataset({"approximant": a, "apt": apt},
                      attrs={"seconds_approximant": t1 - t0, "seconds_network": t2 - t1,
                             "patch": list(arch["patch"])})


def baselines(projections: xr.DataArray, *, sirt_iterations: int = 100, sart_iterations: int = 10,
              sart_subsets: int = 10, progress: bool = False, cancel=None) -> xr.Dataset:
    """FBP, SIRT and SART of the same projections: Dataset of (z, y, x) rad/m volumes
    (``fbp``, ``sirt``, ``sart``) with their wall times in attrs (``seconds_<method>``)."""
    from .. import tomo

    out, t = {}, {}
    t0 = time.perf_counter()
    out["fbp"] = -tomo.fbp(projections)
    t["fbp"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out["sirt"] = -tomo.sirt(projections, sirt_iterations, progress=progress, cancel=cancel)
    t["sirt"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out["sart"] = -tomo.sart(projections, sart_iterations, min(int(sart_subsets), projections.sizes["angle"]),
                             progress=progress, cancel=cancel)
    t["sart"] = time.perf_counter() - t0
    ds = {}
    for k, v in out.items():
        ds[k] = _wrap(v, v.values, k, method=k)
    return xr.Dataset(ds, attrs={f"seconds_{k}": v for k, v in t.items()})


def evaluate(truth: xr.DataArray, volumes: dict) -> xr.Dataset:
    """Metrics of each volume against the truth: Dataset with ``pcc``, ``ms_ssim``, ``dsc``,
    ``ber`` over dim ``method`` (dimensionless; higher is better except BER)."""
    names = [k for k in METHODS if k in volumes]
    rows = [steps.score(truth.values, volumes[k].values) for k in names]
    return xr.Dataset({m: ("method", [r[m] for r in rows]) for m in ("pcc", "ms_ssim", "dsc", "ber")},
                      coords={"method": names}, attrs={"kind": "metrics", "truth_used_for": "scores only"})


def sweep(*, n_values=(5, 9, 15, 21, 29, 45, 61), n_theta: float = 70.0, theta_values=(5, 9, 13, 17, 25, 35, 50, 70),
          theta_n: int = 29, seeds=(0, 1), settings: Settings | None = None, weights=None,
          baselines_too: bool = True, progress: bool = False, cancel=None) -> xr.Dataset:
    """Fidelity vs sampling: metrics over N (at +-``n_theta``) and over theta (at ``theta_n``).

    Every point reconstructs held-out test ICs ``seeds`` (test range) with APT and, when
    ``baselines_too``, FBP/SIRT/SART (``settings``' iterations), and averages the metrics.

    Returns
    -------
    Dataset with variables ``<metric>_n`` (method, n) and ``<metric>_theta`` (method, theta),
    metric in pcc, ms_ssim, dsc, ber; coords ``n`` (angles), ``theta`` (degrees), ``method``;
    attrs ``knee_n`` and ``knee_theta`` (:func:`knee` of the APT PCC curve).
    """
    from ..control import Cancelled, is_cancelled

    s = settings or Settings()
    methods = ["apt", "fbp", "sirt", "sart"] if baselines_too else ["apt"]
    truths = [steps.simulate_ic(sd, (s.nz, s.n_lateral, s.n_lateral), s.voxel_size, energy_eV=s.energy_eV)["q"]
              for sd in steps.seeds_for("test", len(seeds), int(min(seeds)))]
    model_cache = {}

    def point(n, th):
        acc = {m: [] for m in methods}
        for q in truths:
            if is_cancelled(cancel):
                raise Cancelled("cancelled during the sweep")
            p = steps.phase_projections(q, np.linspace(-th, th, n), noise=float(s.noise), seed=n * 1000 + int(th))
            vols = {"apt": _recon_cached(p, weights, model_cache, s)}
            if baselines_too:
                b = baselines(p, sirt_iterations=s.sirt_iterations, sart_iterations=s.sart_iterations,
                              sart_subsets=s.sart_subsets)
                vols.update({k: b[k] for k in ("fbp", "sirt", "sart")})
            for m in methods:
                acc[m].append(steps.score(q.values, vols[m].values))
        return {m: {k: float(np.mean([r[k] for r in acc[m]])) for k in ("pcc", "ms_ssim", "dsc", "ber")}
                for m in methods}

    res_n = [point(int(n), float(n_theta)) for n in n_values]
    res_t = [point(int(theta_n), float(t)) for t in theta_values]
    data = {}
    for k in ("pcc", "ms_ssim", "dsc", "ber"):
        data[f"{k}_n"] = (("method", "n"), [[r[m][k] for r in res_n] for m in methods])
        data[f"{k}_theta"] = (("method", "theta"), [[r[m][k] for r in res_t] for m in methods])
    ds = xr.Dataset(data, coords={"method": methods, "n": list(n_values), "theta": [float(t) for t in theta_values]})
    ds["theta"].attrs["units"] = "deg"
    ds.attrs.update(kind="apt_sweep", n_theta=float(n_theta), theta_n=int(theta_n), seeds=list(seeds),
                    knee_n=knee(ds["n"].values, ds["pcc_n"].sel({"method": "apt"}).values),
                    knee_theta=knee(ds["theta"].values, ds["pcc_theta"].sel({"method": "apt"}).values))
    return ds


def _recon_cached(p, weights, cache, s):
    """APT volume for one projections set, the model loaded once per sweep."""
    if "model" not in cache:
        cache["model"] = steps.load_model(weights)
    model, arch, meta = cache["model"]
    a = steps.approximant(p, arch.get("approximant", "fbp"))
    xa, m, sd = steps.standardize(a.values)
    out = steps.apply_model(model, xa, arch["patch"], overlap=s.overlap, batch=s.batch,
                            calibration=tuple(meta.get("calibration", (1.0, 0.0))))
    return _wrap(a, m + float(meta.get("std_ratio", 1.0)) * sd * out, "apt")


def knee(x, y, fraction: float = 0.9) -> float:
    """The knee of a fidelity curve: the smallest ``x`` whose ``y`` reaches ``fraction`` of the
    way from the curve's lowest to its highest value (linear interpolation between points)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    lo, hi = float(np.min(y)), float(np.max(y))
    target = lo + fraction * (hi - lo)
    for i in range(len(x)):
        if y[i] >= target:
            if i == 0:
                return float(x[0])
            f = (target - y[i - 1]) / (y[i] - y[i - 1]) if y[i] != y[i - 1] else 1.0
            return float(x[i - 1] + f * (x[i] - x[i - 1]))
    return float(x[-1])


# ============================================================================ training
def train_model(settings: TrainSettings | None = None, *, out=None, checkpoint=None, resume: bool = True,
                progress: bool = True, report: Callable | None = None, cancel: threading.Event | None = None,
                callback: Callable | None = None, command: str | None = None):
    """Train the APT network on simulated ICs (``ptynb train apt``) and optionally save it.

    Data: ``n_train`` IC volumes (training seeds) x ``draws`` angle sets (N uniform in
    [n_min, n_max], half range uniform in [theta_min, theta_max] degrees), standardised
    Approximant -> standardised truth, cut into patches (nz, p, p) on a 50 %-overlap lateral
    grid; random x/y flips. ``n_val`` validation volumes (their own seed range) give the
    validation NPCC. ``approximant="ptychography"``: each pair's input is the ptychographic
    Approximant of simulated diffraction data (:func:`ptynb.workflows.apt_steps.training_set`;
    ``ptycho_*`` settings, the paper's recipe), and the weights say so
    (``architecture.approximant``), so that ``run(measurement=...)`` feeds them that Approximant. Optimiser: ``ptynb.learn.training.train`` (Adam, poly decay 0.9, NPCC).
    After training, an affine ``(a, b)`` mapping the output to the standardised truth is fitted
    on training patches (NPCC leaves it free) and stored with the weights.

    Parameters
    ----------
    settings : TrainSettings
    out : path, optional
        Weights file to write (``ptynb.learn.training.save_weights``), with a readable copy of
        its architecture and meta next to it (same name, ``.json``).
    checkpoint, resume, progress, report, cancel, callback
        Passed to :func:`ptynb.learn.training.train`.
    command : str, optional
        The command line recorded in the meta (the CLI passes its own).

    Returns
    -------
    dict with ``result`` (TrainResult), ``architecture``, ``meta`` (recipe, timings, losses)
    and ``path`` (or None).
    """
    import torch

    from ..learn.losses import npcc
    from ..learn.stitch import patch_starts
    from ..learn.training import TrainOptions, save_weights, train
    from ..learn.unet3d import build_unet3d

    s = settings or TrainSettings()
    s._check()
    t0 = time.perf_counter()
    shape = (int(s.nz), int(s.n_lateral), int(s.n_lateral))
    rng = np.random.default_rng(int(s.seed))
    common = dict(shape=shape, voxel_size=s.voxel_size, energy_eV=s.energy_eV, n_range=(s.n_min, s.n_max),
                  theta_range=(s.theta_min, s.theta_max), noise=s.noise, kind=s.approximant,
                  ptycho={"iterations": int(s.ptycho_iterations), "slices": int(s.ptycho_slices),
                          "modes": int(s.ptycho_modes), "counts": float(s.ptycho_counts)})
    X, Y, info = steps.training_set(steps.seeds_for("train", s.n_train), draws=s.draws, rng=rng,
                                    progress=progress, cancel=cancel, **common)
    Xv, Yv, _ = steps.training_set(steps.seeds_for("val", s.n_val), draws=1, rng=np.random.default_rng(s.seed + 1),
                                   cancel=cancel, **common)
    t_data = time.perf_counter() - t0
    p = int(s.patch_lateral)
    starts = patch_starts(shape[1], p, 0.5)
    corners = [(i, a, b) for i in range(len(X)) for a in starts for b in starts]
    vcorners = [(i, a, b) for i in range(len(Xv)) for a in starts for b in starts]
    arch = s.architecture()
    torch.manual_seed(int(s.seed))
    model = build_unet3d(arch)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)

    def batch_of(Xs, Ys, idx, flips=None):
        xs, ys = [], []
        for j, k in enumerate(idx):
            i, a, b = corners[k] if Xs is Xt else vcorners[k]
            x = Xs[i, :, a:a + p, b:b + p]
            y = Ys[i, :, a:a + p, b:b + p]
            if flips is not None:
                dims = [d for d, f in zip((1, 2), flips[j]) if f]
                if dims:
                    x, y = torch.flip(x, dims), torch.flip(y, dims)
            xs.append(x)
            ys.append(y)
        return torch.stack(xs)[:, None], torch.stack(ys)[:, None]

    def loss_fn(m, ctx):
        idx = ctx.rng.integers(len(corners), size=int(s.batch))
        flips = ctx.rng.integers(0, 2, size=(int(s.batch), 2))
        x, y = batch_of(Xt, Yt, idx, flips)
        return npcc(m(x.to(ctx.device)), y.to(ctx.device))

    opts = TrainOptions(iterations=int(s.iterations), learning_rate=float(s.learning_rate), schedule="poly",
                        poly_power=0.9, seed=int(s.seed), device=s.device, checkpoint_every=100)
    fp = steps.fingerprint(recipe=s.as_dict())
    with steps.torch_threads(int(s.threads)):
        result = train(model, loss_fn, opts, checkpoint=checkpoint, resume=resume, fingerprint=fp,
                       progress=progress, report=report, cancel=cancel, callback=callback,
                       desc="training APT")
    model = result.model.to("cpu").eval()
    # validation NPCC and the output calibration (a, b) on training patches
    Xvt, Yvt = torch.from_numpy(Xv), torch.from_numpy(Yv)
    with torch.no_grad():
        vals, inp = [], []
        for k0 in range(0, len(vcorners), 8):
            x, y = batch_of(Xvt, Yvt, range(k0, min(k0 + 8, len(vcorners))))
            vals.append(npcc(model(x), y, reduction="none"))
            inp.append(npcc(x, y, reduction="none"))
        val = float(torch.cat(vals).mean())
        val_in = float(torch.cat(inp).mean())
        sel = np.random.default_rng(0).choice(len(corners), size=min(32, len(corners)), replace=False)
        os_, ys_ = [], []
        for k0 in range(0, len(sel), 8):
            x, y = batch_of(Xt, Yt, sel[k0:k0 + 8])
            os_.append(model(x).flatten())
            ys_.append(y.flatten())
        o, yy = torch.cat(os_).double().numpy(), torch.cat(ys_).double().numpy()
        A = np.stack([o, np.ones_like(o)], 1)
        a_, b_ = np.linalg.lstsq(A, yy, rcond=None)[0]
    h = result.history
    n_patches = len(corners)
    data = {"approximant": s.approximant, "volume_shape": list(shape), "voxel_size_m": float(s.voxel_size),
            "pairs_train": len(X), "pairs_val": len(Xv), "angles": "N uniform in -theta..+theta",
            "seconds_per_pair": float(info["seconds_per_pair"])}
    if s.approximant == "ptychography":
        data.update(simulation="apt_ptycho.simulate_measurement (zone-plate probe, M modes, L-slice multislice, "
                               "Poisson noise, IC padded with vacuum)",
                    inversion="apt_ptycho.ptycho_approximant (ePIE, step 1/L per slice)",
                    ptycho_iterations=int(s.ptycho_iterations), ptycho_slices=int(s.ptycho_slices),
                    ptycho_modes=int(s.ptycho_modes), ptycho_counts=float(s.ptycho_counts))
    else:
        data.update(phase_noise_rad=float(s.noise))
    meta = {
        "command": command or ("ptynb train apt" + (f" --out {out}" if out else "")),
        "approximant": s.approximant, "data": data,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.as_dict().items()},
        "seeds_train": [0, int(s.n_train) - 1], "seeds_val": steps.seeds_for("val", s.n_val)[::max(1, s.n_val - 1)],
        "min_angles": int(s.n_min), "max_angles": int(s.n_max),
        "theta_range": [float(s.theta_min), float(s.theta_max)],
        "std_ratio": info["std_ratio"], "calibration": [float(a_), float(b_)],
        "loss_first10": float(np.mean(h["loss"][:10])) if len(h.get("loss", [])) else None,
        "loss_last10": float(np.mean(h["loss"][-10:])) if len(h.get("loss", [])) else None,
        "val_npcc": val, "val_npcc_approximant": val_in,
        "seconds_data": t_data, "seconds_train": float(result.seconds),
        "seconds_per_epoch": float(result.seconds) / max(1e-9, result.iterations_done * s.batch / n_patches),
        "patches": n_patches, "iterations_done": int(result.iterations_done), "status": result.status,
        "torch": torch.__version__, "threads": int(s.threads),
    }
    path = None
    if out is not None:
        path = save_weights(out, model, arch, meta)
        _write_sidecar(path, arch, meta)
    return {"result": result, "architecture": arch, "meta": meta, "path": path, "model": model}


def _write_sidecar(path, arch: dict, meta: dict):
    """``<weights>.json``: the weights file's architecture and meta, readable without torch."""
    import json
    from pathlib import Path

    from ..io._atomic import atomic_write

    path = Path(path)
    text = json.dumps({"file": path.name, "architecture": arch, "meta": meta}, indent=1, default=str)
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))


# ============================================================================ pipeline
def _has_projections(run: Run) -> bool:
    return run.inputs.get("projections") is not None


def _has_measurement(run: Run) -> bool:
    return run.inputs.get("measurement") is not None


def _ptycho_path(run: Run) -> bool:
    """Diffraction data: a given measurement, or a simulated one (``source="ptychography"``)."""
    return _has_measurement(run) or (not _has_projections(run) and run.settings.source == "ptychography")


def default_weights(ptychographic: bool):
    """The shipped weights a run uses without ``weights=``: for diffraction data those trained on
    the ptychographic Approximant (``apt_ptycho_small.pt``) when that file exists, else (and for
    projections) ``apt_small.pt`` (trained on the fbp Approximant)."""
    if ptychographic and steps.PTYCHO_WEIGHTS.is_file():
        return steps.PTYCHO_WEIGHTS
    return None  # load_model's default: apt_small.pt


def _model(run: Run):
    """(model, architecture, meta) of the run's weights, loaded once per run."""
    if "_model" not in run.inputs:
        w = run.settings.weights
        run.inputs["_model"] = steps.load_model(w if w is not None else default_weights(_ptycho_path(run)))
    return run.inputs["_model"]


def _step_truth(run: Run):
    s = run.settings
    seed = steps.seeds_for("test", 1, int(s.seed))[0]
    t = steps.simulate_ic(seed, (s.nz, s.n_lateral, s.n_lateral), s.voxel_size, energy_eV=s.energy_eV)
    run.inputs["_seed"] = seed
    return t


def _step_ptychography(run: Run):
    """Per-angle slice phases (2 ePIE iterations per angle) from the given or simulated measurement."""
    from . import apt_ptycho

    s = run.settings
    if _has_projections(run):
        raise ValidationError("measurement", "give either a measurement (diffraction data) or projections, not both")
    _, _, meta = _model(run)
    m = run.inputs.get("measurement")
    if m is None:
        run.report(0.0, "simulating ptycho-tomography")
        m = apt_ptycho.simulate_measurement(run["truth"]["q"], s.angles, modes=int(s.ptycho_modes),
                                            slices=int(s.ptycho_slices), energy_eV=float(s.energy_eV),
                                            counts_per_pattern=float(s.ptycho_counts), seed=run.inputs["_seed"],
                                            progress=run.progress)
    theta = meta.get("theta_range", [0.0])
    apt_ptycho.check_measurement(m, min_angles=int(meta.get("min_angles", 2)), min_range_deg=float(theta[0]))
    if run.inputs.get("truth") is None and run.get("truth") is None:
        t = apt_ptycho.truth_from_measurement(m)
        if t is not None:
            run.inputs["truth"] = t
    run.report(0.2, "ptychography per angle")
    return apt_ptycho.ptycho_phases(m, iterations=int(s.ptycho_iterations), slices=int(s.ptycho_slices),
                                    modes=int(s.ptycho_modes), engine=s.ptycho_engine, step=s.ptycho_step,
                                    progress=run.progress, cancel=run.cancel)


def _step_projections(run: Run):
    if _ptycho_path(run):
        from . import apt_ptycho

        return apt_ptycho.ptycho_projections(run["ptychography"])
    p = run.inputs.get("projections")
    if p is not None:
        return check_projections(p)
    s = run.settings
    return steps.phase_projections(run["truth"]["q"], s.angles, noise=float(s.noise), seed=run.inputs["_seed"])


def _step_approximant(run: Run):
    """The Approximant: ptychographic (diffraction data) or from the phase projections."""
    s = run.settings
    _, arch, meta = _model(run)
    t0 = time.perf_counter()
    if _ptycho_path(run):
        from . import apt_ptycho

        ph = run["ptychography"]
        a = apt_ptycho.slab_approximant(ph)
        sec = float(ph.attrs["seconds"]) + time.perf_counter() - t0
        a.attrs.update(seconds=sec, seconds_per_angle=sec / max(1, ph.sizes["angle"]),
                       iterations=int(s.ptycho_iterations), slices=int(s.ptycho_slices),
                       modes=int(s.ptycho_modes), engine=str(s.ptycho_engine))
        return a
    kind = arch.get("approximant", "fbp")
    if s.approximant != kind:
        extra = (" (the ptychographic Approximant: give diffraction data, measurement=, or source='ptychography')"
                 if kind == "ptychography" else "")
        raise ValidationError("approximant", f"{s.approximant!r} but the weights were trained on {kind!r}{extra}")
    check_projections(run["projections"], min_angles=int(meta.get("min_angles", 2)))
    a = steps.approximant(run["projections"], kind)
    a.attrs["seconds"] = time.perf_counter() - t0
    return a


def _network(model, arch, meta, a: xr.DataArray, *, overlap, batch, cancel) -> xr.DataArray:
    """The network on an Approximant (z, y, x) rad/m, back in rad/m (``apt``)."""
    xa, m, sd = steps.standardize(a.values)
    out = steps.apply_model(model, xa, arch["patch"], overlap=overlap, batch=batch,
                            calibration=tuple(meta.get("calibration", (1.0, 0.0))), cancel=cancel)
    ratio = float(meta.get("std_ratio", 1.0))
    return _wrap(a, m + ratio * sd * out, "apt", method="apt", long_name="APT (network on the Approximant)",
                 patch=list(arch["patch"]))


def _step_apt(run: Run):
    import warnings

    from .apt_ptycho import PTYCHO_KIND

    s = run.settings
    model, arch, meta = _model(run)
    kind = arch.get("approximant", "fbp")
    a = run["approximant"]
    source = "projections"
    if _ptycho_path(run):
        source = PTYCHO_KIND
        if s.ptycho_network == "matched" and kind != PTYCHO_KIND:
            a = steps.approximant(run["projections"], kind)
            source = f"{kind} of the ptychographic phase projections"
        elif kind != PTYCHO_KIND:
            warnings.warn(f"the APT weights were trained on the {kind!r} Approximant, not the ptychographic one: "
                          "on held-out ICs the shipped network does not reliably improve it (PCC -0.02..+0.10, "
                          "BER 2-3x worse); use ptycho_network='matched' or weights trained on it",
                          UserWarning, stacklevel=2)
    run.report(0.1, "network")
    t0 = time.perf_counter()
    out = _network(model, arch, meta, a, overlap=s.overlap, batch=s.batch, cancel=run.cancel)
    out.attrs.update(seconds_network=time.perf_counter() - t0, network_trained_on=kind, network_input=source)
    return out


def _step_baselines(run: Run):
    s = run.settings
    return baselines(run["projections"], sirt_iterations=s.sirt_iterations, sart_iterations=s.sart_iterations,
                     sart_subsets=s.sart_subsets, progress=run.progress, cancel=run.cancel)


def _step_metrics(run: Run):
    truth = run.get("truth")
    if truth is None:
        truth = run.inputs.get("truth")
        if isinstance(truth, xr.DataTree):
            truth = truth.to_dataset()
    q = truth["q"] if isinstance(truth, xr.Dataset) else truth
    vols = {"approximant": run["approximant"], "apt": run["apt"]}
    if run.get("baselines") is not None:
        vols.update({k: run["baselines"][k] for k in ("fbp", "sirt", "sart")})
    return evaluate(q, vols)


def _has_truth(run: Run) -> bool:
    if run.get("truth") is not None or run.inputs.get("truth") is not None:
        return True
    m = run.inputs.get("measurement")
    if isinstance(m, xr.Dataset) and "true_volume" in m and "sample_shape" in m.attrs:
        return True  # a simulated measurement: its truth gives the metrics (never the reconstruction)
    return not _has_projections(run) and not _has_measurement(run)


def summarize(settings: Settings, results: dict) -> dict:
    """Root attrs: N, range, timings (s) and, with a truth, ``<metric>_<method>`` numbers."""
    out = {}
    p = results.get("projections")
    if p is not None:
        ang = np.asarray(p["angle"].values, float)
        out.update(n_angles=int(ang.size), angle_range=float(np.max(np.abs(ang))))
    a = results.get("approximant")
    if a is not None and "seconds" in a.attrs:
        out["seconds_approximant"] = float(a.attrs["seconds"])
        if "seconds_per_angle" in a.attrs:
            out["seconds_approximant_per_angle"] = float(a.attrs["seconds_per_angle"])
        out["approximant_source"] = str(a.attrs.get("method", ""))
    n = results.get("apt")
    if n is not None and "seconds_network" in n.attrs:
        out.update(seconds_network=float(n.attrs["seconds_network"]), network_input=str(n.attrs["network_input"]),
                   network_trained_on=str(n.attrs.get("network_trained_on", "")))
    b = results.get("baselines")
    if b is not None:
        out.update({k: float(v) for k, v in b.attrs.items() if k.startswith("seconds_")})
    m = results.get("metrics")
    if m is not None:
        for k in ("pcc", "ms_ssim", "dsc", "ber"):
            for meth in m["method"].values:
                out[f"{k}_{meth}"] = float(m[k].sel({"method": meth}))
    return out


def _check_measurement(measurement):
    from .apt_ptycho import check_measurement as _check

    return _check(measurement)


WORKFLOW = Workflow(
    name="apt",
    title="Attentional ptycho-tomography (APT)",
    description="Few-angle, limited-range tomography of integrated circuits: a physics Approximant refined by a "
                "3D U-Net with axial self-attention trained on simulated ICs (shipped weights), compared with "
                "FBP, SIRT and SART at the same angles (PCC, MS-SSIM, DSC, BER).",
    settings=Settings,
    steps=(
        Step("truth", _step_truth, "simulating a held-out IC", weight=1,
             when=lambda r: not _has_projections(r) and not _has_measurement(r)),
        Step("ptychography", _step_ptychography, "ptychography per angle (Approximant)", weight=4, node=False,
             when=_ptycho_path),
        Step("projections", _step_projections, "phase projections", weight=1),
        Step("approximant", _step_approximant, "Approximant", weight=1),
        Step("apt", _step_apt, "APT network", weight=4),
        Step("baselines", _step_baselines, "FBP, SIRT and SART baselines", weight=4, node=False,
             when=lambda r: bool(r.settings.baselines)),
        Step("fbp", lambda r: r["baselines"]["fbp"], "FBP", weight=0.01, when=lambda r: bool(r.settings.baselines)),
        Step("sirt", lambda r: r["baselines"]["sirt"], "SIRT", weight=0.01, when=lambda r: bool(r.settings.baselines)),
        Step("sart", lambda r: r["baselines"]["sart"], "SART", weight=0.01, when=lambda r: bool(r.settings.baselines)),
        Step("metrics", _step_metrics, "metrics against the truth", weight=1, when=_has_truth),
    ),
    summarize=summarize,
    check_measurement=_check_measurement,
    views="ptynb.viz.apt:views",
    summary_keys=(("pcc_apt", "PCC APT", 1.0, ""), ("pcc_fbp", "PCC FBP", 1.0, ""),
                  ("pcc_sirt", "PCC SIRT", 1.0, ""), ("pcc_sart", "PCC SART", 1.0, ""),
                  ("seconds_network", "network time", 1.0, "s")),
    inputs=("projections", "truth"),
)


def assemble(settings: Settings, *, status: str = "complete", **results) -> xr.DataTree:
    """The result tree from step results computed one by one (same code as :func:`run`)."""
    return WORKFLOW.assemble(settings, status=status, **results)


def run(settings: Settings | None = None, measurement=None, *, projections: xr.DataArray | None = None,
        weights=None, progress: bool = True, report: Callable[[float, str], None] | None = None,
        cancel: threading.Event | None = None, truth=None) -> xr.DataTree:
    """Run APT end to end and return an :class:`xarray.DataTree`.

    Parameters
    ----------
    settings : Settings, optional
    measurement : Dataset (angle, scan, qy, qx), optional
        Ptycho-tomography diffraction data (counts; ``angle`` in degrees; the sample-grid attrs
        of :func:`ptynb.workflows.apt_ptycho.sample_grid`, as
        :func:`~ptynb.workflows.apt_ptycho.simulate_measurement` writes them): the
        ptychographic Approximant (``ptycho_*`` settings); the baselines use the per-angle
        summed slice phases as projections. A simulated measurement's ``true_volume`` gives
        the metrics (never the reconstruction).
    projections : DataArray (angle, y, x), optional
        Phase projections (rad; angle in degrees; y/x in metres); the volume grid comes from
        their attrs as :func:`ptynb.tomo.fbp` reads it. Default: a simulated held-out IC.
    weights : path, optional
        Network weights (default: ``settings.weights`` or the shipped file).
    progress, report, cancel
        tqdm bars; ``report(fraction, message)``; a ``threading.Event`` (status "cancelled").
    truth : Dataset with ``q`` (z, y, x) rad/m, or DataArray, optional
        Ground truth of given projections, used only for the ``metrics`` node.

    Returns
    -------
    DataTree with nodes ``truth`` (simulated runs), ``projections``, ``approximant``, ``apt``,
    ``fbp``, ``sirt``, ``sart`` ((z, y, x) rad/m, metres coords) and ``metrics`` (when a truth
    is known); root attrs from :func:`summarize`.

    Raises
    ------
    ValidationError
        Bad projections or measurement (no ``angle`` dim, NaN counts, fewer angles than the
        weights were trained on, angles that look like radians, missing sample-grid attrs),
        both a measurement and projections, unknown weights.
    """
    s = (settings or Settings())
    if weights is not None:
        s = s.copy(weights=str(weights))
    kw = {} if projections is None else {"projections": projections}
    if truth is not None:
        kw["truth"] = truth
    return WORKFLOW.run(s, measurement, progress=progress, report=report, cancel=cancel, **kw)
