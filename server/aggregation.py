"""Streaming aggregation of decoded deltas into one accumulator, and the aggregator registry.

An aggregator receives decoded deltas one at a time with their weights and
holds only one fp32 tensor per parameter that some delta touched; the merged
delta is produced once at the end. A position a site did not send counts as
zero for that site (unbiased under DARE's rescale).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from common.delta import Delta, add_entry, compact
from common.registry import Registry


class Aggregator(Protocol):
    def add(self, delta: Delta, weight: float) -> None: ...

    def result(self) -> Delta: ...

    @property
    def count(self) -> int: ...


class WeightedMean:
    """Σ wₖ δₖ / Σ wₖ, accumulated one delta at a time."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._weight = 0.0
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def add(self, delta: Delta, weight: float) -> None:
        if weight <= 0:
            raise ValueError(f"aggregation weight must be > 0, got {weight}")
        for name, entry in delta.entries.items():
            total = self._sums.get(name)
            if total is None:
                total = self._sums[name] = torch.zeros(entry.shape, dtype=torch.float32)
            add_entry(total, entry, weight)
        self._weight += weight
        self._count += 1

    def result(self) -> Delta:
        if not self._count:
            raise ValueError("no delta was added")
        return Delta({name: compact(total / self._weight) for name, total in sorted(self._sums.items())})


AGGREGATORS: Registry[Callable[[], Aggregator]] = Registry("aggregator")
AGGREGATORS.register(
    "fedavg",
    summary="weighted mean of the sites' deltas by training examples (task arithmetic)",
    reference="McMahan et al. 2017, FedAvg; Ilharco et al. 2023, Task Arithmetic",
)(WeightedMean)
