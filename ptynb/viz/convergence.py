"""Convergence: cost against iteration, one curve or one per beam/angle overlaid."""
from __future__ import annotations

import numpy as np
import xarray as xr

from ..backend import to_host
from ._core import CURVE_WIDTH, _hv, dim

__all__ = ["cost_curve", "cost_curves"]


def _cost_dims(label="cost"):
    return dim("iteration"), dim("cost", None, label)


def cost_curve(cost, *, title="cost", logy=True, label=None, **opts):
    """Convergence history (iteration vs cost) as a curve (log y when every value is > 0).

    ``cost`` is a 1-D array or DataArray over ``iteration`` (its coordinate is used when present).
    """
    hv = _hv()
    if isinstance(cost, xr.DataArray):
        c = np.asarray(to_host(cost.values), dtype=float).ravel()
        it = (np.asarray(cost["iteration"].values) if "iteration" in cost.coords and cost.ndim == 1
              else np.arange(c.size))
        ylabel = str(cost.attrs.get("long_name", "cost"))
    else:
        c = np.asarray(to_host(cost), dtype=float).ravel()
        it, ylabel = np.arange(c.size), "cost"
    xd, yd = _cost_dims(ylabel)
    curve = hv.Curve((it, c), xd, yd, label=label or "")
    o = dict(title=title, logy=logy and bool(np.all(c[np.isfinite(c)] > 0)), frame_width=CURVE_WIDTH,
             frame_height=220, tools=["hover"], show_grid=True)
    o.update(opts)
    return curve.opts(**o)


def cost_curves(cost, *, over=None, title="convergence", logy=True, **opts):
    """Cost curves overlaid, one per beam/angle/...: ``cost`` is a DataArray (other, iteration)
    (``over`` names the other dim; default: the one that is not ``iteration``), or a dict
    label -> 1-D cost."""
    hv = _hv()
    if isinstance(cost, xr.DataArray):
        if cost.ndim == 1:
            return cost_curve(cost, title=title, logy=logy, **opts)
        over = over or next(d for d in cost.dims if d != "iteration")
        rest = [d for d in cost.dims if d not in (over, "iteration")]
        if rest:
            cost = cost.isel({d: 0 for d in rest})
        items = {str(v): cost.sel({over: v}) for v in cost[over].values} if over in cost.coords else \
            {f"{over} {k}": cost.isel({over: k}) for k in range(cost.sizes[over])}
    else:
        items = dict(cost)
    allpos = all(np.all(np.asarray(to_host(getattr(v, "values", v)), float) > 0) for v in items.values())
    curves = [cost_curve(v, title=title, logy=False, label=str(k)) for k, v in items.items()]
    o = dict(title=title, logy=logy and allpos, legend_position="top_right", frame_width=CURVE_WIDTH,
             frame_height=220, show_grid=True)
    o.update(opts)
    return hv.Overlay(curves).opts(**o)
