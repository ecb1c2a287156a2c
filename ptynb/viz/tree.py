"""Default views of any object: :func:`show` for one dataset/array and :func:`tree_views` for
a workflow's result tree (the fallback views of a workflow that has no viz module yet)."""
from __future__ import annotations

import numpy as np
import xarray as xr

from ._core import AMPLITUDE_CMAP, PHASE_CMAP, _hv, markdown_table
from .convergence import cost_curve, cost_curves
from .images import amplitude_phase, image, object_view, probe_view
from .measurement import scan_explorer
from .volumes import orthoslices

__all__ = ["show", "tree_views", "attrs_table", "array_view"]

#: dims that make a 3-D array a volume
_VOLUME_DIMS = {"z", "slice", "layer_z"}
#: leading dims stepped through with a slider (at most this many entries)
_MAX_FRAMES = 32
#: data variables viewed per node (more would make an unreadable tab)
_MAX_VARS = 8


def show(obj, **kwargs):
    """A view suited to a ptynb object: measurement -> scan explorer, reconstruction -> object
    + probe + cost, 2D complex -> amplitude/phase, real 2D -> image, DataTree -> its static
    views (those without sliders; :func:`tree_views` gives all, per node)."""
    hv = _hv()
    if isinstance(obj, xr.DataTree):
        out = []
        for title, v in tree_views(obj):
            # one Layout cannot mix sliders over different dims: keep the static views
            out.extend(x for x in (v if isinstance(v, list) else [v])
                       if not isinstance(x, str) and not x.traverse(lambda e: e, [hv.HoloMap]))
        return hv.Layout(out).cols(1) if out else hv.Div("<i>nothing to show</i>")
    if isinstance(obj, xr.Dataset):
        kind = obj.attrs.get("kind")
        if kind == "measurement" or "intensity" in obj:
            ds = obj
            for d in ("beam", "angle"):
                if d in ds["intensity"].dims:
                    ds = ds.isel({d: 0})
            return scan_explorer(ds, **kwargs)
        if kind == "reconstruction" or "object" in obj:
            parts = [object_view(obj["object"].isel({d: 0 for d in obj["object"].dims[:-3]}))]
            if "probe" in obj:
                parts.append(probe_view(obj["probe"].isel({d: 0 for d in obj["probe"].dims[:-3]})))
            layout = hv.Layout(parts)
            if "cost" in obj and obj["cost"].ndim == 1:
                layout = layout + cost_curve(obj["cost"])
            elif "cost" in obj and obj["cost"].ndim == 2:
                layout = layout + cost_curves(obj["cost"])
            return layout.cols(2)
    if isinstance(obj, xr.DataArray) and obj.ndim == 2:
        if np.iscomplexobj(obj.values):
            return amplitude_phase(obj, **kwargs)
        return image(obj, **kwargs)
    if isinstance(obj, xr.DataArray):
        v = array_view(obj)
        if v is not None:
            return v
    raise TypeError(f"no default view for {type(obj).__name__} with dims {getattr(obj, 'dims', None)}")


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    if isinstance(v, np.ndarray):
        return np.array2string(v, precision=4, threshold=8) if v.size <= 16 else f"array {v.shape}"
    s = str(v)
    return s if len(s) <= 80 else s[:77] + "..."


def attrs_table(attrs: dict, *, skip_prefix=("setting_",), title=None) -> str:
    """A markdown table of attrs (keys starting with ``skip_prefix`` left out)."""
    rows = [(f"`{k}`", _fmt(v).replace("|", "\\|")) for k, v in attrs.items()
            if not any(str(k).startswith(p) for p in skip_prefix)]
    if not rows:
        return ""
    head = f"**{title}**\n\n" if title else ""
    return head + markdown_table(rows, header=("attribute", "value"))


def settings_table(attrs: dict) -> str:
    """The ``setting_*`` attrs of a result as a markdown table."""
    rows = [(f"`{k[len('setting_'):]}`", _fmt(v)) for k, v in attrs.items() if str(k).startswith("setting_")]
    return ("**settings**\n\n" + markdown_table(rows, header=("setting", "value"))) if rows else ""


def _frames(hv, da: xr.DataArray, make):
    """A HoloMap over the first dim of a 3-D (k, y, x) array (at most ``_MAX_FRAMES`` frames)."""
    lead = da.dims[0]
    n = min(da.sizes[lead], _MAX_FRAMES)
    keys = [da[lead].values[i] if lead in da.coords else i for i in range(n)]
    keys = [k.item() if isinstance(k, np.generic) else k for k in keys]
    keys = [str(k) if not isinstance(k, (int, float)) else k for k in keys]
    return hv.HoloMap({k: make(da.isel({lead: i}), f"{da.name} ({lead} {k})") for i, k in enumerate(keys)},
                      kdims=[hv.Dimension(lead)])


