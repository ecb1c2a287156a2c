"""ADePt's ptychography-per-angle path: from far-field diffraction data to phase projections.

A laminographic ptychography measurement (``intensity`` (angle, scan, qy, qx), ``angle`` in
degrees, the laminography tilt in attrs) becomes the phase projections (angle, y, x) rad that
the rest of :mod:`ptynb.workflows.adept` (baselines, deep-image-prior training, metrics)
reads, in four xarray-in/xarray-out steps::

    check_measurement -> reconstruct_angles (LSQ-ML per angle, ptynb.parallel.map_blocks)
        -> phase_images (ramp removal over the well-illuminated region, unwrap, dielectric
           level at zero) -> projections_from_phase (projection-matching alignment,
           centre crop to the common field of view)

:func:`simulate_measurement` makes such a measurement from a known volume
(:func:`ptynb.simulate.tomography`, X-rays, laminography) and hands back what a user knows
(energy, pixel size, scan positions, detector geometry, the nominal zone-plate optics, tilt,
angles) apart from the ground truth.

Conventions: SI units (metres, eV, radians; degrees for ``angle`` and the tilt); the
object's transmission is ``exp(-i k integral delta dz)`` (:mod:`ptynb.simulate`), so a
phase projection ``k integral (delta - delta_dielectric) dz`` is minus the object's phase
relative to the dielectric (or air) level.
"""
from __future__ import annotations

import math
import threading

import numpy as np
import xarray as xr

from ..control import Cancelled
from ..data import ValidationError

__all__ = ["USER_ATTRS", "check_angles", "check_measurement", "detector_shape_for", "illuminated_region", "illumination",
           "phase_images", "projections_from_phase", "reconstruct_angles", "simulate_measurement"]

HC = 12.398419843320026e-7  # h c in eV m

#: measurement attrs a user knows and the reconstruction may read; everything else (the
#: simulator's ``probe_*`` parameters, seeds, ``true_*`` variables, volume grids) is dropped
USER_ATTRS = ("radiation", "energy_eV", "pixel_size", "detector_distance", "detector_pixel_size",
              "reciprocal_pixel_size", "upsample", "zone_plate_diameter", "zone_plate_outer_zone_width",
              "central_stop_diameter", "nominal_defocus", "geometry", "units")


# ============================================================================ checks
def _lamino_tilt(attrs) -> float:
    """The laminography tilt (degrees) from ``lamino_tilt`` or a scalar ``tilt`` attr."""
    for key in ("lamino_tilt", "tilt"):
        v = attrs.get(key)
        if v is None:
            continue
        a = np.asarray(v, dtype=float)
        if a.ndim == 0 or a.size == 1:
            t = float(a.reshape(-1)[0])
            if not np.isfinite(t) or not (0.0 < t <= 90.0):
                raise ValidationError("tilt", f"{t!r} deg: the angle between rotation axis and beam must be "
                                      "in (0, 90]")
            return t
    raise ValidationError("tilt", "missing from the measurement's attrs: give the laminography angle between the "
                          "rotation axis and the beam in degrees (attrs['lamino_tilt'] or a scalar "
                          "attrs['tilt'], e.g. 61.108 for LamNI)")


def check_angles(obj) -> np.ndarray:
    """The ``angle`` coordinate of laminography data (measurement or projections) in degrees,
    checked: present, at least 2, finite, distinct, and not radians by mistake (a ``units``
    attr of radians, or every |value| < 2 pi where laminography scans 360 degrees).

    Returns
    -------
    ndarray (angle,) float64, degrees.
    """
    if "angle" not in obj.coords:
        raise ValidationError("angle", "coordinate missing (degrees)")
    ang = np.asarray(obj["angle"].values, dtype=np.float64)
    if ang.size < 2:
        raise ValidationError("angle", f"only {ang.size} angle; need at least 2")
    if not np.all(np.isfinite(ang)):
        raise ValidationError("angle", "contains NaN or inf")
    if np.unique(np.round(ang, 9)).size != ang.size:
        raise ValidationError("angle", "has repeated values")
    unit = str(obj["angle"].attrs.get("units", "degree")).lower()
    if unit.startswith("rad"):
        raise ValidationError("angle", "is in radians; convert to degrees (np.rad2deg) and set units='degree'")
    if ang.size >= 3 and np.abs(ang).max() < 2 * math.pi:
        raise ValidationError("angle", f"all |values| < 2 pi ({np.abs(ang).max():.3f}) with unit {unit!r}: these look "
                              "like radians; laminography scans 360 degrees. Convert with np.rad2deg")
    return ang


