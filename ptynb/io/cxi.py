"""CXI (Coherent X-ray Imaging, Maia et al. 2012) export and import of measurements."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from ..data import ValidationError
from . import _common
from ._atomic import atomic_write
from ._attrs import _from_json, _to_json
from ._common import (
    _ELECTRON_VOLT,
    FileFormatError,
    _as_path,
    _check_exists,
    _h5_inspect,
    _sniff,
    _wrap_errors,
)

__all__ = ["read_cxi", "write_cxi"]

_CXI_VERSION = 150
_DET = "instrument_1/detector_1"


def _cxi_leading(ds: xr.Dataset) -> list[tuple[dict, dict]]:
    """[(selection, labels)] for each leading (beam/angle) index combination."""
    inten = ds["intensity"]
    lead = [d for d in inten.dims[:-3]]
    combos: list[tuple[dict, dict]] = [({}, {})]
    for d in lead:
        new = []
        for sel, lab in combos:
            for i in range(inten.sizes[d]):
                s = dict(sel, **{d: i})
                lab2 = dict(lab)
                value = ds[d].values[i]
                lab2[d] = _to_json(value.item() if isinstance(value, np.generic) else value, d)
                if d == "beam" and "beam_tilt" in ds.coords:
                    lab2["beam_tilt"] = float(ds["beam_tilt"].values[i])
                new.append((s, lab2))
        combos = new
    return combos


def write_cxi(ds: xr.Dataset, path, *, overwrite: bool = True) -> Path:
    """Export a measurement to a CXI file (Maia et al. 2012 layout), atomically.

    Layout (lengths in m, energy in J)::

        /cxi_version                                  150
        /entry_k/instrument_1/source_1/energy         photon/electron energy (J)
        /entry_k/instrument_1/detector_1/data         (N, ny, nx) float32 intensities (Fletcher32)
        /entry_k/instrument_1/detector_1/distance     detector distance (m)
        /entry_k/instrument_1/detector_1/x_pixel_size, y_pixel_size   (m)
        /entry_k/instrument_1/detector_1/mask         (ny, nx) uint32, 0 = good, 1 = bad
        /entry_k/sample_1/geometry_1/translation      (N, 3) m: [scan_x, scan_y, 0]
        /entry_k/data_1/data                          soft link to detector_1/data
        /entry_k/ptynb/                               ptynb extras (see below)

    Conventions: ``translation[:, 0] = scan_x`` and ``translation[:, 1] = scan_y`` (the
    probe-centre positions of the ptynb frame, no sign change), ``translation[:, 2] = 0``.
    The CXI mask is nonzero for bad pixels (ptynb's ``mask`` is True for valid pixels); no
    mask is written if the dataset has none.

    A measurement with leading ``beam``/``angle`` dims is written as one entry per
    combination (``entry_1``, ``entry_2``, ... in C order), each with its labels in
    ``entry_k/ptynb`` attrs ``index_<dim>`` and ``label_<dim>`` (JSON).

    ``entry_k/ptynb`` holds: attr ``attrs`` (all dataset attrs, JSON), ``radiation``,
    ``geometry_derived`` (1 if distance/pixel sizes were synthesised, see below), variable
    attrs, and every extra data variable (e.g. ``true_object``, ``true_probe``) as a dataset
    with its dims in attr ``dims``. CXI is X-ray oriented: electron data store
    ``reciprocal_pixel_size`` in the ptynb attrs, and the standard fields get an equivalent
    geometry (``distance`` = the ``detector_distance`` attr or 1 m, pixel size =
    ``reciprocal_pixel_size * wavelength * distance``) so programs that only read the
    standard fields recover the same sampling. The same holds for an X-ray measurement that
    has only ``pixel_size``.

    Parameters
    ----------
    ds : xarray.Dataset
        A measurement (see :func:`ptynb.data.measurement`); validated first.
    path : str or os.PathLike
        Target file (``.cxi`` recommended).
    overwrite : bool
        If False and ``path`` exists, raise FileExistsError.

    Returns
    -------
    pathlib.Path
    """
    from .._units import wavelength as _wl
    from ..data import validate

    if not isinstance(ds, xr.Dataset):
        raise ValidationError("ds", f"write_cxi needs a measurement Dataset, got {type(ds).__name__}")
    validate(ds)
    if ds.attrs.get("kind", "measurement") != "measurement" or "intensity" not in ds:
        raise ValidationError("ds", "write_cxi needs a measurement Dataset with an 'intensity' variable")
    p = _as_path(path)
    a = ds.attrs
    radiation = str(a["radiation"])
    energy_eV = float(a["energy_eV"])
    lam = _wl(energy_eV, radiation)
    ny, nx = ds.sizes["qy"], ds.sizes["qx"]
    derived = False
    if a.get("detector_distance") is not None and a.get("detector_pixel_size") is not None:
        dist = float(a["detector_distance"])
        pix = float(a["detector_pixel_size"])
    else:
        derived = True
        dist = float(a["detector_distance"]) if a.get("detector_distance") is not None else 1.0
        if a.get("reciprocal_pixel_size") is not None:
            pix = float(a["reciprocal_pixel_size"]) * lam * dist
        else:
            pix = lam * dist / (ny * float(a["pixel_size"]))
    extras = [v for v in ds.data_vars if v not in ("intensity", "mask")]
    var_attrs = {name: dict(ds[name].attrs) for name in ds.variables}
    combos = _cxi_leading(ds)

    def writer(tmp: Path):
        import h5py

        with h5py.File(tmp, "w") as f:
            f.create_dataset("cxi_version", data=np.int32(_CXI_VERSION))
            f.attrs["creator"] = "ptynb"
            for k, (sel, labels) in enumerate(combos, start=1):
                sub = ds.isel(sel) if sel else ds
                e = f.create_group(f"entry_{k}")
                e.attrs["NX_class"] = "NXentry"
                src = e.create_group("instrument_1/source_1")
                src.create_dataset("energy", data=np.float64(energy_eV * _ELECTRON_VOLT))
                src["energy"].attrs["units"] = "J"
                det = e.create_group(_DET)
                inten = sub["intensity"]
                d = det.create_dataset("data", shape=inten.shape, dtype=np.float32,
                                       chunks=(1, ny, nx), fletcher32=True)
                step = max(1, int(_common.SHARD_BYTES // max(1, ny * nx * 4)))
                for i0 in range(0, inten.shape[0], step):  # stream (works for dask too)
                    d[i0:i0 + step] = np.asarray(inten[i0:i0 + step].values, dtype=np.float32)
                d.attrs["axes"] = "translation:y:x"
                det.create_dataset("distance", data=np.float64(dist))
                det.create_dataset("x_pixel_size", data=np.float64(pix))
                det.create_dataset("y_pixel_size", data=np.float64(pix))
                for name in ("distance", "x_pixel_size", "y_pixel_size"):
                    det[name].attrs["units"] = "m"
                if "mask" in ds:
                    det.create_dataset("mask", data=(~np.asarray(ds["mask"].values, bool)).astype(np.uint32))
                n = inten.shape[0]
                tr = np.zeros((n, 3), np.float64)
                tr[:, 0] = np.asarray(sub["scan_x"].values, np.float64).reshape(n)
                tr[:, 1] = np.asarray(sub["scan_y"].values, np.float64).reshape(n)
                geo = e.create_group("sample_1/geometry_1")
                geo.create_dataset("translation", data=tr)
                geo["translation"].attrs["units"] = "m"
                data1 = e.create_group("data_1")
                data1["data"] = h5py.SoftLink(f"/entry_{k}/{_DET}/data")
                pg = e.create_group("ptynb")
                pg.attrs["attrs"] = json.dumps(_to_json(dict(a), "attrs"))
                pg.attrs["variable_attrs"] = json.dumps(_to_json(var_attrs, "variable attrs"))
                pg.attrs["radiation"] = radiation
                pg.attrs["geometry_derived"] = int(derived)
                pg.attrs["translation_convention"] = "x=scan_x, y=scan_y, z=0 (probe centre, m)"
                pg.attrs["n_entries"] = len(combos)
                for dim, lab in labels.items():
                    if dim != "beam_tilt":
                        pg.attrs[f"index_{dim}"] = int(sel[dim])
                    pg.attrs[f"label_{dim}"] = json.dumps(lab)
                for name in extras:
                    v = sub[name]
                    pg.create_dataset(name, data=np.asarray(v.values))
                    pg[name].attrs["dims"] = json.dumps(list(v.dims))
                    pg[name].attrs["full_dims"] = json.dumps(list(ds[name].dims))
            f.flush()

    return atomic_write(p, writer, overwrite=overwrite)


def _read_scalar(g, name, p, entry):
    if name not in g:
        return None
    try:
        return float(np.asarray(g[name][()]).reshape(-1)[0])
    except Exception as e:
        raise FileFormatError(p, f"CXI field {entry}/{name} is unreadable ({e})") from e


#: plausible CXI source energies in joules: 1 eV .. 100 MeV (photons and electrons)
_J_RANGE = (1.0 * _ELECTRON_VOLT, 1e8 * _ELECTRON_VOLT)


def _energy_from_cxi(e, ej: float, p: Path, entry: str) -> float:
    """The source energy in eV from the CXI field (joules by the standard).

    A ``units`` attr of ``"eV"``/``"keV"`` is honoured (the file says what it holds); without
    one (or with "J"), a value outside 1 eV .. 100 MeV in joules is refused with the likely
    unit named: CXI stores J, and a value like 8 or 8000 is keV or eV.
    """
    field = f"{entry}/instrument_1/source_1/energy"
    units = e["instrument_1/source_1/energy"].attrs.get("units")
    if isinstance(units, bytes):
        units = units.decode(errors="replace")
    u = str(units).strip() if units is not None else ""
    scale = {"ev": 1.0, "kev": 1e3, "mev": 1e6}.get(u.lower())
    if scale is not None:
        return ej * scale
    if u and u.lower() not in ("j", "joule", "joules"):
        raise FileFormatError(p, f"CXI field {field} has units {u!r}; expected J (or eV/keV): "
                                 "pass energy_eV= to read_cxi")
    if not np.isfinite(ej) or ej <= 0:
        raise FileFormatError(p, f"CXI field {field} is {ej!r}; expected a positive energy in J "
                                 "(pass energy_eV= to read_cxi)")
    if not _J_RANGE[0] <= ej <= _J_RANGE[1]:
        if ej >= 1.0:
            guess = (f"it looks like {ej:g} keV (energy_eV={ej * 1e3:g})" if ej < 1000 else
                     f"it looks like {ej:g} eV (energy_eV={ej:g})")
        else:
            guess = "not an energy in joules"
        raise FileFormatError(
            p, f"CXI field {field} is {ej:g}, which in joules (the CXI unit) would be "
               f"{ej / _ELECTRON_VOLT:.3g} eV: {guess}. The file does not store joules; pass "
               "energy_eV= to read_cxi with the right value")
    return ej / _ELECTRON_VOLT


def _check_cxi_memory(f, entries, p: Path, allow_exceeding: bool):
    """Forecast the patterns of ``entries`` (the stored dtype, float32, the stack) before reading."""
    from .._memory import check_available

    need = {}
    for en in entries:
        e = f[en]
        d = e.get(_DET + "/data")
        if d is None:
            d = e.get("data_1/data")
        if d is None or not hasattr(d, "shape"):
            continue  # reported as a missing field by _read_entry
        n = int(np.prod(d.shape))
        need[f"{en} as stored"] = n * d.dtype.itemsize
        need[f"{en} as float32"] = n * 4
    if len(entries) > 1:
        need["stacked entries"] = sum(v for k, v in need.items() if k.endswith("float32"))
    check_available(need, f"reading {str(p)!r}", "the entries read (entry=...)",
                    allow_exceeding=allow_exceeding)


def _read_entry(f, entry: str, p: Path, overrides: dict, translation_sign: float):
    import h5py

    from .._units import wavelength as _wl

    e = f[entry]
    det_path = f"{entry}/{_DET}"
    if _DET + "/data" in e:
        data = e[_DET + "/data"]
    elif "data_1/data" in e:
        data = e["data_1/data"]
    else:
        raise FileFormatError(p, f"missing CXI field {det_path}/data (diffraction intensities)")
    if data.ndim == 2:
        intensity = np.asarray(data[()])[None]
    elif data.ndim == 3:
        intensity = np.asarray(data[()])
    else:
        raise FileFormatError(p, f"CXI field {det_path}/data has shape {data.shape}; expected (N, ny, nx)")
    n, ny, nx = intensity.shape
    pg = e["ptynb"] if "ptynb" in e and isinstance(e["ptynb"], h5py.Group) else None
    saved_attrs = _from_json(json.loads(pg.attrs["attrs"])) if pg is not None and "attrs" in pg.attrs else {}
    radiation = overrides.pop("radiation", None) or (str(pg.attrs["radiation"]) if pg is not None and "radiation" in pg.attrs else "xray")

    energy_eV = overrides.pop("energy_eV", None)
    if energy_eV is None:
        ej = _read_scalar(e, "instrument_1/source_1/energy", p, entry)
        if ej is None:
            raise FileFormatError(p, f"missing CXI field {entry}/instrument_1/source_1/energy (J); "
                                     "pass energy_eV= to read_cxi")
        energy_eV = _energy_from_cxi(e, ej, p, entry)
        if "energy_eV" in saved_attrs and np.isclose(saved_attrs["energy_eV"], energy_eV, rtol=1e-12):
            energy_eV = saved_attrs["energy_eV"]  # exact value (J <-> eV conversion rounds)
    lam = _wl(energy_eV, radiation)

    geo_keys = ("pixel_size", "detector_distance", "detector_pixel_size", "reciprocal_pixel_size")
    over_geo = {k: overrides.pop(k) for k in geo_keys if k in overrides}
    saved_geo = {k: saved_attrs[k] for k in geo_keys if saved_attrs.get(k) is not None}
    if saved_geo and not over_geo:
        geo = saved_geo  # exact values from the ptynb group
    elif "pixel_size" in over_geo or "reciprocal_pixel_size" in over_geo:
        geo = over_geo
    else:
        dist = over_geo.get("detector_distance")
        pix = over_geo.get("detector_pixel_size")
        if dist is None:
            dist = _read_scalar(e, _DET + "/distance", p, entry)
        if pix is None:
            xp = _read_scalar(e, _DET + "/x_pixel_size", p, entry)
            yp = _read_scalar(e, _DET + "/y_pixel_size", p, entry)
            if xp is not None and yp is not None and not np.isclose(xp, yp, rtol=1e-6):
                raise FileFormatError(p, f"CXI detector pixels are not square (x {xp} m, y {yp} m); "
                                         "ptynb needs square pixels (pass pixel_size= to override)")
            pix = xp if xp is not None else yp
        if dist is None or pix is None:
            missing = "distance" if dist is None else "x_pixel_size"
            raise FileFormatError(p, f"missing CXI field {det_path}/{missing}; pass detector_distance= "
                                     "and detector_pixel_size= (m), or pixel_size= (m), to read_cxi")
        if radiation == "electron":
            geo = {"reciprocal_pixel_size": float(pix) / (lam * float(dist))}
        else:
            geo = {"detector_distance": float(dist), "detector_pixel_size": float(pix)}

    if "positions" in overrides:
        pos = np.asarray(overrides.pop("positions"), np.float64)
        sy, sx = pos[:, 0], pos[:, 1]
    else:
        tpath = "sample_1/geometry_1/translation"
        if tpath not in e:
            raise FileFormatError(p, f"missing CXI field {entry}/{tpath} (N, 3) in m; pass positions= "
                                     "(N, 2) [y, x] in m to read_cxi")
        tr = np.asarray(e[tpath][()], np.float64)
        if tr.ndim != 2 or tr.shape[0] != n or tr.shape[1] < 2:
            raise FileFormatError(p, f"CXI field {entry}/{tpath} has shape {tr.shape}; expected ({n}, 3)")
        sx, sy = translation_sign * tr[:, 0], translation_sign * tr[:, 1]

    mask = overrides.pop("mask", None)
    if mask is None and _DET + "/mask" in e:
        m = np.asarray(e[_DET + "/mask"][()])
        if m.shape != (ny, nx):
            raise FileFormatError(p, f"CXI field {det_path}/mask has shape {m.shape}; detector is {(ny, nx)}")
        mask = m == 0

    extra_vars = {}
    var_attrs = {}
    if pg is not None:
        if "variable_attrs" in pg.attrs:
            var_attrs = _from_json(json.loads(pg.attrs["variable_attrs"]))
        for name, obj in pg.items():
            if hasattr(obj, "shape"):
                dims = tuple(json.loads(obj.attrs.get("dims", "[]")))
                full = tuple(json.loads(obj.attrs.get("full_dims", json.dumps(list(dims)))))
                extra_vars[name] = (dims, full, np.asarray(obj[()]))
    attrs = {k: v for k, v in saved_attrs.items()
             if k not in ("kind", "radiation", "energy_eV", "wavelength", "pixel_size", "detector_distance",
                          "detector_pixel_size", "reciprocal_pixel_size", "ptynb_version")}
    attrs.update(overrides)
    labels = {}
    if pg is not None:
        for k, v in pg.attrs.items():
            if k.startswith("label_"):
                labels[k[6:]] = _from_json(json.loads(v))
    return {"intensity": intensity, "sy": sy, "sx": sx, "radiation": radiation, "energy_eV": energy_eV,
            "geo": geo, "mask": mask, "attrs": attrs, "extra": extra_vars, "var_attrs": var_attrs,
            "labels": labels, "version": saved_attrs.get("ptynb_version")}


def read_cxi(path, *, entry: str | None = None, translation_sign: float = 1.0, allow_exceeding: bool = False,
             **overrides) -> xr.Dataset:
    """Import a CXI file as a measurement Dataset.

    Reads the standard fields (see :func:`write_cxi`); a file written by another program
    (without an ``entry_1/ptynb`` group) is read from them alone, as X-ray data unless
    ``radiation="electron"`` is passed (then the reciprocal pixel size is
    ``x_pixel_size / (wavelength * distance)``). With a ptynb group, the original attrs,
    geometry, extra variables and beam/angle labels are restored, and the several
    ``entry_k`` of a multi-beam/angle measurement are stacked back into leading dims.

    Parameters
    ----------
    path : str or os.PathLike
        CXI (HDF5) file.
    entry : str, optional
        Read only this entry (e.g. ``"entry_2"``). Default: all ptynb-labelled entries
        stacked, or the only entry. A foreign file with several entries needs ``entry=``.
    translation_sign : {1.0, -1.0}
        Multiplies ``translation`` (use -1 for files storing sample translations with the
        opposite sign to probe positions).
    allow_exceeding : bool
        The patterns of every entry read are forecast (as read, as float32 and stacked) before
        reading; :class:`ptynb._memory.MemoryForecastError` if they do not fit, unless True.
    **overrides
        Values used instead of (or in place of missing) file fields: ``energy_eV``,
        ``radiation``, ``detector_distance``, ``detector_pixel_size``, ``pixel_size``,
        ``reciprocal_pixel_size``, ``positions`` ((N, 2) [y, x] in m), ``mask`` (True =
        valid); any other keyword becomes an attr.

    Returns
    -------
    xarray.Dataset
        A validated measurement (see :func:`ptynb.data.measurement`).

    Raises
    ------
    FileNotFoundError, FileFormatError
        Missing path; not HDF5; a required CXI field missing (named in the message).
    """
    import h5py

    from ..data import measurement

    p = _as_path(path)
    _check_exists(p)
    if _sniff(p) != "hdf5":
        raise FileFormatError(p, "is a Zarr store, not a CXI (HDF5) file")
    _h5_inspect(p)  # truncated/corrupt -> FileFormatError
    with h5py.File(p, "r") as f, _wrap_errors(p, "unreadable CXI file"):
        if "cxi_version" not in f and "cxi_version" not in f.attrs:
            raise FileFormatError(p, "missing CXI field /cxi_version: not a CXI file")
        entries = sorted((k for k in f if k.startswith("entry_") and isinstance(f[k], h5py.Group)),
                         key=lambda k: int(k[6:]) if k[6:].isdigit() else 10**9)
        if not entries:
            raise FileFormatError(p, "missing CXI group /entry_1")
        if entry is not None:
            if entry not in f:
                raise FileFormatError(p, f"has no CXI entry {entry!r} (entries: {entries})")
            entries = [entry]
        _check_cxi_memory(f, entries, p, allow_exceeding)
        parts = [_read_entry(f, en, p, dict(overrides), translation_sign) for en in entries]
    if len(parts) > 1 and not all(pt["labels"] for pt in parts):
        raise FileFormatError(p, f"has {len(parts)} entries without ptynb labels; choose one with entry=")
    first = parts[0]
    kwargs = dict(first["geo"])
    kwargs.update(first["attrs"])
    if len(parts) == 1 and (entry is not None or not first["labels"]):
        intensity, sy, sx, lead = first["intensity"], first["sy"], first["sx"], {}
        dims = None
    else:
        lead_dims = [d for d in ("beam", "angle") if d in first["labels"]]
        values = {d: [] for d in lead_dims}
        for pt in parts:
            for d in lead_dims:
                if pt["labels"][d] not in values[d]:
                    values[d].append(pt["labels"][d])
        shape = tuple(len(values[d]) for d in lead_dims)
        if int(np.prod(shape)) != len(parts):
            raise FileFormatError(p, f"ptynb entry labels {lead_dims} do not form a full grid")
        intensity = np.stack([pt["intensity"] for pt in parts]).reshape(shape + first["intensity"].shape)
        sy = np.stack([pt["sy"] for pt in parts]).reshape(shape + first["sy"].shape)
        sx = np.stack([pt["sx"] for pt in parts]).reshape(shape + first["sx"].shape)
        lead = {}
        if "beam" in values:
            lead["beam"] = values["beam"]
            tilts = [next(pt["labels"].get("beam_tilt") for pt in parts if pt["labels"]["beam"] == b)
                     for b in values["beam"]]
            if all(t is not None for t in tilts):
                lead["beam_tilt"] = tilts
        if "angle" in values:
            lead["angle"] = values["angle"]
        dims = tuple(lead_dims) + ("scan", "qy", "qx")
    ds = measurement(intensity, sy, sx, radiation=first["radiation"], energy_eV=first["energy_eV"],
                     mask=first["mask"], dims=dims, **lead, **kwargs)
    if first["version"] is not None:
        ds.attrs["ptynb_version"] = first["version"]
    for name, (vdims, full, arr) in first["extra"].items():
        if len(parts) > 1:
            lead_dims = list(dims[:-3])
            shape = tuple(ds.sizes[d] for d in lead_dims)
            stacked = np.stack([pt["extra"][name][2] for pt in parts])
            da = xr.DataArray(stacked.reshape(shape + arr.shape), dims=tuple(lead_dims) + vdims)
            da = da.isel({d: 0 for d in lead_dims if d not in full})
            ds[name] = da.transpose(*full).variable
        else:
            ds[name] = (vdims, arr)
    for name, va in first["var_attrs"].items():
        if name in ds.variables:
            ds[name].attrs = dict(va)
    return ds

