"""Simulated ptychography measurements with a known answer.

Every function returns a measurement :class:`xarray.Dataset` (see :func:`ptynb.data.measurement`)
with the ground truth kept alongside as extra variables (ignored by validation):

* ``true_object`` (..., slice, y, x) complex64: the transmission per slice, coords ``y``, ``x``
  (m, same frame as ``scan_y``/``scan_x``) and ``z`` (m) along ``slice``;
* ``true_probe`` (..., mode, py, px) complex64, in sqrt(counts) per pixel (already scaled to the
  requested counts), on the fine simulation grid;
* ``true_volume`` (z, y, x) for :func:`tomography`.

The true probe's parameters are also kept as ``probe_*`` attrs (ground truth, like
``true_probe``). What an experimenter knows of the optics is recorded separately as the
*nominal* attrs (``zone_plate_diameter``, ``zone_plate_outer_zone_width``,
``central_stop_diameter``, ``convergence_semiangle``, ``nominal_Cs``, and ``nominal_defocus``,
off from the truth by ``nominal_defocus_error``, default 15 %): the reconstruction
(:func:`ptynb.ptycho.initial_probe`) reads only those, never the truth.

Forward model (:func:`ptychography`)
-----------------------------------
Positions are probe **centres** (m). Object pixel ``(i, j)`` sits at
``(y0 + i * pixel_size, x0 + j * pixel_size)`` (``y0 = x0 = 0`` for plain arrays, else the
object's ``y``/``x`` coordinates). The probe window (``N x N`` pixels, centre at pixel ``N // 2``)
is cut at the nearest whole pixel and the probe is Fourier-shifted by the remaining sub-pixel
offset (in ``[-0.5, 0.5]`` pixel). The exit wave is computed by :func:`ptynb.physics.multislice`
(with ``tilt``), propagated to the far field with :func:`ptynb.physics.far_field` (centred,
orthonormal) and the intensities of the mutually incoherent probe modes are summed.

``upsample = s`` (models an under-sampled, "virtually enlarged" illumination): the simulation
grid has the reconstruction pixel ``pixel_size`` and the ``N``-pixel window, and each detector
pixel ``J`` integrates the fine far-field pixels ``s*J .. s*J + s - 1`` (per axis) of the centred
fine pattern (fine zero frequency at index ``N // 2``, :func:`bin_pattern`). The detector has
``N // s`` pixels of spatial-frequency width ``s / (N * pixel_size)``; ``attrs["pixel_size"]``
stays the fine pixel and ``attrs["upsample"] = s`` (``true_probe`` is on the fine ``N`` grid).

Counts: with ``counts_per_pattern`` the probe is scaled so that its total power (all modes) equals
the expected number of *incident* counts per pattern (the detected sum is lower by the object's
absorption); ``dose`` (counts per m**2; electrons: e/A**2 * 1e20) gives
``counts_per_pattern = dose * a``, with ``a`` the area per position, taken as the square of the
median nearest-neighbour distance between positions (exactly ``step**2`` for a raster). Without
either, the probe's own power is the expected count. ``noise="poisson"`` draws counts from a
seeded :class:`numpy.random.Generator`; ``noise=None`` keeps the expected intensities.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import xarray as xr

from . import backend
from .data import ValidationError, centered_coord, measurement, real_space_coord
from .physics.multislice import electron_transmission, multislice, slice_kernels
from .physics.propagation import detector_pixel_size_for
from .physics.units import check_radiation
from .physics.units import wavelength as _wavelength

__all__ = [
    "area_per_position",
    "beams",
    "bin_pattern",
    "demo",
    "ptychography",
    "ptychography_series",
    "rotate_volume",
    "smooth_random_object",
    "tomography",
]


# ----------------------------------------------------------------------------- helpers
def _real_number(name, value, positive=True):
    if value is None:
        return None
    if np.iscomplexobj(value):
        raise ValidationError(name, f"must be a real number, got complex {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValidationError(name, f"must be a real number, got {value!r}") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise ValidationError(name, f"must be {'positive and ' if positive else ''}finite, got {value!r}")
    return v


def bin_pattern(intensity, upsample):
    """Sum ``upsample x upsample`` blocks of the last two axes (detector binning).

    Detector pixel ``J`` collects fine pixels ``s*J .. s*J + s - 1`` per axis. The last two
    dims must be divisible by ``s``. numpy or cupy, any leading dims.
    """
    s = int(upsample)
    if s == 1:
        return intensity
    *lead, ny, nx = intensity.shape
    if ny % s or nx % s:
        raise ValidationError("upsample", f"{s} does not divide the pattern shape {(ny, nx)}")
    return intensity.reshape(*lead, ny // s, s, nx // s, s).sum(axis=(-3, -1))


def area_per_position(scan_y, scan_x) -> float:
    """Area (m**2) per scan position: the squared median nearest-neighbour distance."""
    from scipy.spatial import cKDTree

    pts = np.column_stack([np.asarray(scan_y, float), np.asarray(scan_x, float)])
    if len(pts) < 2:
        raise ValidationError("dose", "needs at least two scan positions to define an area per "
                                      "position; give counts_per_pattern instead")
    d, _ = cKDTree(pts).query(pts, k=2)
    nn = float(np.median(d[:, 1]))
    if nn <= 0:
        raise ValidationError("scan_y/scan_x", "positions coincide; cannot compute a dose")
    return nn**2


def _object_array(obj, pixel_size, slice_thickness):
    """(S, ny, nx) complex transmission, origin (y0, x0) and slice_thickness."""
    origin = (0.0, 0.0)
    if isinstance(obj, xr.DataArray):
        dims = tuple(obj.dims)
        if dims not in (("y", "x"), ("slice", "y", "x")):
            raise ValidationError("obj", f"has dims {dims}; expected (y, x) or (slice, y, x)")
        for d in ("y", "x"):
            if d in obj.coords and obj.sizes[d] > 1:
                c = np.asarray(obj[d].values, float)
                sp = float(np.median(np.diff(c)))
                if not np.isclose(sp, pixel_size, rtol=1e-3, atol=0.0):
                    raise ValidationError(
                        "obj", f"coordinate {d} has spacing {sp:.6g} m but pixel_size is "
                               f"{pixel_size:.6g} m")
        origin = tuple(float(obj[d].values[0]) if d in obj.coords else 0.0 for d in ("y", "x"))
        if "z" in obj.coords and obj.ndim == 3 and obj.sizes["slice"] > 1:
            zc = np.asarray(obj["z"].values, float)
            dz = np.diff(zc)
            if slice_thickness is None:
                slice_thickness = float(dz[0]) if np.allclose(dz, dz[0], rtol=1e-6, atol=0.0) else dz
            else:
                st = np.broadcast_to(np.asarray(slice_thickness, float), dz.shape)
                if not np.allclose(st, dz, rtol=1e-3, atol=0.0):
                    raise ValidationError(
                        "slice_thickness", f"{slice_thickness!r} m disagrees with the object's z "
                                           f"coordinate spacing {dz.tolist()} m")
        data = backend.to_host(obj.data)
    else:
        data = backend.to_host(obj)
    a = np.asarray(data)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValidationError("obj", f"has shape {a.shape}; expected (y, x) or (slice, y, x)")
    if not np.iscomplexobj(a):
        raise ValidationError("obj", f"must be a complex transmission, got dtype {a.dtype} "
                                     "(use physics.transmission(phase, amplitude))")
    if not np.all(np.isfinite(a)):
        raise ValidationError("obj", "contains NaN or inf")
    return a.astype(np.complex64, copy=False), origin, slice_thickness


def _probe_array(probe, pixel_size):
    attrs = {}
    if isinstance(probe, xr.DataArray):
        dims = tuple(probe.dims)
        if dims not in (("py", "px"), ("mode", "py", "px")):
            raise ValidationError("probe", f"has dims {dims}; expected (py, px) or (mode, py, px)")
        ps = probe.attrs.get("pixel_size")
        if ps is not None and not np.isclose(float(ps), pixel_size, rtol=1e-3, atol=0.0):
            raise ValidationError("probe", f"was built for pixel_size {float(ps):.6g} m, "
                                           f"not {pixel_size:.6g} m")
        attrs = {k: v for k, v in probe.attrs.items()
                 if k not in ("kind", "ptynb_version", "units", "pixel_size")
                 and isinstance(v, (str, int, float, np.integer, np.floating))}
        data = backend.to_host(probe.data)
    else:
        data = backend.to_host(probe)
    p = np.asarray(data)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3:
        raise ValidationError("probe", f"has shape {p.shape}; expected (py, px) or (mode, py, px)")
    if not np.all(np.isfinite(p)):
        raise ValidationError("probe", "contains NaN or inf")
    return p.astype(np.complex64), attrs


#: default relative error of the nominal defocus recorded by :func:`ptychography`
NOMINAL_DEFOCUS_ERROR = 0.15


def _nominal_optics(probe_attrs, error, seed):
    """Nominal optics of a probe: what an experimenter knows, not the simulated truth.

    From the attrs of a :func:`ptynb.physics.zone_plate_probe` (X-ray: ``zone_plate_diameter``,
    ``zone_plate_outer_zone_width``, ``central_stop_diameter``, ``nominal_defocus``, m) or an
    :func:`ptynb.physics.electron_probe` (``convergence_semiangle`` rad, ``nominal_defocus``
    and ``nominal_Cs`` m). The aperture/zone-plate dimensions and Cs are taken as known
    exactly; the defocus is known to ``error`` only: ``nominal_defocus = defocus + sign *
    error * max(|defocus|, depth of focus)`` with the sign (+-1) drawn from ``seed`` (depth of
    focus ``2 dr**2 / lambda`` for a zone plate, ``lambda / semiangle**2`` for electrons, so
    that an in-focus probe is not known exactly either). Aberrations beyond defocus and Cs
    (astigmatism, coma, ...) are unknown: not recorded. Other probes: no nominal optics.
    """
    kind = probe_attrs.get("probe_type")
    if kind not in ("zone_plate", "convergent_beam"):
        return {}
    lam = float(probe_attrs["wavelength"])
    dz = float(probe_attrs.get("defocus", 0.0))
    if kind == "zone_plate":
        dr = float(probe_attrs["outer_zone_width"])
        dof = 2.0 * dr**2 / lam
    else:
        dof = lam / float(probe_attrs["semiangle"]) ** 2
    sign = 1.0 if np.random.default_rng([int(seed), 0x6E6F6D]).random() < 0.5 else -1.0
    out = {"nominal_defocus": dz + sign * float(error) * max(abs(dz), dof)}
    if kind == "zone_plate":
        out.update(zone_plate_diameter=float(probe_attrs["diameter"]),
                   zone_plate_outer_zone_width=dr)
        if probe_attrs.get("central_stop_diameter") is not None:
            out["central_stop_diameter"] = float(probe_attrs["central_stop_diameter"])
    else:
        out.update(convergence_semiangle=float(probe_attrs["semiangle"]),
                   nominal_Cs=float(probe_attrs.get("Cs", 0.0)))
    return out


def _positions(scan_y, scan_x):
    out = []
    for name, v in (("scan_y", scan_y), ("scan_x", scan_x)):
        a = np.asarray(v.values if isinstance(v, xr.DataArray) else v)
        if np.iscomplexobj(a):
            raise ValidationError(name, "must be real positions in metres, got complex values")
        a = np.atleast_1d(a.astype(np.float64))
        if a.ndim != 1:
            raise ValidationError(name, f"must be 1-D (scan,), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValidationError(name, "contains NaN or inf")
        out.append(a)
    if out[0].size != out[1].size:
        raise ValidationError("scan_y/scan_x", f"have different lengths {out[0].size} and {out[1].size}")
    if out[0].size == 0:
        raise ValidationError("scan_y/scan_x", "no positions given")
    return out


def _resolve_seed(seed):
    if seed is None:
        return int(np.random.SeedSequence().entropy % (2**32))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValidationError("seed", f"must be an integer >= 0 (numpy seeds are non-negative), got {seed!r}")
    return int(seed)


def _noise_kind(noise):
    if noise is None or noise is False or (isinstance(noise, str) and noise.lower() in ("none", "")):
        return "none"
    if isinstance(noise, str) and noise.lower() == "poisson":
        return "poisson"
    raise ValidationError("noise", f"must be 'poisson' or None, got {noise!r}")


# ----------------------------------------------------------------------------- forward
def _fftshift_into(src, dst):
    """``dst[...] = fftshift(src)`` over the last two axes, in one pass (no temporaries)."""
    ny, nx = src.shape[-2:]
    hy, hx = ny - ny // 2, nx - nx // 2  # source rows/cols that land at the start of dst
    dst[..., ny // 2:, nx // 2:] = src[..., :hy, :hx]
    dst[..., ny // 2:, :nx // 2] = src[..., :hy, hx:]
    dst[..., :ny // 2, nx // 2:] = src[..., hy:, :hx]
    dst[..., :ny // 2, :nx // 2] = src[..., hy:, hx:]
    return dst


def _window_view(obj_d, npy, npx, xp):
    """View (S, ny-npy+1, nx-npx+1, npy, npx) of all probe windows, or None if unsupported."""
    try:
        swv = xp.lib.stride_tricks.sliding_window_view
    except AttributeError:  # pragma: no cover - old cupy
        return None
    return swv(obj_d, (npy, npx), axis=(-2, -1))


class _Patches:
    """Per-slice object patches (B, 1, py, px), gathered on demand: memory for one slice only."""

    def __init__(self, gather, n):
        self._gather = gather
        self._n = n

    def __len__(self):
        return self._n

    def __getitem__(self, s):
        return self._gather(s)[:, None]


def _expected_intensity(obj_d, probe_d, iy, ix, sub_y, sub_x, *, xp, pixel_size, lam, dz, tilt,
                        upsample, batch_size, progress, callback, method, band_limit, desc):
    """Noise-free intensities (N_pos, n_det, n_det) float32 on the host.

    Positions are processed in batches of a fixed size (the last batch is padded by repeating
    its last position) so that FFT plans are reused.
    """
    from .control import tqdm_class
    tqdm = tqdm_class()

    n_s = obj_d.shape[0]
    m, npy, npx = probe_d.shape
    npos = iy.size
    bs = min(batch_size, npos)
    kernels = (slice_kernels((npy, npx), pixel_size, lam, dz, n_s, tilt=tilt, method=method,
                             band_limit=band_limit, xp=xp) if n_s > 1 else [])
    p_hat = backend.fft2(probe_d)  # (M, py, px)
    ky = xp.asarray(np.fft.fftfreq(npy).astype(np.float32))
    kx = xp.asarray(np.fft.fftfreq(npx).astype(np.float32))
    windows = _window_view(obj_d, npy, npx, xp)
    ar_y = xp.arange(npy)
    ar_x = xp.arange(npx)
    out = np.empty((npos, npy // upsample, npx // upsample), np.float32)
    shifted = xp.empty((bs, npy, npx), xp.float32)
    starts = range(0, npos, bs)
    for k, b0 in enumerate(tqdm(starts, disable=not progress, desc=desc, unit="batch")):
        b1 = min(b0 + bs, npos)
        idx = np.minimum(np.arange(b0, b0 + bs), npos - 1)  # pad the last batch
        sy = sub_y[idx]
        sx = sub_x[idx]
        if np.any(sy != 0) or np.any(sx != 0):
            syd = xp.asarray(sy.astype(np.float32))
            sxd = xp.asarray(sx.astype(np.float32))
            ramp_y = xp.exp((-2j * np.pi) * (syd[:, None] * ky[None, :])).astype(xp.complex64)
            ramp_x = xp.exp((-2j * np.pi) * (sxd[:, None] * kx[None, :])).astype(xp.complex64)
            ramp = ramp_y[:, :, None] * ramp_x[:, None, :]  # (B, py, px)
            probes = backend.ifft2(p_hat[None] * ramp[:, None])  # (B, M, py, px)
        else:
            probes = probe_d[None]
        iyd = xp.asarray(iy[idx])
        ixd = xp.asarray(ix[idx])
        if windows is not None:
            patches = _Patches(lambda s, iyd=iyd, ixd=ixd: windows[s, iyd, ixd], n_s)
        else:
            rows = iyd[:, None, None] + ar_y[None, :, None]
            cols = ixd[:, None, None] + ar_x[None, None, :]
            patches = _Patches(lambda s, rows=rows, cols=cols: obj_d[s, rows, cols], n_s)
        exit_wave = multislice(probes, patches, pixel_size, lam, dz if n_s > 1 else 1.0,
                               kernel=kernels if n_s > 1 else None)
        f = backend.fft2(exit_wave)
        inten = f.real ** 2
        inten += f.imag ** 2
        inten = inten[:, 0] if m == 1 else inten.sum(axis=1)  # incoherent sum over modes
        _fftshift_into(inten, shifted)  # centred detector, as physics.far_field
        binned = bin_pattern(shifted, upsample)
        out[b0:b1] = backend.to_host(binned[: b1 - b0])
        if callback is not None:
            callback(k, {"done": b1, "total": npos})
    return out


def ptychography(obj, probe, scan_y, scan_x, *, pixel_size, radiation, energy_eV,
                 slice_thickness=None, detector_distance=None, detector_pixel_size=None,
                 tilt=(0.0, 0.0), counts_per_pattern=None, dose=None, noise="poisson",
                 upsample=1, seed=None, progress=True, batch_size=None, device=None,
                 method="angular_spectrum", band_limit=True, callback=None, validate=True,
                 nominal_defocus_error=NOMINAL_DEFOCUS_ERROR, allow_exceeding=False, **attrs):
    """Simulate a (multislice, mixed-state) ptychography measurement with Poisson noise.

    Parameters
    ----------
    obj : complex array or DataArray (y, x) or (slice, y, x)
        Transmission per slice. A DataArray's ``y``/``x`` coords set the frame (spacing must be
        ``pixel_size``) and its ``z`` coord (along ``slice``) the slice spacing.
    probe : complex array or DataArray (py, px) or (mode, py, px)
        Probe (modes) in sqrt(counts) per pixel on the ``pixel_size`` grid; the window
        ``(py, px)`` is the simulation window (``py``, ``px`` divisible by ``upsample``).
    scan_y, scan_x : arrays (scan,)
        Probe-centre positions (m) in the object frame (see module docstring).
    pixel_size : float
        Object/probe pixel (m), also the reconstruction pixel recorded in attrs.
    radiation : {"xray", "electron"}
    energy_eV : float
    slice_thickness : float or sequence of S-1 floats
        Slice spacing (m); required for more than one slice.
    detector_distance, detector_pixel_size : float, optional
        X-ray geometry (m). With only the distance, the detector pixel is derived
        (``wavelength * distance / (n_det * pixel_size)``); giving both must be consistent.
        Electrons get ``reciprocal_pixel_size = 1 / (n_det * pixel_size)`` (1/m).
    tilt : (ty, tx)
        Beam inclination (rad) for the multislice (the object is sheared). No carrier phase
        ramp is added: each beam's pattern is centred on its own axis, as when the detector
        region of each beam is cropped around it.
    counts_per_pattern : float, optional
        Expected incident counts per pattern (probe power).
    dose : float, optional
        Counts per m**2 (exclusive with counts_per_pattern).
    noise : {"poisson", None}
    upsample : int
        Detector binning factor ``s`` (see module docstring).
    seed : int, optional
        Noise seed (drawn and recorded in attrs if None).
    progress : bool
        tqdm progress bar over batches.
    batch_size : int, optional
        Positions per vectorised batch (default 64 on the CPU, cache-friendly; 512 on the GPU).
    device : {"cpu", "gpu", None}
        Where to compute (see :func:`ptynb.backend.get_xp`); results come back to the host.
    method, band_limit
        Inter-slice propagator (see :func:`ptynb.physics.angular_spectrum_kernel`).
    callback : callable(batch_index, info), optional
    validate : bool
        Validate the result with :func:`ptynb.data.validate`.
    nominal_defocus_error : float
        Relative error (default 0.15) of the *nominal* defocus recorded in attrs for a probe
        made by :func:`ptynb.physics.zone_plate_probe` or :func:`ptynb.physics.electron_probe`:
        the measurement attrs get the nominal optics an experimenter knows
        (``zone_plate_diameter``, ``zone_plate_outer_zone_width``, ``central_stop_diameter``,
        ``convergence_semiangle``, ``nominal_Cs``: exact; ``nominal_defocus``: the true
        defocus off by ``nominal_defocus_error`` times ``max(|defocus|, depth of focus)``, sign
        drawn from ``seed``); these are what :func:`ptynb.ptycho.initial_probe` reads. The
        true probe's parameters are kept as ``probe_*`` attrs and the true probe as
        ``true_probe`` (ground truth, never read by the reconstruction). 0 records the true
        defocus as nominal. Nominal attrs passed in ``**attrs`` win.
    allow_exceeding : bool
        The patterns' memory is forecast before anything is allocated; a forecast above the
        available memory raises :class:`ptynb._memory.MemoryForecastError` unless this is True
        (then it warns).
    **attrs
        Extra attrs recorded in the dataset.

    Returns
    -------
    xarray.Dataset
        Measurement (``intensity`` float32 (scan, qy, qx)) with ``true_object`` and
        ``true_probe``; attrs record every parameter (dose, counts_per_pattern, seed, tilt,
        upsample, slice_thickness, noise, n_slices, n_modes, field_of_view, ...).

    Raises
    ------
    ValidationError
        Probe larger than the object, positions outside the object, complex or negative counts,
        a slice spacing missing or inconsistent with the object, bad radiation/energy.
    """
    try:
        radiation = check_radiation(radiation)
    except ValueError as e:
        raise ValidationError("radiation", str(e)) from None
    energy = _real_number("energy_eV", energy_eV)
    lam = _wavelength(energy, radiation)
    dx = _real_number("pixel_size", pixel_size)
    o, origin, slice_thickness = _object_array(obj, dx, slice_thickness)
    p, probe_attrs = _probe_array(probe, dx)
    n_s, ny, nx = o.shape
    m, npy, npx = p.shape
    if npy > ny or npx > nx:
        raise ValidationError("probe", f"window {(npy, npx)} pixels is larger than the object "
                                       f"{(ny, nx)} pixels")
    try:
        s = int(upsample)
    except (TypeError, ValueError):
        raise ValidationError("upsample", f"must be a positive integer, got {upsample!r}") from None
    if s < 1 or s != upsample:
        raise ValidationError("upsample", f"must be a positive integer, got {upsample!r}")
    if npy % s or npx % s:
        raise ValidationError("upsample", f"{s} must divide the probe window {(npy, npx)}")
    if npy != npx:
        raise ValidationError("probe", f"window must be square for the detector, got {(npy, npx)}")
    # slices
    dz = None
    if n_s > 1:
        if slice_thickness is None:
            raise ValidationError("slice_thickness", f"is required for an object with {n_s} slices")
        st = np.atleast_1d(np.asarray(slice_thickness))
        if np.iscomplexobj(st):
            raise ValidationError("slice_thickness", "must be real (m)")
        st = st.astype(float)
        if st.size not in (1, n_s - 1):
            raise ValidationError(
                "slice_thickness", f"has {st.size} values for {n_s} slices; give one spacing or "
                                   f"{n_s - 1} (one per gap)")
        if not np.all(np.isfinite(st)) or np.any(st <= 0):
            raise ValidationError("slice_thickness", f"must be positive (m), got {slice_thickness!r}")
        dz = float(st[0]) if st.size == 1 else st
    elif slice_thickness is not None:
        dz = _real_number("slice_thickness", np.asarray(slice_thickness).reshape(-1)[0])
    tilt = tuple(float(v) for v in np.broadcast_to(np.asarray(tilt, dtype=float), (2,)))
    if not all(abs(t) < math.pi / 2 for t in tilt):
        raise ValidationError("tilt", f"must be (ty, tx) in radians with |t| < pi/2, got {tilt}")
    # positions
    sy, sx = _positions(scan_y, scan_x)
    fy = (sy - origin[0]) / dx - npy // 2
    fx = (sx - origin[1]) / dx - npx // 2
    iy = np.floor(fy + 0.5).astype(np.int64)
    ix = np.floor(fx + 0.5).astype(np.int64)
    outside = (iy < 0) | (ix < 0) | (iy + npy > ny) | (ix + npx > nx)
    y_lo = origin[0] + (npy // 2 - 0.5) * dx
    y_hi = origin[0] + (ny - npy + npy // 2 + 0.5) * dx
    x_lo = origin[1] + (npx // 2 - 0.5) * dx
    x_hi = origin[1] + (nx - npx + npx // 2 + 0.5) * dx
    if np.any(outside):
        raise ValidationError(
            "scan_y/scan_x",
            f"{int(outside.sum())} of {sy.size} position(s) put the probe window outside the "
            f"object: probe centres must lie in y [{y_lo:.4g}, {y_hi:.4g}) m, "
            f"x [{x_lo:.4g}, {x_hi:.4g}) m (object pixel (0, 0) at y={origin[0]:.4g}, "
            f"x={origin[1]:.4g} m)")
    sub_y = (fy - iy).astype(np.float64)
    sub_x = (fx - ix).astype(np.float64)
    # counts
    cpp = _real_number("counts_per_pattern", counts_per_pattern)
    dose_v = _real_number("dose", dose)
    if cpp is not None and dose_v is not None:
        raise ValidationError("dose", "give either dose or counts_per_pattern, not both")
    if dose_v is not None:
        cpp = dose_v * area_per_position(sy, sx)
    power = float(np.sum(np.abs(p.astype(np.complex128)) ** 2))
    if power <= 0:
        raise ValidationError("probe", "has zero power")
    if cpp is not None:
        p = (p * np.float32(math.sqrt(cpp / power))).astype(np.complex64)
    else:
        cpp = power
    noise_kind = _noise_kind(noise)
    seed = _resolve_seed(seed)
    from ._memory import check_available, forecast

    n_det = p.shape[-1] // s
    check_available(forecast({"intensity": ((np.size(sy), n_det, n_det), "float32"),
                              "noisy intensity": ((np.size(sy), n_det, n_det), "float32")}),
                    "the ptychography simulation", {"scan positions": int(np.size(sy)), "detector": n_det},
                    allow_exceeding=allow_exceeding)
    if batch_size is None:
        batch_size = 64 if backend.resolve_device(device) == "cpu" else 512
    bs = int(batch_size)
    if bs < 1:
        raise ValidationError("batch_size", f"must be >= 1, got {batch_size!r}")
    # compute
    xp = backend.get_xp(device)
    obj_d = xp.asarray(o)
    probe_d = xp.asarray(p)
    expected = _expected_intensity(
        obj_d, probe_d, iy, ix, sub_y, sub_x, xp=xp, pixel_size=dx, lam=lam, dz=dz, tilt=tilt,
        upsample=s, batch_size=bs, progress=progress, callback=callback, method=method,
        band_limit=band_limit, desc="simulate")
    np.maximum(expected, 0, out=expected)
    if noise_kind == "poisson":
        rng = np.random.default_rng(seed)
        intensity = rng.poisson(expected).astype(np.float32)
    else:
        intensity = expected
    # geometry
    n_det = npy // s
    geo = {}
    if radiation == "xray":
        if detector_distance is not None:
            geo["detector_distance"] = _real_number("detector_distance", detector_distance)
            geo["detector_pixel_size"] = (
                _real_number("detector_pixel_size", detector_pixel_size)
                if detector_pixel_size is not None
                else detector_pixel_size_for(dx, n_det, lam, geo["detector_distance"]))
        elif detector_pixel_size is not None:
            raise ValidationError("detector_distance", "is required with detector_pixel_size")
    else:
        if detector_distance is not None or detector_pixel_size is not None:
            geo["detector_distance"] = _real_number("detector_distance", detector_distance)
            geo["detector_pixel_size"] = _real_number("detector_pixel_size", detector_pixel_size)
        geo["reciprocal_pixel_size"] = 1.0 / (n_det * dx)
    err = _real_number("nominal_defocus_error",
                       0.0 if nominal_defocus_error is None else nominal_defocus_error,
                       positive=False)
    if err < 0:
        raise ValidationError("nominal_defocus_error", f"must be >= 0 (a fraction), got {err!r}")
    for key, v in _nominal_optics(probe_attrs, err, seed).items():  # what a user knows
        attrs.setdefault(key, v)
    rec = dict(
        simulated=1, noise=noise_kind, seed=seed, counts_per_pattern=cpp, dose=dose_v,
        nominal_defocus_error=err if "nominal_defocus" in attrs else None,
        tilt=np.asarray(tilt), upsample=s, n_slices=n_s, n_modes=m,
        slice_thickness=(dz if dz is None or np.isscalar(dz) else np.asarray(dz)),
        propagator=method, band_limit=int(bool(band_limit)),
        field_of_view=np.asarray([y_lo, y_hi, x_lo, x_hi]),  # probe centres allowed (m)
    )
    rec.update({(k if k.startswith("probe_") else f"probe_{k}"): v
                for k, v in probe_attrs.items() if v is not None})
    rec.update(attrs)
    rec = {k: v for k, v in rec.items() if v is not None}
    ds = measurement(intensity, sy, sx, radiation=radiation, energy_eV=energy, pixel_size=dx,
                     validate_data=False, **geo, **rec)
    ds = _attach_truth(ds, o, p, dx, origin, dz)
    if validate:
        from .data import validate as _validate

        _validate(ds)
    return ds


def _attach_truth(ds, o, p, dx, origin, dz, lead=()):
    """Add true_object (lead..., slice, y, x) and true_probe (lead..., mode, py, px)."""
    n_s, ny, nx = o.shape[-3:]
    m, npy, npx = p.shape[-3:]
    coords = {
        "slice": np.arange(n_s),
        "y": ("y", real_space_coord(ny, dx, origin[0]), {"units": "m"}),
        "x": ("x", real_space_coord(nx, dx, origin[1]), {"units": "m"}),
        "mode": np.arange(m),
        "py": ("py", centered_coord(npy, dx), {"units": "m"}),
        "px": ("px", centered_coord(npx, dx), {"units": "m"}),
    }
    if dz is not None:
        gaps = np.broadcast_to(np.asarray(dz, float), (max(n_s - 1, 0),))
        coords["z"] = ("slice", np.concatenate([[0.0], np.cumsum(gaps)]), {"units": "m"})
    lead_o = tuple(lead[: o.ndim - 3])
    lead_p = tuple(lead[: p.ndim - 3])
    return ds.assign(
        true_object=(lead_o + ("slice", "y", "x"), o.astype(np.complex64),
                     {"long_name": "true object transmission"}),
        true_probe=(lead_p + ("mode", "py", "px"), p.astype(np.complex64),
                    {"long_name": "true probe", "units": "sqrt(counts)"}),
    ).assign_coords(coords)


# ----------------------------------------------------------------------------- beams
def beams(obj, probes, scan_y, scan_x, *, labels=("left", "center", "right"),
          tilts=(-1.5, 0.0, 1.5), tilt_axis="x", seed=None, progress=True, **kwargs):
    """Several simultaneous, mutually incoherent beams on the same scan (stereo ptychography).

    Parameters
    ----------
    obj : see :func:`ptychography` (use several slices, else tilts have no effect)
    probes : sequence of probes (one per beam), a DataArray with a ``beam`` dim, or one probe
        used for every beam.
    scan_y, scan_x : positions (m), shared by all beams.
    labels : sequence of str
        Beam names (``beam`` coordinate).
    tilts : sequence of float
        Beam inclination in **degrees** (``beam_tilt`` coordinate).
    tilt_axis : {"x", "y"}
        Direction of the inclination: "x" tilts the beam towards +x (a horizontal deflection).
    seed : int, optional
        Beam ``b`` uses noise seed ``seed + b``.
    **kwargs
        Passed to :func:`ptychography` (pixel_size, radiation, energy_eV, counts, ...).

    Returns
    -------
    xarray.Dataset
        ``intensity`` (beam, scan, qy, qx), coords ``beam`` and ``beam_tilt`` (degrees);
        ``true_probe`` (beam, mode, py, px); ``true_object`` (slice, y, x).
    """
    labels = [str(b) for b in labels]
    tilts = [float(t) for t in np.atleast_1d(np.asarray(tilts, dtype=float))]
    if len(labels) != len(tilts):
        raise ValidationError("tilts", f"{len(tilts)} tilts for {len(labels)} beams")
    if len(set(labels)) != len(labels):
        raise ValidationError("labels", f"beam labels must be unique, got {labels}")
    if tilt_axis not in ("x", "y"):
        raise ValidationError("tilt_axis", f"must be 'x' or 'y', got {tilt_axis!r}")
    if isinstance(probes, xr.DataArray) and "beam" in probes.dims:
        plist = [probes.isel(beam=i, drop=True) for i in range(probes.sizes["beam"])]
    elif isinstance(probes, (list, tuple)):
        plist = list(probes)
    elif isinstance(probes, Mapping):
        plist = [probes[b] for b in labels]
    else:
        plist = [probes] * len(labels)
    if len(plist) != len(labels):
        raise ValidationError("probes", f"{len(plist)} probes for {len(labels)} beams")
    seed = _resolve_seed(seed)
    out = []
    for b, (_label, t, pr) in enumerate(zip(labels, tilts, plist)):
        rad = math.radians(t)
        tilt = (0.0, rad) if tilt_axis == "x" else (rad, 0.0)
        out.append(ptychography(obj, pr, scan_y, scan_x, tilt=tilt, seed=seed + b,
                                progress=progress, validate=False, **kwargs))
    first = out[0]
    attrs = {k: v for k, v in first.attrs.items()
             if k not in ("tilt", "seed", "kind", "ptynb_version", "wavelength")}
    geo = {k: attrs.pop(k) for k in ("detector_distance", "detector_pixel_size",
                                     "reciprocal_pixel_size", "pixel_size", "radiation",
                                     "energy_eV") if k in attrs}
    inten = np.stack([d["intensity"].values for d in out])
    ds = measurement(inten, first["scan_y"].values, first["scan_x"].values, beam=labels,
                     beam_tilt=tilts, seed=seed, tilt_axis=tilt_axis, validate_data=False,
                     **geo, **attrs)
    probes_arr = np.stack([d["true_probe"].values for d in out])
    origin = (float(first["y"].values[0]), float(first["x"].values[0]))
    dz = first.attrs.get("slice_thickness")
    ds = _attach_truth(ds, first["true_object"].values, probes_arr, geo["pixel_size"], origin,
                       dz, lead=("beam",))
    from .data import validate as _validate

    return _validate(ds)


def _stack_angles(results, ang, seed, extra_attrs, objs=None):
    """Stack per-angle measurements on a leading ``angle`` dim (degrees)."""
    first = results[0]
    attrs = {k: v for k, v in first.attrs.items()
             if k not in ("seed", "kind", "ptynb_version", "wavelength")}
    geo = {k: attrs.pop(k) for k in ("detector_distance", "detector_pixel_size",
                                     "reciprocal_pixel_size", "pixel_size", "radiation",
                                     "energy_eV") if k in attrs}
    attrs.update(extra_attrs)
    inten = np.stack([d["intensity"].values for d in results])
    ds = measurement(inten, first["scan_y"].values, first["scan_x"].values, angle=ang,
                     validate_data=False, seed=seed, **geo, **attrs)
    if objs is None:
        objs = np.stack([d["true_object"].values for d in results])
    origin = (float(first["y"].values[0]), float(first["x"].values[0]))
    dz = first.attrs.get("slice_thickness")
    return ds, objs, first["true_probe"].values, geo["pixel_size"], origin, dz


def ptychography_series(objects, angles, probe, scan_y, scan_x, *, seed=None, progress=True,
                        **kwargs):
    """One measurement per angle from given per-angle objects, stacked on an ``angle`` dim.

    Parameters
    ----------
    objects : sequence of objects (one per angle), or an array/DataArray (angle, [slice,] y, x)
        Transmissions as accepted by :func:`ptychography` (all the same shape).
    angles : sequence of float
        Angle labels (degrees) for the ``angle`` coordinate.
    probe, scan_y, scan_x, **kwargs
        As for :func:`ptychography` (shared by all angles).
    seed : int, optional
        Angle ``a`` uses noise seed ``seed + a``.

    Returns
    -------
    xarray.Dataset: ``intensity`` (angle, scan, qy, qx), ``true_object`` (angle, slice, y, x),
    ``true_probe`` (mode, py, px).
    """
    ang = np.atleast_1d(np.asarray(angles, dtype=float))
    if isinstance(objects, xr.DataArray) and "angle" in objects.dims:
        objs = [objects.isel(angle=i, drop=True) for i in range(objects.sizes["angle"])]
    elif isinstance(objects, np.ndarray) or backend.is_gpu_array(objects):
        objs = list(objects)
    else:
        objs = list(objects)
    if len(objs) != ang.size:
        raise ValidationError("angles", f"{ang.size} angles for {len(objs)} objects")
    if ang.ndim != 1 or not np.all(np.isfinite(ang)):
        raise ValidationError("angles", "must be a 1-D sequence of finite degrees")
    seed = _resolve_seed(seed)
    results = [ptychography(o, probe, scan_y, scan_x, seed=seed + i, progress=progress,
                            validate=False, **kwargs) for i, o in enumerate(objs)]
    shapes = {d["true_object"].shape for d in results}
    if len(shapes) != 1:
        raise ValidationError("objects", f"must all have the same shape, got {sorted(shapes)}")
    ds, o, p, dx, origin, dz = _stack_angles(results, ang, seed, {})
    ds = _attach_truth(ds, o, p, dx, origin, dz, lead=("angle",))
    from .data import validate as _validate

    return _validate(ds)


# ----------------------------------------------------------------------------- tomography
def _rotation_matrix_zyx(angle, tilt):
    """3x3 sample-to-lab matrix (acting on (z, y, x) vectors) of the view at ``angle`` degrees
    with the rotation axis at ``tilt`` degrees from the beam:
    :func:`ptynb.physics.rotations.sample_to_lab`, the same rotation :mod:`ptynb.tomo` uses, so
    that a volume simulated here is reconstructed by ``tomo`` in its own (sample) frame."""
    from .physics.rotations import sample_to_lab

    return sample_to_lab(float(angle), tilt)


def rotate_volume(volume, angle, *, tilt=90.0, order=1):
    """Rotate a (z, y, x) array about voxel ``n // 2`` (coordinate 0 of ptynb's centred volumes,
    the point :mod:`ptynb.tomo` rotates about) into the lab frame of one view.

    ``volume`` is in the sample frame (the frame :mod:`ptynb.tomo` reconstructs): the sample
    turns by ``angle`` degrees about its own y axis, and that axis is tilted by ``tilt`` degrees
    from the beam (z) in the lab y-z plane (``tilt = 90``: tomography; smaller values:
    laminography, the axis then at (z, y) = (cos tilt, sin tilt)). The matrix is
    :func:`ptynb.physics.rotations.sample_to_lab`, as in :class:`ptynb.tomo.Geometry`.
    Values outside the volume are 0. Complex arrays are rotated part by part.

    Returns an array of the input's shape: ``out(r) = vol(R^T (r - c) + c)``.
    """
    from scipy.ndimage import affine_transform

    v = np.asarray(volume)
    if v.ndim != 3:
        raise ValidationError("volume", f"expected (z, y, x), got shape {v.shape}")
    r = _rotation_matrix_zyx(angle, tilt)
    c = (np.asarray(v.shape) // 2).astype(float)  # voxel n // 2: coordinate 0 of a centred volume
    mat = r.T
    off = c - mat @ c
    if np.iscomplexobj(v):
        re = affine_transform(v.real, mat, off, order=order, mode="constant", cval=0.0)
        im = affine_transform(v.imag, mat, off, order=order, mode="constant", cval=0.0)
        return (re + 1j * im).astype(v.dtype)
    return affine_transform(v, mat, off, order=order, mode="constant", cval=0.0)


def tomography(volume, angles, probe, scan_y, scan_x, *, radiation, energy_eV, voxel_size=None,
               geometry="tomography", tilt=None, voxels_per_slice=1, beam_tilt=(0.0, 0.0),
               seed=None, progress=True, **kwargs):
    """Simulate one ptychography measurement per rotation angle of a 3D volume.

    For each angle the volume is rotated (:func:`rotate_volume`), cut along the beam (z) into
    slices of ``voxels_per_slice`` voxels, each slice's values summed along z and converted to a
    transmission, and :func:`ptychography` simulates the measurement.

    Parameters
    ----------
    volume : array or DataArray (z, y, x)
        X-rays: complex refractive index decrement ``delta + i beta`` per voxel (a real array is
        ``delta`` with ``beta = 0``); slice transmission ``exp(-i k dz sum(delta - i beta))``.
        Electrons: electrostatic potential (V) per voxel; transmission
        ``exp(i sigma dz sum(V))`` (sigma from :func:`ptynb.physics.interaction_constant`).
    angles : sequence of float
        Rotation angles (degrees).
    probe, scan_y, scan_x
        As for :func:`ptychography`; positions in the (y, x) frame of the volume with voxel
        ``(0, 0)`` at y = x = 0 (or the DataArray's coordinates).
    voxel_size : float or (dz, dy, dx)
        Voxel size (m); taken from a DataArray's coords if omitted. ``dy == dx`` is the
        simulation pixel.
    geometry : {"tomography", "laminography"}
    tilt : float
        Angle (degrees) between the rotation axis and the beam: 90 for tomography (default),
        required for laminography (e.g. 60).
    voxels_per_slice : int
        Voxels along z merged into one multislice slice (slice spacing
        ``voxels_per_slice * dz``).
    beam_tilt : (ty, tx)
        Beam inclination (rad) passed to the multislice.
    seed : int, optional
        Angle ``a`` uses noise seed ``seed + a``.
    **kwargs
        Passed to :func:`ptychography` (counts_per_pattern, dose, noise, upsample, ...).

    Returns
    -------
    xarray.Dataset
        ``intensity`` (angle, scan, qy, qx) with ``angle`` in degrees; ``true_object``
        (angle, slice, y, x), ``true_probe`` (mode, py, px) and ``true_volume`` (z, y, x);
        attrs ``geometry``, ``lamino_tilt`` (degrees) and ``rotation_convention``.
    """
    try:
        radiation = check_radiation(radiation)
    except ValueError as e:
        raise ValidationError("radiation", str(e)) from None
    energy = _real_number("energy_eV", energy_eV)
    lam = _wavelength(energy, radiation)
    origin = (0.0, 0.0)
    if isinstance(volume, xr.DataArray):
        if tuple(volume.dims) != ("z", "y", "x"):
            raise ValidationError("volume", f"has dims {volume.dims}; expected (z, y, x)")
        if voxel_size is None:
            vs = []
            for d in ("z", "y", "x"):
                if d not in volume.coords or volume.sizes[d] < 2:
                    raise ValidationError("voxel_size", f"not given and coordinate {d} missing")
                vs.append(float(np.median(np.diff(volume[d].values))))
            voxel_size = vs
        origin = (float(volume["y"].values[0]) if "y" in volume.coords else 0.0,
                  float(volume["x"].values[0]) if "x" in volume.coords else 0.0)
        vol = np.asarray(backend.to_host(volume.data))
    else:
        vol = np.asarray(backend.to_host(volume))
    if vol.ndim != 3:
        raise ValidationError("volume", f"has shape {vol.shape}; expected (z, y, x)")
    if not np.all(np.isfinite(vol)):
        raise ValidationError("volume", "contains NaN or inf")
    if voxel_size is None:
        raise ValidationError("voxel_size", "is required (m)")
    vz, vy, vx = (float(v) for v in np.broadcast_to(np.asarray(voxel_size, float), (3,)))
    for v in (vz, vy, vx):
        _real_number("voxel_size", v)
    if not np.isclose(vy, vx, rtol=1e-6, atol=0.0):
        raise ValidationError("voxel_size", f"dy ({vy:.4g}) and dx ({vx:.4g}) must be equal")
    if geometry not in ("tomography", "laminography"):
        raise ValidationError("geometry", f"must be 'tomography' or 'laminography', not {geometry!r}")
    if tilt is None:
        if geometry == "laminography":
            raise ValidationError("tilt", "is required for laminography (degrees between the "
                                          "rotation axis and the beam)")
        tilt = 90.0
    tilt = _real_number("tilt", tilt, positive=False)
    ang = np.atleast_1d(np.asarray(angles, dtype=float))
    if ang.ndim != 1 or ang.size == 0 or not np.all(np.isfinite(ang)):
        raise ValidationError("angles", "must be a non-empty 1-D sequence of finite degrees")
    nps = int(voxels_per_slice)
    if nps < 1 or vol.shape[0] % nps:
        raise ValidationError("voxels_per_slice", f"{voxels_per_slice!r} must be >= 1 and divide "
                                                  f"the {vol.shape[0]} voxels along z")
    n_slices = vol.shape[0] // nps
    dz_slice = nps * vz
    seed = _resolve_seed(seed)
    k = 2 * np.pi / lam
    results = []
    objs = []
    for a_i, a in enumerate(ang):
        rot = rotate_volume(vol, a, tilt=tilt)
        summed = rot.reshape(n_slices, nps, *rot.shape[1:]).sum(axis=1) * vz
        if radiation == "xray":
            # sum(delta + i beta) dz -> exp(-i k (delta - i beta) dz) = exp(-i k conj(sum))
            t = np.exp(-1j * k * np.conj(summed))
        else:
            t = electron_transmission(summed, energy)
        t = np.asarray(t, dtype=np.complex64)
        obj = xr.DataArray(t, dims=("slice", "y", "x"), coords={
            "y": real_space_coord(t.shape[1], vy, origin[0]),
            "x": real_space_coord(t.shape[2], vx, origin[1])})
        ds = ptychography(obj, probe, scan_y, scan_x, pixel_size=vx, radiation=radiation,
                          energy_eV=energy, slice_thickness=dz_slice if n_slices > 1 else None,
                          tilt=beam_tilt, seed=seed + a_i, progress=progress, validate=False,
                          **kwargs)
        results.append(ds)
        objs.append(t)
    ds, _, p, _, _, _ = _stack_angles(results, ang, seed, dict(
        geometry=geometry, lamino_tilt=tilt, voxel_size=np.asarray([vz, vy, vx]),
        voxels_per_slice=nps,
        rotation_convention="right-handed about axis (z, y, x) = (cos tilt, sin tilt, 0), "
                            "volume rotated by +angle about its centre"), objs=np.stack(objs))
    # slice positions are in attrs (slice_thickness): the z coordinate belongs to true_volume
    ds = _attach_truth(ds, np.stack(objs), p, vx, origin, None, lead=("angle",))
    nz = vol.shape[0]
    ds = ds.assign(true_volume=(("z", "y", "x"), vol, {"long_name": "true volume"}))
    ds = ds.assign_coords(z=("z", centered_coord(nz, vz), {"units": "m"}))
    from .data import validate as _validate

    return _validate(ds)


# ----------------------------------------------------------------------------- demo
def smooth_random_object(shape, *, seed=0, correlation=4.0, phase_range=(-0.5, 0.5),
                         amplitude_range=(0.8, 1.0)):
    """Smooth random complex transmission (y, x) from Gaussian-filtered noise (complex64).

    Phase spans ``phase_range`` (rad), amplitude ``amplitude_range``; ``correlation`` is the
    filter's standard deviation in pixels. Deterministic for a given seed.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        f = gaussian_filter(rng.standard_normal(shape), correlation, mode="wrap")
        f = (f - f.min()) / (np.ptp(f) or 1.0)
        out.append(f)
    ph = phase_range[0] + (phase_range[1] - phase_range[0]) * out[0]
    am = amplitude_range[0] + (amplitude_range[1] - amplitude_range[0]) * out[1]
    return (am * np.exp(1j * ph)).astype(np.complex64)


def demo(kind="xray", size="small", *, seed=0, progress=False, noise="poisson"):
    """A small built-in demo measurement with ground truth (about 100 positions, 64x64 pixels).

    Parameters
    ----------
    kind : {"xray", "electron"}
        X-ray: 8 keV Fresnel zone plate (D = 74.9 um, dr = 60 nm, 25 um central stop) 0.3 mm
        out of focus, 30 nm pixels, 10 x 10 raster with 30 % jitter, 1e6 counts per pattern.
        Electron: 200 keV, 20 mrad, 15 nm defocus, 20 pm pixels, 1e4 e/A**2.
    size : {"small", "medium"}
        "small": 64x64 detector, 10x10 positions; "medium": 128x128, 16x16.
    seed : int
        Object, jitter and noise seed.

    Returns
    -------
    xarray.Dataset (measurement with ``true_object``/``true_probe``), validated.
    """
    from .physics.probes import electron_probe, zone_plate_probe
    from .physics.scan import raster_scan

    if size not in ("small", "medium"):
        raise ValidationError("size", f"must be 'small' or 'medium', not {size!r}")
    seed = _resolve_seed(seed)
    n, grid = (64, 10) if size == "small" else (128, 16)
    kind = check_radiation(kind)
    step_px = n // 6
    if kind == "xray":
        dx = 30e-9
        probe = zone_plate_probe(n, dx, 8000.0, diameter=74.9e-6, outer_zone_width=60e-9,
                                 central_stop_diameter=25e-6,
                                 defocus=0.3e-3 * n / 64, check_window=False)
        counts = dict(counts_per_pattern=1e6)
        obj_kw = dict(phase_range=(-0.6, 0.4), amplitude_range=(0.85, 1.0))
    else:
        dx = 20e-12
        probe = electron_probe(n, dx, 200e3, 20e-3, defocus=15e-9 * n / 64)
        counts = dict(dose=1e4 * 1e20)
        obj_kw = dict(phase_range=(-0.3, 0.3), amplitude_range=(1.0, 1.0))
    step = step_px * dx
    margin = n // 2 + step_px
    ny = nx = 2 * margin + (grid - 1) * step_px
    obj = smooth_random_object((ny, nx), seed=seed, correlation=3.0, **obj_kw)
    sy, sx = raster_scan(grid, grid, step, jitter=0.3, seed=seed,
                         origin=(margin * dx, margin * dx))
    ds = ptychography(obj, probe, sy, sx, pixel_size=dx, radiation=kind,
                      energy_eV=probe.attrs["energy_eV"], noise=noise, seed=seed,
                      progress=progress, demo=kind, scan_step=step, scan_jitter=0.3, **counts)
    return ds
