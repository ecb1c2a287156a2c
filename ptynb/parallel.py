"""Fan out independent per-angle / per-beam computations, serially or on a dask cluster.

Many ptynb steps (a ptychographic reconstruction above all) are independent for every
``angle`` and every ``beam``. :func:`map_blocks` splits a Dataset along those dims, calls a
function on each block and puts the results back together with the dims and their
coordinates (``angle`` in degrees, ``beam`` labels and ``beam_tilt``) intact.

Where the blocks run
--------------------
* serially in this process (``parallel`` falsy and no ``client``): the default;
* on a dask.distributed cluster: pass ``client=`` a :class:`distributed.Client` or a scheduler
  address such as ``"tcp://10.0.0.5:8786"`` (a real cluster; the Client is created for the
  call and closed after it), or pass ``parallel=True`` (or a number of workers) without a
  client to start a :class:`distributed.LocalCluster` with 2 (or that many) worker
  *processes* of one thread each for the duration of the call. The cluster is closed when
  the call returns, also on error. Starting it costs a few seconds, so for repeated calls
  create one with :func:`local_cluster` and pass its client.

``func`` and the blocks are pickled to the workers: ``func`` must be importable there
(a module-level function, not a lambda defined in a notebook cell that workers cannot see;
cloudpickle handles functions defined in ``__main__``).
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .control import STATUS_CANCELLED, STATUS_COMPLETE, check_event, is_cancelled, progress_bar

__all__ = ["get_client", "local_cluster", "map_blocks", "split_blocks"]

_DEFAULT_WORKERS = 2


# ----------------------------------------------------------------------------- clusters
def get_client(address=None):
    """Return a dask.distributed Client.

    Parameters
    ----------
    address : Client, str or None
        A Client is returned as is; a scheduler address string (``"tcp://host:8786"``) connects
        a new Client to that scheduler; ``None`` returns the current default client (the
        last one created in this process).

    Raises
    ------
    ValueError
        If ``address`` is None and no client exists, or of an unsupported type.
    """
    from distributed import Client, default_client

    if isinstance(address, Client):
        return address
    if address is None:
        try:
            return default_client()
        except ValueError:
            raise ValueError(
                "get_client: no dask.distributed Client exists in this process; pass a "
                "scheduler address, or start one with ptynb.parallel.local_cluster()"
            ) from None
    if isinstance(address, str):
        return Client(address)
    raise ValueError(
        f"client must be a distributed.Client, a scheduler address string or None, "
        f"got {type(address).__name__}"
    )


@contextlib.contextmanager
def local_cluster(n_workers: int = _DEFAULT_WORKERS, threads_per_worker: int = 1,
                  processes: bool = True, **kwargs) -> Iterator[Any]:
    """Start a :class:`distributed.LocalCluster` and yield a Client to it; close both at exit.

    Parameters
    ----------
    n_workers : int
        Worker processes (default 2).
    threads_per_worker : int
        Threads per worker (default 1). The workers' CPU FFTs use this many threads
        (``PTYNB_FFT_WORKERS`` and ``OMP_NUM_THREADS`` are set in the workers' environment)
        so that workers do not oversubscribe the cores.
    processes : bool
        Worker processes (True, default) or threads in this process.
    **kwargs
        Passed to LocalCluster. Defaults: ``dashboard_address=None`` (no dashboard, so no port
        clashes), ``silence_logs=logging.ERROR``.

    Yields
    ------
    distributed.Client
    """
    from distributed import Client, LocalCluster

    if int(n_workers) < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers!r}")
    kwargs.setdefault("dashboard_address", None)
    kwargs.setdefault("silence_logs", logging.ERROR)
    if processes:
        env = {"PTYNB_FFT_WORKERS": str(threads_per_worker),
               "OMP_NUM_THREADS": str(threads_per_worker)}
        env.update(kwargs.pop("env", {}) or {})
        kwargs["env"] = env
    cluster = LocalCluster(n_workers=int(n_workers), threads_per_worker=int(threads_per_worker),
                           processes=processes, **kwargs)
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


# ----------------------------------------------------------------------------- splitting
def _split_dims(obj, dims: Sequence[str]) -> list[str]:
    if isinstance(dims, str):
        dims = (dims,)
    present = [d for d in obj.dims if d in tuple(dims)]  # keep the dataset's own order
    return present


def split_blocks(dataset, dims: Sequence[str] = ("beam", "angle")):
    """Split ``dataset`` along those of ``dims`` it has.

    Returns
    -------
    split : list of str
        The dims split along, in the dataset's order.
    blocks : list of (tuple of int, Dataset)
        One entry per combination of indices along ``split``; each block has the split dims
        dropped (their coordinate values remain as scalar coords).
    """
    split = _split_dims(dataset, dims)
    sizes = [dataset.sizes[d] for d in split]
    blocks = []
    for idx in itertools.product(*(range(n) for n in sizes)):
        blocks.append((idx, dataset.isel(dict(zip(split, idx)))))
    return split, blocks


def _label(dataset, split, idx) -> str:
    parts = []
    for d, i in zip(split, idx):
        val = dataset[d].values[i] if d in dataset.coords else i
        if isinstance(val, np.generic):
            val = val.item()
        parts.append(f"{d}={val!r} (index {i})")
    return ", ".join(parts)


def _split_coords(dataset, split):
    """Coords of ``dataset`` whose dims are all split dims (index and auxiliary)."""
    return {name: c for name, c in dataset.coords.items()
            if c.dims and set(c.dims) <= set(split)}


def _restore(result, dataset, split, idx, coords):
    if not isinstance(result, (xr.Dataset, xr.DataArray)):
        raise TypeError(
            f"map_blocks: func must return an xarray Dataset or DataArray, got "
            f"{type(result).__name__} for {_label(dataset, split, idx)}"
        )
    bad = [d for d in split if d in result.dims]
    if bad:
        raise ValueError(
            f"map_blocks: func returned a result with dim(s) {bad} for "
            f"{_label(dataset, split, idx)}; the block had them removed"
        )
    drop = [n for n in coords if n in result.coords and result.coords[n].ndim == 0]
    result = result.drop_vars(drop)
    result = result.expand_dims({d: 1 for d in split})
    sel = dict(zip(split, idx))
    new = {}
    for name, c in coords.items():
        vals = c.isel({d: [sel[d]] for d in c.dims})
        new[name] = (c.dims, vals.values, c.attrs)
    return result.assign_coords(new)


def _nest(items: dict, shape, prefix=()):
    if len(prefix) == len(shape):
        return items[prefix]
    return [_nest(items, shape, prefix + (i,)) for i in range(shape[len(prefix)])]


def _rename_error(e: BaseException, where: str) -> BaseException:
    msg = f"{where}: {e}"
    try:
        new = copy.copy(e)
        new.args = (msg,) + tuple(e.args[1:]) if e.args else (msg,)
        if str(new) != msg and where not in str(new):
            raise TypeError  # exception with a custom __str__: fall back to a note
        new.__cause__ = e.__cause__
        return new.with_traceback(e.__traceback__)
    except Exception:
        e.add_note(where)
        return e


def _call(func, block, kwargs):
    return func(block, **kwargs)


# ----------------------------------------------------------------------------- map
def map_blocks(func: Callable, dataset, dims: Sequence[str] = ("beam", "angle"), *,
               client=None, parallel=None, progress: bool = True, join: str = "exact",
               cancel=None, pad: Sequence[str] = (), **kwargs):
    """Apply ``func`` to every ``beam``/``angle`` block of ``dataset`` and recombine.

    Parameters
    ----------
    func : callable ``func(block, **kwargs) -> Dataset | DataArray``
        Called once per block. The block is ``dataset`` at one index of each split dim,
        with those dims dropped (their coordinate values kept as scalar coords). The result
        must not have the split dims.
    dataset : xarray.Dataset or DataArray
        Input with (some of) ``dims`` as leading dims, e.g. a measurement
        (beam, angle, scan, qy, qx). Without any of ``dims``, ``func(dataset, **kwargs)`` is
        returned unchanged.
    dims : sequence of str
        Dims to split along (default ``("beam", "angle")``); those absent are ignored.
    client : distributed.Client or str, optional
        Run the blocks on this cluster (a Client or a scheduler address).
    parallel : bool or int, optional
        Falsy: run serially (unless ``client`` is given and ``parallel`` is None). True: use
        ``client`` or, without one, a LocalCluster of 2 single-threaded worker processes
        started and closed by this call; an int > 1 sets the number of local workers.
    progress : bool
        Show a tqdm progress bar over the blocks.
    join : {"exact", "outer", "inner", "override"}
        How to align the blocks' other coordinates when stacking (xarray's ``join``).
        ``"exact"`` (default) raises a ValueError if, e.g., the ``y``/``x`` grids of the
        blocks differ, instead of padding with NaN; ``"outer"`` pads (e.g. cost histories
        of different lengths).
    cancel : threading.Event, optional
        The :mod:`ptynb.control` convention: when set, serially no further block is started
        (the first block always runs, so the result has its structure); on a cluster every
        block not finished yet is cancelled. The blocks not run come back NaN-filled, the
        data variable ``block_status`` (split dims) says ``"complete"``, ``"cancelled"``
        (the block's own ``status`` attr) or ``"not run"`` for each block, and the result's
        attrs say ``status="cancelled"``. ``func`` does not receive the event: pass it in
        ``kwargs`` under another name if ``func`` should stop early too.
    pad : sequence of str
        Dims along which the blocks' results may differ in length (e.g. ``("iteration",)``
        for cost histories of cancelled runs): padded with NaN to the longest (their
        coordinate values are the union). Other mismatches still follow ``join``.
    **kwargs
        Passed to ``func``.

    Returns
    -------
    Dataset or DataArray
        The results concatenated along the split dims (first, in the dataset's order) with
        every coordinate along them restored (e.g. ``angle`` in degrees, ``beam`` labels and
        ``beam_tilt``). Attrs that agree across blocks are kept; ``status`` is
        ``"complete"`` only when every block has completed (blocks without a ``status``
        attr count as complete), else ``"cancelled"``, and ``block_status`` is added.

    Raises
    ------
    Exception
        An exception raised by ``func`` is re-raised with its type kept and the failing block
        named in the message (e.g. ``"angle=30.0 (index 1): ..."``).
    """
    if not callable(func):
        raise TypeError(f"map_blocks: func must be callable, got {type(func).__name__}")
    if not isinstance(dataset, (xr.Dataset, xr.DataArray)):
        raise TypeError(
            f"map_blocks: dataset must be an xarray Dataset or DataArray, got "
            f"{type(dataset).__name__}"
        )
    split, blocks = split_blocks(dataset, dims)
    if not split:
        return func(dataset, **kwargs)
    coords = _split_coords(dataset, split)
    shape = tuple(dataset.sizes[d] for d in split)

    check_event(cancel)
    use_cluster = bool(parallel) or (parallel is None and client is not None)
    if not use_cluster:
        results = _run_serial(func, dataset, split, blocks, kwargs, progress, cancel)
    else:
        n_workers = _DEFAULT_WORKERS
        if (not isinstance(parallel, bool) and isinstance(parallel, (int, np.integer))
                and parallel > 1):
            n_workers = int(parallel)
        if client is None:
            with local_cluster(n_workers=n_workers) as c:
                results = _run_dask(c, func, dataset, split, blocks, kwargs, progress, cancel)
        elif isinstance(client, str):
            from distributed import Client

            with Client(client) as c:
                results = _run_dask(c, func, dataset, split, blocks, kwargs, progress, cancel)
        else:
            results = _run_dask(get_client(client), func, dataset, split, blocks, kwargs,
                                progress, cancel)

    restored = {idx: _restore(res, dataset, split, idx, coords) for idx, res in results.items()}
    status = {idx: str(res.attrs.get("status", STATUS_COMPLETE)) for idx, res in restored.items()}
    missing = [idx for idx, _ in blocks if idx not in restored]
    if missing:
        template = next(iter(restored.values()))
        for idx in missing:
            restored[idx] = _not_run(template, split, idx, coords)
            status[idx] = NOT_RUN
    if pad:
        restored = _pad(restored, pad)
    nested = _nest(restored, shape)
    try:
        out = xr.combine_nested(nested, concat_dim=list(split), combine_attrs="drop_conflicts",
                                coords="minimal", compat="override", join=join,
                                data_vars="all")
    except ValueError as e:
        if join != "exact":
            raise
        raise ValueError(
            f"map_blocks: the results of the blocks have different coordinates and cannot be "
            f"stacked along {split} without padding ({e}). Make the blocks share their grids "
            f"(e.g. one object frame for every angle) or pass join='outer' to pad with NaN."
        ) from None
    if any(v != STATUS_COMPLETE for v in status.values()):
        out.attrs["status"] = STATUS_CANCELLED
        flags = np.array(_nest(status, shape), dtype=object).astype(str)
        bs = xr.DataArray(flags, dims=split, attrs={
            "long_name": "status of each block (complete, cancelled or not run)"})
        if isinstance(out, xr.Dataset):
            out["block_status"] = bs
        else:
            out = out.assign_coords(block_status=bs)
    return out


#: ``block_status`` of a block that was never started (cancelled before it)
NOT_RUN = "not run"


def _not_run(template, split, idx, coords):
    """A NaN-filled stand-in for a block that never ran (shaped like ``template``)."""
    def nan_like(da):
        if np.issubdtype(da.dtype, np.complexfloating) or np.issubdtype(da.dtype, np.floating):
            return xr.full_like(da, np.nan)
        if np.issubdtype(da.dtype, np.number) or da.dtype == bool:
            return xr.full_like(da, np.nan, dtype=np.float64)
        return da

    res = template.map(nan_like, keep_attrs=True) if isinstance(template, xr.Dataset) \
        else nan_like(template)
    res.attrs = {**template.attrs, "status": NOT_RUN}
    sel = dict(zip(split, idx))
    new = {name: (c.dims, c.isel({d: [sel[d]] for d in c.dims}).values, c.attrs)
           for name, c in coords.items()}
    return res.assign_coords(new)


def _pad(restored: dict, dims: Sequence[str]) -> dict:
    """Pad every result with NaN along ``dims`` to the longest (union of coordinate values)."""
    out = dict(restored)
    for d in dims:
        have = [r for r in out.values() if d in r.dims]
        if not have or len({r.sizes[d] for r in have}) == 1:
            continue
        if all(d in r.coords for r in have):
            union = np.unique(np.concatenate([r[d].values for r in have]))
            out = {k: (r.reindex({d: union}) if d in r.dims else r) for k, r in out.items()}
        else:
            n = max(r.sizes[d] for r in have)
            out = {k: (r.pad({d: (0, n - r.sizes[d])}) if d in r.dims else r)
                   for k, r in out.items()}
    return out


def _run_serial(func, dataset, split, blocks, kwargs, progress, cancel=None):
    bar = progress_bar(len(blocks), progress, "blocks")
    out = {}
    try:
        for idx, block in blocks:
            if out and is_cancelled(cancel):
                break
            try:
                out[idx] = func(block, **kwargs)
            except Exception as e:
                raise _rename_error(e, _label(dataset, split, idx)) from e.__cause__
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


def _run_dask(client, func, dataset, split, blocks, kwargs, progress, cancel=None):
    from distributed import TimeoutError as dask_timeout
    from distributed import wait

    token = uuid.uuid4().hex[:12]
    name = getattr(func, "__name__", "func")
    futures = {}
    for idx, block in blocks:
        key = f"ptynb-{name}-{token}-" + "-".join(map(str, idx))
        # scatter the block first: large arrays travel as data, not inside the task graph
        data = client.scatter(block, hash=False)
        futures[client.submit(_call, func, data, kwargs, key=key, pure=False)] = idx
    n_workers = len(client.scheduler_info().get("workers", {}))
    bar = progress_bar(len(futures), progress, f"blocks on {n_workers} workers")
    out = {}
    pending = set(futures)
    try:
        while pending:
            # poll: a set cancel event is seen within _POLL_S even while blocks run
            try:
                done, pending = wait(pending, timeout=None if cancel is None else _POLL_S,
                                     return_when="FIRST_COMPLETED")
            except (TimeoutError, dask_timeout):
                done = set()
            for fut in done:
                idx = futures[fut]
                try:
                    out[idx] = fut.result()
                except Exception as e:
                    for other in futures:
                        if not other.done():
                            other.cancel()
                    raise _rename_error(e, _label(dataset, split, idx)) from None
                if bar is not None:
                    bar.update(1)
            if pending and is_cancelled(cancel) and out:
                for fut in pending:
                    fut.cancel()
                break
    finally:
        if bar is not None:
            bar.close()
        for f in futures:
            f.release()
    return out


#: seconds between checks of the cancel event while cluster blocks run
_POLL_S = 0.1
