"""Building blocks of the APT workflow: simulated ICs, projections, Approximant, network I/O, metrics.

Units: the volume quantity is the phase decrement per metre ``q = k delta`` (rad/m, k = 2 pi /
lambda), positive in metal; phase projections (angle, y, x) are ``phi = -integral q dz`` (rad),
so ``-fbp(phi)`` estimates ``q``. Lengths in metres, angles in degrees.

torch is imported inside the functions that need it, never at import time.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from ..data import ValidationError

__all__ = [
    "MATERIALS",
    "PTYCHO_WEIGHTS",
    "SHIPPED_WEIGHTS",
    "WEIGHTS_DIR",
    "apply_model",
    "approximant",
    "load_model",
    "ms_ssim_auto",
    "phase_projections",
    "score",
    "seeds_for",
    "simulate_ic",
    "standardize",
    "training_set",
]

#: (metal, dielectric) pairs drawn for the random IC volumes
MATERIALS = (("Cu", "SiO2"), ("W", "SiO2"), ("Al", "SiO2"), ("Cu", "Si"), ("Au", "SiO2"))
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "learn" / "weights"
SHIPPED_WEIGHTS = WEIGHTS_DIR / "apt_small.pt"
#: shipped weights trained on the ptychographic Approximant (``approximant="ptychography"``),
#: the default of ``apt.run(measurement=...)`` when present
PTYCHO_WEIGHTS = WEIGHTS_DIR / "apt_ptycho_small.pt"

# disjoint seed ranges: training volumes, validation volumes, held-out test volumes
_SEED_BASE = {"train": 0, "val": 100_000, "test": 200_000}


def seeds_for(split: str, n: int, offset: int = 0) -> list[int]:
    """Seeds of the ``split`` ("train", "val", "test") volumes; the ranges never overlap."""
    if split not in _SEED_BASE:
        raise ValidationError("split", f"must be one of {list(_SEED_BASE)}, got {split!r}")
    if offset < 0 or offset + n > 100_000:
        raise ValidationError("seed", f"offset {offset} + {n} volumes leaves the split's seed range")
    return [_SEED_BASE[split] + offset + i for i in range(int(n))]


def simulate_ic(seed: int, shape=(32, 64, 64), voxel_size: float = 14e-9, *, energy_eV: float = 8800.0,
                layers=(2, 4)) -> xr.Dataset:
    """One random IC volume: layout, layer count, feature size and materials drawn from ``seed``.

    Parameters
    ----------
    seed : int
    shape : (nz, ny, nx) voxels
    voxel_size : float (m)
    energy_eV : float
        Photon energy (eV; the paper's 8.8 keV).
    layers : (min, max) metal layers

    Returns
    -------
    Dataset with ``q`` (z, y, x) float32 rad/m (k delta) and ``labels`` (z, y, x) uint8
    (0 dielectric, 1 wire, 2 via); coords in metres; attrs seed, materials, pitch (m).
    """
    from ..physics.phantoms import ic_volume
    from ..physics.units import wavelength

    rng = np.random.default_rng(int(seed) + 7919)
    nl = int(rng.integers(layers[0], layers[1] + 1))
    pitch_px = float(rng.uniform(6.0, 14.0))
    width_frac = float(rng.uniform(0.3, 0.5))
    metal, diel = MATERIALS[int(rng.integers(len(MATERIALS)))]
    kw = dict(n_layers=nl, pitch=pitch_px * voxel_size, wire_width=width_frac * pitch_px * voxel_size,
              via_fraction=float(rng.uniform(0.2, 0.6)), fill=float(rng.uniform(0.4, 0.8)),
              materials=(metal, diel), seed=int(seed))
    vol = ic_volume(shape, voxel_size, energy_eV=energy_eV, **kw)
    lab = ic_volume(shape, voxel_size, **kw)
    k = 2 * np.pi / wavelength(energy_eV, "xray")
    q = (k * np.real(vol.values)).astype(np.float32)
    da = vol.copy(data=q)
    da.name = "q"
    da.attrs = {"units": "rad/m", "long_name": "phase decrement per metre (k delta)"}
    ds = xr.Dataset({"q": da, "labels": lab.drop_attrs() if hasattr(lab, "drop_attrs") else lab},
                    attrs={"seed": int(seed), "materials": f"{metal},{diel}", "n_layers": nl,
                           "pitch": pitch_px * voxel_size, "energy_eV": float(energy_eV)})
    ds["labels"].attrs = {"labels": "0=dielectric,1=wire,2=via"}
    return ds


def phase_projections(q: xr.DataArray, angles, *, noise: float = 0.0, seed: int = 0) -> xr.DataArray:
    """Phase projections ``phi = -integral q dz`` (angle, y, x) rad of a ``q`` volume (z, y, x) rad/m.

    ``angles`` in degrees (rotation about y, ``ptynb.tomo`` geometry "tomography"); ``noise``
    adds white Gaussian phase noise of that rms (rad). The volume grid is in the attrs
    (``volume_shape``, ``voxel_size``, ``volume_origin``) as :func:`ptynb.tomo.fbp` reads it.
    """
    from .. import tomo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tomo.project(q, np.asarray(angles, float), warn_outside=False)
    arr = -np.asarray(p.values, np.float32)
    if noise > 0:
        arr = arr + np.random.default_rng(seed).normal(0.0, noise, arr.shape).astype(np.float32)
    out = p.copy(data=arr)
    out.name = "projections"
    out.attrs.update(units="rad", long_name="phase projection")
    return out


def approximant(projections: xr.DataArray, kind: str = "fbp") -> xr.DataArray:
    """The physics Approximant from phase projections (angle, y, x) rad -> (z, y, x) rad/m.

    ``kind="fbp"``: ``-fbp(phi)`` (ram-lak), the default input of the shipped network.
    ``kind="backprojection"``: ``-A^T phi / (N * thickness)``, the projection-path analogue of
    the paper's Approximant (slice phases rotated back to the sample frame, averaged over
    angles and dilated along z: an unfiltered backprojection).
    """
    from .. import tomo

    if kind == "fbp":
        v = -tomo.fbp(projections)
    elif kind == "backprojection":
        shape, vs, _ = _grid(projections)
        v = -tomo.backproject(projections) / (projections.sizes["angle"] * shape[0] * vs[0])
    else:
        raise ValidationError("approximant", f"must be 'fbp' or 'backprojection', got {kind!r}")
    v = v.astype(np.float32)
    v.name = "approximant"
    v.attrs = {"units": "rad/m", "method": kind, "long_name": f"Approximant ({kind})"}
    return v


def _grid(projections):
    from ..tomo.projector import volume_grid_from_attrs

    return volume_grid_from_attrs(projections)


def standardize(a: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(a - mean) / std`` as float32 with the mean and std (a constant array: std 1)."""
    a = np.asarray(a, np.float64)
    m, s = float(a.mean()), float(a.std())
    s = s if s > 0 else 1.0
    return ((a - m) / s).astype(np.float32), m, s


