"""SVFit: train only the top-r singular values of each targeted weight matrix.

For W = U S Vh (computed in fp64 from the current base, the same way by every
party), the trained weight is W + U_r diag(sigma - s_r) Vh_r with W frozen, so
W_res = W - U_r diag(s_r) Vh_r stays fixed. Uploads carry sigma - s_r only;
every party expands them with its own U_r, Vh_r of the same base version.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils import parametrize

from fedelta.common.config import require
from fedelta.common.delta import Entry, SingularOffsets
from fedelta.common.methods.registry import (
    METHODS, Attachment, FineTuningMethod, MethodContext, Params, Resolver, parameters_of,
    singular_update, targeted_matrices,
)



@dataclass(frozen=True)
class SVFitOptions:
    """``svfit.rank``: how many top singular values of each matrix train."""

    rank: int = 64

    def __post_init__(self) -> None:
        require(self.rank >= 1, "svfit.rank", "must be >= 1")


def top_singular(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U_r, s_r, Vh_r) in fp32 from a deterministic fp64 SVD."""
    u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
    r = min(rank, s.numel())
    return u[:, :r].to(torch.float32), s[:r].to(torch.float32), vh[:r].to(torch.float32)


class SingularValueShift(torch.nn.Module):
    """``W -> W + U diag(sigma - s) Vh`` with sigma trainable (starts at s, so W' = W at first)."""

    def __init__(self, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("u", u)
        self.register_buffer("s", s)
        self.register_buffer("vh", vh)
        self.sigma = torch.nn.Parameter(s.clone())

    def offsets(self) -> torch.Tensor:
        return self.sigma - self.s

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + singular_update(self.u, self.offsets(), self.vh)


class SVFit(FineTuningMethod):
    options_type = SVFitOptions

    def targets(self, params: Params, context: MethodContext) -> list[str]:
        return targeted_matrices(params, context, "svfit")

    def touched(self, model: torch.nn.Module, context: MethodContext) -> list[str]:
        return sorted(set(self.targets(parameters_of(model), context)) | set(context.head))

    def attach(self, model: torch.nn.Module, context: MethodContext) -> Attachment:
        params = parameters_of(model)
        targets, touched = self.targets(params, context), self.touched(model, context)
        rank = self.options(context).rank
        for param in model.parameters():
            param.requires_grad_(False)
        shifts: dict[str, tuple[torch.nn.Module, str, SingularValueShift]] = {}
        for name in targets:
            module_name, _, tensor_name = name.rpartition(".")
            module = model.get_submodule(module_name)
            shift = SingularValueShift(*top_singular(params[name], rank))
            parametrize.register_parametrization(module, tensor_name, shift)
            shifts[name] = (module, tensor_name, shift)
        head = [param for name, param in model.named_parameters() if name in set(context.head)]
        for param in head:
            param.requires_grad_(True)

        def formed() -> dict[str, Entry]:
            return {name: SingularOffsets(tuple(params[name].shape), shift.offsets().detach().clone())
                    for name, (_, _, shift) in shifts.items()}

        def merge() -> None:
            for module, tensor_name, _ in shifts.values():
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)

        trainable = [shift.sigma for _, _, shift in shifts.values()] + head
        return Attachment(trainable=trainable, touched=touched, formed=formed, merge=merge)

    def resolver(self, context: MethodContext, base: Params) -> Resolver:
        rank = self.options(context).rank
        bases = {}
        for name in self.targets(base, context):
            u, _, vh = top_singular(base[name], rank)
            bases[name] = (u, vh)
        return Resolver(bases=bases)


METHODS.register(
    "svfit",
    summary="train only the top svfit.rank singular values of each weight matrix; sends that many offsets "
    "per matrix",
    reference="Sun et al. 2024, SVFit: Parameter-Efficient Fine-Tuning of Large Pre-Trained Models Using Singular Values",
)(SVFit())
