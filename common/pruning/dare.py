"""DARE: drop each entry with probability p on a seeded mask and rescale the rest by 1/(1-p)."""


import torch

from fedelta.common.delta import Entry, SeededMask, seeded_positions
from fedelta.common.pruning.registry import PruneRequest, pruner


def dare_positions(name: str, delta: torch.Tensor, request: PruneRequest) -> torch.Tensor:
    """Flat positions DARE keeps for tensor ``name``: a seeded random keep-fraction of them."""
    return seeded_positions(request.seed, name, delta.numel(), request.keep)


def rescaled(name: str, delta: torch.Tensor, request: PruneRequest, positions: torch.Tensor, q: float) -> SeededMask:
    """The kept values divided by ``q`` on DARE's seeded mask."""
    values = delta.reshape(-1)[positions] / q
    return SeededMask(tuple(delta.shape), name, request.seed, request.keep, values, positions)


@pruner(
    "dare",
    summary="random drop on a seeded mask, kept values rescaled by 1/(1-p); no indices sent",
    reference="Yu et al. 2024, Language Models are Super Mario (DARE), arXiv:2311.03099",
    rescales=True,
)
def dare(name: str, delta: torch.Tensor, request: PruneRequest) -> Entry:
    return rescaled(name, delta, request, dare_positions(name, delta, request), request.keep)
