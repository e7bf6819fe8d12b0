"""FedAvg: the weighted mean of the sites' deltas, accumulated one delta at a time."""

from __future__ import annotations

import numpy as np

from fedelta.common.config import AggregateSettings
from fedelta.common.delta import Delta, add_entry
from fedelta.common.aggregation.registry import AGGREGATORS, Accumulator, Aggregator, check_weight


class WeightedMean(Accumulator):
    """Σ wₖ δₖ / Σ wₖ, accumulated one delta at a time."""

    def __init__(self) -> None:
        super().__init__()
        self._weight = 0.0

    def add(self, delta: Delta, weight: float, key: str = "") -> None:
        check_weight(weight)
        for name, entry in delta.entries.items():
            add_entry(self._state_for(name, entry.shape), entry, weight)
        self._weight += weight
        self._count += 1

    def result(self) -> Delta:
        if np.float32(self._weight) == 1.0:
            # torch divides fp32 by the weight rounded to fp32, here 1: every value would stay as it is, so the
            # pass over the whole model is skipped (the server scales the weights to sum to 1).
            return self._merged(lambda total: total)
        return self._merged(lambda total: total.div_(self._weight))


@AGGREGATORS.register(
    "fedavg",
    summary="weighted mean of the sites' deltas by training examples (task arithmetic)",
    reference="McMahan et al. 2017, FedAvg; Ilharco et al. 2023, Task Arithmetic",
)
def fedavg(settings: AggregateSettings, seed: int) -> Aggregator:
    return WeightedMean()