def check_measurement(measurement) -> xr.Dataset:
    """Validate a laminographic ptychography measurement and keep only what a user knows.

    Parameters
    ----------
    measurement : Dataset
        ``intensity`` (angle, scan, qy, qx) counts, ``angle`` in degrees (a 360-degree
        laminography scan), ``scan_y``/``scan_x`` (scan,) or (angle, scan) in m, attrs
        ``radiation="xray"``, ``energy_eV``, ``pixel_size`` (m, or the detector geometry),
        the tilt (``lamino_tilt``, or a scalar ``tilt``, degrees) and, optionally,
        ``geometry="laminography"`` and the nominal optics read by
        :func:`ptynb.ptycho.initial_probe`; optional ``mask`` (qy, qx).

    Returns
    -------
    Dataset: ``intensity`` (angle, scan, qy, qx) with ``scan_y``/``scan_x``, ``mask`` if
    given, attrs :data:`USER_ATTRS` present in the input plus ``lamino_tilt`` (deg) and
    ``geometry="laminography"``. The simulator's ground truth (``true_*`` variables,
    ``probe_*`` attrs, seeds) never gets through.

    Raises
    ------
    ValidationError
        ``measurement``: not a Dataset, no ``intensity``, no ``angle`` dim, NaN/inf or
        negative counts; ``radiation``: not X-rays; ``tilt``: missing or out of (0, 90];
        ``geometry``: not laminography; ``angle``: fewer than 2, repeated, or in radians;
        and whatever :func:`ptynb.data.validate` finds.
    """
    from ..data import validate

    if not isinstance(measurement, xr.Dataset):
        raise ValidationError("measurement", f"must be an xarray.Dataset (angle, scan, qy, qx), got "
                              f"{type(measurement).__name__}")
    if "intensity" not in measurement:
        raise ValidationError("measurement", "has no 'intensity' variable (angle, scan, qy, qx) in counts; phase "
                              "projections (angle, y, x) go in as projections=")
    inten = measurement["intensity"]
    if "angle" not in inten.dims:
        raise ValidationError("measurement", f"intensity has dims {inten.dims} without an 'angle' dim: ADePt needs "
                              "one ptychography scan per laminography angle (angle, scan, qy, qx), angle in degrees")
    if tuple(inten.dims) != ("angle", "scan", "qy", "qx"):
        raise ValidationError("measurement", f"intensity has dims {inten.dims}; expected ('angle', 'scan', 'qy', 'qx')")
    a = measurement.attrs
    rad = str(a.get("radiation", "xray"))
    if rad != "xray":
        raise ValidationError("radiation", f"{rad!r}: ADePt reconstructs X-ray phase (refractive decrement delta); "
                              "give an X-ray measurement")
    geom = str(a.get("geometry", "laminography"))
    if geom != "laminography":
        raise ValidationError("geometry", f"{geom!r}: ADePt needs a laminography measurement (geometry="
                              "'laminography' and the tilt in the attrs)")
    tilt = _lamino_tilt(a)
    ang = check_angles(measurement)
    values = np.asarray(inten.values)
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(values.size - np.count_nonzero(finite))
        k = int(np.argmin(finite.all(axis=(1, 2, 3))))
        raise ValidationError("measurement", f"intensity contains {bad} NaN/inf values (first at angle index {k}, "
                              f"{float(ang[k]):g} deg); mask the bad detector pixels (mask (qy, qx), False = "
                              "invalid, values set to 0) or drop those patterns")
    if np.any(values < 0):
        raise ValidationError("measurement", "intensity has negative counts; subtract the dark frame with "
                              "clipping at 0")
    keep = [v for v in ("intensity", "mask") if v in measurement.data_vars]
    out = measurement[keep]
    drop = [c for c in out.coords if c not in ("angle", "scan", "scan_y", "scan_x", "qy", "qx")]
    out = out.drop_vars(drop)
    attrs = {k: a[k] for k in USER_ATTRS if k in a and a[k] is not None}
    attrs.update(kind="measurement", radiation="xray", geometry="laminography", lamino_tilt=tilt)
    out.attrs = attrs
    out["angle"].attrs = {"units": "degree"}
    validate(out)
    return out


