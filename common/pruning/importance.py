"""Importance pruning: keep the top-k of |delta_ij| * ||x_j||_2 over a calibration batch (WANDA-like)."""

import torch

from fedelta.common.delta import Entry
from fedelta.common.pruning.magnitude import top_k
from fedelta.common.pruning.registry import PruneRequest, pruner


@pruner(
    "importance",
    summary="keep the top-k |delta_ij| * ||x_j|| (input norms from a calibration batch); sends indices; "
    "tensors without captured inputs (embeddings, norms, biases) fall back to magnitude",
    reference="Sun et al. 2024, A Simple and Effective Pruning Approach for LLMs (Wanda); "
    "Deng et al. 2024, DARE the Extreme, arXiv:2410.09344",
    needs_inputs=True,
)
def importance(name: str, delta: torch.Tensor, request: PruneRequest) -> Entry:
    inputs = request.inputs_for(name, delta)
    if inputs is None:
        return top_k(delta, delta.abs(), request.keep)
    column_norms = inputs.to(torch.float32).norm(dim=0)
    return top_k(delta, delta.abs() * column_norms, request.keep)
