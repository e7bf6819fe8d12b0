"""Magnitude pruning: keep the k largest |delta| entries of each tensor, with explicit indices."""

import torch

from fedelta.common.delta import Entry, Sparse, kept_count
from fedelta.common.pruning.registry import PruneRequest, pruner


def top_k(delta: torch.Tensor, score: torch.Tensor, keep: float) -> Sparse:
    """The entries of ``delta`` with the k largest ``score`` (same shape), k = :func:`kept_count`."""
    flat = delta.reshape(-1)
    k = kept_count(flat.numel(), keep)
    indices = torch.topk(score.reshape(-1), k, sorted=False).indices.sort().values
    return Sparse(tuple(delta.shape), indices, flat[indices].clone())


@pruner(
    "magnitude",
    summary="keep the top-k |delta| entries per tensor; sends indices",
    reference="Han et al. 2015, Learning both Weights and Connections; DARE paper baseline",
)
def magnitude(name: str, delta: torch.Tensor, request: PruneRequest) -> Entry:
    return top_k(delta, delta.abs(), request.keep)
