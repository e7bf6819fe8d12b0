"""The identity pruner: every value is sent."""

import torch

from fedelta.common.delta import Dense, Entry
from fedelta.common.pruning.registry import PruneRequest, pruner


@pruner("none", summary="send every value of the delta (no pruning)", reference="-", drops=False)
def keep_all(name: str, delta: torch.Tensor, request: PruneRequest) -> Entry:
    return Dense(delta)
