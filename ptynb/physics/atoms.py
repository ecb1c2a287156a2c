"""Electrostatic potentials of atoms for electron multislice and tomography simulations.

Parametrisation
---------------
Elastic electron scattering factors of neutral atoms as sums of five Gaussians,

    f_e(s) = sum_i a_i exp(-b_i s^2),     s = sin(theta) / lambda = q / 2   (Angstrom^-1),

with ``a_i`` in Angstrom and ``b_i`` in Angstrom^2: the fits of Peng, Ren, Dudarev & Whelan,
Acta Cryst. A52, 257-276 (1996), for 0 <= s <= 2 A^-1 (as tabulated in International Tables
for Crystallography Vol. C, Table 4.3.2.2). :data:`PENG_COEFFICIENTS` holds the elements
ptynb uses.

From f_e to the potential (first Born approximation, non-relativistic ``m0`` as in the
tabulations): ``f_e(q) = (2 pi m0 e / h^2) * integral V(r) exp(2 pi i q.r) d^3r``, so the
3D potential (volts) of one Gaussian term is a Gaussian,

    V_i(r) = C a_i (4 pi / b_i)^{3/2} exp(-4 pi^2 r^2 / b_i),      C = h^2 / (2 pi m0 e),

and its projection along z (V m) is ``C a_i (4 pi / b_i) exp(-4 pi^2 rho^2 / b_i)``. The
integral of the projected potential over the plane is therefore ``C f_e(0)`` (V m^3), the
check used in the tests. Both factorise in x, y and z, which this module uses: every atom is
splatted on a small local window as an outer product of 1-D pixel-averaged Gaussians (erf
differences), so pixel sums integrate exactly even for Gaussians narrower than a pixel; the
split of an atom between slices is exact too (erf in z).

Multiplying a projected potential by :func:`ptynb.physics.units.interaction_constant` gives
the phase in radians (``exp(i sigma V_p)``, :func:`ptynb.physics.multislice.electron_transmission`);
the plane integral of that phase is ``gamma * lambda * f_e(0)``.

Coordinates
-----------
Atom positions are ``(N, 3)`` arrays of **(x, y, z)** in metres (ASE/abTEM column order); the
beam travels along +z; images are (y, x) and volumes (z, y, x) like everywhere in ptynb.
"""
from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import constants as _c
from scipy.special import erf

from ..data import (
    ValidationError,
    centered_coord,
    check_positive,
    provenance,
    real_space_coord,
    volume,
)
from .rotations import rotation_about, zyx_to_xyz

__all__ = [
    "PENG_COEFFICIENTS",
    "POTENTIAL_CONSTANT",
    "SYMBOLS",
    "atomic_number",
    "crystal_volume",
    "projected_potential",
    "rotate_atoms",
    "rotation_matrix",
    "scattering_factor",
]

#: h^2 / (2 pi m0 e) in V m^3 per metre of scattering factor: integral of V over space = C f_e(0).
POTENTIAL_CONSTANT = _c.h**2 / (2.0 * np.pi * _c.m_e * _c.e)

