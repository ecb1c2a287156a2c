"""Mutable reconstruction state: every variable an engine changes, and its (de)serialisation.

A :class:`State` holds the object, the probe modes, the (refined) positions, the random
generator, momentum buffers, the iteration counter and the cost history. ``to_arrays`` /
``from_arrays`` turn it into plain host arrays plus a JSON-able dict for checkpoints, so a run
resumed from a checkpoint continues bit-for-bit like an uninterrupted one (on the CPU).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend import to_host

__all__ = ["State"]


@dataclass
class State:
    """Variables of one reconstruction.

    Attributes
    ----------
    object : complex64 (L, Y, X), on the compute device
    probe : complex64 (M, n, n), on the compute device
    positions : float64 (J, 2), host
        Window top-left corners in object pixels (row, column).
    rng : numpy.random.Generator
        Drives pattern orders and batches.
    iteration : int
        Iterations completed.
    cost : list of float
        Normalised misfit per completed iteration.
    momentum : dict of str -> array
        Momentum buffers (``"object"``, ``"probe"``) on the device, if momentum is used.
    refining : bool
        Position refinement active in the current iteration.
    """

    object: Any
    probe: Any
    positions: np.ndarray
    rng: np.random.Generator
    iteration: int = 0
    cost: list = field(default_factory=list)
    momentum: dict = field(default_factory=dict)
    refining: bool = False

    def copy(self) -> State:
        """A deep copy (arrays copied on their device; RNG state duplicated)."""
        rng = np.random.Generator(type(self.rng.bit_generator)())
        rng.bit_generator.state = self.rng.bit_generator.state
        return State(self.object.copy(), self.probe.copy(), self.positions.copy(), rng,
                     self.iteration, list(self.cost),
                     {k: v.copy() for k, v in self.momentum.items()}, self.refining)

    def to_arrays(self) -> tuple[dict, dict]:
        """Host arrays and JSON-able meta for a checkpoint."""
        arrays = {
            "object": to_host(self.object),
            "probe": to_host(self.probe),
            "positions": np.asarray(self.positions),
            "cost": np.asarray(self.cost, dtype=np.float64),
        }
        for k, v in self.momentum.items():
            arrays["momentum_" + k] = to_host(v)
        meta = {
            "iteration": int(self.iteration),
            "rng_state": self.rng.bit_generator.state,
            "rng_type": type(self.rng.bit_generator).__name__,
            "momentum_keys": sorted(self.momentum),
        }
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict, meta: dict, xp=np) -> State:
        """Rebuild a state written by :meth:`to_arrays` (arrays moved to ``xp``'s device)."""
        bitgen = getattr(np.random, meta.get("rng_type", "PCG64"))()
        rng = np.random.Generator(bitgen)
        rng.bit_generator.state = meta["rng_state"]
        mom = {k: xp.asarray(arrays["momentum_" + k]) for k in meta.get("momentum_keys", [])}
        return cls(xp.asarray(arrays["object"]), xp.asarray(arrays["probe"]),
                   np.array(arrays["positions"], dtype=np.float64), rng,
                   int(meta["iteration"]), [float(c) for c in np.asarray(arrays["cost"])], mom)
