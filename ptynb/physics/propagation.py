"""Free-space propagation (angular spectrum, Fresnel) and far-field detection.

All functions take plain numpy or cupy arrays (the array module is found with
:func:`ptynb.backend.xp_of`) and return arrays of the same kind; :func:`propagate` also
accepts an :class:`xarray.DataArray`. Lengths in metres, angles in radians.

Conventions
-----------
* A wave ``w`` of shape (..., ny, nx) is sampled on a square grid of ``pixel_size``.
* Transfer functions are returned in **unshifted FFT order** (zero frequency at index 0), so
  ``ifft2(fft2(w) * H)`` propagates ``w`` by ``distance`` (ptynb.backend ``fft2``/``ifft2``,
  orthonormal).
* The constant carrier phase ``exp(i 2 pi distance / wavelength)`` is dropped (it is a global
  phase), so ``H = 1`` at zero frequency and float32 phases stay accurate.
* Positive ``distance`` propagates downstream (along the beam, +z); the time dependence is
  ``exp(-i omega t)`` so a plane wave is ``exp(+i k z)``.

Far-field sampling
------------------
:func:`far_field` maps the exit wave to a *centred* detector (zero spatial frequency at pixel
``n // 2``) with the orthonormal FFT, so ``sum |far_field(w)|**2 == sum |w|**2``. Detector
pixel ``j`` sees spatial frequency ``q = (j - n // 2) / (n * pixel_size)``:

* X-rays (detector at ``distance`` z with pixels of size p):
  ``pixel_size = wavelength * z / (n * p)`` (:func:`pixel_size_for`,
  :func:`detector_pixel_size_for`).
* Electrons (detector sampled in spatial frequency ``dq`` in 1/m, i.e. an angular pixel of
  ``wavelength * dq`` rad): ``pixel_size = 1 / (n * dq)`` (:func:`reciprocal_pixel_size_for`,
  :func:`pixel_size_from_reciprocal`).
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np

from .. import backend

__all__ = [
    "angular_spectrum_kernel",
    "band_limit_frequency",
    "clear_kernel_cache",
    "detector_pixel_size_for",
    "far_field",
    "far_field_intensity",
    "fresnel_kernel",
    "fresnel_number",
    "inverse_far_field",
    "pixel_size_for",
    "pixel_size_from_reciprocal",
    "propagate",
    "reciprocal_pixel_size_for",
    "spatial_frequencies",
]


def _check_positive(name, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: must be positive and finite, got {value!r}")
    return v


def _check_finite(name, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    return v


def _shape2(shape):
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape), int(shape))
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape: expected an int or (ny, nx) of positive ints, got {shape!r}")
    return shape


def _tilt2(tilt):
    t = tuple(float(v) for v in np.broadcast_to(np.asarray(tilt, dtype=float), (2,)))
    if not all(math.isfinite(v) and abs(v) < math.pi / 2 for v in t):
        raise ValueError(f"tilt: expected (ty, tx) in radians with |t| < pi/2, got {tilt!r}")
    return t


def spatial_frequencies(shape, pixel_size, xp=np):
    """Spatial-frequency grids (1/m) in unshifted FFT order.

    Parameters
    ----------
    shape : int or (ny, nx)
    pixel_size : float
        Real-space pixel (m).

    Returns
    -------
    fy, fx : float64 arrays (ny, 1) and (1, nx)
        ``numpy.fft.fftfreq(n, pixel_size)`` along each axis, broadcastable.
    """
    ny, nx = _shape2(shape)
    dx = _check_positive("pixel_size", pixel_size)
    fy = xp.asarray(np.fft.fftfreq(ny, dx))[:, None]
    fx = xp.asarray(np.fft.fftfreq(nx, dx))[None, :]
    return fy, fx


def band_limit_frequency(n, pixel_size, wavelength, distance, method="angular_spectrum"):
    """Largest spatial frequency (1/m) kept by the band-limited transfer function on one axis.

    Angular spectrum (Matsushima & Shimobaba 2009, with the frequency sampling
    ``df = 1 / (n * pixel_size)`` of the unpadded window)::

        f_limit = 1 / (wavelength * sqrt((2 * df * distance)**2 + 1))

    which keeps the transfer-function phase sampled above Nyquist, i.e. the lateral walk-off
    of a kept plane wave stays within half the window. Fresnel (same criterion, paraxial)::

        f_limit = 1 / (2 * df * wavelength * |distance|)

    Returns ``inf`` for ``distance == 0``.
    """
    df = 1.0 / (int(n) * float(pixel_size))
    z = abs(float(distance))
    if z == 0:
        return math.inf
    if method == "fresnel":
        return 1.0 / (2.0 * df * float(wavelength) * z)
    return 1.0 / (float(wavelength) * math.sqrt((2.0 * df * z) ** 2 + 1.0))


# ------------------------------------------------------------------ kernel cache
_CACHE: OrderedDict[tuple, object] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 32


def clear_kernel_cache() -> None:
    """Forget cached transfer functions (they are cached per shape/geometry/device)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _device_key(xp):
    if xp is np:
        return "cpu"
    try:
        return f"gpu{xp.cuda.Device().id}"
    except Exception:  # pragma: no cover
        return xp.__name__