def training_set(seeds, *, shape, voxel_size, energy_eV, n_range, theta_range, draws: int = 2,
                 noise: float = 0.0, kind: str = "fbp", ptycho: dict | None = None, rng=None,
                 progress: bool = False, cancel=None):
    """Standardised (Approximant, truth) volume pairs for training or validation.

    Every volume of ``seeds`` is imaged ``draws`` times with N drawn uniformly from
    ``n_range`` (angles) and the half range from ``theta_range`` (degrees), the N angles
    uniform over -theta..+theta.

    ``kind``: "fbp" or "backprojection" (:func:`approximant` of phase projections with white
    phase noise ``noise`` rad), or "ptychography": per volume and draw a simulated
    ptycho-tomography (:func:`ptynb.workflows.apt_ptycho.simulate_measurement`, Poisson noise)
    and its ptychographic Approximant (:func:`~ptynb.workflows.apt_ptycho.ptycho_approximant`);
    ``ptycho`` holds their knobs: ``iterations`` (2), ``slices`` (5), ``modes`` (2),
    ``counts`` (incident counts per pattern, 1e6); ``noise`` is not used then.

    Returns
    -------
    x, y : float32 arrays (n, Z, Y, X) (standardised Approximant and truth)
    info : dict with ``std_ratio`` (median std(truth) / std(Approximant)), ``conditions``
        ((N, theta) per pair) and ``seconds_per_pair``
    """
    import time

    from ..control import Cancelled, is_cancelled, progress_bar

    if kind not in ("fbp", "backprojection", "ptychography"):
        raise ValidationError("approximant", f"must be 'fbp', 'backprojection' or 'ptychography', got {kind!r}")
    pk = {"iterations": 2, "slices": 5, "modes": 2, "counts": 1e6, **(ptycho or {})}
    rng = np.random.default_rng(0) if rng is None else rng
    xs, ys, ratios, cond = [], [], [], []
    bar = progress_bar(len(seeds), desc="simulating ICs") if progress else None
    t0 = time.perf_counter()
    for s in seeds:
        if is_cancelled(cancel):
            raise Cancelled("cancelled while simulating the training set")
        q = simulate_ic(s, shape, voxel_size, energy_eV=energy_eV)["q"]
        for _ in range(draws):
            n = int(rng.integers(n_range[0], n_range[1] + 1))
            th = float(rng.uniform(*theta_range))
            seed = int(rng.integers(2**31))
            ang = np.linspace(-th, th, n)
            if kind == "ptychography":
                a = _ptycho_pair(q, ang, energy_eV=energy_eV, seed=seed, cancel=cancel, **pk)
            else:
                a = approximant(phase_projections(q, ang, noise=noise, seed=seed), kind).values
            xa, _, sa = standardize(a)
            ya, _, sq = standardize(q.values)
            xs.append(xa)
            ys.append(ya)
            ratios.append(sq / sa)
            cond.append((n, th))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return np.stack(xs), np.stack(ys), {"std_ratio": float(np.median(ratios)), "conditions": cond,
                                        "seconds_per_pair": (time.perf_counter() - t0) / max(1, len(xs))}