def array_view(da: xr.DataArray, *, title=None):
    """The default view of one DataArray, or None if it has no obvious one.

    1-D over ``iteration`` -> convergence; 2-D with ``iteration`` -> overlaid convergence;
    2-D -> image (complex: amplitude and phase); 3-D (z, y, x) -> orthogonal slices; other
    3-D (k, y, x) -> images with a slider over k; more dims -> the first index of the extra
    leading dims.
    """
    hv = _hv()
    name = title or str(da.name)
    if da.dtype == bool or da.size == 0 or not np.issubdtype(da.dtype, np.number):
        return None
    if "iteration" in da.dims and da.ndim <= 2:
        return cost_curves(da, title=name) if da.ndim == 2 else cost_curve(da, title=name)
    if da.ndim > 3:
        da = da.isel({d: 0 for d in da.dims[:-3]})
    if da.ndim == 3 and min(da.shape[-2:]) >= 4:
        if da.dims[0] in _VOLUME_DIMS and da.sizes[da.dims[0]] >= 4:
            return orthoslices(da, title=name)
        if np.iscomplexobj(da.values):
            amp = _frames(hv, da.copy(data=np.abs(da.values)),
                          lambda a, t: image(a, title=f"{t} amplitude", cmap=AMPLITUDE_CMAP, label="amplitude"))
            ph = _frames(hv, da.copy(data=np.angle(da.values)),
                         lambda a, t: image(a, title=f"{t} phase", cmap=PHASE_CMAP, clim=(-np.pi, np.pi),
                                            label="phase", value_unit="rad"))
            return (amp + ph).cols(2)
        return _frames(hv, da, lambda a, t: image(a, title=t))
    if da.ndim == 2 and min(da.shape) >= 4:
        if np.iscomplexobj(da.values):
            return amplitude_phase(da, title=name)
        return image(da, title=name)
    return None


def _node_views(ds: xr.Dataset, path: str) -> list:
    out = []
    if "intensity" in ds and {"scan", "qy", "qx"} <= set(ds["intensity"].dims):
        m = ds
        for d in m["intensity"].dims:
            if d not in ("scan", "qy", "qx"):
                m = m.isel({d: 0})
        try:
            out.append(scan_explorer(m))
        except (ValueError, KeyError):
            pass
    for name, da in list(ds.data_vars.items()):
        if name == "intensity" or len(out) >= _MAX_VARS:
            continue
        try:
            v = array_view(da, title=f"{path}: {name}" if path else str(name))
        except (ValueError, TypeError):
            v = None
        if v is not None:
            out.append(v)
    table = attrs_table(ds.attrs)
    if table:
        out.append(table)
    return out


def _is_curve(v) -> bool:
    hv = _hv()
    return isinstance(v, (hv.Curve, hv.Overlay)) and not isinstance(v, hv.Layout)


def tree_views(tree, settings=None) -> list[tuple[str, object]]:
    """Default views of a workflow result tree: ``[(tab title, view or list of views), ...]``.

    One tab per node that has data (2-D arrays as images, 3-D (z, y, x) as orthogonal slices,
    1-D over ``iteration`` as convergence), plus a "Summary" tab first: the root attrs (status,
    numbers) and the settings as markdown tables. Views are HoloViews objects or markdown
    strings; ``settings`` is accepted for the common ``views(tree, settings)`` signature.
    """
    if isinstance(tree, xr.Dataset):
        tree = xr.DataTree(dataset=tree)
    tabs: list[tuple[str, object]] = []
    summary = [t for t in (attrs_table(tree.attrs, title="result"), settings_table(tree.attrs)) if t]
    tabs.append(("Summary", summary or ["*(no attributes)*"]))
    for node in tree.subtree:
        if not node.has_data:
            continue
        path = node.path.lstrip("/") or "data"
        views = _node_views(node.to_dataset(inherit=False), path)
        # curves get a tab of their own: in a Panel page, a curve plot in the same column as
        # image grids breaks their layout (bokeh 3.9 / panel 1.9)
        curves = [v for v in views if _is_curve(v)]
        others = [v for v in views if not _is_curve(v)]
        if others:
            tabs.append((path, others))
        if curves:
            tabs.append((f"{path}: curves", curves))
    return tabs
