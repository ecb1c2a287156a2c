"""Volumes (z, y, x): three orthogonal slices through a point, with sliders over the indices."""
from __future__ import annotations

import numpy as np
import xarray as xr

from ..backend import to_host
from ._core import FRAME_WIDTH, _hv, _unit_for, value_label
from .images import image

__all__ = ["orthoslices"]


def _as_volume(vol) -> xr.DataArray:
    if not isinstance(vol, xr.DataArray):
        arr = to_host(vol)
        if arr.ndim != 3:
            raise ValueError(f"orthoslices: expected a 3-D array (z, y, x), got shape {arr.shape}")
        vol = xr.DataArray(arr, dims=("z", "y", "x"), name="value")
    if vol.ndim != 3:
        raise ValueError(f"orthoslices: expected a 3-D DataArray, got dims {vol.dims}")
    if not isinstance(vol.data, np.ndarray):
        vol = vol.copy(data=to_host(vol.data))
    if np.iscomplexobj(vol.values):
        vol = vol.copy(data=np.angle(vol.values).astype(np.float32)).assign_attrs(
            long_name="phase", units="rad")
    return vol


def orthoslices(vol, *, point=None, title="", cmap="viridis", clim=None, unit=None,
                frame_width=FRAME_WIDTH * 2 // 3, **opts):
    """Three orthogonal slices of a volume through ``point`` with a slider per axis.

    Parameters
    ----------
    vol : DataArray (z, y, x) or array
        Real; a complex volume is shown as its phase.
    point : (iz, iy, ix), optional
        Initial slice indices (default: the centre).
    clim : (lo, hi), optional
        Colour range shared by the three slices (default: the 0.5-99.5 percentiles).

    Returns
    -------
    holoviews.Layout of three DynamicMaps (x-y at z, x-z at y, y-z at x) sharing the index
    kdims, so one set of sliders drives them (in a notebook and in a Panel pane alike).
    """
    hv = _hv()
    vol = _as_volume(vol)
    dz, dy, dx = vol.dims
    nz, ny, nx = vol.shape
    point = tuple(point) if point is not None else (nz // 2, ny // 2, nx // 2)
    if clim is None:
        finite = vol.values[np.isfinite(vol.values)]
        clim = tuple(float(v) for v in np.percentile(finite, [0.5, 99.5])) if finite.size else (0.0, 1.0)
        if clim[0] == clim[1]:
            clim = (clim[0] - 0.5, clim[1] + 0.5)
    unit = unit or _unit_for(vol)
    name, vunit = value_label(vol)
    kd = [hv.Dimension(f"{d}_index", label=f"{d} slice", values=list(range(n)), default=int(p))
          for d, n, p in zip(vol.dims, vol.shape, point)]
    o = dict(cmap=cmap, clim=clim, unit=unit, label=name, value_unit=vunit, frame_width=frame_width)
    o.update(opts)

    def at(d, k):
        v = vol[d].values[k] if d in vol.coords else k
        return f"{d} = {v * 1e9:.0f} nm" if d in vol.coords and unit != "px" else f"{d} index {k}"

    def xy(iz, iy, ix):
        return image(vol.isel({dz: iz}), title=f"{title} {dy}-{dx} at {at(dz, iz)}".strip(), **o)

    def xz(iz, iy, ix):
        return image(vol.isel({dy: iy}), title=f"{title} {dz}-{dx} at {at(dy, iy)}".strip(), **o)

    def yz(iz, iy, ix):
        return image(vol.isel({dx: ix}).transpose(dy, dz), title=f"{title} {dy}-{dz} at {at(dx, ix)}".strip(),
                     **o)

    return hv.Layout([hv.DynamicMap(f, kdims=kd) for f in (xy, xz, yz)]).cols(3)
