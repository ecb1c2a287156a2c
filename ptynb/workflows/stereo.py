"""Stereo hard X-ray ptychography, end to end.

Two or three inclined nanobeams (left, centre, right; the outer two deflected by +-theta_s)
scan the sample at the same time. Each beam's ptychogram is reconstructed on its own; the
views are aligned by sub-pixel phase cross-correlation; the relative shift of features
between views encodes their depth (``2 d tan theta_s``). For two layers the shift is measured
from the views alone (:func:`stereo_steps.measure_layer_parallax`, with its uncertainty and a
reliability flag), or taken from an assumed separation (the paper's prior-knowledge mode,
``shift_source="geometry"``); the layer-recovery step then inverts it (the paper's Eq. 3, with
sub-pixel shifts and N layers). Attrs say which numbers were assumed (``*_assumed``) and
which were measured (``*_measured``).

Pipeline (each step takes and returns xarray objects; :func:`run` chains them into an
:class:`xarray.DataTree`)::

    simulate -> reconstruct_beams -> characterise_beams -> align_views -> separate_layers
                                                        -> frc_per_beam, depth numbers

All settings live in :class:`Settings` (a ``param.Parameterized``), shared by the notebook,
the Panel app (:mod:`ptynb.apps.stereo`) and scripts.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import param
import xarray as xr

from ..control import Cancelled
from ..data import ValidationError
from . import stereo_steps as steps
from ..ptycho.options import LSQMLOptions, PIEOptions, PositionRefinement
from ._base import Run, Step, Workflow, WorkflowSettings
from .stereo_steps import (
    anaglyph,
    depth_resolution_general,
    depth_resolution_multislice,
    depth_resolution_stereo,
    layer_shift,
)

__all__ = [
    "Settings",
    "simulate",
    "reconstruct_beams",
    "characterise_beams",
    "projection_phase",
    "align_views",
    "separate_layers",
    "frc_per_beam",
    "depth_numbers",
    "check_stereo_measurement",
    "run",
    "assemble",
    "combine_beams",
    "anaglyph",
    "WORKFLOW",
]

DEG = np.pi / 180.0
BEAM_LABELS = {2: ("left", "right"), 3: ("left", "center", "right")}


class Settings(WorkflowSettings):
    """All parameters of the stereo workflow (SI units; angles in degrees)."""

    groups = {
        "Sample and beams": ["sample", "n_beams", "theta_s", "separation", "particle_radius", "n_layers",
                             "astigmatism", "defocus", "nominal_defocus_error", "energy_eV", "seed"],
        "Scan and detector": ["scan_grid", "overlap", "jitter", "detector", "pixel_size",
                              "counts_per_pattern"],
        "Reconstruction": ["epie_iterations", "lsqml_iterations", "upsample", "parallel", "position_refinement",
                           "pie", "lsqml"],
        "Analysis": ["reference_beam", "shift_source", "layer_shift_px", "subpixel", "layer_iterations", "frc",
                     "caustic_range", "material"],
    }
    presets = {
        "standard (about a minute)": {},
        "quick look (seconds)": dict(n_beams=2, scan_grid=8, epie_iterations=15, lsqml_iterations=5,
                                     layer_iterations=100),
    }

    # --- sample and beams
    sample = param.Selector(objects=["two_layer", "ic_stack"], default="two_layer",
                            doc="Built-in sample: the paper's two-layer membrane or a layered IC-like stack")
    n_beams = param.Selector(objects=[2, 3], default=3, doc="Simultaneous beams (left/right or left/center/right)")
    theta_s = param.Number(default=1.5, bounds=(0.1, 10.0), doc="Deflection of each outer beam (degrees)")
    separation = param.Number(default=480e-9, bounds=(0, None), doc="Distance between the two layers (m)")
    particle_radius = param.Number(default=125e-9, bounds=(5e-9, None),
                                   doc="Radius of the Au particles of the two-layer sample (m)")
    n_layers = param.Integer(default=2, bounds=(2, 8),
                             doc="Layers of the sample model (the IC-like stack: equally spaced by `separation`)")
    energy_eV = param.Number(default=8000.0, bounds=(100.0, 1e5), doc="Photon energy (eV)")
    pixel_size = param.Number(default=8.1e-9, bounds=(1e-10, 1e-6), doc="Reconstruction pixel (m)")
    detector = param.Integer(default=64, bounds=(16, 1024), doc="Detector pixels per side")
    scan_grid = param.Integer(default=14, bounds=(3, 200), doc="Scan points per side (raster)")
    overlap = param.Number(default=0.7, bounds=(0.3, 0.95), doc="Linear probe overlap between neighbours")
    jitter = param.Number(default=0.3, bounds=(0.0, 0.9), doc="Random jitter (fraction of the step)")
    counts_per_pattern = param.Number(default=1e6, bounds=(1.0, None), doc="Incident counts per pattern")
    astigmatism = param.Number(default=0.0, bounds=(0, None),
                               doc="Astigmatism of the deflected beams (m, half the line-foci distance)")
    defocus = param.Number(default=-120e-6, doc="Sample plane relative to the focus (m; negative = upstream)")
    nominal_defocus_error = param.Number(
        default=0.15, bounds=(0.0, 1.0),
        doc="Simulation: relative error of the nominal defocus recorded for the user (the reconstruction "
            "starts from the nominal optics, never from the true probe)")
    seed = param.Integer(default=0, bounds=(0, None), doc="Random seed (sample, jitter, noise)")
    # --- reconstruction (the paper: 900 ePIE + 100 parallel update, position refinement from 650)
    epie_iterations = param.Integer(default=100, bounds=(0, None), doc="ePIE iterations")
    lsqml_iterations = param.Integer(default=50, bounds=(0, None), doc="Parallel-update (LSQ-ML) iterations")
    position_refinement = param.ClassSelector(
        class_=PositionRefinement, default=PositionRefinement(), instantiate=True,
        doc="Position refinement (ptynb.ptycho.PositionRefinement): start iteration (None: off; the paper: "
            "650 of 1000), max step (px), affine part")
    pie = param.ClassSelector(class_=PIEOptions, default=PIEOptions(), instantiate=True,
                              doc="ePIE step sizes (ptynb.ptycho.PIEOptions; None: the engine's own)")
    # after 100 ePIE sweeps the per-batch preconditioner converges further in the 50 LSQ-ML
    # iterations than the scan-wide default (two-layer demo: particle-layer PCC 0.957 vs
    # 0.941, cross-talk 0.038 vs 0.050, benchmarks/RESULTS.md)
    lsqml = param.ClassSelector(class_=LSQMLOptions, default=LSQMLOptions(preconditioner="batch"),
                                instantiate=True,
                                doc="LSQ-ML knobs (ptynb.ptycho.LSQMLOptions; preconditioner 'batch' here)")
    upsample = param.Integer(default=1, bounds=(1, 4), doc="Reconstruction-grid upsampling factor")
    parallel = param.Boolean(default=False, doc="Reconstruct the beams in parallel (dask LocalCluster)")
    # --- analysis
    reference_beam = param.String(default=None, allow_None=True,
                                  doc="Beam that the other views are aligned to (None: the first beam)")
    shift_source = param.Selector(
        objects=["estimate", "geometry"], default="estimate",
        doc="Layer shifts used by layer recovery: measured from the views alone (two-layer samples; "
            "the measurement is reported with its uncertainty and a reliability flag), or from the "
            "assumed layer separation and beam tilts (the paper's prior-knowledge mode; the sign, i.e. "
            "which layer moves, is decided by the data)")
    layer_shift_px = param.Number(default=None, allow_None=True,
                                  doc="Explicit layer shift between the outer views (px); overrides shift_source")
    subpixel = param.Boolean(default=True, doc="Sub-pixel shifts in layer recovery (False: integer, as in the paper)")
    layer_iterations = param.Integer(default=300, bounds=(10, None), doc="Layer-recovery iterations")
    frc = param.Boolean(default=False, doc="Compute FRC resolution from half datasets (2 extra reconstructions per beam)")
    caustic_range = param.Number(default=200e-6, bounds=(1e-6, None), doc="Caustic z range around the sample (m)")
    material = param.String(default="Au", doc="Material for thickness-from-phase")

    @property
    def beams(self) -> tuple[str, ...]:
        return BEAM_LABELS[int(self.n_beams)]

    @property
    def tilts_deg(self) -> tuple[float, ...]:
        t = float(self.theta_s)
        return (-t, t) if int(self.n_beams) == 2 else (-t, 0.0, t)


# ----------------------------------------------------------------------------- step 1: data
def simulate(settings: Settings, *, progress: bool = False) -> xr.Dataset:
    """The built-in demo: a stereo measurement with a ``beam`` dim and the truth alongside.

    Zone-plate beams (D = 74.9 um, dr = 60 nm, 25 um central stop, as in the paper) at
    ``settings.defocus`` from focus; the outer beams are tilted by -+theta_s about y (optional
    astigmatism); the sample is a 2-slice multislice object (layers ``separation`` apart), so
    the tilted beams see the second layer shifted by ``separation * tan(theta)``.

    Returns
    -------
    measurement Dataset: ``intensity`` (beam, scan, qy, qx), ``true_object`` (slice, y, x),
    ``true_probe`` (beam, mode, py, px), ``true_layers`` (layer, y, x) phase (rad),
    coords ``beam``/``beam_tilt`` (degrees); attrs with every setting.
    """
    from ..physics import phantoms, probes, scan
    from ..simulate import beams as simulate_beams

    s = settings
    n = int(s.detector)
    dx = float(s.pixel_size)
    win = n * dx
    # beam diameter at the sample ~ D |defocus| / f; choose the step for the requested overlap
    zp = dict(diameter=74.9e-6, outer_zone_width=60e-9, central_stop_diameter=25e-6)
    lam = _wavelength(s.energy_eV)
    f = zp["diameter"] * zp["outer_zone_width"] / lam
    beam_d = max(zp["diameter"] * abs(s.defocus) / f, 2.44 * zp["outer_zone_width"])
    if beam_d > 0.8 * win:
        raise ValidationError(
            "defocus", f"the beam ({beam_d * 1e9:.0f} nm) does not fit the {win * 1e9:.0f} nm probe "
            "window; use a smaller |defocus| or a larger detector")
    step = (1.0 - s.overlap) * beam_d
    grid = int(s.scan_grid)
    margin = n // 2 + int(np.ceil(layer_depths(s)[-1] * np.tan(s.theta_s * DEG) / dx)) + 4
    span = (grid - 1) * step
    ny = nx = int(np.ceil(span / dx)) + 2 * margin + 1
    from .._memory import check_available, forecast

    nb, n_pos = len(s.beams), grid * grid
    check_available(forecast({"intensity of each beam": ((nb, n_pos, n, n), "float32"),
                              "stacked intensity": ((nb, n_pos, n, n), "float32"),
                              "sample layers": ((max(2, int(s.n_layers)), ny, nx), "complex128")}),
                    "the stereo simulation", {"detector": n, "scan_grid": grid, "n_beams": nb})
    sy, sx = scan.raster_scan(grid, grid, step, jitter=s.jitter, seed=s.seed,
                              origin=(margin * dx, margin * dx))
    if s.sample == "two_layer":
        sample = phantoms.stereo_two_layer((ny, nx), dx, s.energy_eV, separation=s.separation,
                                           particle_radius=s.particle_radius, seed=s.seed)
    else:
        sample = phantoms.layered_stack((ny, nx), dx, s.energy_eV, n_layers=int(s.n_layers),
                                        spacing=float(s.separation), seed=s.seed)
    layers = np.asarray(sample["layers"].values)  # (layer, y, x) complex transmission
    z = np.asarray(sample["z"].values, dtype=float)
    if layers.shape[0] < 2:
        raise ValidationError("sample", "a stereo sample needs at least two layers")
    gaps = np.diff(z)
    probes_list = []
    for label, tilt in zip(s.beams, s.tilts_deg):
        astig = float(s.astigmatism) if tilt != 0 else 0.0
        p = probes.zone_plate_probe(n, dx, s.energy_eV, defocus=s.defocus, astigmatism=astig,
                                    total_counts=float(s.counts_per_pattern), check_window=False, **zp)
        probes_list.append(p)
    ds = simulate_beams(layers, probes_list, sy, sx, labels=s.beams, tilts=s.tilts_deg, tilt_axis="x",
                        seed=s.seed, progress=progress, pixel_size=dx, radiation="xray",
                        energy_eV=s.energy_eV, slice_thickness=gaps if gaps.size > 1 else float(gaps[0]),
                        counts_per_pattern=float(s.counts_per_pattern),
                        nominal_defocus_error=float(s.nominal_defocus_error))
    true_phase = np.angle(layers).astype(np.float32)
    ds = ds.assign(true_layers=(("layer", "y", "x"), true_phase,
                                {"units": "rad", "long_name": "true phase of each layer"}))
    ds = ds.assign_coords(layer=("layer", np.asarray([str(v) for v in sample["layer"].values])),
                          layer_z=("layer", z, {"units": "m"}))
    ds.attrs.update(s.as_attrs())
    ds.attrs.update(sample=s.sample, separation=float(s.separation), theta_s_deg=float(s.theta_s))
    return ds


def layer_depths(settings: Settings) -> np.ndarray:
    """Depths (m) of the sample model's layers: two layers ``separation`` apart for the
    two-layer sample, else ``n_layers`` layers equally spaced by ``separation``."""
    n = 2 if settings.sample == "two_layer" else int(settings.n_layers)
    return np.arange(n) * float(settings.separation)


def _wavelength(energy_eV):
    from ..physics import wavelength

    return wavelength(energy_eV, "xray")


def check_stereo_measurement(ds) -> xr.Dataset:
    """Validate a stereo measurement: a ``beam`` dim with >= 2 labelled beams and tilts.

    Raises
    ------
    ValidationError
        If the dataset is not a valid measurement, has no ``beam`` axis, fewer than two beams,
        no ``beam_tilt`` coordinate, or duplicate beam labels.
    """
    from ..data import validate

    if not isinstance(ds, xr.Dataset):
        raise ValidationError("measurement", f"expected an xarray Dataset, got {type(ds).__name__}")
    validate(ds)
    if "beam" not in ds["intensity"].dims:
        raise ValidationError(
            "beam", "the measurement has no beam axis: stereo data need intensity (beam, scan, qy, qx) "
            "(load one file per beam and combine them with ptynb.workflows.stereo.combine_beams)")
    if ds.sizes["beam"] < 2:
        raise ValidationError("beam", f"stereo needs at least two beams, got {ds.sizes['beam']}")
    if "beam_tilt" not in ds.coords:
        raise ValidationError("beam_tilt", "missing: give each beam's tilt (degrees) as a beam_tilt coordinate")
    labels = [str(b) for b in ds["beam"].values]
    if len(set(labels)) != len(labels):
        raise ValidationError("beam", f"duplicate beam labels {labels}")
    return ds


def combine_beams(measurements: dict[str, xr.Dataset], tilts: dict[str, float]) -> xr.Dataset:
    """Stack single-beam measurements (e.g. one CXI file per beam) into one with a ``beam`` dim.

    All must share positions, detector shape and energy (checked).
    """
    if len(measurements) < 2:
        raise ValidationError("measurements", "need at least two beams")
    ref = None
    parts = []
    for label, m in measurements.items():
        if "beam" in m["intensity"].dims:
            raise ValidationError(label, "already has a beam dim")
        if ref is None:
            ref = m
        else:
            for key in ("energy_eV", "pixel_size"):
                if not np.isclose(float(m.attrs.get(key, np.nan)), float(ref.attrs.get(key, np.nan)),
                                  rtol=1e-6, atol=0):
                    raise ValidationError(label, f"{key} differs from the first beam's")
            if m.sizes != ref.sizes:
                raise ValidationError(label, f"has sizes {dict(m.sizes)}, first beam {dict(ref.sizes)}")
            if not (np.allclose(m.scan_y.values, ref.scan_y.values) and np.allclose(m.scan_x.values, ref.scan_x.values)):
                raise ValidationError(label, "scan positions differ from the first beam's")
        if label not in tilts:
            raise ValidationError("tilts", f"no tilt given for beam {label!r}")
        parts.append(m[["intensity"]].expand_dims(beam=[label]))
    out = xr.concat(parts, dim="beam", combine_attrs="override")
    out = out.assign_coords(beam_tilt=("beam", [float(tilts[b]) for b in measurements], {"units": "degree"}))
    if "mask" in ref:
        out["mask"] = ref["mask"]
    out.attrs = dict(ref.attrs)
    return check_stereo_measurement(out)


# ----------------------------------------------------------------------------- step 2
def _engine_chain(settings):
    chain = []
    if settings.epie_iterations:
        chain.append(("epie", int(settings.epie_iterations)))
    if settings.lsqml_iterations:
        chain.append(("lsqml", int(settings.lsqml_iterations)))
    if not chain:
        raise ValidationError("iterations", "epie_iterations + lsqml_iterations must be > 0")
    return chain


def reconstruct_beams(measurement: xr.Dataset, settings: Settings, *, progress: bool = True,
                      cancel: threading.Event | None = None, callback=None) -> xr.Dataset:
    """Reconstruct each beam's ptychogram (ePIE then LSQ-ML, the paper's recipe).

    Returns the reconstruction Dataset with a ``beam`` dim: ``object`` (beam, slice, y, x),
    ``probe`` (beam, mode, py, px), refined positions and ``cost`` (beam, iteration).
    """
    from ..ptycho import reconstruct

    check_stereo_measurement(measurement)
    data = measurement[[v for v in ("intensity", "mask") if v in measurement]]
    pr = settings.position_refinement
    rec = reconstruct(data, engine=_engine_chain(settings), upsample=int(settings.upsample),
                      position_refinement=None if pr.start is None else pr,
                      options=[settings.pie, settings.lsqml],
                      progress=progress, cancel=cancel, callback=callback,
                      parallel=bool(settings.parallel), seed=int(settings.seed))
    if "beam_tilt" in measurement.coords and "beam_tilt" not in rec.coords:
        rec = rec.assign_coords(beam_tilt=measurement["beam_tilt"])
    return rec


# ----------------------------------------------------------------------------- step 3
def characterise_beams(reconstruction: xr.Dataset, settings: Settings, *, nominal_defocus: float | None = None,
                       n_planes: int = 41) -> xr.DataTree:
    """Propagate each retrieved probe along z: caustics, focus, spot size, astigmatism.

    The ``settings.caustic_range`` (m) of planes is centred on the focus expected from
    ``nominal_defocus`` (m, sample plane minus focus; what the experimenter set, e.g. the
    measurement's ``nominal_defocus`` attr), default ``settings.defocus``. The focus itself is
    measured from the retrieved probes.

    Returns a DataTree with one node per beam (see :func:`stereo_steps.beam_caustic`).
    """
    from ..physics import wavelength

    lam = wavelength(reconstruction.attrs.get("energy_eV", settings.energy_eV), "xray")
    d = settings.defocus if nominal_defocus is None else nominal_defocus
    z0 = -float(d)  # expected focus distance from the sample plane
    half = float(settings.caustic_range) / 2
    z = np.linspace(z0 - half, z0 + half, n_planes)
    nodes = {}
    for b in reconstruction["beam"].values:
        probe = reconstruction["probe"].sel(beam=b)
        probe = probe.assign_attrs(wavelength=lam)
        nodes[str(b)] = xr.DataTree(steps.beam_caustic(probe, z))
    return xr.DataTree(children=nodes)


# ----------------------------------------------------------------------------- step 4
def projection_phase(obj, *, mask=None) -> np.ndarray:
    """Phase (rad) of a complex projection after removing the global offset and linear ramp.

    The zero level is the 90th percentile of the phase inside ``mask`` (the least
    phase-shifting, "empty" regions), so material with delta > 0 has negative phase.
    """
    from ..imaging import remove_phase_ramp

    o = np.asarray(obj)
    if not np.iscomplexobj(o):
        raise ValidationError("object", "must be complex (a reconstructed transmission)")
    flat = np.asarray(remove_phase_ramp(o, mask=mask))
    ph = np.angle(flat) if np.iscomplexobj(flat) else flat
    sel = ph[mask] if mask is not None else ph
    return (ph - np.percentile(sel, 90)).astype(np.float32)


def _illuminated_mask(rec, b, fraction=0.2):
    """Object pixels well covered by the scanned probe (sum of |probe|^2 over positions)."""
    from scipy import signal

    probe = np.asarray(rec["probe"].sel(beam=b).values)
    power = np.sum(np.abs(probe) ** 2, axis=0)
    ny, nx = rec.sizes["y"], rec.sizes["x"]
    dx = float(rec.attrs["pixel_size"])
    cov = np.zeros((ny, nx))
    sy = np.asarray(rec["scan_y"].sel(beam=b).values if "beam" in rec["scan_y"].dims else rec["scan_y"].values)
    sx = np.asarray(rec["scan_x"].sel(beam=b).values if "beam" in rec["scan_x"].dims else rec["scan_x"].values)
    iy = np.round((sy - float(rec.y.values[0])) / dx).astype(int)
    ix = np.round((sx - float(rec.x.values[0])) / dx).astype(int)
    np.add.at(cov, (np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)), 1.0)
    cov = signal.fftconvolve(cov, power / power.max(), mode="same")
    return cov > fraction * cov.max()


def _reference_beam(settings: Settings, beams) -> str:
    """The reference beam's label (``settings.reference_beam``, default the first beam), checked."""
    beams = [str(b) for b in beams]
    ref = beams[0] if settings.reference_beam is None else str(settings.reference_beam)
    if ref not in beams:
        raise ValidationError("reference_beam", f"{ref!r} is not a beam of the data; beams: {', '.join(beams)}")
    return ref


def align_views(reconstruction: xr.Dataset, settings: Settings) -> xr.Dataset:
    """Phase images of every beam, aligned to the reference beam by sub-pixel phase
    cross-correlation over the commonly illuminated area.

    Returns
    -------
    Dataset with ``phase`` (beam, y, x) aligned (rad), ``raw_phase`` (beam, y, x),
    ``valid`` (y, x) bool (illuminated in every view, away from wrapped borders),
    ``shift_y``/``shift_x`` (beam) in pixels (applied to each view) and attrs.
    """
    from ..imaging import phase_cross_correlation, shift_image

    beams = [str(b) for b in reconstruction["beam"].values]
    ref = _reference_beam(settings, beams)
    masks = {b: _illuminated_mask(reconstruction, b) for b in beams}
    common = np.logical_and.reduce(list(masks.values()))
    if common.sum() < 64:
        raise ValidationError("reconstruction", "the beams share almost no illuminated area")
    raw = {}
    for b in beams:
        obj = reconstruction["object"].sel(beam=b).isel(slice=0).values
        raw[b] = projection_phase(obj, mask=common)
    ys, xs = np.nonzero(common)
    crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    ref_img = raw[ref][crop] * common[crop]
    shifts = {}
    aligned = {}
    for b in beams:
        if b == ref:
            shifts[b] = (0.0, 0.0)
            aligned[b] = raw[b]
            continue
        mov = raw[b][crop] * common[crop]
        sh = phase_cross_correlation(ref_img, mov, upsample=50)  # shift to apply to `mov`
        sh = (float(sh[0]), float(sh[1]))
        shifts[b] = sh
        aligned[b] = np.asarray(shift_image(raw[b], sh)).real.astype(np.float32)
    pad = int(np.ceil(max(max(abs(v[0]), abs(v[1])) for v in shifts.values()))) + 2
    valid = common.copy()
    valid[:pad] = valid[-pad:] = False
    valid[:, :pad] = valid[:, -pad:] = False
    ds = xr.Dataset(
        {"phase": (("beam", "y", "x"), np.stack([aligned[b] for b in beams]), {"units": "rad"}),
         "raw_phase": (("beam", "y", "x"), np.stack([raw[b] for b in beams]), {"units": "rad"}),
         "valid": (("y", "x"), valid),
         "shift_y": ("beam", [shifts[b][0] for b in beams], {"units": "px"}),
         "shift_x": ("beam", [shifts[b][1] for b in beams], {"units": "px"})},
        coords={"beam": beams, "y": reconstruction.y, "x": reconstruction.x},
        attrs={"reference_beam": ref, "pixel_size": float(reconstruction.attrs["pixel_size"])},
    )
    if "beam_tilt" in reconstruction.coords:
        ds = ds.assign_coords(beam_tilt=("beam", np.asarray(reconstruction["beam_tilt"].values, float)))
    return ds


# ----------------------------------------------------------------------------- step 5
def _crop_valid(views: xr.Dataset):
    """Bounding box of the valid area, shrunk (centred) to FFT-friendly sizes."""
    v = views["valid"].values
    ys, xs = np.nonzero(v)
    out = []
    for lo, hi in ((ys.min(), ys.max() + 1), (xs.min(), xs.max() + 1)):
        n = steps.fast_crop_size(hi - lo)
        lo += (hi - lo - n) // 2
        out.append(slice(int(lo), int(lo + n)))
    return tuple(out)


def separate_layers(views: xr.Dataset, settings: Settings, *, truth: xr.DataArray | None = None,
                    depths=None, progress: bool = False) -> xr.Dataset:
    """Recover the sample's layers from the aligned views (the paper's Eq. 3, generalised).

    Model: view ``v`` is the sum of the layers, layer ``l`` shifted by
    ``(z_l - z_ref) tan(theta_v) / px`` along x, where ``z_ref`` is the layer the views were
    aligned on. The shifts come from:

    - ``shift_source="estimate"`` (default; two layers): measured from the views alone by
      :func:`stereo_steps.measure_layer_parallax` (per view, the shifts of both layers, so a
      residual misalignment of the dominant layer is corrected too); all views are used;
    - ``shift_source="geometry"``: the *assumed* layer depths (``depths`` or
      :func:`layer_depths`) and beam tilts; the reference layer and the direction are chosen by
      cross-validation (:func:`stereo_steps.choose_layer_geometry`) and all views are used;
    - ``settings.layer_shift_px`` (two layers, outer views): the moving layer's shift between
      the outer views, as given (overrides ``shift_source``).

    Whatever the source, a two-layer model is also *measured* (the measurement costs ~0.1 s),
    so an assumed depth can be checked against the data. With more than two layers only the
    geometry is available (``shift_source="estimate"`` then uses the geometry and says so in
    ``measurement_note``). The sign-constrained convex problem is solved with sub-pixel shifts
    (rounded to whole pixels if ``settings.subpixel`` is False, as in the paper's original
    algorithm). With ``truth`` (layer, y, x) phases, per-layer PCC and cross-talk are reported
    (recovered and true layers matched by correlation, after registration).

    Returns
    -------
    Dataset with ``layers`` (layer, y, x) (rad) and coords ``layer``, ``layer_z`` (m); attrs:

    - ``layer_shift_px`` (the shift used: largest relative shift between the outer views),
      ``layer_shift_source`` ("estimate", "geometry" or "value"), ``shifts_x_px``, ``views``;
    - assumed (from the settings; geometry and value sources): ``assumed_layer_shift_px``,
      ``separation_assumed`` (m, two layers);
    - measured (from the views; two layers): ``measured_layer_shift_px`` and
      ``measured_layer_shift_uncertainty_px`` (1 sigma, signed: moving layer relative to the
      aligned one from the lowest- to the highest-tilt view), ``separation_measured`` and
      ``separation_measured_uncertainty`` (m, 1 sigma), ``measurement_reliable`` (1/0),
      ``measurement_note`` (why not reliable, or why not measured), ``measured_view_shifts_px``,
      ``envelope_px``; with three or more views ``measurement_chi2``;
    - with truth ``pcc_<name>``, ``crosstalk_<name>``, ``layer_<i>_is``.
    """
    if "beam_tilt" not in views.coords:
        raise ValidationError("beam_tilt", "the views need each beam's tilt (degrees) as a beam_tilt coordinate")
    tilts = np.asarray(views["beam_tilt"].values, dtype=float)
    beams = list(views["beam"].values)
    i0, i1 = int(np.argmin(tilts)), int(np.argmax(tilts))
    px = float(views.attrs["pixel_size"])
    z = np.asarray(layer_depths(settings) if depths is None else depths, dtype=float)
    ys, xs = _crop_valid(views)
    allv = views["phase"].values[:, ys, xs].astype(np.float64)
    dt = np.tan(tilts[i1] * DEG) - np.tan(tilts[i0] * DEG)
    attrs: dict = {}
    meas = None
    if z.size == 2:
        try:
            meas = steps.measure_layer_parallax(allv, tilts * DEG)
        except ValidationError as exc:  # e.g. a field too small for the fit's border
            meas = None
            attrs.update(measured_layer_shift_px=float("nan"), separation_measured=float("nan"),
                         measured_layer_shift_uncertainty_px=float("nan"),
                         separation_measured_uncertainty=float("nan"), measurement_reliable=0,
                         measurement_note=f"not measured: {exc}")
    if meas is not None:
        sep_m = abs(meas["shift"]) * px / dt if dt else float("nan")
        attrs.update(measured_layer_shift_px=meas["shift"],
                     measured_layer_shift_uncertainty_px=meas["uncertainty"],
                     separation_measured=float(sep_m),
                     separation_measured_uncertainty=float(meas["uncertainty"] * px / dt) if dt else float("nan"),
                     measurement_reliable=int(meas["reliable"]), measurement_note=meas["note"],
                     measured_view_shifts_px=np.asarray(meas["per_view"], dtype=float),
                     envelope_px=int(meas["envelope"]))
        if np.isfinite(meas["chi2"]):
            attrs["measurement_chi2"] = float(meas["chi2"])
    elif z.size != 2:
        attrs.update(measured_layer_shift_px=float("nan"), separation_measured=float("nan"),
                     measured_layer_shift_uncertainty_px=float("nan"),
                     separation_measured_uncertainty=float("nan"), measurement_reliable=0,
                     measurement_note=f"not measured: the data-only estimate models two layers, the sample model "
                                      f"has {z.size}")
    if settings.layer_shift_px is not None:
        if z.size != 2:
            raise ValidationError("layer_shift_px", "a single layer shift describes two layers only; "
                                  "use shift_source='geometry' with the layer depths")
        source, sft = "value", float(settings.layer_shift_px)
        data = allv[[i0, i1]]
        shifts = np.zeros((2, 2, 2))
        shifts[1, 1, 1] = sft
        used = [beams[i0], beams[i1]]
    elif settings.shift_source == "estimate" and meas is not None:
        source = "estimate"
        shifts = np.stack([meas["dominant_shifts"], meas["moving_shifts"]], axis=1)  # (V, 2, 2)
        data, used = allv, beams
    else:
        source = "geometry"
        choice = steps.choose_layer_geometry(allv, z, tilts * DEG, px)
        data, shifts, used = allv, choice["shifts"], beams
    res = steps.recover_layers(data, shifts, iterations=int(settings.layer_iterations),
                               subpixel=bool(settings.subpixel), progress=progress)
    if source == "value":
        rel = shifts[-1, :, 1] - shifts[0, :, 1]
    elif source == "geometry":
        rel = shifts[i1, :, 1] - shifts[i0, :, 1]
    else:  # relative to the dominant layer (whose residual misalignment was fitted too)
        rel = (shifts[i1, :, 1] - shifts[i1, 0, 1]) - (shifts[i0, :, 1] - shifts[i0, 0, 1])
    k = int(np.argmax(np.abs(rel)))
    layers = np.zeros((shifts.shape[1],) + views["phase"].shape[1:], np.float32)
    layers[:, ys, xs] = res["layers"]
    attrs.update({"layer_shift_px": float(rel[k]), "layer_shift_source": source,
                  "subpixel": int(bool(settings.subpixel)),
                  "residual_rms": res["residual"], "views": [str(b) for b in used],
                  "shifts_x_px": np.asarray(shifts[..., 1], dtype=float).ravel()})
    if source in ("geometry", "value"):
        attrs["assumed_layer_shift_px"] = float(rel[k])
        if shifts.shape[1] == 2 and dt:
            attrs["separation_assumed"] = float(abs(rel[k]) * px / dt)
    if source == "estimate":
        lz = np.asarray([0.0, attrs["separation_measured"]])
    else:
        lz = z if z.size == shifts.shape[1] else np.arange(shifts.shape[1], dtype=float)
    out = xr.Dataset({"layers": (("layer", "y", "x"), layers, {"units": "rad"})},
                     coords={"layer": np.arange(shifts.shape[1]), "layer_z": ("layer", lz, {"units": "m"}),
                             "y": views.y, "x": views.x}, attrs=attrs)
    if truth is not None:
        out.attrs.update(_layer_scores(out, views, truth, (ys, xs)))
    return out


def _layer_scores(out, views, truth, crop):
    """Compare recovered with true layers: PCC and cross-talk after registration.

    Independent reconstructions are only defined up to a global translation (the
    object/probe ambiguity), so each recovered layer is registered to each true layer by
    sub-pixel cross-correlation before the PCC; recovered layers are matched to true ones by
    maximising the total PCC (Hungarian assignment). Cross-talk of a layer is the largest |PCC|
    of its recovered layer with any *other* true layer, using the matched registration.
    """
    from scipy.optimize import linear_sum_assignment

    from ..metrics import pcc
    from ..imaging import phase_cross_correlation, shift_image

    ys, xs = crop
    rec = out["layers"].values[:, ys, xs].astype(np.float64)
    tr = truth.interp(y=views.y, x=views.x, method="linear").values[:, ys, xs]
    b = int(np.ceil(np.abs(np.asarray(out.attrs.get("shifts_x_px", [0.0]))).max())) + 8
    inner = (slice(b, -b), slice(b, -b))
    n, nt = rec.shape[0], tr.shape[0]
    shifts = np.zeros((n, nt, 2))
    m = np.zeros((n, nt))
    for i in range(n):
        for j in range(nt):
            shifts[i, j] = phase_cross_correlation(tr[j], rec[i], upsample=20, normalization=None)
            m[i, j] = pcc(np.real(shift_image(rec[i], shifts[i, j]))[inner], tr[j][inner])
    rows, cols = linear_sum_assignment(-m)
    names = [str(v) for v in truth["layer"].values] if "layer" in truth.coords else [str(j) for j in range(nt)]
    scores = {}
    for i, j in zip(rows, cols):
        reg = np.real(shift_image(rec[i], shifts[i, j]))[inner]
        scores[f"pcc_{names[j]}"] = float(m[i, j])
        others = [abs(pcc(reg, tr[k][inner])) for k in range(nt) if k != j]
        scores[f"crosstalk_{names[j]}"] = float(max(others)) if others else 0.0
        scores[f"layer_{i}_is"] = names[j]
    return scores


# ----------------------------------------------------------------------------- FRC + numbers
def frc_per_beam(measurement: xr.Dataset, settings: Settings, *, progress: bool = False,
                 cancel: threading.Event | None = None) -> xr.Dataset:
    """FRC resolution of each beam from two half datasets (alternate scan positions).

    Each half is reconstructed independently with the same recipe; the two phase images are
    aligned by cross-correlation and compared with :func:`ptynb.metrics.frc`.

    Returns
    -------
    Dataset with ``frc`` (beam, q), its ``threshold_half_bit`` (beam, q) and ``resolution``
    (beam) in m (where the FRC crosses the half-bit threshold).
    """
    from ..metrics import frc
    from ..ptycho import reconstruct
    from ..imaging import phase_cross_correlation, shift_image

    check_stereo_measurement(measurement)
    data = measurement[[v for v in ("intensity", "mask") if v in measurement]]
    halves = [data.isel(scan=slice(k, None, 2)) for k in (0, 1)]
    recs = [reconstruct(h, engine=_engine_chain(settings), upsample=int(settings.upsample),
                        options=[settings.pie, settings.lsqml], progress=progress, cancel=cancel,
                        seed=int(settings.seed) + k) for k, h in enumerate(halves)]
    curves, res = [], []
    for b in measurement["beam"].values:
        # compare on the common grid (same object frame, same coordinates)
        o1 = recs[0]["object"].sel(beam=b).isel(slice=0)
        o2 = recs[1]["object"].sel(beam=b).isel(slice=0).interp_like(o1, method="nearest")
        rtmp = recs[0].sel(beam=b).expand_dims(beam=[b])
        mask = _illuminated_mask(rtmp, b, fraction=0.5)
        ys, xs = np.nonzero(mask)
        crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        p1 = projection_phase(o1.values, mask=mask)[crop]
        p2 = projection_phase(np.nan_to_num(o2.values, nan=1.0), mask=mask)[crop]
        sh = phase_cross_correlation(p1, p2, upsample=20)
        p2 = np.asarray(shift_image(p2, (float(sh[0]), float(sh[1])))).real
        w = np.outer(np.hanning(p1.shape[0]), np.hanning(p1.shape[1]))
        c = frc((p1 - p1.mean()) * w, (p2 - p2.mean()) * w, pixel_size=float(recs[0].attrs["pixel_size"]))
        curves.append(c)
        res.append(float(c.attrs.get("resolution_half_bit", np.nan)))
    n = min(c.sizes["q"] for c in curves)
    q = curves[0]["q"].values[:n]
    return xr.Dataset({"frc": (("beam", "q"), np.stack([c.values[:n] for c in curves])),
                       "threshold_half_bit": (("beam", "q"),
                                              np.stack([c["threshold_half_bit"].values[:n] for c in curves])),
                       "resolution": ("beam", np.asarray(res), {"units": "m"})},
                      coords={"beam": measurement["beam"].values, "q": ("q", q, {"units": "1/m"})})


def depth_numbers(settings: Settings, resolution: float | None = None, mean_phase: float | None = None) -> dict:
    """The paper's depth numbers for these settings.

    ``resolution`` (m) defaults to two pixels (the paper's conservative choice). Returns a
    dict (SI units): multislice limit (Eq. 1), stereo limit (Eq. 2), general form, layer shift
    ``2 d tan theta_s`` (m and px), and thickness from ``mean_phase`` (rad) if given.
    """
    from ..physics import materials

    lam = _wavelength(settings.energy_eV)
    delta = float(resolution) if resolution else 2 * float(settings.pixel_size)
    th = float(settings.theta_s) * DEG
    shift_m, shift_px = layer_shift(settings.separation, th, settings.pixel_size)
    out = {
        "resolution": delta,
        "wavelength": lam,
        "multislice_depth_limit": depth_resolution_multislice(delta, lam),
        "stereo_depth_limit": depth_resolution_stereo(delta, th),
        "stereo_depth_limit_general": depth_resolution_general(delta, th, th),
        "layer_shift_m": shift_m,
        "layer_shift_px": shift_px,
    }
    if mean_phase is not None:
        out["thickness_from_phase"] = float(materials.thickness_from_phase(mean_phase, settings.material,
                                                                           settings.energy_eV))
    return out


# ----------------------------------------------------------------------------- pipeline
def _step_measurement(run: Run) -> xr.Dataset:
    m = run.inputs.get("measurement")
    if m is None:
        _reference_beam(run.settings, run.settings.beams)  # a bad setting fails before any work
        run.report(0.0, "simulating the stereo measurement")
        return simulate(run.settings, progress=run.progress)
    run.report(0.0, "checking the data")
    m = check_stereo_measurement(m)
    _reference_beam(run.settings, m["beam"].values)
    return m


def _step_reconstruction(run: Run) -> xr.Dataset:
    s = run.settings
    n_total = (s.epie_iterations + s.lsqml_iterations) or 1
    n_beams = run["measurement"].sizes["beam"]
    calls = [0]

    def cb(it, info):  # iterations of each beam in turn (serial) -> one monotone fraction
        calls[0] += 1
        run.report(min(calls[0], n_total * n_beams) / (n_total * n_beams),
                   f"reconstructing: iteration {min(it + 1, n_total)}/{n_total}")

    rec = reconstruct_beams(run["measurement"], s, progress=run.progress, cancel=run.cancel, callback=cb)
    if rec.attrs.get("status") == "cancelled" or run.cancelled:
        raise Cancelled("cancelled during reconstruction", partial=rec)
    return rec


def _step_layers(run: Run) -> xr.Dataset:
    m = run["measurement"]
    truth = m["true_layers"] if "true_layers" in m else None
    depths = m["layer_z"].values if "layer_z" in m.coords else None
    return separate_layers(run["views"], run.settings, truth=truth, depths=depths, progress=run.progress)


def _step_frc(run: Run) -> xr.Dataset:
    fr = frc_per_beam(run["measurement"], run.settings, progress=run.progress, cancel=run.cancel)
    run.check_cancel()
    return fr


def summarize(settings: Settings, results: dict) -> dict:
    """Root attrs of a stereo result.

    - the depth numbers for these settings (:func:`depth_numbers`, with the FRC resolution when
      measured, else two pixels); ``layer_shift_m``/``layer_shift_px`` there are the formula
      ``2 d tan theta_s`` for the *assumed* separation ``settings.separation``;
    - ``separation_assumed`` (m) and ``assumed_layer_shift_px``: what the settings assume;
    - ``measured_layer_shift_px``, ``measured_layer_shift_uncertainty_px``,
      ``separation_measured``, ``separation_measured_uncertainty`` (m, 1 sigma),
      ``separation_measurement_reliable`` (1/0), ``layer_shift_source``: measured from the
      views by layer separation (nan where not measurable, e.g. more than two layers);
    - ``mean_material_phase`` (rad) and ``thickness_from_phase`` (m) of the dominant layer's
      material (see :func:`_mean_material_phase`), when the views exist.
    """
    frc, views, layers = results.get("frc"), results.get("views"), results.get("layers")
    resolution = None
    if frc is not None and np.isfinite(frc["resolution"].values).any():
        resolution = float(np.nanmean(frc["resolution"].values))
    mean_phase = _mean_material_phase(views) if views is not None else None
    nums = depth_numbers(settings, resolution=resolution, mean_phase=mean_phase)
    nums["resolution_source"] = "frc" if resolution is not None else "pixels"
    nums["separation_assumed"] = float(settings.separation)
    nums["assumed_layer_shift_px"] = float(nums["layer_shift_px"])
    if mean_phase is not None:
        nums["mean_material_phase"] = mean_phase
    if layers is not None:
        a = layers.attrs
        nan = float("nan")
        nums["measured_layer_shift_px"] = float(a.get("measured_layer_shift_px", nan))
        nums["measured_layer_shift_uncertainty_px"] = float(a.get("measured_layer_shift_uncertainty_px", nan))
        nums["separation_measured"] = float(a.get("separation_measured", nan))
        nums["separation_measured_uncertainty"] = float(a.get("separation_measured_uncertainty", nan))
        nums["separation_measurement_reliable"] = int(a.get("measurement_reliable", 0))
        nums["layer_shift_source"] = str(a.get("layer_shift_source", ""))
    return nums


WORKFLOW = Workflow(
    name="stereo",
    title="Stereo hard X-ray ptychography",
    description="Two or three inclined nanobeams scan the sample at once: reconstruct each beam, characterise "
                "the beams (caustics, focus, astigmatism), align the views, look at anaglyphs, and separate "
                "layers that are closer than the multislice depth limit.",
    settings=Settings,
    steps=(
        Step("measurement", _step_measurement, "simulating the stereo measurement", weight=5),
        Step("reconstruction", _step_reconstruction, "reconstructing each beam", weight=60),
        Step("caustics", lambda r: characterise_beams(
            r["reconstruction"], r.settings, nominal_defocus=r["measurement"].attrs.get("nominal_defocus")),
            "beam caustics", weight=5),
        Step("views", lambda r: align_views(r["reconstruction"], r.settings), "aligning the views", weight=5),
        Step("layers", _step_layers, "separating the layers", weight=10),
        Step("frc", _step_frc, "FRC from half datasets", weight=15, when=lambda r: bool(r.settings.frc)),
    ),
    summarize=summarize,
    check_measurement=check_stereo_measurement,
    views="ptynb.viz.stereo:views",
    app="ptynb.apps.stereo:app",
    summary_keys=(("stereo_depth_limit", "stereo depth limit (Eq. 2)", 1e9, "nm"),
                  ("multislice_depth_limit", "multislice depth limit (Eq. 1)", 1e6, "um"),
                  ("assumed_layer_shift_px", "layer shift between the outer views (assumed)", 1.0, "px"),
                  ("measured_layer_shift_px", "layer shift between the outer views (measured)", 1.0, "px"),
                  ("measured_layer_shift_uncertainty_px", "  its uncertainty (1 sigma)", 1.0, "px"),
                  ("separation_measured", "layer separation (measured)", 1e9, "nm"),
                  ("separation_measured_uncertainty", "  its uncertainty (1 sigma)", 1e9, "nm"),
                  ("separation_measurement_reliable", "  measurement reliable (1 yes, 0 no: see layers.measurement_note)",
                   1.0, ""),
                  ("thickness_from_phase", "thickness from phase", 1e9, "nm")),
)


def assemble(settings: Settings, *, status: str = "complete", **results) -> xr.DataTree:
    """Collect step results (from a notebook run step by step: ``measurement``,
    ``reconstruction``, ``caustics``, ``views``, ``layers``, ``frc``) into the result tree that
    :func:`run` returns and the app displays (the same code as :func:`run`)."""
    return WORKFLOW.assemble(settings, status=status, **results)


def run(settings: Settings | None = None, measurement: xr.Dataset | None = None, *,
        progress: bool = True, report: Callable[[float, str], None] | None = None,
        cancel: threading.Event | None = None) -> xr.DataTree:
    """Run the whole stereo workflow and return an :class:`xarray.DataTree`.

    Parameters
    ----------
    settings : Settings, optional
        Defaults are CI-small (about a minute on 2 cores).
    measurement : Dataset, optional
        A stereo measurement (``beam`` dim); default: :func:`simulate` with ``settings``.
    progress : bool
        tqdm progress bars.
    report : callable(fraction, message), optional
        Progress callback for apps (fraction in [0, 1], never decreasing).
    cancel : threading.Event, optional
        When set, the run stops at the next check and returns a partial tree (status
        "cancelled") with every finished step and the partial reconstruction.

    Returns
    -------
    DataTree with nodes ``measurement``, ``reconstruction``, ``caustics/<beam>``, ``views``
    (aligned phases), ``layers`` and ``frc`` (if enabled); root attrs hold the depth numbers,
    the status and the settings (``setting_<name>``; :meth:`Settings.from_attrs` rebuilds them).
    On an error the exception carries the partial tree as ``exc.partial_tree``.
    """
    return WORKFLOW.run(settings, measurement, progress=progress, report=report, cancel=cancel)


def _histogram_mode(values, bandwidth: float = 0.02) -> float:
    """Location of the highest peak of a Gaussian-kernel density of ``values`` (parabola-refined)."""
    from scipy import ndimage

    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan")
    step = bandwidth / 4
    edges = np.arange(v.min() - 4 * bandwidth, v.max() + 4 * bandwidth + step, step)
    h = ndimage.gaussian_filter1d(np.histogram(v, bins=edges)[0].astype(float), 4.0)
    k = int(np.argmax(h))
    c = 0.5 * (edges[1:] + edges[:-1])
    if 0 < k < h.size - 1:
        y0, y1, y2 = h[k - 1:k + 2]
        den = y0 - 2 * y1 + y2
        if den < 0:
            return float(c[k] + 0.5 * (y0 - y2) / den * step)
    return float(c[k])


def _mean_material_phase(views: xr.Dataset) -> float:
    """Phase (rad) of the dominant layer's material relative to empty regions.

    The aligned views are averaged (the dominant layer stays sharp), the smooth second layer
    is removed by subtracting the upper envelope (:func:`stereo_steps.upper_envelope`, scale
    from :func:`stereo_steps.fine_layer_period`), the pixels are split into material and
    empty by a two-class EM threshold, and the result is the distance between the two
    classes' histogram modes (their plateaux). The mean over the material class, as before,
    mixed edge pixels (resolution-limited) and pixels where both layers overlap into the
    class and came out ~11 % low on the demo."""
    from ..metrics import em_threshold

    ys, xs = _crop_valid(views)
    m = views["phase"].values[:, ys, xs].astype(np.float64).mean(axis=0)
    size = int(2 * np.ceil(0.5 * 1.25 * steps.fine_layer_period(m)) + 1)
    dom = m - steps.upper_envelope(m, size)
    b = min(12, max(0, min(dom.shape) // 4 - 1))
    v = dom[b:dom.shape[0] - b, b:dom.shape[1] - b].ravel()
    t, _params = em_threshold(v)
    lo, hi = v[v < t], v[v >= t]
    if lo.size == 0 or hi.size == 0:
        return float("nan")
    return _histogram_mode(lo) - _histogram_mode(hi)
