"""The ptychographic Approximant of APT: simulated ptycho-tomography and its 2-iteration inversion.

After Kang, Wu et al. (APT, "Approximant"): per tomographic angle, two gradient iterations of
mixed-state multislice ptychography (``L = 5`` slices, ``M`` probe modes) give the phases of
``L`` slabs of the rotated sample; those slab phases are rotated back to the sample frame,
averaged over the ``N`` angles and dilated along z to the slice count of the network's grid.
From phase projections instead, the equivalent is the backprojection-based Approximant of
:func:`ptynb.workflows.apt_steps.approximant` (``kind="backprojection"``: the same rotated-back,
averaged, z-dilated phases, without ptychography; ``kind="fbp"`` its ramp-filtered form).

Geometry (the conventions of :mod:`ptynb.simulate` and :mod:`ptynb.tomo`, one rotation from
:func:`ptynb.physics.rotations.sample_to_lab`):

* the sample volume ``q`` (z, y, x) rad/m (``k delta``) lies on a centred grid (coordinate 0 at
  voxel ``n // 2``), surrounded by vacuum (a pillar / lamella);
* at angle ``theta`` (degrees, about the sample's y axis) a sample point ``s`` (z, y, x) sits at
  ``r = R(theta) s`` in the lab; the beam runs along lab +z;
* the measured slab is ``thickness`` (m) thick along the beam, centred on the rotation axis,
  cut into ``L`` slices of ``thickness / L``; slice ``l`` holds
  ``phase_l(y, x) = -integral_{slab l} q dz`` (rad);
* so the Approximant at ``s`` is ``-phase(R(theta) s) / (thickness / L)`` (rad/m), linearly
  interpolated between the slab centres along the beam (the z dilation) and bilinearly in
  (y, x), averaged over the angles. Rotating back and dilating are one resampling here
  (a 5-slice volume cannot be rotated on its own grid), equal to dilating first and then
  applying the inverse rotation ``R(theta)^T``.

Simulated experiments (:func:`simulate_measurement`): the IC volume is padded with vacuum so
that every rotated view fits the slab and the scan covers the sample's footprint plus a vacuum
margin (whose rows at ``|y| > ny dy / 2`` fix each slice's phase offset and ramp:
:func:`ptynb.imaging.remove_phase_ramp` with that mask); X-ray zone-plate probe (the nominal
optics are recorded, the truth is kept apart), ``M`` mutually incoherent modes
(:func:`ptynb.physics.probes.mixed_state_probe`), a multislice forward model with ``slices``
slices (:func:`ptynb.simulate.tomography`), Poisson noise.

Units: metres, eV, radians; angles in degrees; ``q`` in rad/m, phases in rad.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import xarray as xr

from ..data import ValidationError, centered_coord

__all__ = [
    "PTYCHO_KIND",
    "check_measurement",
    "ptycho_approximant",
    "ptycho_phases",
    "ptycho_projections",
    "sample_grid",
    "simulate_measurement",
    "slab_approximant",
    "truth_from_measurement",
]

#: the ``approximant`` value (weights json ``architecture.approximant``) of this Approximant
PTYCHO_KIND = "ptychography"
_GRID_ATTRS = ("sample_shape", "sample_voxel_size", "sample_thickness")


# ============================================================================ geometry helpers
def _footprint_half_x(shape, voxel_size, angles) -> float:
    """Largest half width (m) along lab x of the sample box over ``angles`` (about y)."""
    nz, _, nx = shape
    dz, _, dx = voxel_size
    a = np.deg2rad(np.asarray(angles, float))
    return float(np.max(nx * dx / 2 * np.abs(np.cos(a)) + nz * dz / 2 * np.abs(np.sin(a))))


def _slab_thickness(shape, voxel_size, angles) -> float:
    """Smallest slab thickness (m) along the beam that holds the rotated sample box."""
    nz, _, nx = shape
    dz, _, dx = voxel_size
    a = np.deg2rad(np.asarray(angles, float))
    return float(np.max(nz * dz * np.abs(np.cos(a)) + nx * dx * np.abs(np.sin(a))))


def sample_grid(measurement: xr.Dataset):
    """The sample grid a measurement was taken of: ``(shape (nz, ny, nx), voxel_size (dz, dy,
    dx) m, thickness m)`` from the attrs ``sample_shape``, ``sample_voxel_size`` and
    ``sample_thickness`` (slab thickness along the beam, centred on the rotation axis)."""
    a = measurement.attrs
    missing = [k for k in _GRID_ATTRS if k not in a]
    if missing:
        raise ValidationError("measurement", f"attrs {missing} missing: the sample grid (voxels, voxel size in m) "
                              "and the slab thickness along the beam (m) are needed to place the slice phases")
    shape = tuple(int(n) for n in np.asarray(a["sample_shape"]).reshape(3))
    vs = tuple(float(v) for v in np.asarray(a["sample_voxel_size"], float).reshape(3))
    return shape, vs, float(a["sample_thickness"])


# ============================================================================ simulation
def simulate_measurement(q_volume: xr.DataArray, angles, *, modes: int = 2, slices: int = 5,
                         energy_eV: float = 8800.0, probe_window: int = 32, outer_zone_width: float = 28e-9,
                         defocus: float = 36e-6, step: float | None = None, margin: int = 4,
                         counts_per_pattern: float = 1e6, noise: str | None = "poisson", seed: int = 0,
                         progress: bool = False) -> xr.Dataset:
    """Ptycho-tomography of a ``q`` volume: one mixed-state multislice ptychography scan per angle.

    Parameters
    ----------
    q_volume : DataArray (z, y, x) float rad/m
        ``k delta`` of the sample (e.g. ``apt_steps.simulate_ic(...)["q"]``), centred metre
        coords, equal lateral voxels.
    angles : sequence of float (angle,)
        Rotation angles (degrees) about the sample's y axis.
    modes : int
        Mutually incoherent probe modes ``M`` (power fractions ``0.5**m``, normalised).
    slices : int
        Slices ``L`` of the multislice forward model across the slab (the volume is padded
        with vacuum along z so that ``L`` divides it).
    energy_eV : float
        Photon energy (eV; the paper's 8.8 keV).
    probe_window : int
        Probe window = detector (pixels of the voxel size).
    outer_zone_width, defocus : float
        Zone plate ``dr`` (m; must exceed the voxel size) and sample distance from its focus
        (m): the defaults give a ~13-pixel beam in a 32-pixel window at 14 nm voxels.
    step : float, optional
        Raster step (m); default 4 voxels. 20 % jitter, the same scan at every angle.
    margin : int
        Vacuum margin (voxels) scanned around the sample's footprint (for the phase offset).
    counts_per_pattern : float
        Incident counts per pattern (all modes).
    noise : {"poisson", None}
    seed : int
        Scan jitter and noise seed (angle ``a`` uses ``seed + a``).
    progress : bool

    Returns
    -------
    Dataset: measurement (``intensity`` (angle, scan, qy, qx) counts, ``scan_y``/``scan_x`` m,
    ``angle`` degrees) with the ground truth ``true_volume`` (padded delta), ``true_object``,
    ``true_probe`` kept apart, and attrs ``sample_shape``, ``sample_voxel_size`` (m),
    ``sample_thickness`` (m, the padded slab along the beam) and ``sample_origin`` (m): the
    grid the Approximant is put on (what an experimenter knows of the sample geometry).
    """
    from .. import simulate
    from ..physics.probes import mixed_state_probe, zone_plate_probe
    from ..physics.scan import raster_scan
    from ..physics.units import wavelength

    if not isinstance(q_volume, xr.DataArray) or tuple(q_volume.dims) != ("z", "y", "x"):
        raise ValidationError("q_volume", "must be a DataArray (z, y, x) rad/m with metre coords")
    ang = np.atleast_1d(np.asarray(angles, float))
    if ang.ndim != 1 or ang.size == 0 or not np.all(np.isfinite(ang)):
        raise ValidationError("angles", "must be a non-empty 1-D sequence of finite degrees")
    q = np.asarray(q_volume.values, np.float64)
    shape = q.shape
    vs = tuple(float(np.median(np.diff(q_volume[d].values))) for d in ("z", "y", "x"))
    if not np.isclose(vs[1], vs[2], rtol=1e-6):
        raise ValidationError("q_volume", f"lateral voxels must be square, got dy={vs[1]:.4g}, dx={vs[2]:.4g} m")
    for d, n, v in zip(("z", "y", "x"), shape, vs):
        c = float(q_volume[d].values[n // 2])
        if abs(c) > 1e-3 * v:
            raise ValidationError(d, f"coordinate is {c:.4g} m at voxel {n // 2}: the volume must be centred "
                                  "(coordinate 0 at voxel n // 2, the rotation axis), as apt_steps.simulate_ic makes it")
    L = int(slices)
    if L < 1:
        raise ValidationError("slices", f"must be >= 1, got {slices!r}")
    dx = vs[2]
    # pad z (vacuum) so that every rotated view fits the slab and L divides it (symmetric: the
    # rotation centre n // 2 stays on the sample's coordinate 0)
    need = _slab_thickness(shape, vs, ang) / vs[0]
    pz = max(0, int(np.ceil((need - shape[0]) / 2)) + 1)
    for extra in range(2 * L + 1):
        if (shape[0] + 2 * (pz + extra)) % L == 0:
            pz += extra
            break
    else:
        raise ValidationError("slices", f"{L} slices cannot divide the z-padded volume ({shape[0]} voxels + "
                              "an even padding); use an odd slice count or an even nz")
    st = float(step) if step is not None else 4 * dx
    hx = _footprint_half_x(shape, vs, ang) + margin * dx
    hy = shape[1] * vs[1] / 2 + margin * dx
    ny_s, nx_s = int(np.ceil(2 * hy / st)) + 1, int(np.ceil(2 * hx / st)) + 1
    sy, sx = raster_scan(ny_s, nx_s, st, jitter=0.2, seed=int(seed),
                         origin=(-(ny_s - 1) * st / 2, -(nx_s - 1) * st / 2))
    # lateral padding: every probe window inside the object
    half = int(np.ceil(max(np.max(np.abs(sy)), np.max(np.abs(sx))) / dx)) + probe_window // 2 + 2
    py_ = max(0, half - shape[1] // 2)
    px_ = max(0, half - shape[2] // 2)
    k = 2 * np.pi / wavelength(float(energy_eV), "xray")
    delta = np.pad(q / k, ((pz, pz), (py_, py_), (px_, px_)))
    nzp, nyp, nxp = delta.shape
    vol = xr.DataArray(delta.astype(np.float32), dims=("z", "y", "x"),
                       coords={"z": centered_coord(nzp, vs[0]), "y": centered_coord(nyp, vs[1]),
                               "x": centered_coord(nxp, vs[2])})
    lam = wavelength(float(energy_eV), "xray")
    diameter = 100e-6
    p0 = zone_plate_probe(int(probe_window), dx, float(energy_eV), diameter=diameter,
                          outer_zone_width=float(outer_zone_width), defocus=float(defocus), check_window=True)
    probe = mixed_state_probe(p0, int(modes), seed=int(seed)) if int(modes) > 1 else p0
    ds = simulate.tomography(vol, ang, probe, sy, sx, radiation="xray", energy_eV=float(energy_eV),
                             voxel_size=vs, voxels_per_slice=nzp // L, counts_per_pattern=float(counts_per_pattern),
                             noise=noise, seed=int(seed), progress=progress)
    ds.attrs.update(sample_shape=np.asarray(shape), sample_voxel_size=np.asarray(vs),
                    sample_origin=np.asarray([-(n // 2) * d for n, d in zip(shape, vs)]),
                    sample_thickness=float(nzp * vs[0]), sample_note=(
                        "sample grid (z, y, x) centred on the rotation axis; slab of sample_thickness m "
                        "along the beam, vacuum around the sample"), wavelength_m=float(lam))
    return ds


def truth_from_measurement(measurement: xr.Dataset) -> xr.DataArray | None:
    """The ground truth ``q`` (z, y, x) rad/m on the sample grid from a simulated measurement's
    ``true_volume`` (padded delta), or None for measured data. Used for metrics only."""
    if "true_volume" not in measurement or "sample_shape" not in measurement.attrs:
        return None
    from ..physics.units import wavelength

    shape, vs, _ = sample_grid(measurement)
    tv = measurement["true_volume"]
    k = 2 * np.pi / wavelength(float(measurement.attrs["energy_eV"]), "xray")
    sl = [slice((n0 // 2) - (n // 2), (n0 // 2) - (n // 2) + n) for n0, n in zip(tv.shape, shape)]
    q = np.real(np.asarray(tv.values))[tuple(sl)] * k
    return _volume(q, vs, "q", long_name="phase decrement per metre (k delta)")


def _volume(arr, vs, name, **attrs) -> xr.DataArray:
    nz, ny, nx = arr.shape
    da = xr.DataArray(np.asarray(arr, np.float32), dims=("z", "y", "x"), name=name,
                      coords={"z": centered_coord(nz, vs[0]), "y": centered_coord(ny, vs[1]),
                              "x": centered_coord(nx, vs[2])})
    for d in ("z", "y", "x"):
        da[d].attrs["units"] = "m"
    da.attrs = {"units": "rad/m", **attrs}
    return da


# ============================================================================ input checks
def check_measurement(measurement, *, min_angles: int = 2, min_range_deg: float = 0.0) -> xr.Dataset:
    """Validate a ptycho-tomography measurement for the Approximant; raise :class:`ValidationError`.

    Checks: a Dataset with ``intensity`` (angle, scan, qy, qx) and an ``angle`` coordinate in
    degrees, finite non-negative counts, at least ``min_angles`` angles, angles that do not
    look like radians (all within +-pi/2 while ``min_range_deg`` > pi/2 deg), the sample-grid
    attrs (:func:`sample_grid`), then :func:`ptynb.data.validate`.
    """
    from ..data import validate

    if not isinstance(measurement, xr.Dataset) or "intensity" not in measurement:
        raise ValidationError("measurement", "must be a ptynb measurement Dataset with 'intensity' "
                              "(angle, scan, qy, qx)")
    inten = measurement["intensity"]
    if "angle" not in inten.dims:
        raise ValidationError("angle", f"the measurement has dims {inten.dims}: the ptychographic Approximant "
                              "needs one scan per tomographic angle (a leading 'angle' dim, degrees)")
    if "angle" not in measurement.coords:
        raise ValidationError("angle", "coordinate (degrees) missing")
    ang = np.asarray(measurement["angle"].values, float)
    if not np.all(np.isfinite(ang)):
        raise ValidationError("angle", "contains NaN or inf")
    if ang.size < int(min_angles):
        raise ValidationError("angle", f"the measurement has {ang.size} angles; the network was trained on at "
                              f"least {int(min_angles)} (use other weights or more angles)")
    u = str(measurement["angle"].attrs.get("units", "deg")).lower()
    if u.startswith("rad"):
        raise ValidationError("angle", "is in radians (units attr); give degrees (np.degrees)")
    span = float(np.max(np.abs(ang))) if ang.size else 0.0
    if ang.size > 1 and span <= np.pi / 2 + 1e-9 and span > 0 and float(min_range_deg) > np.pi / 2:
        raise ValidationError("angle", f"spans only +-{span:.3g}: this looks like radians (angles are in "
                              f"degrees; the network was trained on +-{float(min_range_deg):.3g} deg and "
                              "more); convert with np.degrees")
    data = inten.data
    if not hasattr(data, "dask"):
        v = np.asarray(data)
        bad = ~np.isfinite(v)
        if bad.any():
            raise ValidationError("intensity", f"contains {int(bad.sum())} NaN or inf values; mask them "
                                  "(a 'mask' (qy, qx)) or fill them first")
    sample_grid(measurement)
    validate(measurement, lazy="skip")
    return measurement


# ============================================================================ the Approximant
def ptycho_phases(measurement: xr.Dataset, *, iterations: int = 2, slices: int = 5, modes: int = 2,
                  engine: str = "epie", step: float | None = None, progress: bool = False,
                  cancel: threading.Event | None = None, **knobs) -> xr.Dataset:
    """Per-angle slice phases: ``iterations`` of mixed-state multislice ptychography per angle.

    :func:`ptynb.ptycho.reconstruct` fanned out over ``angle`` (:func:`ptynb.parallel.map_blocks`,
    progress and cancel), ``slices`` slices of ``sample_thickness / slices`` each, ``modes``
    probe modes started from the measurement's nominal optics.

    Parameters
    ----------
    measurement : Dataset (angle, scan, qy, qx)
        Checked by :func:`check_measurement`.
    iterations, slices, modes, engine
        The paper's Approximant: 2 gradient iterations, L = 5, M modes. ``engine="epie"``
        (default): ePIE is stochastic gradient descent on the amplitude misfit, the multislice
        3PIE scheme of the paper's refs. 38/40; "rpie" or "lsqml" are accepted too.
    step : float, optional
        ePIE/rPIE object step size per slice (``alpha``). Default for ePIE: ``1 / slices``, so
        that the L slice updates of a pattern add up to one full ePIE step (measured on
        simulated ICs: with alpha = 1 and L = 5 the cost rises in the first iterations and the
        summed phase after 2 iterations correlates 0.3 with the ideal projection, with 1/L 0.7;
        LSQ-ML reaches 0.13 after 2 iterations at L = 5).
    progress, cancel, **knobs
        Passed to :func:`ptynb.ptycho.reconstruct`.

    Returns
    -------
    Dataset with ``phase`` (angle, slice, y, x) float32 rad (the argument of each slice,
    offset and ramp removed on the vacuum rows), coords y/x in metres (lab frame), z (m, slab
    centre of each slice, lab frame), ``cost`` (angle, iteration), attrs ``slice_thickness`` (m),
    ``seconds`` (wall time) and ``status``.
    """
    from ..imaging import remove_phase_ramp
    from ..ptycho import reconstruct

    check_measurement(measurement, min_angles=1)
    shape, vs, T = sample_grid(measurement)
    L = int(slices)
    if L < 1:
        raise ValidationError("slices", f"must be >= 1, got {slices!r}")
    eng = str(engine).strip().lower()
    if step is not None:
        knobs["alpha"] = float(step)
    elif eng == "epie" and "alpha" not in knobs:
        knobs["alpha"] = 1.0 / L
    t0 = time.perf_counter()
    rec = reconstruct(measurement, engine=engine, iterations=int(iterations), slices=L,
                      slice_thickness=T / L if L > 1 else None, modes=int(modes), progress=progress,
                      cancel=cancel, **knobs)
    seconds = time.perf_counter() - t0
    obj = np.asarray(rec["object"].values)
    if obj.ndim == 3:  # a single slice
        obj = obj[:, None]
    ph = np.angle(obj).astype(np.float64)
    y = np.asarray(rec["y"].values, float)
    x = np.asarray(rec["x"].values, float)
    # vacuum rows (outside the sample's y extent, inside the scanned field) fix offset and ramp
    sy = np.asarray(measurement["scan_y"].values, float)
    half_y = shape[1] * vs[1] / 2
    rows = (np.abs(y) > half_y + vs[1]) & (y >= sy.min()) & (y <= sy.max())
    xs = np.asarray(measurement["scan_x"].values, float)
    cols = (x >= xs.min()) & (x <= xs.max())
    mask = rows[:, None] & cols[None, :]
    if mask.sum() >= 3:
        done = np.isfinite(ph).all(axis=(1, 2, 3))  # angles not run (cancelled) stay NaN
        if done.any():
            ph[done] = remove_phase_ramp(ph[done], mask)
    zc = (np.arange(L) + 0.5) * T / L - T / 2
    da = xr.DataArray(ph.astype(np.float32), dims=("angle", "slice", "y", "x"),
                      coords={"angle": measurement["angle"].values, "slice": np.arange(L),
                              "z": ("slice", zc, {"units": "m"}), "y": ("y", y, {"units": "m"}),
                              "x": ("x", x, {"units": "m"})},
                      attrs={"units": "rad", "long_name": "slice phase (lab frame)"})
    da["angle"].attrs["units"] = "deg"
    out = xr.Dataset({"phase": da}, attrs={
        "slice_thickness": T / L, "sample_thickness": T, "seconds": seconds, "iterations": int(iterations),
        "slices": L, "modes": int(modes), "engine": eng, "step": float(knobs.get("alpha", np.nan)), "status": rec.attrs.get("status", "complete"),
        "sample_shape": np.asarray(shape), "sample_voxel_size": np.asarray(vs), "phase_ramp_removed": int(mask.sum() >= 3)})
    if "cost" in rec:
        out["cost"] = rec["cost"]
    return out


def slab_approximant(phases: xr.Dataset, *, target_nz: int | None = None, angles=None) -> xr.DataArray:
    """Rotate the slice phases back to the sample frame, dilate along z, average over angles.

    Parameters
    ----------
    phases : Dataset from :func:`ptycho_phases`
        ``phase`` (angle, slice, y, x) rad, lab frame.
    target_nz : int, optional
        Slices (voxels along z) of the output; default the sample grid's ``nz`` (the same
        thickness either way: voxel ``nz dz / target_nz``).
    angles : sequence, optional
        Use only these angles (degrees; default all).

    Returns
    -------
    DataArray (z, y, x) float32 rad/m on the sample grid (centred metre coords): the mean over
    angles of ``-phase(R(theta) s) / slice_thickness``, trilinear in (slice, y, x) with the
    slices constant beyond the outer slab centres; attrs ``method="ptychography"``,
    ``n_angles`` (angles averaged: those not reconstructed, NaN after a cancel, are left out;
    none: all NaN) and ``status`` (the ptychography's).
    """
    from scipy.ndimage import map_coordinates

    from ..physics.rotations import sample_to_lab

    ph = phases["phase"]
    if angles is not None:
        ph = ph.sel(angle=np.asarray(angles, float))
    shape = tuple(int(n) for n in np.asarray(phases.attrs["sample_shape"]).reshape(3))
    vs = [float(v) for v in np.asarray(phases.attrs["sample_voxel_size"], float).reshape(3)]
    nz = int(target_nz) if target_nz is not None else shape[0]
    if nz < 1:
        raise ValidationError("target_nz", f"must be >= 1, got {target_nz!r}")
    vs[0] = shape[0] * vs[0] / nz
    dzs = float(phases.attrs["slice_thickness"])
    T = float(phases.attrs["sample_thickness"])
    L = ph.sizes["slice"]
    y, x = np.asarray(ph["y"].values, float), np.asarray(ph["x"].values, float)
    dy, dx = float(y[1] - y[0]), float(x[1] - x[0])
    zz, yy, xx = np.meshgrid(centered_coord(nz, vs[0]), centered_coord(shape[1], vs[1]),
                             centered_coord(shape[2], vs[2]), indexing="ij")
    s = np.stack([zz.ravel(), yy.ravel(), xx.ravel()])
    acc = np.zeros(s.shape[1])
    n = 0
    for a in ph["angle"].values:
        r = sample_to_lab(float(a), 90.0) @ s  # where each sample voxel sits in the lab at this view
        li = np.clip((r[0] + T / 2) / dzs - 0.5, 0.0, L - 1.0)
        yi = (r[1] - y[0]) / dy
        xi = (r[2] - x[0]) / dx
        vol = np.asarray(ph.sel(angle=a).values, np.float64)
        if not np.isfinite(vol).all():  # an angle not reconstructed (cancelled): left out
            continue
        acc += map_coordinates(vol, np.stack([li, yi, xi]), order=1, mode="nearest")
        n += 1
    q = -(acc / n) / dzs if n else np.full(acc.shape, np.nan)
    return _volume(q.reshape(nz, shape[1], shape[2]), vs, "approximant", method=PTYCHO_KIND,
                   long_name="Approximant (ptychography)", n_angles=n,
                   status=str(phases.attrs.get("status", "complete")))


def ptycho_projections(phases: xr.Dataset) -> xr.DataArray:
    """Phase projections (angle, y, x) rad from the per-angle ptychography: the summed slice
    phases (offset and ramp removed) resampled onto the detector grid :func:`ptynb.tomo.project`
    uses for the sample grid, with its attrs (so ``tomo.fbp/sirt/sart`` reconstruct the sample
    grid)."""
    import warnings

    from .. import tomo

    shape = tuple(int(n) for n in np.asarray(phases.attrs["sample_shape"]).reshape(3))
    vs = [float(v) for v in np.asarray(phases.attrs["sample_voxel_size"], float).reshape(3)]
    zero = _volume(np.zeros(shape, np.float32), vs, "zero")
    ang = np.asarray(phases["angle"].values, float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmpl = tomo.project(zero, ang, warn_outside=False)
    total = phases["phase"].sum("slice")
    vals = total.interp(y=tmpl["y"].values, x=tmpl["x"].values, kwargs={"fill_value": 0.0})
    out = tmpl.copy(data=np.asarray(vals.transpose("angle", "y", "x").values, np.float32))
    out.name = "projections"
    out.attrs.update(units="rad", long_name="phase projection (summed ptychographic slice phases)",
                     source="ptychography")
    return out


def ptycho_approximant(measurement: xr.Dataset, *, iterations: int = 2, slices: int = 5, modes: int = 2,
                       target_nz: int | None = None, engine: str = "epie", step: float | None = None,
                       progress: bool = False,
                       cancel: threading.Event | None = None, return_phases: bool = False, **knobs):
    """The paper's Approximant from diffraction data (ptycho-tomography).

    ``iterations`` gradient iterations of mixed-state multislice ptychography per angle
    (:func:`ptycho_phases`), the ``slices`` slice phases rotated back to the sample frame,
    averaged over the angles and dilated along z to ``target_nz`` (:func:`slab_approximant`).

    Parameters
    ----------
    measurement : Dataset (angle, scan, qy, qx)
        With the sample-grid attrs (:func:`sample_grid`); :func:`simulate_measurement` makes one.
    iterations, slices, modes, engine, step : see :func:`ptycho_phases` (defaults: the paper's
        2 iterations, 5 slices; ePIE with step 1 / slices).
    target_nz : int, optional
        Voxels along z of the output (default: the sample grid's).
    progress, cancel, **knobs : passed to :func:`ptynb.ptycho.reconstruct`.
    return_phases : bool
        Also return the per-angle phases Dataset.

    Returns
    -------
    DataArray (z, y, x) float32 rad/m on the sample grid (attrs ``seconds``,
    ``seconds_per_angle``, ``status``: "cancelled" when ``cancel`` was set, then averaged over
    the angles done), or ``(approximant, phases)``.
    """
    ph = ptycho_phases(measurement, iterations=iterations, slices=slices, modes=modes, engine=engine,
                       step=step, progress=progress, cancel=cancel, **knobs)
    t0 = time.perf_counter()
    a = slab_approximant(ph, target_nz=target_nz)
    sec = float(ph.attrs["seconds"]) + time.perf_counter() - t0
    a.attrs.update(seconds=sec, seconds_per_angle=sec / max(1, ph.sizes["angle"]), iterations=int(iterations),
                   slices=int(slices), modes=int(modes), engine=str(engine))
    return (a, ph) if return_phases else a
