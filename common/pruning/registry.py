"""The pruner registry and the loop that prunes every tensor of a delta."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from common.delta import Delta, Dense, Entry
from common.registry import Registry


@dataclass(frozen=True)
class PruneRequest:
    """What a pruner needs besides the tensor: the fraction to keep and a seed."""

    keep: float
    seed: int


Pruner = Callable[[str, torch.Tensor, PruneRequest], Entry]
PRUNERS: Registry[Pruner] = Registry("pruner")


def prune_delta(
    dense: Mapping[str, torch.Tensor], pruner: str, request: PruneRequest, min_size: int = 0
) -> Delta:
    """Prune each tensor with ``pruner``; tensors under ``min_size`` elements stay dense."""
    prune = PRUNERS.get(pruner)
    entries: dict[str, Entry] = {}
    for name in sorted(dense):
        tensor = dense[name]
        entries[name] = Dense(tensor) if tensor.numel() < min_size else prune(name, tensor, request)
    return Delta(entries)