def _cached(key, build):
    with _CACHE_LOCK:
        h = _CACHE.get(key)
        if h is not None:
            _CACHE.move_to_end(key)
            return h
    h = build()
    with _CACHE_LOCK:
        _CACHE[key] = h
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return h


def _kernel(method, shape, pixel_size, wavelength, distance, tilt, band_limit, xp):
    shape = _shape2(shape)
    dx = _check_positive("pixel_size", pixel_size)
    lam = _check_positive("wavelength", wavelength)
    z = _check_finite("distance", distance)
    ty, tx = _tilt2(tilt)
    key = (method, shape, dx, lam, z, ty, tx, bool(band_limit), _device_key(xp))

    def build():
        ny, nx = shape
        fy = np.fft.fftfreq(ny, dx)[:, None]
        fx = np.fft.fftfreq(nx, dx)[None, :]
        f2 = fy**2 + fx**2
        if method == "fresnel":
            phase = -np.pi * lam * z * f2
            keep = np.ones(shape, dtype=bool)
        else:
            arg = 1.0 / lam**2 - f2
            keep = arg > 0  # evanescent waves removed
            kz = np.sqrt(np.where(keep, arg, 0.0))
            # 2 pi z (kz - 1/lam), written to avoid cancellation: -2 pi z f2 / (kz + 1/lam)
            phase = -2.0 * np.pi * z * f2 / (kz + 1.0 / lam)
        if ty or tx:
            sy, sx = z * math.tan(ty), z * math.tan(tx)
            phase = phase - 2.0 * np.pi * (fy * sy + fx * sx)
        if band_limit and z != 0:
            ly = band_limit_frequency(ny, dx, lam, z, method)
            lx = band_limit_frequency(nx, dx, lam, z, method)
            keep = keep & (np.abs(fy) <= ly) & (np.abs(fx) <= lx)
        h = np.where(keep, np.exp(1j * phase), 0.0).astype(np.complex64)
        if xp is np:
            h.flags.writeable = False
            return h
        return xp.asarray(h)

    return _cached(key, build)


