"""DARE: drop each entry with probability p on a seeded mask and rescale the rest by 1/(1-p)."""


import torch

from common.delta import Entry, SeededMask, seeded_mask
from common.pruning.registry import PRUNERS, PruneRequest


@PRUNERS.register(
    "dare",
    summary="random drop on a seeded mask, kept values rescaled by 1/(1-p); no indices sent",
    reference="Yu et al. 2024, Language Models are Super Mario (DARE), arXiv:2311.03099",
)
def dare(name: str, delta: torch.Tensor, request: PruneRequest) -> Entry:
    mask = seeded_mask(request.seed, name, delta.numel(), request.keep)
    positions = mask.nonzero().reshape(-1)
    values = delta.reshape(-1)[positions] / request.keep
    return SeededMask(tuple(delta.shape), name, request.seed, request.keep, values, positions)
