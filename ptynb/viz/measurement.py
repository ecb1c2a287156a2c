"""The measurement: scan positions and a scan explorer (tap a position to see its pattern)."""
from __future__ import annotations

import numpy as np
import xarray as xr

from ._core import FRAME_WIDTH, PATTERN_CMAP, _hv, dim
from .images import image

__all__ = ["scan_points", "scan_explorer", "counts_map"]


def _positions_nm(ds: xr.Dataset):
    sy = np.asarray(ds["scan_y"].values, dtype=float)
    sx = np.asarray(ds["scan_x"].values, dtype=float)
    if sy.ndim > 1:
        raise ValueError("scan positions vary along a leading dim; select one angle/beam first")
    return sy * 1e9, sx * 1e9


def scan_points(ds: xr.Dataset, *, size=6, **opts):
    """Scan positions as points (nm), index in the hover; tap one to select it."""
    hv = _hv()
    sy, sx = _positions_nm(ds)
    pts = hv.Points((sx, sy, np.arange(sy.size)), kdims=[dim("x", "nm"), dim("y", "nm")],
                    vdims=[dim("scan", None, "scan position")])
    o = dict(size=size, tools=["tap", "hover"], nonselection_alpha=0.35, color="#1f77b4",
             selection_color="#d62728", aspect="equal", frame_width=FRAME_WIDTH,
             title="scan positions (tap one)", invert_yaxis=True)
    o.update(opts)
    return pts.opts(**o)


def scan_explorer(ds: xr.Dataset, *, log=True):
    """Scan positions as points; clicking one shows its diffraction pattern (Tap/Selection1D).

    Parameters
    ----------
    ds : measurement Dataset with ``intensity`` (scan, qy, qx) (select any angle/beam first)
    log : bool
        Show patterns as log10(1 + counts).

    Returns
    -------
    holoviews.Layout of the points and a DynamicMap of the selected pattern.
    """
    hv = _hv()
    from holoviews import streams

    if tuple(ds["intensity"].dims) != ("scan", "qy", "qx"):
        raise ValueError(
            f"scan_explorer needs intensity (scan, qy, qx), got {ds['intensity'].dims}; "
            "select one angle/beam first, e.g. ds.isel(angle=0)")
    pts = scan_points(ds)
    sel = streams.Selection1D(source=pts, index=[0])

    def pattern(index):
        i = int(index[0]) if index else 0
        da = ds["intensity"].isel(scan=i)
        if not isinstance(da.data, np.ndarray):
            da = da.compute()
        return image(da, title=f"pattern {i}", cmap=PATTERN_CMAP, logz=log, label="counts")

    return (pts + hv.DynamicMap(pattern, streams=[sel])).cols(2)


def counts_map(ds: xr.Dataset, *, size=8, **opts):
    """Total counts of each pattern at its scan position (nm), coloured, with a colour bar."""
    hv = _hv()
    if "scan" not in ds["intensity"].dims or ds["intensity"].ndim != 3:
        raise ValueError(f"counts_map needs intensity (scan, qy, qx), got {ds['intensity'].dims}")
    sy, sx = _positions_nm(ds)
    totals = np.asarray(ds["intensity"].sum([d for d in ds["intensity"].dims if d != "scan"]).values, float)
    pts = hv.Points((sx, sy, totals), kdims=[dim("x", "nm"), dim("y", "nm")],
                    vdims=[dim("counts", "counts", "total counts per pattern")])
    o = dict(color="counts", cmap="viridis", size=size, colorbar=True, aspect="equal",
             frame_width=FRAME_WIDTH, title="total counts per position", invert_yaxis=True,
             tools=["hover"], fontsize={"title": 10})
    o.update(opts)
    return pts.opts(**o)
