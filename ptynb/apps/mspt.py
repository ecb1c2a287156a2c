"""MSPT app: simulate or load a 4D-STEM tilt series (or phase projections reconstructed
elsewhere), reconstruct every tilt, denoise, refine the tomogram and the per-tilt poses, look at
the per-tilt thumbnails, the volume slices, the resolution spectra and the atoms, save the
result tree. Served at ``/mspt`` by ``ptynb serve``.

It is the generic :class:`~ptynb.apps._workflow.WorkflowApp` of the ``mspt`` workflow; the
views are :func:`ptynb.viz.mspt.views` (the same as the notebook's). The one addition: a file
holding phase projections (a DataArray (angle, y, x)) is run through ``projections=``.
"""
from __future__ import annotations

from pathlib import Path

import xarray as xr

from ._workflow import WorkflowApp

__all__ = ["MsptApp", "app"]


def _workflow():
    from ..workflows import get

    return get("mspt")


class MsptApp(WorkflowApp):
    """The MSPT workflow as a web app (one instance per browser session)."""

    collapsed_groups = ("Tilt series", "Optics and scan", "Ptychography", "Denoising", "Tomography", "Analysis")
    result_stem = "mspt"

    def __init__(self, settings=None, result: xr.DataTree | None = None, **params):
        super().__init__(_workflow(), settings=settings, result=result, **params)

    def load_measurement(self, path: Path):
        """A tilt series (``intensity`` with an ``angle`` dim) or phase projections (angle, y, x)."""
        from ..workflows import mspt

        obj = _read(path)
        if isinstance(obj, xr.DataArray) or (isinstance(obj, xr.Dataset) and "projections" in obj
                                             and "intensity" not in obj):
            da = obj if isinstance(obj, xr.DataArray) else obj["projections"]
            return mspt.check_projections(da)
        return mspt.check_mspt_measurement(obj)

    def run_inputs(self):
        inputs = super().run_inputs()
        if inputs is not None and isinstance(inputs.get("measurement"), xr.DataArray):
            return {"measurement": None, "projections": inputs["measurement"]}
        return inputs


def _read(path):
    from .. import io

    obj = io.load(path)
    if isinstance(obj, xr.DataTree):
        for name in ("measurement", "projections"):
            if name in obj.children:
                return obj[name].to_dataset()
        obj = obj.to_dataset()
    return obj


def app():
    """A fresh MSPT app page (``ptynb serve`` calls this once per browser session)."""
    return MsptApp().__panel__()