#: Peng et al. (1996) five-Gaussian elastic electron scattering factors (0 <= s <= 2 A^-1):
#: Z -> (a_1..a_5 in Angstrom, b_1..b_5 in Angstrom^2), ``f_e(s) = sum a_i exp(-b_i s^2)``.
PENG_COEFFICIENTS: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {
    1: ((0.0349, 0.1201, 0.1970, 0.0573, 0.1195), (0.5347, 3.5867, 12.3471, 18.9525, 38.6269)),
    6: ((0.0893, 0.2563, 0.7570, 1.0487, 0.3575), (0.2465, 1.7100, 6.4094, 18.6113, 50.2523)),
    7: ((0.1022, 0.3219, 0.7982, 0.8197, 0.1715), (0.2451, 1.7481, 6.1925, 17.3894, 48.1431)),
    8: ((0.0974, 0.2921, 0.6910, 0.6990, 0.2039), (0.2067, 1.3815, 4.6943, 12.7105, 32.4726)),
    13: ((0.2390, 0.6573, 1.2011, 2.5586, 1.2312), (0.3138, 2.1063, 10.4163, 34.4552, 98.5344)),
    14: ((0.2519, 0.6372, 1.3795, 2.5082, 1.0500), (0.3075, 2.0174, 9.6746, 29.3744, 80.4732)),
    22: ((0.3825, 1.2598, 2.0008, 3.0617, 2.0694), (0.3040, 2.4863, 9.2783, 39.0751, 109.4583)),
    26: ((0.3946, 1.2725, 1.7031, 2.3140, 1.4795), (0.2717, 2.0443, 7.6007, 29.9714, 86.2265)),
    27: ((0.4118, 1.3161, 1.6493, 2.1930, 1.2830), (0.2742, 2.0372, 7.7205, 29.9680, 84.9383)),
    28: ((0.3860, 1.1765, 1.5451, 2.0730, 1.3814), (0.2478, 1.7660, 6.3107, 25.2204, 74.3146)),
    29: ((0.4314, 1.3208, 1.5236, 1.4671, 0.8562), (0.2694, 1.9223, 7.3474, 28.9892, 90.6246)),
    38: ((0.6703, 1.4926, 3.3368, 4.4600, 3.1501), (0.3190, 2.2287, 10.3504, 52.3291, 151.2216)),
    73: ((1.0190, 2.2291, 3.4097, 3.9252, 2.2679), (0.2694, 1.7962, 7.6944, 31.0942, 91.1089)),
    74: ((0.9853, 2.1167, 3.3570, 3.7981, 2.2798), (0.2569, 1.6745, 7.0098, 26.9234, 81.3910)),
    78: ((0.9148, 1.8096, 3.2134, 3.2953, 1.5754), (0.2263, 1.3813, 5.3243, 17.5987, 60.0171)),
    79: ((0.9674, 1.8916, 3.3993, 3.0524, 1.2607), (0.2358, 1.4712, 5.6758, 18.7119, 61.5286)),
}

#: Element symbols for the atomic numbers in :data:`PENG_COEFFICIENTS`.
SYMBOLS = {1: "H", 6: "C", 7: "N", 8: "O", 13: "Al", 14: "Si", 22: "Ti", 26: "Fe", 27: "Co",
           28: "Ni", 29: "Cu", 38: "Sr", 73: "Ta", 74: "W", 78: "Pt", 79: "Au"}
_Z_OF = {v: k for k, v in SYMBOLS.items()}

_ANGSTROM = 1e-10


def atomic_number(element) -> int:
    """Atomic number of an element given as a number or a symbol; must be parametrised."""
    if isinstance(element, str):
        key = element.strip().capitalize()
        if key not in _Z_OF:
            raise ValidationError("numbers", f"element {element!r} has no scattering-factor "
                                  f"parametrisation; available: {sorted(_Z_OF)}")
        return _Z_OF[key]
    try:
        z = int(element)
    except (TypeError, ValueError):
        raise ValidationError("numbers", f"cannot read {element!r} as an element") from None
    if z != element or z not in PENG_COEFFICIENTS:
        raise ValidationError("numbers", f"atomic number {element!r} has no scattering-factor "
                              f"parametrisation; available: {sorted(PENG_COEFFICIENTS)}")
    return z


def _coeffs_si(z: int):
    """(a in m, b in m^2) arrays of the Gaussian terms of element ``z``."""
    a, b = PENG_COEFFICIENTS[z]
    return np.asarray(a) * _ANGSTROM, np.asarray(b) * _ANGSTROM**2