def _ptycho_pair(q, angles, *, energy_eV, seed, iterations, slices, modes, counts, cancel=None) -> np.ndarray:
    """The ptychographic Approximant (z, y, x) rad/m of ``q`` seen at ``angles`` (simulated data)."""
    from ..control import Cancelled
    from . import apt_ptycho

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = apt_ptycho.simulate_measurement(q, angles, modes=int(modes), slices=int(slices),
                                            energy_eV=float(energy_eV), counts_per_pattern=float(counts),
                                            seed=int(seed))
        a = apt_ptycho.ptycho_approximant(m, iterations=int(iterations), slices=int(slices), modes=int(modes),
                                          cancel=cancel)
    if a.attrs.get("status") == "cancelled":
        raise Cancelled("cancelled while simulating the training set")
    return a.values


def ms_ssim_auto(a, b) -> float:
    """MS-SSIM of two volumes (z, y, x) after standardising both, with as many scales (<= 5)
    as a 7-voxel Gaussian window allows on the smallest side (weights renormalised)."""
    from .. import metrics

    A, _, _ = standardize(a)
    B, _, _ = standardize(b)
    m = 1
    while m < 5 and 7 * 2 ** m <= min(A.shape):
        m += 1
    w = np.asarray(metrics.MS_SSIM_WEIGHTS[:m], float)
    w = w / w.sum()
    return metrics.ms_ssim(A, B, weights=tuple(w), win_size=7, data_range=float(A.max() - A.min()))


def score(truth: np.ndarray, volume: np.ndarray) -> dict:
    """PCC, MS-SSIM, DSC and BER of ``volume`` against ``truth`` (both (z, y, x), any units).

    Binarisation for DSC and BER: truth at its EM threshold, the volume by Bayes' rule with
    the truth's class priors (``ptynb.metrics.ber``). Returns floats (dimensionless).
    """
    from .. import metrics

    t = np.asarray(truth, np.float64)
    v = np.asarray(volume, np.float64)
    b, det = metrics.ber(t, v, return_details=True)
    return {"pcc": metrics.pcc(t, v), "ms_ssim": ms_ssim_auto(t, v), "dsc": float(det["dsc"]), "ber": float(b)}


# ----------------------------------------------------------------------------- network I/O
def load_model(weights=None, *, architecture: dict | None = None):
    """Load a UNet3D from a weights file (default: the shipped ``apt_small.pt``).

    Parameters
    ----------
    weights : str or Path, optional
    architecture : dict, optional
        When given, must equal the file's (``ptynb.learn.training.load_weights`` raises a
        :class:`~ptynb.data.ValidationError` naming the differing keys, e.g. ``patch``).

    Returns
    -------
    (model in eval mode on the CPU, architecture dict, meta dict)
    """
    from ..learn.training import load_weights
    from ..learn.unet3d import build_unet3d

    path = Path(SHIPPED_WEIGHTS if weights is None else weights)
    if weights is None and not path.is_file():
        raise ValidationError("weights", f"the shipped weights {path} are missing; train them with "
                              "`ptynb train apt --out ptynb/learn/weights/apt_small.pt`")
    payload = load_weights(path, architecture=architecture)
    arch = payload["architecture"]
    if arch.get("model") != "UNet3D" or "patch" not in arch:
        raise ValidationError("weights", f"{path} are not APT weights (architecture {arch})")
    model = build_unet3d(arch)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise ValidationError("weights", f"{path}: the tensors do not fit the architecture ({e})") from e
    model.eval()
    return model, arch, payload.get("meta", {})


def apply_model(model, approx: np.ndarray, patch, *, overlap: float = 0.5, batch: int = 4,
                calibration=(1.0, 0.0), cancel=None, threads: int | None = 1) -> np.ndarray:
    """Run the network on a standardised Approximant (Z, Y, X) of any size by stitching.

    ``calibration = (a, b)`` maps the network output to the standardised truth (fitted on the
    training set after training; NPCC leaves scale and offset free). Returns (Z, Y, X) float32
    in standardised units. ``threads``: torch CPU threads (1: robust on a shared machine).
    """
    import torch

    from ..learn.stitch import predict_stitched

    def fn(p):
        with torch.no_grad():
            t = torch.from_numpy(np.ascontiguousarray(p[:, None], dtype=np.float32))
            return model(t)[:, 0].numpy()

    with torch_threads(threads):
        out = predict_stitched(fn, approx, tuple(patch), overlap=overlap, batch=batch, cancel=cancel)
    return (calibration[0] * out + calibration[1]).astype(np.float32)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run torch's CPU ops with ``n`` threads inside the block (None: leave as is)."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fingerprint(**kw) -> str:
    """A short hash of a JSON-able description (training data recipe)."""
    return hashlib.sha256(json.dumps(kw, sort_keys=True, default=str).encode()).hexdigest()[:16]