def angular_spectrum_kernel(shape, pixel_size, wavelength, distance, *, tilt=(0.0, 0.0),
                            band_limit=True, xp=np):
    """Angular-spectrum transfer function ``H`` (unshifted FFT order).

    ``H(fy, fx) = exp(i 2 pi z (sqrt(1/lambda**2 - f**2) - 1/lambda))
    * exp(-i 2 pi (fy z tan(ty) + fx z tan(tx)))``, with evanescent components
    (``f >= 1/lambda``) set to zero. The second factor shifts the wave laterally by
    ``z * tan(tilt)``: the propagation of a beam inclined by ``tilt`` (a tilted multislice thus
    shears the object). Wrap-around at the window edges is periodic.

    Parameters
    ----------
    shape : int or (ny, nx)
        Grid size (pixels).
    pixel_size : float
        Real-space pixel (m).
    wavelength : float
        Wavelength (m).
    distance : float
        Propagation distance z (m); negative propagates backwards.
    tilt : (ty, tx)
        Beam inclination (rad) towards +y and +x.
    band_limit : bool
        Apply the Matsushima-Shimobaba band limit: keep ``|fy| <= f_limit_y`` and
        ``|fx| <= f_limit_x`` with ``f_limit = 1 / (lambda sqrt((2 df z)**2 + 1))``,
        ``df = 1 / (n * pixel_size)`` (see :func:`band_limit_frequency`).
    xp : module
        numpy or cupy: where the kernel lives.

    Returns
    -------
    complex64 array (ny, nx)
        Cached and shared: do not modify it in place (numpy kernels are read-only).
    """
    return _kernel("angular_spectrum", shape, pixel_size, wavelength, distance, tilt,
                   band_limit, xp)


def fresnel_kernel(shape, pixel_size, wavelength, distance, *, tilt=(0.0, 0.0),
                   band_limit=True, xp=np):
    """Paraxial (Fresnel) transfer function ``H = exp(-i pi lambda z f**2)`` (unshifted order).

    Same parameters and tilt handling as :func:`angular_spectrum_kernel`. The band limit keeps
    ``|f| <= 1 / (2 df lambda |z|)`` per axis (``df = 1 / (n * pixel_size)``), where the chirp
    would otherwise be under-sampled.

    Returns
    -------
    complex64 array (ny, nx), cached (do not modify in place).
    """
    return _kernel("fresnel", shape, pixel_size, wavelength, distance, tilt, band_limit, xp)


_METHODS = {"angular_spectrum": angular_spectrum_kernel, "as": angular_spectrum_kernel,
            "fresnel": fresnel_kernel}


def _pixel_from_coords(wave):
    for dy, dx in (("y", "x"), ("py", "px")):
        if dy in wave.dims and dx in wave.dims and dy in wave.coords:
            c = np.asarray(wave[dy].values, dtype=float)
            if c.size > 1:
                return float(np.median(np.diff(c)))
            c = np.asarray(wave[dx].values, dtype=float)
            if c.size > 1:
                return float(np.median(np.diff(c)))
    return None


def propagate(wave, distance, pixel_size=None, wavelength=None, *, method="angular_spectrum",
              tilt=(0.0, 0.0), band_limit=True):
    """Propagate a complex wave over ``distance`` in free space.

    Parameters
    ----------
    wave : complex array (..., ny, nx) or xarray.DataArray
        numpy/cupy array, or a DataArray whose last two dims are ``y, x`` or ``py, px``
        (then ``pixel_size`` defaults to the coordinate spacing and ``wavelength`` to
        ``attrs["wavelength"]``).
    distance : float
        Propagation distance (m), positive downstream.
    pixel_size : float
        Real-space pixel (m).
    wavelength : float
        Wavelength (m).
    method : {"angular_spectrum", "fresnel"}
    tilt : (ty, tx)
        Beam inclination (rad): the wave is also shifted by ``distance * tan(tilt)``.
    band_limit : bool
        See :func:`angular_spectrum_kernel` / :func:`fresnel_kernel`.

    Returns
    -------
    complex64 array (..., ny, nx) of the same kind (DataArray in, DataArray out with the
    same coords and ``attrs["propagated_distance"]`` added).
    """
    import xarray as xr

    if method not in _METHODS:
        raise ValueError(f"method: must be 'angular_spectrum' or 'fresnel', not {method!r}")
    if isinstance(wave, xr.DataArray):
        if pixel_size is None:
            pixel_size = _pixel_from_coords(wave)
        if wavelength is None:
            wavelength = wave.attrs.get("wavelength")
        if pixel_size is None or wavelength is None:
            raise ValueError("propagate: give pixel_size and wavelength (not found in the "
                             "DataArray's coords/attrs)")
        out = propagate(wave.data, distance, pixel_size, wavelength, method=method, tilt=tilt,
                        band_limit=band_limit)
        res = wave.copy(data=out)
        res.attrs = dict(wave.attrs)
        res.attrs["propagated_distance"] = float(distance)
        return res
    if pixel_size is None or wavelength is None:
        raise ValueError("propagate: pixel_size and wavelength are required for plain arrays")
    xp = backend.xp_of(wave)
    w = xp.asarray(wave)
    if w.ndim < 2:
        raise ValueError(f"wave: expected (..., ny, nx), got shape {w.shape}")
    if not xp.iscomplexobj(w) or w.dtype != xp.complex64 and w.dtype != xp.complex128:
        w = w.astype(xp.complex64)
    if float(distance) == 0.0 and not band_limit:
        return w.copy()
    h = _METHODS[method](w.shape[-2:], pixel_size, wavelength, distance, tilt=tilt,
                         band_limit=band_limit, xp=xp)
    return backend.ifft2(backend.fft2(w) * h)


