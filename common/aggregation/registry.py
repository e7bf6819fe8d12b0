"""The aggregator registry and what every aggregator shares: a per-tensor state built one delta at a time."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch

from fedelta.common.aggregation.arena import Arena
from fedelta.common.config import AggregateSettings
from fedelta.common.delta import Delta, Dense
from fedelta.common.registry import Registry


class Aggregator(Protocol):
    def add(self, delta: Delta, weight: float, key: str = "") -> None:
        """Fold in one site's delta; ``key`` (round and site) seeds any randomness."""

    def result(self) -> Delta:
        """The merged delta; the aggregator is spent afterwards."""

    @property
    def count(self) -> int: ...


def check_weight(weight: float) -> None:
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"aggregation weight must be finite and > 0, got {weight}")


class Accumulator:
    """Per-tensor state built one delta at a time, turned into the merged delta once, in place."""

    def __init__(self) -> None:
        self._state: dict[str, torch.Tensor] = {}
        self._arena = Arena()
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def _state_for(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in self._state:
            self._state[name] = self._arena.zeros(shape)
        return self._state[name]

    def _merged(self, finish: Callable[[torch.Tensor], torch.Tensor]) -> Delta:
        """Each tensor's state through ``finish`` (which may reuse it) as a dense entry: the state itself, not a
        copy, so forming the result needs no memory beyond the states (the codec decides how it travels)."""
        if not self._count:
            raise ValueError("no delta was added")
        self._arena = Arena()  # the states' memory goes with them
        # In the order they were carved: where finishing copies a state, each mapping goes once its states are done.
        finished = {name: Dense(finish(self._state.pop(name))) for name in list(self._state)}
        return Delta(dict(sorted(finished.items())))


AggregatorFactory = Callable[[AggregateSettings, int], Aggregator]
AGGREGATORS: Registry[AggregatorFactory] = Registry("aggregator")


def make_aggregator(settings: AggregateSettings, seed: int) -> Aggregator:
    """A fresh aggregator for one round, as ``aggregate.name`` chooses."""
    return AGGREGATORS.get(settings.name)(settings, seed)