def scattering_factor(element, s):
    """Electron scattering factor f_e(s) in metres (Peng et al. 1996 fit).

    Parameters
    ----------
    element : int or str
        Atomic number or symbol.
    s : float or array
        ``sin(theta) / lambda`` in 1/m (``= q / 2``). Valid fit range 0 <= s <= 2e10 1/m.

    Returns
    -------
    float or ndarray of f_e in metres (e.g. O: f_e(0) = 1.98e-10 m).
    """
    z = atomic_number(element)
    a, b = _coeffs_si(z)
    s = np.asarray(s, dtype=float)
    out = np.sum(a * np.exp(-b * s[..., None] ** 2), axis=-1)
    return float(out) if out.ndim == 0 else out


def _check_atoms(positions, numbers):
    pos = np.asarray(positions, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValidationError("positions", f"has shape {pos.shape}; expected (N, 3) columns x, y, z in m")
    if not np.all(np.isfinite(pos)):
        raise ValidationError("positions", "contains NaN or inf")
    if pos.size and np.max(np.abs(pos)) > 1e-3:
        raise ValidationError("positions", "values above 1 mm: positions must be in metres")
    if isinstance(numbers, (str, int, np.integer)):
        numbers = [numbers] * len(pos)
    nums = [atomic_number(n) for n in np.asarray(numbers).reshape(-1).tolist()]
    if len(nums) != len(pos):
        raise ValidationError("numbers", f"has {len(nums)} entries for {len(pos)} positions")
    return pos, np.asarray(nums, dtype=int)


def _pixel_gauss(centres, first, step, n_win, sigma):
    """Pixel-averaged normalised 1-D Gaussians on windows.

    centres (A,) positions (m); window of ``n_win`` pixels starting at integer index ``first``
    (A,); pixel i has centre ``origin + i * step`` where the caller folded the origin into
    ``centres``. sigma (T,). Returns (A, T, n_win) values in 1/m.
    """
    idx = first[:, None] + np.arange(n_win)[None, :]               # (A, W)
    lo = (idx - 0.5) * step - centres[:, None]                     # (A, W)
    hi = lo + step
    scale = 1.0 / (np.sqrt(2.0) * sigma)                           # (T,)
    g = erf(hi[:, None, :] * scale[None, :, None]) - erf(lo[:, None, :] * scale[None, :, None])
    return 0.5 * g / step


def _dense_profiles(centres, n, step, sigma, cut, periodic):
    """Pixel-averaged 1-D Gaussians of every atom and term as dense rows (A, T, n) in 1/m.

    Only a window of ``2 cut / step + 2`` pixels around each atom is evaluated; the rest of
    the row is zero (or, with ``periodic``, the window wraps around).
    """
    A, T = len(centres), len(sigma)
    w = min(2 * int(np.ceil(cut / step)) + 2, n if not periodic else 10**9)
    first = np.floor(centres / step).astype(np.int64) - w // 2 + 1
    if not periodic:
        first = np.clip(first, 0, max(n - w, 0))
        w = min(w, n)
    g = _pixel_gauss(centres, first, step, w, sigma)                         # (A, T, w)
    idx = first[:, None] + np.arange(w)[None, :]                              # (A, w)
    dense = np.zeros((A, T, n), dtype=np.float32)  # float32 halves the matmul cost
    if periodic:
        for t in range(T):
            np.add.at(dense[:, t, :], (np.repeat(np.arange(A), w), (idx % n).reshape(-1)),
                      g[:, t, :].reshape(-1))
    else:
        np.put_along_axis(dense, np.broadcast_to(idx[:, None, :], g.shape), g, axis=2)
    return dense


def _splat(pos, nums, ny, nx, y0, x0, dy, dx, z_edges, *, mode, cutoff, periodic):
    """Projected potential per slice (V m), float64 (n_slices, ny, nx).

    Separable evaluation: for the atoms of one element and every Gaussian term, the image is
    ``sum_a gy_a (x) gx_a``, i.e. one matrix product ``Gy^T @ Gx`` of the dense 1-D profile
    matrices (BLAS; no per-atom loop). ``z_edges`` (n_slices + 1,) boundaries in m (the first
    and last may be -inf/+inf). ``mode`` "infinite" puts an atom's whole projection in the
    slice holding its centre; "finite" integrates each Gaussian exactly over every slice.
    """
    ns = len(z_edges) - 1
    out = np.zeros((ns, ny, nx))
    widths = np.diff(z_edges)
    widths = widths[np.isfinite(widths)]
    dz_min = widths.min() if widths.size else np.inf
    for z in np.unique(nums):
        a, b = _coeffs_si(int(z))
        T = len(a)
        sigma = np.sqrt(b / (8.0 * np.pi**2))                      # std of each 1-D Gaussian (m)
        cut = cutoff if cutoff is not None else 4.5 * sigma.max()
        sel = pos[nums == z]
        chunk = max(1, int(2e7 // (T * max(ny, nx))))
        for s0 in range(0, len(sel), chunk):
            p = sel[s0:s0 + chunk]
            gx = _dense_profiles(p[:, 0] - x0, nx, dx, sigma, cut, periodic)   # (A, T, nx)
            gy = _dense_profiles(p[:, 1] - y0, ny, dy, sigma, cut, periodic)   # (A, T, ny)
            gy *= (a * POTENTIAL_CONSTANT).astype(np.float32)[None, :, None]
            k = np.clip(np.searchsorted(z_edges, p[:, 2], side="right") - 1, 0, ns - 1)
            if mode == "infinite":
                for sl in np.unique(k):
                    m = k == sl
                    out[sl] += gy[m].reshape(-1, ny).T @ gx[m].reshape(-1, nx)
                continue
            nb = ns - 1 if not np.isfinite(dz_min) else min(ns - 1, int(np.ceil(cut / dz_min)))
            sc = 1.0 / (np.sqrt(2.0) * sigma)
            for sl in range(ns):
                m = np.abs(k - sl) <= nb
                if not m.any():
                    continue
                lo = z_edges[sl] - p[m, 2]
                hi = z_edges[sl + 1] - p[m, 2]
                wz = 0.5 * (erf(hi[:, None] * sc[None, :]) - erf(lo[:, None] * sc[None, :]))  # (A, T)
                wz = wz.astype(np.float32)
                out[sl] += (gy[m] * wz[:, :, None]).reshape(-1, ny).T @ gx[m].reshape(-1, nx)
    return out


def _shape2(shape, name="shape"):
    try:
        s = tuple(int(v) for v in np.atleast_1d(shape))
    except (TypeError, ValueError):
        raise ValidationError(name, f"must be integers, got {shape!r}") from None
    if len(s) == 1:
        s = s * 2
    if len(s) != 2 or min(s) < 1:
        raise ValidationError(name, f"must be (ny, nx) positive integers, got {shape!r}")
    return s


_positive = check_positive

def projected_potential(
    positions,
    numbers,
    shape,
    pixel_size: float,
    *,
    slice_thickness: float,
    n_slices: int | None = None,
    z_origin: float | None = None,
    origin: tuple[float, float] | None = None,
    integration: str = "infinite",
    cutoff: float | None = None,
    periodic: bool = False,
) -> xr.DataArray:
    """Projected electrostatic potential of atoms, slice by slice (V m).

    Parameters
    ----------
    positions : array (N, 3)
        Atom positions, columns **x, y, z** in metres (beam along +z).
    numbers : array (N,) of int or str, or one element for all
        Atomic numbers or symbols (must be in :data:`PENG_COEFFICIENTS`).
    shape : (ny, nx)
        Image size in pixels.
    pixel_size : float
        Pixel size in metres (square pixels).
    slice_thickness : float
        Slice thickness in metres; slice ``k`` spans ``[z_origin + k dz, z_origin + (k+1) dz)``.
    n_slices : int, optional
        Number of slices; default covers all atoms: ``floor((max z - z_origin) / dz) + 1``.
    z_origin : float, optional
        Entrance plane of slice 0 (m); default ``min(z)`` of the atoms.
    origin : (y0, x0), optional
        Coordinates (m) of pixel (0, 0). Default centres the grid (zero at index n//2, as in
        :func:`ptynb.data.volume`).
    integration : {"infinite", "finite"}
        "infinite": each atom's full projection goes to the slice holding its centre (atoms
        below z_origin or beyond the last slice go to the first/last one). "finite": each
        atom's potential is integrated exactly over every slice (erf in z); the first and last
        slices extend to -inf/+inf so the slices always sum to the full projection.
    cutoff : float, optional
        Radius (m) of the local window each atom is splatted on; default 4.5 standard
        deviations of its widest Gaussian term (drops < 1e-4 of the integral).
    periodic : bool
        Wrap contributions across the image edges (for periodic supercells) instead of
        dropping them.

    Returns
    -------
    xarray.DataArray (slice, y, x) float32
        Projected potential in V m (multiply by the interaction constant for the phase), with
        coords ``z`` (slice entrance planes, m), ``y``, ``x`` (m); attrs with units and settings.
    """
    pos, nums = _check_atoms(positions, numbers)
    ny, nx = _shape2(shape)
    px = _positive("pixel_size", pixel_size)
    dz = _positive("slice_thickness", slice_thickness)
    if integration not in ("infinite", "finite"):
        raise ValidationError("integration", f"must be 'infinite' or 'finite', got {integration!r}")
    if cutoff is not None:
        cutoff = _positive("cutoff", cutoff)
    if len(pos) == 0:
        raise ValidationError("positions", "no atoms given")
    z0 = float(np.min(pos[:, 2])) if z_origin is None else float(z_origin)
    if n_slices is None:
        n_slices = int(np.floor((np.max(pos[:, 2]) - z0) / dz)) + 1
        n_slices = max(n_slices, 1)
    elif int(n_slices) < 1:
        raise ValidationError("n_slices", f"must be >= 1, got {n_slices!r}")
    n_slices = int(n_slices)
    if origin is None:
        yc, xc = centered_coord(ny, px), centered_coord(nx, px)
    else:
        yc, xc = real_space_coord(ny, px, origin[0]), real_space_coord(nx, px, origin[1])
    edges = z0 + np.arange(n_slices + 1) * dz
    if integration == "finite":
        edges = edges.copy()
        edges[0], edges[-1] = -np.inf, np.inf
    v = _splat(pos, nums, ny, nx, yc[0], xc[0], px, px, edges, mode=integration,
               cutoff=cutoff, periodic=periodic)
    return xr.DataArray(
        v.astype(np.float32),
        dims=("slice", "y", "x"),
        coords={"slice": np.arange(n_slices),
                "z": ("slice", z0 + np.arange(n_slices) * dz, {"units": "m", "long_name": "slice entrance"}),
                "y": ("y", yc, {"units": "m"}), "x": ("x", xc, {"units": "m"})},
        name="projected_potential",
        attrs=provenance(units="V m", long_name="projected electrostatic potential",
                         pixel_size=px, slice_thickness=dz, integration=integration,
                         parametrization="Peng et al. 1996 (0-2/A)", n_atoms=len(pos),
                         periodic=int(periodic)),
    )


def crystal_volume(
    positions,
    numbers,
    shape,
    voxel_size: float,
    *,
    origin: tuple[float, float, float] | None = None,
    cutoff: float | None = None,
) -> xr.DataArray:
    """Voxel-averaged 3D electrostatic potential of atoms, for tomography (V).

    Each voxel holds the exact average of the atomic potentials over its volume, so
    ``volume.sum("z") * voxel_size`` equals the projected potential (V m) of atoms inside the
    volume (up to the window cutoff).

    Parameters
    ----------
    positions : array (N, 3)
        Columns **x, y, z** in metres, in the frame of the volume coordinates.
    numbers : array (N,) or one element
        Atomic numbers or symbols.
    shape : (nz, ny, nx)
    voxel_size : float
        Cubic voxel edge (m).
    origin : (z0, y0, x0), optional
        Coordinates of voxel (0, 0, 0) (m); default centres each axis (zero at index n//2),
        so a nanocube from :func:`~ptynb.physics.phantoms.spinel_co3o4_nanocube` (centred at
        0) sits in the middle.
    cutoff : float, optional
        As in :func:`projected_potential`.

    Returns
    -------
    xarray.DataArray (z, y, x) float32, potential in volts (``ptynb.data.volume``).
    """
    pos, nums = _check_atoms(positions, numbers)
    try:
        nz, ny, nx = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValidationError("shape", f"must be (nz, ny, nx), got {shape!r}") from None
    if min(nz, ny, nx) < 1:
        raise ValidationError("shape", f"must be positive, got {shape!r}")
    vs = _positive("voxel_size", voxel_size)
    if cutoff is not None:
        cutoff = _positive("cutoff", cutoff)
    if origin is None:
        zc, yc, xc = (centered_coord(n, vs) for n in (nz, ny, nx))
    else:
        zc, yc, xc = (real_space_coord(n, vs, o) for n, o in zip((nz, ny, nx), origin))
    edges = zc[0] - 0.5 * vs + np.arange(nz + 1) * vs
    v = _splat(pos, nums, ny, nx, yc[0], xc[0], vs, vs, edges, mode="finite", cutoff=cutoff,
               periodic=False) / vs
    return volume(v.astype(np.float32), voxel_size=vs,
                  origin=(zc[0], yc[0], xc[0]), name="potential",
                  units="V", long_name="voxel-averaged electrostatic potential",
                  parametrization="Peng et al. 1996 (0-2/A)", n_atoms=len(pos))


def rotation_matrix(angles_deg, axes: str = "y") -> np.ndarray:
    """Active right-handed rotation matrix acting on (x, y, z) column vectors.

    Parameters
    ----------
    angles_deg : float or sequence of float
        Rotation angles in degrees, one per character of ``axes``.
    axes : str
        Axes ("x", "y", "z") of successive rotations about the fixed (lab) axes; the first is
        applied first. E.g. ``rotation_matrix((a, b), "zy")`` = ``R_y(b) @ R_z(a)``.

    Notes
    -----
    ``R_y(t)`` maps (x, z) to (x cos t + z sin t, -x sin t + z cos t), the tomography
    convention of :func:`ptynb.physics.phantoms.ellipsoid_line_integrals`: the matrices of
    :func:`ptynb.physics.rotations.rotation_about` rewritten for (x, y, z) vectors.
    """
    ang = np.atleast_1d(np.asarray(angles_deg, dtype=float))
    if len(axes) != ang.size:
        raise ValidationError("angles_deg", f"has {ang.size} angles for axes {axes!r}")
    if not np.all(np.isfinite(ang)):
        raise ValidationError("angles_deg", "contains NaN or inf")
    return zyx_to_xyz(rotation_about(axes, ang))


def rotate_atoms(positions, angles_deg, axes: str = "y", *, center=None) -> np.ndarray:
    """Rotate atom positions (active rotation of the sample).

    Parameters
    ----------
    positions : array (N, 3)
        Columns x, y, z in metres.
    angles_deg : float or sequence
        Angles (degrees) of successive rotations about the lab ``axes`` (see
        :func:`rotation_matrix`). The default ``axes="y"`` is a tomography tilt: the sample
        rotated by ``angle`` about y, beam along z.
    center : (x, y, z), optional
        Rotation centre (m); default the origin (0, 0, 0).

    Returns
    -------
    ndarray (N, 3) float64: rotated positions.
    """
    pos = np.asarray(positions, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValidationError("positions", f"has shape {pos.shape}; expected (N, 3)")
    if not np.all(np.isfinite(pos)):
        raise ValidationError("positions", "contains NaN or inf")
    r = rotation_matrix(angles_deg, axes)
    c = np.zeros(3) if center is None else np.asarray(center, dtype=float).reshape(3)
    return (pos - c) @ r.T + c