def far_field(exit_wave):
    """Far-field wave on a centred detector: ``fftshift(fft2(exit_wave))`` (orthonormal).

    Parameters
    ----------
    exit_wave : complex array (..., ny, nx), numpy or cupy

    Returns
    -------
    complex array (..., ny, nx)
        Zero spatial frequency at pixel ``(ny // 2, nx // 2)``; ``sum |.|**2`` equals that of
        the input. Detector pixel ``j`` sees ``q = (j - n//2) / (n * pixel_size)``; see the
        module docstring for X-ray/electron sampling.
    """
    xp = backend.xp_of(exit_wave)
    return xp.fft.fftshift(backend.fft2(exit_wave), axes=(-2, -1))


def inverse_far_field(detector_wave):
    """Inverse of :func:`far_field`: ``ifft2(ifftshift(detector_wave))`` (orthonormal)."""
    xp = backend.xp_of(detector_wave)
    return backend.ifft2(xp.fft.ifftshift(detector_wave, axes=(-2, -1)))


def far_field_intensity(exit_wave):
    """``|far_field(exit_wave)|**2`` (float32 for complex64 input), centred detector."""
    f = far_field(exit_wave)
    return (f.real**2 + f.imag**2)


def detector_pixel_size_for(pixel_size, n, wavelength, distance):
    """X-ray detector pixel (m) that makes an ``n``-pixel pattern sample ``pixel_size``.

    ``detector_pixel_size = wavelength * distance / (n * pixel_size)`` (all in metres).
    """
    return (_check_positive("wavelength", wavelength) * _check_positive("distance", distance)
            / (int(n) * _check_positive("pixel_size", pixel_size)))


def pixel_size_for(detector_pixel_size, n, wavelength, distance):
    """Real-space pixel (m) of an ``n``-pixel X-ray detector at ``distance``.

    ``pixel_size = wavelength * distance / (n * detector_pixel_size)``.
    """
    return (_check_positive("wavelength", wavelength) * _check_positive("distance", distance)
            / (int(n) * _check_positive("detector_pixel_size", detector_pixel_size)))


def reciprocal_pixel_size_for(pixel_size, n):
    """Electron detector sampling ``dq = 1 / (n * pixel_size)`` (1/m) for an ``n``-pixel pattern.

    The angular pixel is ``wavelength * dq`` (rad).
    """
    return 1.0 / (int(n) * _check_positive("pixel_size", pixel_size))


def pixel_size_from_reciprocal(reciprocal_pixel_size, n):
    """Real-space pixel ``1 / (n * dq)`` (m) of an ``n``-pixel detector sampled at ``dq`` (1/m)."""
    return 1.0 / (int(n) * _check_positive("reciprocal_pixel_size", reciprocal_pixel_size))


def fresnel_number(width, wavelength, distance):
    """Fresnel number ``width**2 / (wavelength * distance)`` (dimensionless)."""
    return (float(width) ** 2 / (_check_positive("wavelength", wavelength)
                                 * _check_positive("distance", distance)))
