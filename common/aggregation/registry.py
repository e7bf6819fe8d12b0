"""The aggregator registry and what every aggregator shares: a per-tensor state built one delta at a time."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

import torch

from fedelta.common.config import AggregateSettings
from fedelta.common.delta import Delta, Dense, Entry, Sparse, add_entry
from fedelta.common.registry import Registry

SPARSE_BYTES_PER_VALUE = 12  # an int64 index and an fp32 value
DENSE_BYTES_PER_VALUE = 4


class Aggregator(Protocol):
    def add(self, delta: Delta, weight: float, key: str = "") -> None:
        """Fold in one site's delta; ``key`` (round and site) seeds any randomness."""

    def result(self) -> Delta:
        """The merged delta; the aggregator is spent afterwards."""

    @property
    def count(self) -> int: ...


def lean_entry(dense: torch.Tensor) -> Entry:
    """An fp32 tensor as the entry that takes less memory: explicit indices only when smaller.

    Dense tensors are kept as they are (no copy), so turning accumulators into
    a result never needs more memory than the accumulators themselves.
    """
    flat = dense.reshape(-1)
    if int(torch.count_nonzero(flat)) * SPARSE_BYTES_PER_VALUE >= flat.numel() * DENSE_BYTES_PER_VALUE:
        return Dense(dense)
    nonzero = flat.nonzero().reshape(-1)
    return Sparse(tuple(dense.shape), nonzero, flat[nonzero].clone())


def smallest_first(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names by tensor size, so the largest accumulators are converted last, after the others shrank."""
    return sorted(tensors, key=lambda name: (tensors[name].numel(), name))


def check_weight(weight: float) -> None:
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"aggregation weight must be finite and > 0, got {weight}")


class Accumulator:
    """Per-tensor state built one delta at a time, turned into the merged delta once, in place."""

    def __init__(self) -> None:
        self._state: dict[str, torch.Tensor] = {}
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def _state_for(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in self._state:
            self._state[name] = torch.zeros(shape, dtype=torch.float32)
        return self._state[name]

    def _merged(self, finish: Callable[[torch.Tensor], torch.Tensor]) -> Delta:
        """Each tensor's state through ``finish`` (which may reuse it), releasing the state as it goes."""
        if not self._count:
            raise ValueError("no delta was added")
        entries: dict[str, Entry] = {}
        for name in smallest_first(self._state):
            entries[name] = lean_entry(finish(self._state.pop(name)))
        return Delta(dict(sorted(entries.items())))


AggregatorFactory = Callable[[AggregateSettings, int], Aggregator]
AGGREGATORS: Registry[AggregatorFactory] = Registry("aggregator")


def make_aggregator(settings: AggregateSettings, seed: int) -> Aggregator:
    """A fresh aggregator for one round, as ``aggregate.name`` chooses."""
    return AGGREGATORS.get(settings.name)(settings, seed)

