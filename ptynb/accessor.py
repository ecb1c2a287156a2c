"""The ``.pty`` accessor on xarray Datasets, DataArrays and DataTrees.

``ds.pty.validate()``, ``ds.pty.kind``, ``ds.pty.wavelength``, ``ds.pty.save(path)`` and
``ds.pty.show()`` are thin shortcuts to :func:`ptynb.data.validate`, :func:`ptynb.io.save` and
:func:`ptynb.viz.show`. This module imports only numpy and xarray at module level (the ptynb
modules are imported inside the methods), so importing it never creates an import cycle.

Registration happens when this module is imported, which ``import ptynb`` (and hence every
``import ptynb.<anything>``) does.
"""
from __future__ import annotations

import warnings

import xarray as xr

__all__ = ["PtyAccessor"]


class PtyAccessor:
    """``obj.pty``: thin access to ptynb functions (validate, save, views).

    Parameters
    ----------
    obj : xarray.Dataset, xarray.DataArray or xarray.DataTree
        The object the accessor is attached to (xarray passes it).
    """

    def __init__(self, obj):
        self._obj = obj

    def validate(self):
        """Validate and return the object (see :func:`ptynb.data.validate`)."""
        from .data import validate

        return validate(self._obj)

    @property
    def kind(self) -> str:
        """Dataset kind: measurement, reconstruction, projections, volume or experiment."""
        from .data import _kind

        return _kind(self._obj)

    @property
    def wavelength(self) -> float:
        """Wavelength (m) from the ``radiation`` and ``energy_eV`` (eV) attrs.

        Raises
        ------
        ptynb.data.ValidationError
            An attr is missing or invalid (the error names it).
        """
        from ._units import wavelength
        from .data import ValidationError

        a = self._obj.attrs
        for key in ("energy_eV", "radiation"):
            if key not in a:
                raise ValidationError(key, "missing from attrs")
        try:
            return wavelength(a["energy_eV"], a["radiation"])
        except ValueError as e:
            raise ValidationError("energy_eV/radiation", str(e)) from None

    def save(self, path, **kwargs):
        """Save with :func:`ptynb.io.save` (HDF5 ``.h5``/``.nc``, Zarr ``.zarr`` or ``.cxi``)."""
        from .io import save

        return save(self._obj, path, **kwargs)

    def show(self, **kwargs):
        """An interactive holoviews/panel view suited to the dataset kind (:func:`ptynb.viz.show`)."""
        from .viz import show

        return show(self._obj, **kwargs)


def _register():
    for reg in (xr.register_dataset_accessor, xr.register_dataarray_accessor,
                xr.register_datatree_accessor):
        with warnings.catch_warnings():  # re-registration (module reloaded) is harmless
            warnings.simplefilter("ignore", xr.core.extensions.AccessorRegistrationWarning)
            reg("pty")(PtyAccessor)


_register()
