"""The ptynb data model: dims, coordinates and attrs conventions, constructors, validation.

Every ptynb step takes and returns xarray objects that follow these conventions.

Dimensions
----------
=============  ==========================================  ==============================
dim            meaning                                     index coordinate (units)
=============  ==========================================  ==============================
``scan``       probe position index                        ``scan`` (int); positions
                                                           ``scan_y``, ``scan_x`` (m)
                                                           are coords along ``scan``
``angle``      rotation / tilt of the sample               ``angle`` (degrees)
``beam``       simultaneous beams (stereo)                 ``beam`` (labels); ``beam_tilt``
                                                           (degrees) along ``beam``
``slice``      multislice depth                            ``slice`` (int), ``z`` (m)
``mode``       mutually incoherent probe modes             ``mode`` (int)
``qy, qx``     detector pixels                             spatial frequency (1/m), zero
                                                           at index n//2 (centred pattern)
``y, x, z``    object / volume real space                  m, in the scan-position frame
``py, px``     probe window                                m, zero at index n//2
``iteration``  convergence history                         ``iteration`` (int)
=============  ==========================================  ==============================

Kinds of dataset (``attrs["kind"]``)
-------------------------------------
``measurement``
    ``intensity`` (..., scan, qy, qx) float32, counts per pixel, detector centred (zero
    spatial frequency at pixel n//2); optional ``mask`` (qy, qx) bool, **True where a
    detector pixel is valid**. Attrs: ``radiation`` ("xray"/"electron"), ``energy_eV``,
    ``wavelength`` (m), ``pixel_size`` (m, the real-space reconstruction pixel) and the
    detector geometry it came from (``detector_distance`` and ``detector_pixel_size`` in m
    for X-rays, or ``reciprocal_pixel_size`` in 1/m for electrons).
    Optional *nominal* optics (what the experimenter knows; the only optics
    :func:`ptynb.ptycho.initial_probe` reads): X-rays ``zone_plate_diameter``,
    ``zone_plate_outer_zone_width``, ``central_stop_diameter`` (m); electrons
    ``convergence_semiangle`` (rad) and ``nominal_Cs`` (m, alias ``Cs``); both
    ``nominal_defocus`` (m; X-rays: sample plane minus focus, positive = downstream;
    electrons: positive = underfocus, alias ``defocus``). Simulated data
    (:mod:`ptynb.simulate`) also carry ground truth that no reconstruction reads: the
    ``true_*`` variables, the ``probe_*`` attrs (the true probe's parameters) and
    ``nominal_defocus_error`` (the relative error given to ``nominal_defocus``).
``reconstruction``
    ``object`` (..., slice, y, x) complex64 transmission; ``probe`` (..., mode, py, px)
    complex64 (sqrt(counts) per pixel amplitude); ``scan_y``/``scan_x`` (..., scan) refined
    positions (m); ``cost`` (..., iteration). Attrs: ``pixel_size``, ``slice_thickness`` (m),
    the settings used and ``ptynb_version``.
``projections``
    DataArray (angle, y, x), real or complex, ``angle`` in degrees; geometry in attrs.
``volume``
    DataArray (z, y, x), real or complex; coordinates in metres.

An experiment end to end is an :class:`xarray.DataTree` (see :func:`experiment`): angles or
beams as sibling child nodes, detector/probe information shared in the root node's attrs.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from . import __version__

# the .pty accessor (xarray/numpy only at module level): importing it registers ds.pty, and
# keeps ptynb.data.PtyAccessor importable
from .accessor import PtyAccessor

__all__ = [
    "DIMS",
    "DataWarning",
    "PtyAccessor",
    "UnitWarning",
    "ValidationError",
    "centered_coord",
    "check_finite",
    "check_positive",
    "derived_pixel_size",
    "experiment",
    "measurement",
    "projections",
    "provenance",
    "real_space_coord",
    "reconstruction",
    "validate",
    "volume",
]

DIMS = {
    "scan": "probe position index; positions scan_y, scan_x (m) are coords along scan",
    "angle": "sample rotation or tilt; coordinate in degrees",
    "beam": "simultaneous beams (stereo); labels, with beam_tilt (degrees) along beam",
    "slice": "multislice depth index; coordinate z (m)",
    "mode": "mutually incoherent probe modes; index",
    "qy": "detector rows; spatial frequency (1/m), zero at index n//2",
    "qx": "detector columns; spatial frequency (1/m), zero at index n//2",
    "y": "object/volume rows (m)",
    "x": "object/volume columns (m)",
    "z": "volume depth (m)",
    "py": "probe window rows (m), zero at index n//2",
    "px": "probe window columns (m), zero at index n//2",
    "iteration": "convergence history index",
    "layer": "thin sample layers (stereo layer recovery); coordinate layer_z (m)",
    "q": "FRC/FSC shell or ring spatial frequency (1/m)",
    "qz": "volume power-spectrum axis along z (1/m)",
    "r": "radial-profile radius",
}

#: Largest object dimension (pixels) accepted before positions are treated as a unit error.
MAX_OBJECT_PIXELS = 1 << 16
_REL_TOL = 1e-3
#: Lowest photon energy (eV) accepted as X-rays; lower values are most likely keV given as eV.
MIN_XRAY_EV = 100.0
#: Lowest electron energy (eV) accepted; lower values are most likely keV given as eV.
MIN_ELECTRON_EV = 1000.0
#: attr that accepts energies below these limits (EUV / optical photons, slow electrons)
LOW_ENERGY_ATTR = "allow_low_energy"
#: With this many views or more, angles that all lie within +-2 pi look like radians.
RADIAN_MIN_VIEWS = 8


class ValidationError(ValueError):
    """Input data break the ptynb conventions. The message names the variable and problem."""

    def __init__(self, variable: str, problem: str):
        self.variable = variable
        self.problem = problem
        super().__init__(f"{variable}: {problem}")


class DataWarning(UserWarning):
    """Data that are probably wrong but may be intended (zero patterns, unchecked lazy data)."""


class UnitWarning(DataWarning):
    """A value that looks like it is in the wrong unit (e.g. angles in radians, not degrees)."""


def check_energy(energy_eV, radiation: str, *, allow_low: bool = False) -> float:
    """``energy_eV`` as a float, refusing energies that are most likely keV given as eV.

    X-rays below :data:`MIN_XRAY_EV` (100 eV) and electrons below :data:`MIN_ELECTRON_EV`
    (1 keV) raise :class:`ValidationError` naming the likely mistake, unless ``allow_low``
    (the measurement attr ``allow_low_energy=True``: EUV or optical photons, slow electrons).
    """
    e = _positive("energy_eV", energy_eV, allow_none=False)
    limit = MIN_XRAY_EV if radiation == "xray" else MIN_ELECTRON_EV
    if e < limit and not allow_low:
        what = "X-ray photons" if radiation == "xray" else "electrons"
        meant = e * 1e3
        raise ValidationError(
            "energy_eV", f"{e:g} eV is below {limit:g} eV, too low for {what}: was the energy "
            f"given in keV? For {e:g} keV use energy_eV={meant:g} (ptynb energies are in eV). "
            f"If {e:g} eV is meant, set the attr {LOW_ENERGY_ATTR}=True")
    return e


def check_angles(name: str, angles) -> None:
    """Warn (:class:`UnitWarning`) when ``angles`` (which must be degrees) look like radians:
    at least :data:`RADIAN_MIN_VIEWS` distinct values, all within +-2 pi."""
    import warnings

    a = np.asarray(angles, dtype=np.float64).reshape(-1)
    a = a[np.isfinite(a)]
    if np.unique(a).size < RADIAN_MIN_VIEWS:
        return
    if float(np.max(np.abs(a))) < 2 * np.pi:
        warnings.warn(
            f"{name}: all {a.size} angles lie within +-2 pi (range {a.min():.4g} .. {a.max():.4g}); "
            f"ptynb angles are in degrees: were radians given? Convert with numpy.degrees()",
            UnitWarning, stacklevel=3)


# ----------------------------------------------------------------------------- helpers
def centered_coord(n: int, spacing: float) -> np.ndarray:
    """Coordinate of ``n`` samples with ``spacing``, zero at index ``n // 2`` (float64)."""
    return (np.arange(n) - n // 2) * float(spacing)


def real_space_coord(n: int, pixel_size: float, origin: float = 0.0) -> np.ndarray:
    """Coordinate ``origin + i * pixel_size`` for ``i`` in ``range(n)`` (float64, metres)."""
    return origin + np.arange(n) * float(pixel_size)


def provenance(**settings) -> dict:
    """Attrs recording the package version and the given settings (JSON-friendly values)."""
    out = {"ptynb_version": __version__}
    for k, v in settings.items():
        if v is None:
            continue
        if isinstance(v, (np.generic,)):
            v = v.item()
        if isinstance(v, (bool, np.bool_)):
            v = int(v)
        if isinstance(v, (list, tuple)):
            v = np.asarray(v)
        if not isinstance(v, (str, int, float, np.ndarray)):
            v = repr(v)
        out[k] = v
    return out


def check_finite(name: str, value) -> float:
    """``value`` as a float; :class:`ValidationError` naming ``name`` unless a finite number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValidationError(name, f"must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValidationError(name, f"must be finite, got {value!r}")
    return v


def check_positive(name: str, value, *, allow_zero: bool = False, allow_none: bool = False):
    """``value`` as a float > 0 (>= 0 with ``allow_zero``; ``None`` passes with ``allow_none``);
    otherwise :class:`ValidationError` naming ``name``. The one number check all modules use."""
    if value is None:
        if allow_none:
            return None
        raise ValidationError(name, "is required")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValidationError(name, f"must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValidationError(name, f"must be {'non-negative' if allow_zero else 'positive'} "
                                    f"and finite, got {value!r}")
    return v


def _positive(name: str, value, allow_none=True):
    return check_positive(name, value, allow_none=allow_none)


def derived_pixel_size(
    n: int,
    wavelength: float,
    *,
    detector_distance: float | None = None,
    detector_pixel_size: float | None = None,
    reciprocal_pixel_size: float | None = None,
) -> float | None:
    """Real-space pixel (m) implied by an ``n``-pixel detector.

    X-ray far field: ``wavelength * detector_distance / (n * detector_pixel_size)``.
    Electron (reciprocal sampling ``dq`` in 1/m): ``1 / (n * dq)``. ``None`` if neither
    geometry is complete.
    """
    if reciprocal_pixel_size is not None:
        return 1.0 / (n * float(reciprocal_pixel_size))
    if detector_distance is not None and detector_pixel_size is not None:
        return float(wavelength) * float(detector_distance) / (n * float(detector_pixel_size))
    return None


_STRING_PROBLEM = ("holds text (dtype {dtype}), not numbers: parse it first, e.g. "
                   "numpy.asarray(values, dtype=numpy.float32); ptynb does not convert strings")


def _as_float32_counts(intensity, name="intensity"):
    arr = intensity.data if isinstance(intensity, xr.DataArray) else intensity
    if hasattr(arr, "dtype") and np.issubdtype(arr.dtype, np.complexfloating):
        raise ValidationError(name, "is complex; diffraction intensities must be real counts")
    if hasattr(arr, "compute") and not isinstance(arr, np.ndarray):  # dask: keep lazy
        if arr.dtype.kind in "USO":
            raise ValidationError(name, _STRING_PROBLEM.format(dtype=arr.dtype))
        return arr.astype(np.float32) if arr.dtype != np.float32 else arr
    a = np.asarray(arr)
    if a.dtype.kind in "US":
        raise ValidationError(name, _STRING_PROBLEM.format(dtype=a.dtype))
    if a.dtype == object:
        raise ValidationError(name, "has dtype object; expected a numeric array")
    if a.dtype.kind == "b":
        raise ValidationError(name, "is boolean; diffraction intensities must be counts (numbers)")
    if np.issubdtype(a.dtype, np.complexfloating):
        raise ValidationError(name, "is complex; diffraction intensities must be real counts")
    return a.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- constructors
def measurement(
    intensity,
    scan_y,
    scan_x,
    *,
    radiation: str,
    energy_eV: float,
    pixel_size: float | None = None,
    detector_distance: float | None = None,
    detector_pixel_size: float | None = None,
    reciprocal_pixel_size: float | None = None,
    mask=None,
    angle: Sequence[float] | None = None,
    beam: Sequence[str] | None = None,
    beam_tilt: Sequence[float] | None = None,
    dims: Sequence[str] | None = None,
    validate_data: bool = True,
    **attrs: Any,
) -> xr.Dataset:
    """Build a measurement Dataset (``attrs["kind"] == "measurement"``).

    Parameters
    ----------
    intensity : array (..., scan, qy, qx)
        Diffraction patterns in counts, detector-centred (zero frequency at pixel n//2).
        Leading dims are ``beam`` and/or ``angle`` (in that order), named by passing
        ``beam=``/``angle=`` coordinate values or ``dims=``. numpy or dask arrays (kept lazy).
    scan_y, scan_x : array (scan,) or (..., scan)
        Probe-centre positions in metres.
    radiation : {"xray", "electron"}
    energy_eV : float
        Photon energy or electron kinetic energy (eV).
    pixel_size : float, optional
        Real-space reconstruction pixel (m). Derived from the detector geometry if omitted.
    detector_distance, detector_pixel_size : float, optional
        X-ray far-field geometry (m).
    reciprocal_pixel_size : float, optional
        Electron detector sampling in spatial frequency (1/m) (= angular pixel / wavelength).
    mask : array (qy, qx) of bool, optional
        True where the detector pixel is valid.
    angle : sequence of float, optional
        Angles (degrees) for a leading ``angle`` dim.
    beam, beam_tilt : sequence, optional
        Beam labels (e.g. ``["left", "center", "right"]``) and tilts (degrees).
    dims : sequence of str, optional
        Explicit dims of ``intensity`` (must end in ``scan, qy, qx``).
    **attrs
        Extra experimental parameters kept in attrs (e.g. ``convergence_semiangle`` in rad).

    Returns
    -------
    xarray.Dataset
        ``intensity`` float32 (..., scan, qy, qx); coords ``scan``, ``scan_y``, ``scan_x``
        (m), ``qy``, ``qx`` (1/m) and any ``angle``/``beam``; attrs as described in the module.

    Raises
    ------
    ValidationError
        For inconsistent shapes, missing geometry, bad values (see :func:`validate`).
    """
    from ._units import check_radiation
    from ._units import wavelength as _wl

    try:
        radiation = check_radiation(radiation)
    except ValueError as e:
        raise ValidationError("radiation", str(e)) from None
    energy = check_energy(energy_eV, radiation, allow_low=bool(attrs.get(LOW_ENERGY_ATTR, False)))
    lam = _wl(energy, radiation)

    if isinstance(intensity, xr.DataArray) and dims is None:
        dims = intensity.dims
    data = _as_float32_counts(intensity)
    if data.ndim < 3:
        raise ValidationError("intensity", f"needs dims (..., scan, qy, qx), got {data.ndim}-D")
    if dims is None:
        lead = []
        if beam is not None:
            lead.append("beam")
        if angle is not None:
            lead.append("angle")
        dims = tuple(lead) + ("scan", "qy", "qx")
    dims = tuple(dims)
    if len(dims) != data.ndim or tuple(dims[-3:]) != ("scan", "qy", "qx"):
        raise ValidationError(
            "intensity", f"has shape {tuple(data.shape)} but dims {dims}; expected (..., scan, qy, qx)"
        )
    unknown = set(dims) - {"beam", "angle", "scan", "qy", "qx"}
    if unknown:
        raise ValidationError("intensity", f"unknown leading dims {sorted(unknown)}")
    sizes = dict(zip(dims, data.shape))
    ny, nx = sizes["qy"], sizes["qx"]

    for name, val in (("detector_distance", detector_distance),
                      ("detector_pixel_size", detector_pixel_size),
                      ("reciprocal_pixel_size", reciprocal_pixel_size),
                      ("pixel_size", pixel_size)):
        _positive(name, val)

    derived = derived_pixel_size(
        ny, lam, detector_distance=detector_distance, detector_pixel_size=detector_pixel_size,
        reciprocal_pixel_size=reciprocal_pixel_size,
    )
    if pixel_size is None:
        if derived is None:
            raise ValidationError(
                "pixel_size",
                "missing: give pixel_size (m), or detector_distance and detector_pixel_size "
                "(X-ray), or reciprocal_pixel_size (electron)",
            )
        pixel_size = derived
    pixel_size = float(pixel_size)
    dq_y = 1.0 / (ny * pixel_size)
    dq_x = 1.0 / (nx * pixel_size)

    pos_dims = tuple(d for d in dims if d not in ("qy", "qx"))
    coords: dict[str, Any] = {
        "scan": np.arange(sizes["scan"]),
        "qy": ("qy", centered_coord(ny, dq_y), {"units": "1/m", "long_name": "spatial frequency"}),
        "qx": ("qx", centered_coord(nx, dq_x), {"units": "1/m", "long_name": "spatial frequency"}),
    }
    for name, pos in (("scan_y", scan_y), ("scan_x", scan_x)):
        p = np.asarray(pos.data if isinstance(pos, xr.DataArray) else pos, dtype=np.float64)
        if p.ndim == 1:
            pd = ("scan",)
        else:
            pd = pos_dims[-p.ndim:]
        if p.shape != tuple(sizes[d] for d in pd):
            raise ValidationError(
                name,
                f"has {p.shape[-1] if p.ndim else 0} positions (shape {p.shape}) but intensity "
                f"has {sizes['scan']} patterns along scan (dims {pos_dims})",
            )
        coords[name] = (pd, p, {"units": "m", "long_name": "probe centre " + name[-1]})
    if angle is not None:
        a = np.asarray(angle, dtype=np.float64).reshape(-1)
        coords["angle"] = ("angle", a, {"units": "degree"})
    if beam is not None:
        coords["beam"] = ("beam", np.asarray([str(b) for b in beam]))
        if beam_tilt is not None:
            coords["beam_tilt"] = ("beam", np.asarray(beam_tilt, dtype=np.float64),
                                   {"units": "degree"})
    for d in dims:
        if d not in coords and d not in ("qy", "qx", "scan"):
            coords[d] = np.arange(sizes[d])

    data_vars = {"intensity": (dims, data, {"units": "counts", "long_name": "diffracted intensity"})}
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != (ny, nx):
            raise ValidationError("mask", f"has shape {m.shape}, detector is {(ny, nx)}")
        data_vars["mask"] = (("qy", "qx"), m.astype(bool),
                             {"long_name": "valid detector pixel (True = use)"})

    all_attrs = provenance(
        kind="measurement",
        radiation=radiation,
        energy_eV=energy,
        wavelength=lam,
        pixel_size=pixel_size,
        detector_distance=detector_distance,
        detector_pixel_size=detector_pixel_size,
        reciprocal_pixel_size=reciprocal_pixel_size,
    )
    all_attrs.update(attrs)
    ds = xr.Dataset(data_vars, coords=coords, attrs=all_attrs)
    if validate_data:
        validate(ds)
    return ds


def reconstruction(
    obj,
    probe,
    *,
    pixel_size: float,
    scan_y=None,
    scan_x=None,
    origin: tuple[float, float] = (0.0, 0.0),
    slice_thickness: float | None = None,
    cost=None,
    leading: Mapping[str, Sequence] | None = None,
    **attrs: Any,
) -> xr.Dataset:
    """Build a reconstruction Dataset (``attrs["kind"] == "reconstruction"``).

    Parameters
    ----------
    obj : complex array (..., slice, y, x) or (y, x)
        Object transmission per slice. A 2-D array gets a length-1 ``slice`` dim.
    probe : complex array (..., mode, py, px) or (py, px)
        Probe modes (sqrt(counts) units). A 2-D array gets a length-1 ``mode`` dim.
    pixel_size : float
        Object and probe pixel (m).
    scan_y, scan_x : array (..., scan), optional
        (Refined) probe-centre positions (m), same frame as the object coords.
    origin : (float, float)
        Coordinates (m) of object pixel (0, 0): ``y = origin[0] + i * pixel_size``.
    slice_thickness : float, optional
        Multislice spacing (m); slice ``k`` sits at ``z = k * slice_thickness``.
    cost : array (..., iteration), optional
        Convergence history.
    leading : mapping, optional
        Coordinates of leading dims in order, e.g. ``{"angle": [0, 30]}``.
    **attrs
        Settings and parameters recorded in attrs (provenance).
    """
    px = _positive("pixel_size", pixel_size, allow_none=False)
    o = np.asarray(obj)
    p = np.asarray(probe)
    if not np.iscomplexobj(o):
        o = o.astype(np.complex64)
    if not np.iscomplexobj(p):
        p = p.astype(np.complex64)
    lead_names = list(leading.keys()) if leading else []
    if o.ndim == 2 + len(lead_names):
        o = np.expand_dims(o, -3)
    if p.ndim == 2 + len(lead_names):
        p = np.expand_dims(p, -3)
    if o.ndim != 3 + len(lead_names):
        raise ValidationError("object", f"has shape {o.shape}; expected (..., slice, y, x)")
    if p.ndim != 3 + len(lead_names):
        raise ValidationError("probe", f"has shape {p.shape}; expected (..., mode, py, px)")
    lead = tuple(lead_names)
    ns, ny, nx = o.shape[-3:]
    nm, npy, npx = p.shape[-3:]
    coords: dict[str, Any] = {
        "y": ("y", real_space_coord(ny, px, origin[0]), {"units": "m"}),
        "x": ("x", real_space_coord(nx, px, origin[1]), {"units": "m"}),
        "py": ("py", centered_coord(npy, px), {"units": "m"}),
        "px": ("px", centered_coord(npx, px), {"units": "m"}),
        "slice": np.arange(ns),
        "mode": np.arange(nm),
    }
    dz = _positive("slice_thickness", slice_thickness)
    if dz is not None:
        coords["z"] = ("slice", np.arange(ns) * dz, {"units": "m"})
    for k, v in (leading or {}).items():
        coords[k] = (k, np.asarray(v))
    data_vars: dict[str, Any] = {
        "object": (lead + ("slice", "y", "x"), o.astype(np.complex64, copy=False),
                   {"long_name": "object transmission"}),
        "probe": (lead + ("mode", "py", "px"), p.astype(np.complex64, copy=False),
                  {"long_name": "probe", "units": "sqrt(counts)"}),
    }
    if scan_y is not None and scan_x is not None:
        sy = np.asarray(scan_y, dtype=np.float64)
        sx = np.asarray(scan_x, dtype=np.float64)
        sd = lead[len(lead) - (sy.ndim - 1):] + ("scan",) if sy.ndim > 1 else ("scan",)
        coords["scan"] = np.arange(sy.shape[-1])
        data_vars["scan_y"] = (sd, sy, {"units": "m"})
        data_vars["scan_x"] = (sd, sx, {"units": "m"})
    if cost is not None:
        c = np.asarray(cost, dtype=np.float64)
        cd = lead[len(lead) - (c.ndim - 1):] + ("iteration",) if c.ndim > 1 else ("iteration",)
        coords["iteration"] = np.arange(c.shape[-1])
        data_vars["cost"] = (cd, c)
    all_attrs = provenance(kind="reconstruction", pixel_size=px, slice_thickness=dz)
    all_attrs.update(provenance(**attrs))
    return xr.Dataset(data_vars, coords=coords, attrs=all_attrs)


def projections(
    data,
    angles,
    *,
    pixel_size: float,
    origin: tuple[float, float] | None = None,
    name: str = "projections",
    **attrs: Any,
) -> xr.DataArray:
    """Build a projections DataArray (angle, y, x) (``attrs["kind"] == "projections"``).

    Parameters
    ----------
    data : array (angle, y, x), real or complex
    angles : array (angle,)
        Rotation angles in degrees.
    pixel_size : float
        Detector pixel (m).
    origin : (float, float), optional
        Coordinates (m) of pixel (0, 0); default centres the detector (zero at n//2).
    **attrs
        Geometry (``geometry``, ``tilt`` in degrees, ...) and other parameters.
    """
    a = np.asarray(data)
    ang = np.asarray(angles, dtype=np.float64).reshape(-1)
    if a.ndim != 3:
        raise ValidationError(name, f"has shape {a.shape}; expected (angle, y, x)")
    if ang.size != a.shape[0]:
        raise ValidationError("angle", f"has {ang.size} values for {a.shape[0]} projections")
    px = _positive("pixel_size", pixel_size, allow_none=False)
    ny, nx = a.shape[1:]
    if origin is None:
        yc, xc = centered_coord(ny, px), centered_coord(nx, px)
    else:
        yc, xc = real_space_coord(ny, px, origin[0]), real_space_coord(nx, px, origin[1])
    da = xr.DataArray(
        a,
        dims=("angle", "y", "x"),
        coords={"angle": ("angle", ang, {"units": "degree"}),
                "y": ("y", yc, {"units": "m"}), "x": ("x", xc, {"units": "m"})},
        name=name,
        attrs=provenance(kind="projections", pixel_size=px, **attrs),
    )
    return da


def volume(
    data,
    *,
    voxel_size: float | Sequence[float],
    origin: tuple[float, float, float] | None = None,
    name: str = "volume",
    **attrs: Any,
) -> xr.DataArray:
    """Build a volume DataArray (z, y, x) (``attrs["kind"] == "volume"``).

    Parameters
    ----------
    data : array (z, y, x), real or complex
    voxel_size : float or (dz, dy, dx)
        Voxel size in metres.
    origin : (z0, y0, x0), optional
        Coordinates (m) of voxel (0, 0, 0); default centres each axis (zero at n//2).
    """
    a = np.asarray(data)
    if a.ndim != 3:
        raise ValidationError(name, f"has shape {a.shape}; expected (z, y, x)")
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    for v in vs:
        _positive("voxel_size", v, allow_none=False)
    coords = {}
    for i, d in enumerate(("z", "y", "x")):
        if origin is None:
            c = centered_coord(a.shape[i], vs[i])
        else:
            c = real_space_coord(a.shape[i], vs[i], origin[i])
        coords[d] = (d, c, {"units": "m"})
    return xr.DataArray(a, dims=("z", "y", "x"), coords=coords, name=name,
                        attrs=provenance(kind="volume", voxel_size=vs, **attrs))


def experiment(
    children: Mapping[str, xr.Dataset],
    *,
    name: str = "experiment",
    **shared_attrs: Any,
) -> xr.DataTree:
    """Assemble an experiment as a DataTree of sibling nodes.

    Parameters
    ----------
    children : mapping of node name -> Dataset
        E.g. ``{"angle_000": m0, "angle_030": m1}`` or ``{"left": ml, "center": mc}``.
        Each child is validated. Attrs identical in every child (radiation, energy,
        detector geometry, ...) are moved to the root node; the rest stay in the child.
    **shared_attrs
        Extra attrs for the root node (e.g. ``sample="two-layer membrane"``).

    Returns
    -------
    xarray.DataTree
        Root with attrs ``kind="experiment"``; one child node per entry.
    """
    if not children:
        raise ValidationError("children", "an experiment needs at least one node")
    kids = {}
    for key, ds in children.items():
        if "/" in key or not key:
            raise ValidationError("children", f"invalid node name {key!r}")
        if not isinstance(ds, xr.Dataset):
            raise ValidationError(key, f"must be an xarray.Dataset, got {type(ds).__name__}")
        validate(ds)
        kids[key] = ds
    common = None
    for ds in kids.values():
        items = {k: v for k, v in ds.attrs.items() if not isinstance(v, np.ndarray)}
        if common is None:
            common = dict(items)
        else:
            common = {k: v for k, v in common.items() if k in items and items[k] == v}
    common = common or {}
    common.pop("kind", None)
    root_attrs = provenance(name=name)
    root_attrs.update(common)
    root_attrs.update(shared_attrs)
    root_attrs["kind"] = "experiment"
    tree = xr.DataTree(dataset=xr.Dataset(attrs=root_attrs), name=name)
    for key, ds in kids.items():
        local = {k: v for k, v in ds.attrs.items() if k not in common or k == "kind"}
        node_ds = ds.copy(deep=False)
        node_ds.attrs = local
        tree[key] = xr.DataTree(dataset=node_ds)
    return tree


def node_attrs(tree: xr.DataTree, path: str) -> dict:
    """Attrs of node ``path`` merged with those of its ancestors (nearest wins)."""
    node = tree[path]
    chain = []
    while node is not None:
        chain.append(dict(node.attrs))
        node = node.parent
    out: dict = {}
    for a in reversed(chain):
        out.update(a)
    return out


def node_dataset(tree: xr.DataTree, path: str) -> xr.Dataset:
    """The Dataset at ``path`` with inherited coords and attrs merged in (ready for steps)."""
    ds = tree[path].to_dataset(inherit=True)
    return ds.assign_attrs(node_attrs(tree, path))


# ----------------------------------------------------------------------------- validation
def _kind(obj) -> str:
    kind = obj.attrs.get("kind")
    if kind:
        return str(kind)
    if isinstance(obj, xr.Dataset):
        if "intensity" in obj:
            return "measurement"
        if "object" in obj:
            return "reconstruction"
    if isinstance(obj, xr.DataArray):
        if obj.dims[-3:] == ("angle", "y", "x") or obj.dims == ("angle", "y", "x"):
            return "projections"
        if obj.dims == ("z", "y", "x"):
            return "volume"
    return "unknown"


def _check_finite(name, arr):
    if hasattr(arr, "compute") and not isinstance(arr, np.ndarray):
        return  # lazy (dask): see _check_lazy_intensity
    a = np.asarray(arr)
    if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValidationError(name, f"contains {bad} NaN or inf value(s)")


def _intensity_problems(name, n_bad, n_neg, vmin, zero, n_patterns, scan_index, where=""):
    """Raise or warn for the counts found by the eager or the lazy check of ``intensity``."""
    import warnings

    if n_bad:
        raise ValidationError(name, f"contains {n_bad} NaN or inf value(s){where}")
    if n_neg:
        raise ValidationError(name, f"has {n_neg} negative value(s) (min {vmin:.4g}){where}; "
                                    "counts must be >= 0")
    n_zero = int(np.count_nonzero(zero))
    if n_patterns and n_zero == n_patterns:
        raise ValidationError(name, f"every one of the {n_patterns} diffraction patterns is zero"
                                    f"{where}: no counts at all (beam off, wrong detector "
                                    "channel, or data not yet written?)")
    if n_zero:
        idx = np.flatnonzero(np.asarray(zero).reshape(-1))[:5]
        scans = [int(scan_index[i % len(scan_index)]) for i in idx] if len(scan_index) else []
        warnings.warn(
            f"{name}: {n_zero} of {n_patterns} diffraction patterns are all zero{where} "
            f"(scan {', '.join(map(str, scans))}{', ...' if n_zero > len(scans) else ''}): they carry "
            "no information (dropped frames or beam off?); drop them with ds.drop_isel(scan=[...])",
            DataWarning, stacklevel=4)


def _check_intensity_values(name, data, scan_index):
    a = np.asarray(data)
    if a.dtype.kind not in "fiu" or a.size == 0:
        return
    finite = np.isfinite(a) if a.dtype.kind == "f" else None
    n_bad = int(a.size - np.count_nonzero(finite)) if finite is not None else 0
    if n_bad:
        _intensity_problems(name, n_bad, 0, 0.0, np.zeros(0, bool), 0, scan_index)
    mn = float(np.min(a))
    n_neg = int(np.count_nonzero(a < 0)) if mn < 0 else 0
    zero = ~np.any(a != 0, axis=(-2, -1))
    _intensity_problems(name, 0, n_neg, mn, zero, int(zero.size), scan_index)


def _check_lazy_intensity(name, data, scan_index, mode):
    """NaN/inf, negative values and zero patterns of a lazy (dask) ``intensity``.

    ``mode="warn"``: nothing is read; a :class:`DataWarning` says so. ``"scan"``: one chunked
    pass over the data (dask reductions: memory of a few chunks, time of a full read).
    ``"skip"``: nothing is read, no warning (the caller checks as it reads).
    """
    import warnings

    if mode == "skip":
        return
    nbytes = int(np.prod(data.shape)) * data.dtype.itemsize
    if mode != "scan":
        from ._memory import format_bytes

        warnings.warn(
            f"{name}: lazily loaded ({format_bytes(nbytes)}, not read): NaN/inf, negative values "
            "and all-zero patterns were NOT checked; validate(ds, lazy='scan') checks them in one "
            "chunked pass, or load the data first", DataWarning, stacklevel=4)
        return
    import dask
    import dask.array as da

    x = data
    kind = x.dtype.kind
    if kind not in "fiu" or x.size == 0:
        return
    n_bad = (~da.isfinite(x)).sum() if kind == "f" else da.zeros((), int)
    n_neg = (x < 0).sum()
    vmin = x.min()
    zero = ~da.any(x != 0, axis=(-2, -1))
    n_bad, n_neg, vmin, zero = dask.compute(n_bad, n_neg, vmin, zero)
    _intensity_problems(name, int(n_bad), int(n_neg), float(vmin), np.asarray(zero),
                        int(np.asarray(zero).size), scan_index, where=" (chunked scan of the lazy data)")


def _check_dims(name, da, tail, allowed_lead=("beam", "angle")):
    dims = tuple(da.dims)
    if len(dims) < len(tail) or dims[-len(tail):] != tuple(tail):
        raise ValidationError(name, f"has dims {dims}; expected (..., {', '.join(tail)})")
    extra = [d for d in dims[: -len(tail)] if d not in allowed_lead]
    if extra:
        raise ValidationError(name, f"has unexpected dims {extra}; allowed leading dims {allowed_lead}")


def _check_spacing(name, coord, expected, unit):
    c = np.asarray(coord, dtype=np.float64)
    if c.size < 2:
        return
    d = np.diff(c)
    if not np.allclose(d, expected, rtol=_REL_TOL, atol=0):
        raise ValidationError(
            name,
            f"coordinate spacing {float(np.median(d)):.6g} {unit} is inconsistent with the "
            f"pixel size, which implies {expected:.6g} {unit}",
        )


def _validate_measurement(ds: xr.Dataset, lazy_mode: str = "warn"):
    from ._units import check_radiation
    from ._units import wavelength as _wl

    if "intensity" not in ds:
        raise ValidationError("intensity", "missing from the measurement dataset")
    inten = ds["intensity"]
    _check_dims("intensity", inten, ("scan", "qy", "qx"))
    if np.issubdtype(inten.dtype, np.complexfloating):
        raise ValidationError("intensity", "is complex; diffraction intensities must be real counts")
    if inten.dtype.kind in "US":
        raise ValidationError("intensity", _STRING_PROBLEM.format(dtype=inten.dtype))
    if inten.dtype.kind == "b":
        raise ValidationError("intensity", "is boolean; diffraction intensities must be counts (numbers)")
    if not np.issubdtype(inten.dtype, np.number):
        raise ValidationError("intensity", f"has non-numeric dtype {inten.dtype}")
    data = inten.data
    lazy = hasattr(data, "compute") and not isinstance(data, np.ndarray)
    scan_index = np.asarray(ds["scan"].values) if "scan" in ds.coords else np.arange(inten.sizes["scan"])
    if lazy:
        _check_lazy_intensity("intensity", data, scan_index, lazy_mode)
    else:
        _check_intensity_values("intensity", data, scan_index)
    # attrs
    a = ds.attrs
    if "radiation" not in a:
        raise ValidationError("radiation", "missing from attrs ('xray' or 'electron')")
    try:
        rad = check_radiation(a["radiation"])
    except ValueError as e:
        raise ValidationError("radiation", str(e)) from None
    if "energy_eV" not in a:
        raise ValidationError("energy_eV", "missing from attrs (photon or electron energy in eV)")
    energy = check_energy(a["energy_eV"], rad, allow_low=bool(a.get(LOW_ENERGY_ATTR, False)))
    lam = _wl(energy, rad)
    if "angle" in ds.coords:
        check_angles("angle", ds["angle"].values)
    if "wavelength" in a and not np.isclose(float(a["wavelength"]), lam, rtol=_REL_TOL, atol=0.0):
        raise ValidationError("wavelength", f"attr {a['wavelength']!r} m disagrees with energy_eV ({lam:.6g} m)")
    ny = inten.sizes["qy"]
    derived = derived_pixel_size(
        ny, lam,
        detector_distance=_positive("detector_distance", a.get("detector_distance")),
        detector_pixel_size=_positive("detector_pixel_size", a.get("detector_pixel_size")),
        reciprocal_pixel_size=_positive("reciprocal_pixel_size", a.get("reciprocal_pixel_size")),
    )
    px = _positive("pixel_size", a.get("pixel_size"))
    if px is None and derived is None:
        raise ValidationError(
            "pixel_size", "missing: the attrs give neither pixel_size nor a detector geometry "
            "(detector_distance + detector_pixel_size, or reciprocal_pixel_size)")
    if px is None:
        px = derived
    if derived is not None and not np.isclose(px, derived, rtol=_REL_TOL, atol=0.0):
        raise ValidationError(
            "pixel_size",
            f"{px:.6g} m is inconsistent with the detector geometry, which implies {derived:.6g} m",
        )
    for q in ("qy", "qx"):
        if q in ds.coords:
            _check_spacing(q, ds[q].values, 1.0 / (inten.sizes[q] * px), "1/m")
    # positions
    for p in ("scan_y", "scan_x"):
        if p not in ds.variables:
            raise ValidationError(p, "missing: probe positions (m) along scan are required")
        pos = ds[p]
        if "scan" not in pos.dims:
            raise ValidationError(p, f"has dims {pos.dims}; expected (..., scan)")
        if pos.sizes["scan"] != inten.sizes["scan"]:
            raise ValidationError(
                p, f"has {pos.sizes['scan']} positions but intensity has {inten.sizes['scan']} patterns")
        _check_finite(p, pos.values)
    sy = np.asarray(ds["scan_y"].values, dtype=float)
    sx = np.asarray(ds["scan_x"].values, dtype=float)
    span = max(np.ptp(sy) if sy.size else 0.0, np.ptp(sx) if sx.size else 0.0) / px
    if span > MAX_OBJECT_PIXELS:
        raise ValidationError(
            "scan_y/scan_x",
            f"positions span {span:.3g} pixels of {px:.3g} m, outside any reasonable field of "
            "view (are the positions in metres?)")
    fov = a.get("field_of_view")
    if fov is not None:
        y0, y1, x0, x1 = (float(v) for v in np.asarray(fov).reshape(4))
        tol = 1e-3 * px
        outside = (sy < y0 - tol) | (sy > y1 + tol) | (sx < x0 - tol) | (sx > x1 + tol)
        if np.any(outside):
            raise ValidationError(
                "scan_y/scan_x",
                f"{int(np.count_nonzero(outside))} position(s) lie outside the field of view "
                f"y in [{y0:.4g}, {y1:.4g}] m, x in [{x0:.4g}, {x1:.4g}] m")
    if "mask" in ds:
        m = ds["mask"]
        if tuple(m.dims) != ("qy", "qx"):
            raise ValidationError("mask", f"has dims {m.dims}; expected (qy, qx)")
        if m.dtype != bool:
            raise ValidationError("mask", f"must be boolean (True = valid pixel), got {m.dtype}")
        if not bool(m.any()):
            raise ValidationError("mask", "marks every detector pixel invalid")


def _validate_reconstruction(ds: xr.Dataset):
    for v, tail in (("object", ("slice", "y", "x")), ("probe", ("mode", "py", "px"))):
        if v not in ds:
            raise ValidationError(v, "missing from the reconstruction dataset")
        _check_dims(v, ds[v], tail, allowed_lead=("beam", "angle"))
        if not np.iscomplexobj(ds[v].values):
            raise ValidationError(v, f"must be complex, got {ds[v].dtype}")
        _check_finite(v, ds[v].values)
    px = _positive("pixel_size", ds.attrs.get("pixel_size"))
    if px is None:
        raise ValidationError("pixel_size", "missing from attrs")
    for c in ("y", "x", "py", "px"):
        if c in ds.coords:
            _check_spacing(c, ds[c].values, px, "m")
    if "scan_y" in ds and "y" in ds.coords:
        half_y = ds.sizes["py"] * px / 2
        half_x = ds.sizes["px"] * px / 2
        y = ds["y"].values
        x = ds["x"].values
        sy, sx = ds["scan_y"].values, ds["scan_x"].values
        out = ((sy - half_y < y[0] - px) | (sy + half_y > y[-1] + 2 * px)
               | (sx - half_x < x[0] - px) | (sx + half_x > x[-1] + 2 * px))
        if np.any(out):
            raise ValidationError(
                "scan_y/scan_x",
                f"{int(np.count_nonzero(out))} probe position(s) put the probe window outside "
                "the object field of view")


def _validate_image(da: xr.DataArray, kind: str):
    name = da.name or kind
    tail = ("angle", "y", "x") if kind == "projections" else ("z", "y", "x")
    if tuple(da.dims) != tail:
        raise ValidationError(str(name), f"has dims {da.dims}; expected {tail}")
    _check_finite(str(name), da.data)
    for d in tail:
        if d not in da.coords:
            raise ValidationError(d, f"coordinate missing on {name}")
    if kind == "projections":
        ang = da["angle"].values
        if not np.all(np.isfinite(ang)):
            raise ValidationError("angle", "contains NaN or inf")
        check_angles("angle", ang)


def validate(obj, *, lazy: str = "warn") -> Any:
    """Check a ptynb dataset and return it unchanged; raise :class:`ValidationError` if bad.

    Accepts a measurement or reconstruction Dataset, a projections or volume DataArray, or a
    DataTree (every node with data is checked, with attrs inherited from its ancestors).

    Checks: required dims (in order), NaN/inf, negative intensities, complex intensities,
    intensities given as text or booleans, every pattern zero (an error; some zero patterns
    give a :class:`DataWarning` naming them), positions count vs patterns, positions outside
    the field of view (or a span so large it must be a unit error), missing
    radiation/energy/geometry attrs, an energy that must be keV given as eV (X-rays below
    100 eV, electrons below 1 keV; the attr ``allow_low_energy=True`` accepts it), pixel size
    inconsistent with the detector geometry or the coordinates, an all-invalid detector mask.
    Angles (degrees) that all lie within +-2 pi with 8 or more views give a
    :class:`UnitWarning` (radians?). Data are never modified.

    Parameters
    ----------
    lazy : {"warn", "scan", "skip"}
        For a lazily loaded (dask) ``intensity``: ``"warn"`` (default) reads nothing and warns
        (:class:`DataWarning`) that NaN/inf, negative values and zero patterns were not
        checked; ``"scan"`` checks them in one chunked pass (a full read, memory of a few
        chunks); ``"skip"`` reads nothing and does not warn (for callers that check the data
        as they load them).
    """
    if lazy not in ("warn", "scan", "skip"):
        raise ValidationError("lazy", f"must be 'warn', 'scan' or 'skip', got {lazy!r}")
    if isinstance(obj, xr.DataTree):
        for node in obj.subtree:
            if node.has_data:
                ds = node.to_dataset(inherit=True)
                attrs = node_attrs(obj, node.path) if node is not obj else dict(obj.attrs)
                try:
                    validate(ds.assign_attrs(attrs), lazy=lazy)
                except ValidationError as e:
                    raise ValidationError(f"{node.path}:{e.variable}", e.problem) from None
        return obj
    if not isinstance(obj, (xr.Dataset, xr.DataArray)):
        raise ValidationError("input", f"expected an xarray Dataset/DataArray/DataTree, got {type(obj).__name__}")
    kind = _kind(obj)
    if kind == "measurement":
        _validate_measurement(obj, lazy)
    elif kind == "reconstruction":
        _validate_reconstruction(obj)
    elif kind in ("projections", "volume"):
        if isinstance(obj, xr.Dataset):
            for v in obj.data_vars.values():
                _validate_image(v, kind)
        else:
            _validate_image(obj, kind)
    elif kind == "experiment":
        pass
    else:
        raise ValidationError(
            "kind", "cannot tell what this dataset is: expected attrs['kind'] in "
            "{'measurement', 'reconstruction', 'projections', 'volume'} or an 'intensity'/'object' variable")
    return obj

