"""Iterative reconstruction: SIRT, OS-SART and gradient solvers (Adam / nonlinear CG) with TV.

All solvers read the geometry and volume grid from the projections (see
:func:`ptynb.tomo.projector_for`), run on plain numpy/cupy arrays (the projections' device,
or ``device=``) and return a volume DataArray (z, y, x) whose attrs hold the settings, the
package version and the convergence history ``cost`` (one value per iteration).

Cost
----
``cost[k] = ||A x_k - b||^2 / ||b||^2`` (relative squared residual) for SIRT/SART, and for
:func:`gradient` the full objective ``(0.5 ||A x - b||^2 + tv * TV(x)) / (0.5 ||b||^2)``
with line integrals measured in voxels (the projections divided by the smallest voxel
size), so ``tv`` is dimensionless in those units.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from ..backend import xp_of
from ..control import STATUS_CANCELLED, STATUS_COMPLETE, check_event, is_cancelled
from ..data import ValidationError
from .projector import _on_device, _wrap_volume, projector_for

__all__ = ["gradient", "sart", "sirt", "tv_value_and_grad"]


def _progress(iterable, progress, desc):
    if not progress:
        return iterable
    try:
        from ..control import tqdm_class
        tqdm = tqdm_class()

        return tqdm(iterable, desc=desc, leave=False)
    except ImportError:  # pragma: no cover - tqdm missing
        return iterable


def _setup(projections, x0, support, positivity, device, dtype, volume_shape=None):
    op = projector_for(projections, volume_shape=volume_shape, dtype=dtype)
    b = _on_device(projections.data, device)
    xp = xp_of(b)
    rdt = np.float64 if (np.dtype(dtype) == np.float64 or b.dtype in (np.float64, np.complex128)) \
        else np.float32
    cplx = b.dtype.kind == "c"
    if positivity and cplx:
        raise ValidationError("positivity", "cannot be imposed on complex projections")
    cdt = (np.complex128 if rdt == np.float64 else np.complex64) if cplx else rdt
    b = b.astype(cdt, copy=False)
    if x0 is None:
        x = xp.zeros(op.volume_shape, dtype=cdt)
    else:
        arr = x0.data if isinstance(x0, xr.DataArray) else x0
        arr = xp.asarray(arr) if xp is not np else np.asarray(arr)
        if tuple(arr.shape) != op.volume_shape:
            raise ValidationError("x0", f"has shape {tuple(arr.shape)}; the volume is {op.volume_shape}")
        if arr.dtype.kind in "fc" and not bool(xp.all(xp.isfinite(arr))):
            raise ValidationError("x0", "contains NaN or inf")
        x = arr.astype(cdt, copy=True)
    mask = None
    if support is not None:
        s = support.data if isinstance(support, xr.DataArray) else support
        s = xp.asarray(s) if xp is not np else np.asarray(s)
        if tuple(s.shape) != op.volume_shape:
            raise ValidationError("support", f"has shape {tuple(s.shape)}; the volume is {op.volume_shape}")
        if s.dtype != bool:
            raise ValidationError("support", f"must be boolean (True inside), got {s.dtype}")
        if not bool(s.any()):
            raise ValidationError("support", "is empty (all False): nothing to reconstruct")
        mask = s
        x = x * mask
    return op, b, x, xp, rdt, mask


def _constrain(x, positivity, mask, xp):
    if positivity:
        xp.maximum(x, 0, out=x)
    if mask is not None:
        x *= mask
    return x


def _safe_inv(a, xp, rdt):
    a = xp.asarray(a, dtype=rdt)
    out = xp.zeros_like(a)
    big = a > (a.max() * 1e-6 if a.size else 0)
    out[big] = 1.0 / a[big]
    return out


def _check_iterations(iterations):
    try:
        n = int(iterations)
    except (TypeError, ValueError):
        raise ValidationError("iterations", f"must be an integer, got {iterations!r}") from None
    if n < 1:
        raise ValidationError("iterations", f"must be >= 1, got {iterations!r}")
    return n


def _norm2(a, xp):
    return float(xp.vdot(a, a).real)


def _finish(x, op, name, cost, cancelled=False, **settings):
    da = _wrap_volume(x, op, name=name, **settings)
    da.attrs["cost"] = np.asarray(cost, dtype=np.float64)
    da.attrs["status"] = STATUS_CANCELLED if cancelled else STATUS_COMPLETE
    return da


def sirt(projections: xr.DataArray, iterations: int = 100, x0=None, positivity: bool = False,
         support=None, callback=None, progress: bool = True, relaxation: float = 1.0, *,
         volume_shape=None, device=None, dtype=np.float32, cancel=None) -> xr.DataArray:
    """Simultaneous iterative reconstruction technique.

    ``x <- x + relaxation * C A^T R (b - A x)`` with ``R = 1 / (A 1)`` (row sums) and
    ``C = 1 / (A^T 1)`` (column sums), then the constraints.

    Parameters
    ----------
    projections : DataArray (angle, y, x)
        Line integrals with the geometry in attrs (from :func:`ptynb.tomo.project`).
    iterations : int
    x0 : DataArray or array (z, y, x), optional
        Starting volume (default zeros).
    positivity : bool
        Clip negative values after every update (real data only).
    support : bool array (z, y, x), optional
        Voxels allowed to be non-zero (True); must not be empty.
    callback : callable(iteration, info), optional
        Called after every iteration with ``info = {"cost": float, "volume": array}``, for
        observing only (its return value is ignored; stop a run with ``cancel``).
    progress : bool
        Show a tqdm progress bar.
    relaxation : float
        Step factor (1 = standard SIRT; (0, 2) converges).
    cancel : threading.Event, optional
        Polled after every iteration (after ``callback``): once set, the run stops and
        returns the volume so far with ``attrs["status"] = "cancelled"`` (see
        :mod:`ptynb.control`).

    Returns
    -------
    DataArray (z, y, x) with attrs ``method="sirt"``, settings, ``cost`` (iteration,) and
    ``status`` (``"complete"`` or ``"cancelled"``).
    """
    n_it = _check_iterations(iterations)
    check_event(cancel)
    op, b, x, xp, rdt, mask = _setup(projections, x0, support, positivity, device, dtype,
                                     volume_shape)
    R = _safe_inv(op.forward(xp.ones(op.volume_shape, dtype=rdt)), xp, rdt)
    C = _safe_inv(op.adjoint(xp.ones(op.shape_out, dtype=rdt)), xp, rdt) * rdt(relaxation)
    if mask is not None:
        C = C * mask
    bn = max(_norm2(b, xp), 1e-300)
    cost = []
    stopped = False
    for it in _progress(range(n_it), progress, "SIRT"):
        r = b - op.forward(x)
        cost.append(_norm2(r, xp) / bn)
        x += C * op.adjoint(R * r)
        _constrain(x, positivity, mask, xp)
        if callback is not None:
            callback(it, {"cost": cost[-1], "volume": x})
        if is_cancelled(cancel):
            stopped = True
            break
    return _finish(x, op, "sirt", cost, stopped, method="sirt", iterations=len(cost),
                   positivity=bool(positivity), support=support is not None,
                   relaxation=float(relaxation), geometry=op.geometry.kind)


def sart(projections: xr.DataArray, iterations: int = 10, subsets: int = 10,
         relaxation: float = 1.0, x0=None, positivity: bool = False, support=None,
         callback=None, progress: bool = True, *, volume_shape=None, device=None,
         dtype=np.float32, cancel=None) -> xr.DataArray:
    """Ordered-subsets SART (OS-SART).

    The views are split into ``subsets`` interleaved groups (view ``i`` in group
    ``i % subsets``); each iteration sweeps the groups in a bit-reversal-like order, each
    update being the SIRT step of that group:
    ``x <- x + relaxation * C_s A_s^T R_s (b_s - A_s x)``. ``subsets=1`` is SIRT,
    ``subsets = n_angles`` classical SART.

    Parameters (``callback``, ``cancel``, ...) and result attrs as :func:`sirt`; ``cost[k]``
    is the relative squared residual summed over the subsets during sweep ``k`` (each subset
    evaluated just before its update). ``cancel`` is polled after every full sweep.
    """
    n_it = _check_iterations(iterations)
    check_event(cancel)
    op, b, x, xp, rdt, mask = _setup(projections, x0, support, positivity, device, dtype,
                                     volume_shape)
    n = op.geometry.n_angles
    try:
        ns = int(subsets)
    except (TypeError, ValueError):
        raise ValidationError("subsets", f"must be an integer, got {subsets!r}") from None
    if not 1 <= ns <= n:
        raise ValidationError("subsets", f"must lie in [1, {n}] (number of views), got {subsets!r}")
    groups = [np.arange(g, n, ns) for g in _spread_order(ns)]
    ops, Rs, Cs = [], [], []
    for gidx in groups:
        o = op.subset(gidx)
        ops.append(o)
        Rs.append(_safe_inv(o.forward(xp.ones(o.volume_shape, dtype=rdt)), xp, rdt))
        c = _safe_inv(o.adjoint(xp.ones(o.shape_out, dtype=rdt)), xp, rdt) * rdt(relaxation)
        Cs.append(c if mask is None else c * mask)
    bn = max(_norm2(b, xp), 1e-300)
    cost = []
    stopped = False
    for it in _progress(range(n_it), progress, "OS-SART"):
        acc = 0.0
        for gidx, o, R, C in zip(groups, ops, Rs, Cs):
            r = b[gidx] - o.forward(x)
            acc += _norm2(r, xp)
            x += C * o.adjoint(R * r)
            _constrain(x, positivity, mask, xp)
        cost.append(acc / bn)
        if callback is not None:
            callback(it, {"cost": cost[-1], "volume": x})
        if is_cancelled(cancel):
            stopped = True
            break
    return _finish(x, op, "sart", cost, stopped, method="os-sart", iterations=len(cost), subsets=ns,
                   relaxation=float(relaxation), positivity=bool(positivity),
                   support=support is not None, geometry=op.geometry.kind)


def _spread_order(n):
    """Order 0..n-1 so consecutive subsets are far apart in angle (greedy max-min)."""
    if n <= 2:
        return list(range(n))
    order = [0]
    rest = set(range(1, n))
    while rest:
        best = max(rest, key=lambda c: min(min(abs(c - o), n - abs(c - o)) for o in order))
        order.append(best)
        rest.remove(best)
    return order


# ------------------------------------------------------------------ total variation
def _grad3(x, xp):
    g = []
    for ax in range(3):
        d = xp.zeros_like(x)
        if x.shape[ax] > 1:
            sl_hi = [slice(None)] * 3
            sl_lo = [slice(None)] * 3
            sl_hi[ax] = slice(1, None)
            sl_lo[ax] = slice(None, -1)
            d[tuple(sl_lo)] = x[tuple(sl_hi)] - x[tuple(sl_lo)]
        g.append(d)
    return g


def _div3(g, xp):
    """Negative adjoint of the forward difference (so <grad x, g> = -<x, div g>)."""
    out = xp.zeros_like(g[0])
    for ax in range(3):
        d = g[ax]
        if d.shape[ax] <= 1:
            continue
        sl = [slice(None)] * 3
        sl[ax] = slice(0, 1)
        out[tuple(sl)] += d[tuple(sl)]
        sl_a = [slice(None)] * 3
        sl_b = [slice(None)] * 3
        sl_a[ax] = slice(1, -1)
        sl_b[ax] = slice(0, -2)
        sl_c = [slice(None)] * 3
        sl_c[ax] = slice(1, -1)
        out[tuple(sl_c)] += d[tuple(sl_a)] - d[tuple(sl_b)]
        sl_l = [slice(None)] * 3
        sl_l2 = [slice(None)] * 3
        sl_l[ax] = slice(-1, None)
        sl_l2[ax] = slice(-2, -1)
        out[tuple(sl_l)] -= d[tuple(sl_l2)]
    return out


def tv_value_and_grad(x, eps: float):
    """Smoothed isotropic TV ``sum sqrt(|grad x|^2 + eps^2)`` and its gradient.

    Forward differences along (z, y, x) with a zero difference at the far boundary; complex
    volumes use ``|grad Re|^2 + |grad Im|^2``.
    """
    xp = xp_of(x)
    g = _grad3(x, xp)
    mag = xp.sqrt(sum((gi * gi.conj()).real for gi in g) + eps * eps)
    val = float(mag.sum())
    grad = -_div3([gi / mag for gi in g], xp)
    return val, grad


def gradient(projections: xr.DataArray, iterations: int = 100, method: str = "adam",
             tv: float = 0.0, positivity: bool = False, support=None, lr: float | None = None,
             x0=None, tv_eps: float | None = None, callback=None, progress: bool = True, *,
             volume_shape=None, device=None, dtype=np.float32, cancel=None) -> xr.DataArray:
    """Regularised least squares ``min 0.5 ||A x - b||^2 + tv * TV_eps(x)`` by Adam or CG.

    Parameters
    ----------
    projections : DataArray (angle, y, x)
    iterations : int
    method : {"adam", "cg"}
        ``adam``: projected Adam (beta1 0.9, beta2 0.999) with step ``lr``.
        ``cg``: nonlinear conjugate gradient (Polak-Ribiere+), step from the exact
        minimiser of the data term along the direction, halved until the objective
        decreases; constraints by projection (restart after an active projection).
    tv : float
        Weight of the smoothed isotropic TV (dimensionless: line integrals in voxels).
    positivity : bool
        Project onto x >= 0 (real only).
    support : bool array (z, y, x), optional
        Voxels allowed to be non-zero.
    lr : float, optional
        Adam step in volume units; default ``0.1 * s`` with ``s`` the 99th percentile of
        |x| after one SIRT step (the data's value scale).
    x0 : array (z, y, x), optional
    tv_eps : float, optional
        TV smoothing (volume units); default ``1e-3 * s``.
    callback, progress, cancel
        As :func:`sirt` (``info`` also holds ``"data"`` and ``"tv"`` terms).

    Returns
    -------
    DataArray (z, y, x); attrs ``method="gradient-<method>"``, settings, ``cost`` and
    ``status``.
    """
    n_it = _check_iterations(iterations)
    check_event(cancel)
    meth = str(method).strip().lower()
    if meth not in ("adam", "cg"):
        raise ValidationError("method", f"must be 'adam' or 'cg', got {method!r}")
    try:
        tv = float(tv)
    except (TypeError, ValueError):
        raise ValidationError("tv", f"must be a number, got {tv!r}") from None
    if not np.isfinite(tv) or tv < 0:
        raise ValidationError("tv", f"must be >= 0, got {tv!r}")
    op, b, x, xp, rdt, mask = _setup(projections, x0, support, positivity, device, dtype,
                                     volume_shape)
    unit = float(np.min(op.voxel_size))  # work with line integrals in voxels
    b = b / rdt(unit)

    def A(v):
        return op.forward(v) / rdt(unit)

    def AT(p):
        return op.adjoint(p) / rdt(unit)

    # value scale from one SIRT step
    R = _safe_inv(A(xp.ones(op.volume_shape, dtype=rdt)), xp, rdt)
    C = _safe_inv(AT(xp.ones(op.shape_out, dtype=rdt)), xp, rdt)
    x1 = C * AT(R * b)
    scale = float(np.percentile(np.abs(np.asarray(x1.get() if hasattr(x1, "get") else x1)), 99))
    scale = scale if scale > 0 else 1.0
    eps = float(tv_eps) if tv_eps is not None else 1e-3 * scale
    if lr is None:
        lr = 0.1 * scale
    lr = float(lr)
    if not np.isfinite(lr) or lr <= 0:
        raise ValidationError("lr", f"must be positive, got {lr!r}")
    bn = max(0.5 * _norm2(b, xp), 1e-300)

    def objective(r, v):
        data = 0.5 * _norm2(r, xp)
        if tv > 0:
            t, gt = tv_value_and_grad(v, eps)
            return data, t, gt
        return data, 0.0, None

    def full_grad(r, v, gt):
        g = AT(r)
        if gt is not None:
            g = g + rdt(tv) * gt
        if mask is not None:
            g = g * mask
        return g

    cost = []
    stopped = False
    r = A(x) - b
    if meth == "adam":
        m = xp.zeros_like(x)
        s2 = xp.zeros(x.shape, dtype=rdt)
        b1, b2, e = 0.9, 0.999, 1e-12
        for it in _progress(range(n_it), progress, "Adam"):
            data, t, gt = objective(r, x)
            cost.append((data + tv * t) / bn)
            g = full_grad(r, x, gt)
            m = b1 * m + (1 - b1) * g
            s2 = b2 * s2 + (1 - b2) * (g * g.conj()).real
            mh = m / (1 - b1 ** (it + 1))
            vh = s2 / (1 - b2 ** (it + 1))
            x = x - rdt(lr) * mh / (xp.sqrt(vh) + rdt(e * scale))
            _constrain(x, positivity, mask, xp)
            r = A(x) - b
            if callback is not None:
                callback(it, {"cost": cost[-1], "volume": x, "data": data / bn, "tv": t})
            if is_cancelled(cancel):
                stopped = True
                break
    else:
        g_old = d = None
        data, t, gt = objective(r, x)
        f_cur = data + tv * t
        for it in _progress(range(n_it), progress, "CG"):
            cost.append(f_cur / bn)
            g = full_grad(r, x, gt)
            gg = _norm2(g, xp)
            if gg == 0:
                break
            if d is None:
                d = -g
            else:
                beta = max(0.0, float(xp.vdot(g, g - g_old).real) / max(_norm2(g_old, xp), 1e-300))
                d = -g + beta * d
            slope = float(xp.vdot(g, d).real)
            if slope >= 0:  # not a descent direction: restart
                d = -g
                slope = -gg
            Ad = A(d)
            alpha = -slope / max(_norm2(Ad, xp), 1e-300)
            accepted = False
            for _ in range(30):
                x_new = x + rdt(alpha) * d
                clipped = positivity and bool((x_new < 0).any())
                if clipped or mask is not None:
                    x_new = _constrain(x_new, positivity, mask, xp)
                r_new = (A(x_new) - b) if clipped else (r + rdt(alpha) * Ad)
                data_n, t_n, gt_n = objective(r_new, x_new)
                f_new = data_n + tv * t_n
                if f_new <= f_cur + 1e-4 * alpha * slope or f_new < f_cur:
                    accepted = True
                    break
                alpha *= 0.5
            if not accepted:
                break
            x, r, gt, f_cur = x_new, r_new, gt_n, f_new
            g_old = g
            if clipped:
                d = None  # restart after an active projection
            if callback is not None:
                callback(it, {"cost": f_cur / bn, "volume": x, "data": data_n / bn, "tv": t_n})
            if is_cancelled(cancel):
                stopped = True
                break
    return _finish(x, op, "gradient", cost, stopped, method=f"gradient-{meth}", iterations=len(cost),
                   tv=tv, tv_eps=eps, lr=lr if meth == "adam" else None,
                   positivity=bool(positivity), support=support is not None,
                   geometry=op.geometry.kind)