# ============================================================================ simulation
def detector_shape_for(volume_shape, voxel_size: float, tilt: float, angles=None) -> tuple[int, int]:
    """Detector (ny, nx) pixels of :func:`ptynb.tomo.project` for a centred volume grid: large
    enough for the whole volume in every view (pixel = voxel). ``angles`` (degrees) default
    to a full turn in 1-degree steps, so the detector does not depend on the angles measured."""
    from ..tomo import Geometry
    from ..tomo.projector import Projector

    ang = np.arange(360.0) if angles is None else np.asarray(angles, float)
    g = Geometry("laminography", ang, float(tilt))
    op = Projector(g, tuple(int(n) for n in volume_shape), None, float(voxel_size))
    return tuple(int(n) for n in op.detector_shape)


def simulate_measurement(volume: xr.DataArray, angles, *, tilt: float, energy_eV: float,
                         detector_pixels: int = 16, scan_step: float | None = None,
                         counts_per_pattern: float = 1e6, probe_defocus: float = 60e-6,
                         zone_plate_diameter: float = 74.9e-6, outer_zone_width: float = 60e-9,
                         seed: int = 0, progress: bool = False) -> tuple[xr.Dataset, xr.Dataset]:
    """Far-field X-ray ptychography at every laminography angle of a phase volume.

    The volume (the phase per unit length ``k delta`` relative to the dielectric, rad/m) is
    turned into ``delta``, centred in a box large enough for every rotation (air = the
    dielectric level outside it) and measured by :func:`ptynb.simulate.tomography`
    (``geometry="laminography"``, Poisson noise) in one slice: the projection approximation,
    as the box (about 1 um deep for the tests' 8 x 24 x 24 voxels of 27 nm) is much thinner
    than the depth of field ``2 dx^2 / lambda`` (7 um at 6.2 keV). The probe is a zone
    plate's (:func:`ptynb.physics.zone_plate_probe`, central stop of a third of its
    diameter, ``probe_defocus`` downstream of the focus) on a raster (jitter 20 % of the step)
    covering the detector of :func:`ptynb.tomo.project` for that volume plus 4 pixels on each
    side (the alignment margin of :func:`projections_from_phase`).

    Parameters
    ----------
    volume : DataArray (z, y, x)
        rad/m on a centred grid with equal voxel sizes (m).
    angles : array (angle,)
        Degrees.
    tilt : float
        Angle between rotation axis and beam (degrees).
    energy_eV : float
    detector_pixels : int
        Detector (and probe window) side N; the object pixel is the voxel size.
    scan_step : float, optional
        Raster step (m); default N / 5 pixels.
    counts_per_pattern : float
        Photons per pattern (Poisson noise).
    probe_defocus : float
        Sample downstream of the focus (m); sets the spot size (60 um: about 7 px at 27 nm).
    zone_plate_diameter, outer_zone_width : float
        The optics (m), recorded in the attrs as the nominal optics a user knows; the
        recorded ``nominal_defocus`` is off by 15 % (:func:`ptynb.simulate.ptychography`).
    seed : int

    Returns
    -------
    (measurement, truth)
        ``measurement``: :func:`check_measurement` of the simulation (only what a user knows);
        ``truth``: Dataset with ``true_object`` (angle, y, x) complex, ``true_probe`` (mode,
        py, px), attrs ``probe_*`` (never read by the reconstruction).
    """
    from .. import simulate
    from ..physics.probes import zone_plate_probe
    from ..physics.scan import raster_scan

    v = np.asarray(volume.values, dtype=np.float64)
    dx = float(np.diff(volume["x"].values[:2])[0])
    k = 2 * math.pi * float(energy_eV) / HC
    delta = v / k
    n = int(detector_pixels)
    det = detector_shape_for(v.shape, dx, tilt)
    step_px = (n / 5.0) if scan_step is None else float(scan_step) / dx
    # probe centres over the detector's field of view; the object box holds every window
    half = np.asarray(det) / 2.0 + 4.0  # + the alignment margin of projections_from_phase
    ny_s = int(math.ceil(2 * half[0] / step_px)) + 1
    nx_s = int(math.ceil(2 * half[1] / step_px)) + 1
    diag = int(math.ceil(math.sqrt(float(np.sum(np.square(v.shape)))))) + 2
    lat = int(2 * math.ceil(max(half) + step_px + n / 2 + 2))
    box = (max(diag, v.shape[0]), max(diag, lat, v.shape[1]), max(diag, lat, v.shape[2]))
    big = np.zeros(box, np.float64)
    sl = tuple(slice(b // 2 - s // 2, b // 2 - s // 2 + s) for b, s in zip(box, v.shape))
    big[sl] = delta
    coords = {d: (np.arange(b) - b // 2) * dx for d, b in zip("zyx", box)}
    big_da = xr.DataArray(big.astype(np.float32), dims=("z", "y", "x"), coords=coords)
    probe = zone_plate_probe(n, dx, float(energy_eV), diameter=zone_plate_diameter,
                             outer_zone_width=outer_zone_width, central_stop_diameter=zone_plate_diameter / 3,
                             defocus=float(probe_defocus), check_window=False)
    sy, sx = raster_scan(ny_s, nx_s, step_px * dx, jitter=0.2, seed=int(seed),
                         origin=(-(ny_s - 1) / 2 * step_px * dx, -(nx_s - 1) / 2 * step_px * dx))
    ds = simulate.tomography(big_da, np.asarray(angles, float), probe, sy, sx, radiation="xray",
                             energy_eV=float(energy_eV), geometry="laminography", tilt=float(tilt),
                             voxels_per_slice=box[0], counts_per_pattern=float(counts_per_pattern),
                             noise="poisson", seed=int(seed), progress=progress)
    truth = xr.Dataset({"true_object": ds["true_object"].isel(slice=0, drop=True),
                        "true_probe": ds["true_probe"]},
                       attrs={k2: v2 for k2, v2 in ds.attrs.items() if str(k2).startswith("probe_")})
    meas = check_measurement(ds)
    return meas, truth


# ============================================================================ 1. per-angle LSQ-ML
def _reconstruct_one(block: xr.Dataset, *, opts: dict, run_dir: str | None = None, report=None,
                     block_cancel=None, n_blocks: int = 1, angles=None) -> xr.Dataset:
    """One angle (map_blocks worker, module level for dask): LSQ-ML, read from / written to
    ``run_dir`` (complete angles only)."""
    from ..ptycho import reconstruct
    from ._checkpoints import block_path, fingerprint, load_block

    angle = float(block["angle"].values) if "angle" in block.coords else 0.0
    fp = fingerprint(block, opts)
    path = block_path(run_dir, "angle", angle)
    old = load_block(path, fp)
    if old is not None:
        return old
    data = block.drop_vars("angle", errors="ignore")
    index = 0 if angles is None else int(np.argmin(np.abs(np.asarray(angles) - angle)))
    cb = None
    if report is not None:
        its = max(1, int(opts["iterations"]))

        def cb(it, info):
            report((index + min(it + 1, its) / its) / n_blocks, f"LSQ-ML at {angle:g} deg ({index + 1}/{n_blocks})")
    rec = reconstruct(data, engine="lsqml", iterations=int(opts["iterations"]), seed=int(opts["seed"]),
                      modes=int(opts["modes"]), progress=False, cancel=block_cancel, callback=cb)
    out = xr.Dataset({"object": rec["object"].isel(slice=0, drop=True),
                      "probe": rec["probe"], "cost": rec["cost"]},
                     coords={"scan_y": rec["scan_y"], "scan_x": rec["scan_x"]})
    out.attrs = {"fingerprint": fp, "status": rec.attrs.get("status", "complete"),
                 "pixel_size": float(rec.attrs["pixel_size"])}
    if out.attrs["status"] == "complete":
        from ._checkpoints import save_block

        save_block(out, path)
    return out


def reconstruct_angles(measurement: xr.Dataset, *, iterations: int = 30, modes: int = 1, seed: int = 0,
                       parallel: int = 0, client=None, run_dir: str | None = None, progress: bool = False,
                       report=None, cancel: threading.Event | None = None) -> xr.Dataset:
    """LSQ-ML ptychography (:func:`ptynb.ptycho.reconstruct`) at every angle, fanned out with
    :func:`ptynb.parallel.map_blocks`.

    Parameters
    ----------
    measurement : Dataset
        Checked by :func:`check_measurement` (only what a user knows is passed on).
    iterations, modes, seed
        LSQ-ML iterations per angle, probe modes, seed of the batches.
    parallel : int
        0: serially in this process (progress and cancel inside each angle); n >= 1: a local
        dask cluster of n single-threaded workers for the call (1 means 2, the default of
        :func:`ptynb.parallel.local_cluster`).
    client : distributed.Client or str, optional
        Run the angles on this cluster instead.
    run_dir : str, optional
        Every finished angle is written to ``<run_dir>/angle_<angle>.h5`` with a fingerprint
        of its data and settings; a later call reads those back instead of recomputing
        them, so a stopped run resumes where it was.
    progress, report, cancel
        tqdm bar over the angles; ``report(fraction, message)`` (serial runs: per LSQ-ML
        iteration); a ``threading.Event``: no further angle is started (serially the
        current one stops after its iteration).

    Returns
    -------
    Dataset: ``object`` (angle, y, x) complex64 on one frame for every angle (m, the scan
    positions' frame), ``probe`` (angle, mode, py, px), ``cost`` (angle, iteration),
    ``scan_y``/``scan_x`` (m); attrs ``pixel_size`` (m), ``energy_eV``, ``lamino_tilt``
    (deg), ``iterations``, ``angles_done``, ``status``.

    Raises
    ------
    Cancelled
        When ``cancel`` is set before every angle is done, carrying the finished angles (NaN
        where not done).
    """
    from ..parallel import map_blocks

    m = check_measurement(measurement)
    opts = dict(iterations=int(iterations), modes=int(modes), seed=int(seed), engine="lsqml")
    ang = np.asarray(m["angle"].values, float)
    kw = dict(opts=opts, run_dir=run_dir, n_blocks=int(ang.size), angles=ang)
    use_cluster = client is not None or int(parallel) > 0
    if not use_cluster:
        kw.update(report=report, block_cancel=cancel)
    out = map_blocks(_reconstruct_one, m, dims=("angle",), client=client,
                     parallel=(int(parallel) or None) if client is None else None,
                     progress=progress, cancel=cancel, pad=("iteration",), join="outer", **kw)
    done = np.ones(ang.size, bool)
    if "block_status" in out:  # some angle cancelled inside its iterations or never started
        done = np.asarray(out["block_status"].values).astype(str) == "complete"
        out = out.drop_vars("block_status")
    out.attrs = {"kind": "ptychography", "pixel_size": float(m.attrs["pixel_size"]),
                 "energy_eV": float(m.attrs["energy_eV"]), "lamino_tilt": float(m.attrs["lamino_tilt"]),
                 "geometry": "laminography", "iterations": int(iterations), "engine": "lsqml",
                 "angles_done": int(done.sum()),
                 "status": "complete" if done.all() else "cancelled"}
    if not done.all():
        raise Cancelled("cancelled during the per-angle ptychography", partial=out)
    return out


# ============================================================================ 2. phase
def illumination(probe, scan_y, scan_x, y, x) -> np.ndarray:
    """Summed probe intensity ``sum_j sum_modes |P(r - r_j)|^2`` on the object grid (y, x).

    ``probe`` (mode, py, px); positions and ``y``/``x`` coords in m (regular grid, pixel =
    probe pixel); positions rounded to the nearest pixel.
    """
    p = np.sum(np.abs(np.asarray(probe)) ** 2, axis=0)
    y = np.asarray(y, float)
    x = np.asarray(x, float)
    dx = float(y[1] - y[0])
    cov = np.zeros((y.size, x.size))
    iy = np.round((np.asarray(scan_y) - y[0]) / dx).astype(int)
    ix = np.round((np.asarray(scan_x) - x[0]) / dx).astype(int)
    ok = (iy >= 0) & (iy < y.size) & (ix >= 0) & (ix < x.size)
    np.add.at(cov, (iy[ok], ix[ok]), 1.0)
    # periodic convolution with the probe's pixel (py // 2, px // 2) at the position
    ker = np.zeros_like(cov)
    py, px = p.shape
    ker[np.ix_((np.arange(py) - py // 2) % y.size, (np.arange(px) - px // 2) % x.size)] = p
    out = np.fft.irfft2(np.fft.rfft2(cov) * np.fft.rfft2(ker), s=cov.shape)
    return np.maximum(out, 0.0)


def illuminated_region(ill: np.ndarray, threshold: float = 0.3, smooth: float = 2.0) -> np.ndarray:
    """Bool (y, x): the summed probe intensity, smoothed by a Gaussian of ``smooth`` pixels,
    above ``threshold`` times its maximum, with its holes filled (a structured probe, e.g. a
    defocused zone plate with a central stop, leaves dips between the positions that are still
    inside the scanned area)."""
    from scipy import ndimage

    s = ndimage.gaussian_filter(np.asarray(ill, float), float(smooth)) if smooth else np.asarray(ill, float)
    return ndimage.binary_fill_holes(s > float(threshold) * float(s.max()))


def _wraps(ph, mask) -> bool:
    dy = np.abs(np.diff(ph, axis=0))[mask[1:] & mask[:-1]]
    dxx = np.abs(np.diff(ph, axis=1))[mask[:, 1:] & mask[:, :-1]]
    return bool((dy.size and dy.max() > 0.8 * math.pi) or (dxx.size and dxx.max() > 0.8 * math.pi))


def phase_images(ptycho: xr.Dataset, *, threshold: float = 0.3, background_fraction: float = 0.5,
                 rounds: int = 4) -> xr.Dataset:
    """Phase projections on the object grid: ramp removed, unwrapped if needed, dielectric at 0.

    For each angle: the well-illuminated region is where the summed probe intensity
    (:func:`illumination`) exceeds ``threshold`` times its maximum; a phase plane is removed
    from the complex object over it (:func:`ptynb.imaging.remove_phase_ramp`, wrap-safe), the
    phase is unwrapped there (:func:`ptynb.imaging.unwrap_phase`) when neighbouring pixels
    jump by more than 0.8 pi, and its sign flipped (X-rays: the object's phase is
    ``-k integral delta``). Then, ``rounds`` times, a plane is fitted to the background (the
    lowest ``background_fraction`` of the region's phases at first: the dielectric, which the
    metal only adds to; then the pixels within 3 robust standard deviations of zero, so that
    the fit centres the dielectric's noise peak) and removed: the dielectric (or air) level
    is zero. Outside the
    region the phase is set to 0.

    Parameters
    ----------
    ptycho : Dataset
        From :func:`reconstruct_angles`: ``object`` (angle, y, x), ``probe`` (angle, mode,
        py, px), ``scan_y``/``scan_x``.

    Returns
    -------
    Dataset: ``phase`` (angle, y, x) float32 rad, ``mask`` (angle, y, x) bool (the
    well-illuminated region), ``ramp`` (angle, param) the removed plane (c0 rad, cy, cx
    rad/pixel, from :func:`ptynb.imaging.remove_phase_ramp`); attrs ``unwrapped`` (angles
    unwrapped), ``threshold``, ``background_fraction``.
    """
    from ..imaging import remove_phase_ramp, unwrap_phase

    if not 0.0 < float(threshold) < 1.0:
        raise ValidationError("illumination_threshold", f"{threshold!r}: must be in (0, 1)")
    obj = ptycho["object"]
    y, x = obj["y"].values, obj["x"].values
    ny, nx = y.size, x.size
    na = obj.sizes["angle"]
    phase = np.zeros((na, ny, nx), np.float32)
    masks = np.zeros((na, ny, nx), bool)
    ramps = np.full((na, 3), np.nan)
    unwrapped = 0
    for i in range(na):
        o = np.asarray(obj.values[i])
        fin = np.isfinite(o)
        if not fin.any():  # an angle that was not reconstructed
            phase[i] = np.nan
            continue
        sy = ptycho["scan_y"].values[i] if "angle" in ptycho["scan_y"].dims else ptycho["scan_y"].values
        sx = ptycho["scan_x"].values[i] if "angle" in ptycho["scan_x"].dims else ptycho["scan_x"].values
        ill = illumination(ptycho["probe"].values[i], sy, sx, y, x)
        m = illuminated_region(ill, threshold) & fin
        o = np.where(fin, o, 1.0)
        z, params = remove_phase_ramp(o, mask=m, return_params=True)
        ph = -np.angle(z)
        if _wraps(ph, m):
            ph = np.asarray(unwrap_phase(np.where(m, ph, 0.0), mask=m))
            unwrapped += 1
        total = np.asarray(params, float).copy()
        bg = m & (ph <= np.percentile(ph[m], 100 * float(background_fraction)))
        for _ in range(max(1, int(rounds))):
            ph, p2 = remove_phase_ramp(ph, mask=bg, return_params=True)
            total -= np.asarray(p2, float)  # the sign flip: the object's plane is minus the phase's
            # the dielectric's noise peak, now near 0: clip symmetrically about it (the metal's
            # tail is positive), so the next fit centres the peak instead of its lower half
            sigma = 1.4826 * float(np.median(np.abs(ph[bg]))) or 1e-12
            bg = m & (np.abs(ph) < 3.0 * sigma)
        phase[i] = np.where(m, ph, 0.0)
        masks[i] = m
        ramps[i] = total
    coords = {"angle": obj["angle"], "y": obj["y"], "x": obj["x"]}
    return xr.Dataset(
        {"phase": (("angle", "y", "x"), phase, {"units": "rad", "long_name": "phase k int (delta - delta_0) dz"}),
         "mask": (("angle", "y", "x"), masks, {"long_name": "well-illuminated region"}),
         "ramp": (("angle", "param"), ramps, {"long_name": "removed object phase plane (c0 rad, cy, cx rad/px)"})},
        coords={**coords, "param": ["c0", "cy", "cx"]},
        attrs={"kind": "phase_images", "unwrapped": int(unwrapped), "threshold": float(threshold),
               "background_fraction": float(background_fraction), "pixel_size": float(ptycho.attrs["pixel_size"]),
               "energy_eV": float(ptycho.attrs["energy_eV"]), "lamino_tilt": float(ptycho.attrs["lamino_tilt"])})


# ============================================================================ 3-4. align, crop
def _largest_centred(mask: np.ndarray, cy: int, cx: int) -> tuple[int, int]:
    """(ny, nx) of the largest crop centred on pixel (cy, cx) (its pixel n // 2) inside ``mask``."""
    def fits(hy, hx):
        a, b = cy - hy // 2, cx - hx // 2
        if a < 0 or b < 0 or a + hy > mask.shape[0] or b + hx > mask.shape[1]:
            return False
        return bool(mask[a:a + hy, b:b + hx].all())

    n = 1
    while fits(n + 1, n + 1):
        n += 1
    hy, hx = n, n
    while fits(hy + 1, hx):
        hy += 1
    while fits(hy, hx + 1):
        hx += 1
    return hy, hx


def _crop(phase: xr.Dataset, shape) -> xr.DataArray:
    ph = phase["phase"]
    dx = float(phase.attrs["pixel_size"])
    y, x = ph["y"].values, ph["x"].values
    cy = int(round(-y[0] / dx))
    cx = int(round(-x[0] / dx))
    hy, hx = shape
    return ph.isel(y=slice(cy - hy // 2, cy - hy // 2 + hy), x=slice(cx - hx // 2, cx - hx // 2 + hx))


def projections_from_phase(phase: xr.Dataset, *, volume_shape=None, align: bool = True,
                           align_iterations: int = 10, margin: int = 4, progress: bool = False,
                           cancel: threading.Event | None = None) -> xr.DataArray:
    """Aligned, centre-cropped laminographic phase projections for ADePt.

    The common field of view is the region illuminated in every angle. With a known
    ``volume_shape`` the projections get the detector of :func:`ptynb.tomo.project` for that
    centred grid (voxel = pixel) and its grid in the attrs; without one, the largest centred
    rectangle in the common field of view (the reconstruction grid is then chosen by
    :func:`ptynb.workflows.adept.volume_grid`). With ``align``, a crop ``margin`` pixels
    larger on every side is aligned by projection matching
    (:func:`ptynb.tomo.align`, ``method="projection_matching"``, laminography at the
    measurement's tilt, SIRT volumes on the grid, ``align_iterations`` rounds, the rigid
    null space removed) before the final crop: per-angle ptychography leaves each angle's
    object at an arbitrary sub-pixel offset.

    Parameters
    ----------
    phase : Dataset
        From :func:`phase_images` (angles not reconstructed, NaN, are left out).
    volume_shape : (nz, ny, nx), optional
        The reconstruction grid (voxels of the pixel size, centred), if known.

    Returns
    -------
    DataArray (angle, y, x) float32 rad, angle in degrees, y/x in m (zero at pixel n // 2);
    coords ``shift_y``/``shift_x`` (pixels, the alignment's correction, zero without it);
    attrs ``geometry="laminography"``, ``tilt`` (deg), ``pixel_size``, ``energy_eV``,
    ``source="ptychography"`` and, with ``volume_shape``, ``volume_shape``, ``voxel_size``,
    ``volume_origin`` as :func:`ptynb.tomo.project` writes them.

    Raises
    ------
    ValidationError ("volume_shape")
        When the projections of the grid do not fit the common field of view.
    """
    from .. import tomo
    from ..data import projections as make_projections
    from ..tomo import Geometry
    from ..tomo.projector import Projector

    ph = phase
    keep = np.isfinite(ph["phase"].values).all(axis=(1, 2))
    if not keep.all():
        ph = ph.isel(angle=np.nonzero(keep)[0])
    if ph.sizes["angle"] < 2:
        raise ValidationError("measurement", "fewer than 2 angles were reconstructed")
    dx = float(ph.attrs["pixel_size"])
    tilt = float(ph.attrs["lamino_tilt"])
    ang = np.asarray(ph["angle"].values, float)
    common = np.asarray(ph["mask"].values).all(axis=0)
    y0, x0 = float(ph["y"].values[0]), float(ph["x"].values[0])
    cy, cx = int(round(-y0 / dx)), int(round(-x0 / dx))
    fov = _largest_centred(common, cy, cx)
    geo = Geometry("laminography", ang, tilt)
    attrs = dict(geo.to_attrs(), units="rad", source="ptychography", energy_eV=float(ph.attrs["energy_eV"]),
                 long_name="phase k int (delta - delta_0) dz")
    if volume_shape is not None:
        vs = tuple(int(n) for n in volume_shape)
        det = detector_shape_for(vs, dx, tilt)
        if det[0] > fov[0] or det[1] > fov[1]:
            raise ValidationError("volume_shape", f"{vs} voxels of {dx:.3g} m project onto {det} pixels; the field "
                                  f"of view illuminated in every angle is only {fov} pixels: scan a larger area "
                                  "or reconstruct a smaller volume")
        op = Projector(geo, vs, det, dx)
        attrs.update(op.describe())
        attrs["pixel_size_yx"] = np.asarray([dx, dx])
    else:
        det = fov
    big = (min(det[0] + 2 * int(margin), fov[0]), min(det[1] + 2 * int(margin), fov[1])) if align else det
    crop = _crop(ph, big)
    P = make_projections(crop.values.astype(np.float32), ang, pixel_size=dx, **attrs)
    shifts = np.zeros((ang.size, 2))
    if align:
        kw = {}
        if volume_shape is not None:
            kw["recon_options"] = {"volume_shape": tuple(int(n) for n in volume_shape)}
        else:
            from .adept import volume_grid

            kw["recon_options"] = {"volume_shape": volume_grid(P.assign_attrs(geometry="laminography"))}
        kw["project_options"] = {"detector_shape": tuple(big), "pixel_size": dx}
        Pa, info = tomo.align(P, method="projection_matching", iterations=int(align_iterations),
                              geometry="laminography", tilt=tilt, progress=progress, cancel=cancel, **kw)
        shifts = np.asarray(info["shifts"], float)
        P = Pa
    oy, ox = big[0] // 2 - det[0] // 2, big[1] // 2 - det[1] // 2  # zero stays at pixel n // 2
    out = P.isel(y=slice(oy, oy + det[0]), x=slice(ox, ox + det[1]))
    out = make_projections(np.ascontiguousarray(out.values, np.float32), ang, pixel_size=dx, **attrs)
    out = out.assign_coords(shift_y=("angle", shifts[:, 0], {"units": "pixel"}),
                            shift_x=("angle", shifts[:, 1], {"units": "pixel"}))
    out.attrs.update(aligned=int(bool(align)), field_of_view_px=np.asarray(fov, np.int64))
    out.name = "projections"
    return out
