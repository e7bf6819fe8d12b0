"""Magnitude pruning: keep the k largest |delta| entries of each tensor, with explicit indices."""

import torch

from common.delta import Entry, Sparse
from common.pruning.registry import PRUNERS, PruneRequest


def kept_count(numel: int, keep: float) -> int:
    """k = round(keep * numel), at least 1 for a non-empty tensor."""
    return min(numel, max(1, round(keep * numel))) if numel else 0


@PRUNERS.register(
    "magnitude",
    summary="keep the top-k |delta| entries per tensor; sends indices",
    reference="Han et al. 2015, Learning both Weights and Connections; DARE paper baseline",
)
def magnitude(name: str, delta: torch.Tensor, request: PruneRequest) -> Entry:
    flat = delta.reshape(-1)
    k = kept_count(flat.numel(), request.keep)
    indices = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
    return Sparse(tuple(delta.shape), indices, flat[indices].clone())
