"""PaFi: train one task-agnostic sparse mask, the smallest-magnitude weights of version 0.

Every party derives the same mask from version 0, so uploads carry the values
on the mask and no indices. Gradients outside the mask are zeroed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedelta.common.config import require
from fedelta.common.delta import BaseMask, Entry
from fedelta.common.methods.registry import (
    METHODS, Attachment, FineTuningMethod, MethodContext, Params, Resolver, parameters_of, targeted_matrices,
)


def smallest_positions(weight: torch.Tensor, density: float) -> torch.Tensor:
    """Flat indices (ascending) of the ``round(density * numel)`` smallest nonzero |weight|, ties by index.

    Exact zeros (a sparse base's pruned weights, which stay zero) rank last.
    """
    flat = weight.detach().reshape(-1).abs()
    flat = flat.masked_fill(flat == 0, float("inf"))
    k = max(1, round(density * flat.numel()))
    order = torch.sort(flat, stable=True).indices
    return order[:k].sort().values


@dataclass(frozen=True)
class PaFiOptions:
    """``pafi.density``: the fraction of each weight matrix trained (its smallest |weights| in version 0)."""

    density: float = 0.005

    def __post_init__(self) -> None:
        require(0 < self.density <= 1, "pafi.density", "must be in (0, 1]")


class PaFi(FineTuningMethod):
    options_type = PaFiOptions

    def spec(self, context: MethodContext) -> str:
        return f"pafi:{self.options(context).density:g}"

    def matrices(self, params: Params, context: MethodContext) -> list[str]:
        return targeted_matrices(params, context, "pafi")

    def touched(self, model: torch.nn.Module, context: MethodContext) -> list[str]:
        return sorted(set(self.matrices(parameters_of(model), context)) | set(context.head))

    def masks(self, params: Params, context: MethodContext) -> dict[str, torch.Tensor]:
        """The mask of every trained matrix, computed once per version 0 and density."""
        names = self.matrices(params, context)
        density = self.options(context).density

        def compute() -> dict[str, torch.Tensor]:
            genesis = context.genesis_params()
            return {name: smallest_positions(genesis[name], density) for name in names}

        return context.memo(f"{self.spec(context)}-{context.genesis_sha}", compute)

    def attach(self, model: torch.nn.Module, context: MethodContext) -> Attachment:
        params = dict(model.named_parameters())
        masks = self.masks(params, context)
        trainable = []
        for name, param in params.items():
            param.requires_grad_(name in masks or name in context.head)
            if param.requires_grad:
                trainable.append(param)
        start = {name: params[name].detach().reshape(-1)[positions].clone() for name, positions in masks.items()}
        for name, positions in masks.items():
            keep = torch.zeros(params[name].numel(), dtype=torch.bool)
            keep[positions] = True
            params[name].register_hook(lambda grad, keep=keep.reshape(params[name].shape): grad * keep.to(grad.device))
        spec = self.spec(context)

        def formed() -> dict[str, Entry]:
            return {
                name: BaseMask(tuple(params[name].shape), spec, params[name].detach().reshape(-1)[positions] - start[name])
                for name, positions in masks.items()
            }

        return Attachment(trainable=trainable, touched=self.touched(model, context), formed=formed)

    def resolver(self, context: MethodContext, base: Params) -> Resolver:
        return Resolver(masks={self.spec(context): self.masks(base, context)})


METHODS.register(
    "pafi",
    summary="train a fixed sparse mask: the pafi.density smallest |weights| of version 0; no indices sent",
    reference="Liao, Meng, Monz 2023, Parameter-Efficient Fine-Tuning without Introducing New Latency (PaFi)",
)(PaFi())
