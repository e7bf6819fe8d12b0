"""Optimizers a site may train with (``optimizer.name``): their registry, AdamR, and building one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fedelta.common.config import LocalSettings, OptimizerSettings
from fedelta.common.registry import Registry


class AdamR(torch.optim.Adam):
    """Adam with decoupled decay toward the starting weights instead of toward zero.

    theta <- theta - lr * m_hat / (sqrt(v_hat) + eps) - lr * lambda * (theta - theta_0),
    where theta_0 are the weights when the optimizer was built (the round's base).
    It keeps the delta small in mean and variance, so it survives heavy pruning
    (DAREx-L2, "DARE the Extreme", Deng et al. 2024).
    """

    def __init__(self, groups: list[dict], lr: float, decay: float, fused: bool | None = None) -> None:
        super().__init__(groups, lr=lr, weight_decay=0.0, fused=fused)
        self.decay = decay
        self.anchors = {param: param.detach().clone() for group in self.param_groups for param in group["params"]}

    @torch.no_grad()
    def anchor_to(self, targets: dict[torch.nn.Parameter, torch.Tensor]) -> None:
        """Decay these parameters toward ``targets`` instead of their values when the optimizer was built."""
        for param, target in targets.items():
            if param not in self.anchors:
                raise KeyError("anchor_to got a parameter this optimizer does not train")
            self.anchors[param] = target.detach().to(param.dtype).clone()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        pulls = [
            (param, group["lr"] * self.decay, param - self.anchors[param])
            for group in self.param_groups
            for param in group["params"]
            if param.grad is not None
        ]
        loss = super().step(closure)
        for param, rate, offset in pulls:
            param.sub_(offset, alpha=rate)
        return loss


Groups = list[dict[str, Any]]
OptimizerFactory = Callable[[Groups, LocalSettings, OptimizerSettings], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")


@OPTIMIZERS.register(
    "adamw",
    summary="Adam with decoupled weight decay toward zero (optimizer.weight-decay)",
    reference="Loshchilov & Hutter 2019, Decoupled Weight Decay Regularization, arXiv:1711.05101",
)
def adamw(groups: Groups, local: LocalSettings, opt: OptimizerSettings) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=local.lr, weight_decay=opt.weight_decay, fused=_can_fuse(groups))


@OPTIMIZERS.register(
    "adamr",
    summary="Adam decaying toward the round's base weights instead of zero (optimizer.lambda), so deltas "
    "survive heavy pruning",
    reference="Deng et al. 2024, DARE the Extreme (DAREx-L2), arXiv:2410.09344",
)
def adamr(groups: Groups, local: LocalSettings, opt: OptimizerSettings) -> torch.optim.Optimizer:
    return AdamR(groups, lr=local.lr, decay=opt.lambda_, fused=_can_fuse(groups))


@OPTIMIZERS.register(
    "sgd",
    summary="plain stochastic gradient descent (optimizer.weight-decay as L2)",
    reference="Robbins & Monro 1951, A Stochastic Approximation Method",
)
def sgd(groups: Groups, local: LocalSettings, opt: OptimizerSettings) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=local.lr, weight_decay=opt.weight_decay)


def make_optimizer(
    model: torch.nn.Module,
    trainable: list[torch.nn.Parameter],
    head: list[str],
    local: LocalSettings,
    opt: OptimizerSettings,
) -> torch.optim.Optimizer:
    """The optimizer ``optimizer.name`` names, over ``trainable``; the new task head gets ``local.head-lr``.

    Head parameters are found by their module (``classifier.*``), so wrapped copies
    of the head (peft's ``modules_to_save``) count too.
    """
    prefixes = tuple(f"{name.rsplit('.', 1)[0]}." for name in head)
    head_ids = {id(param) for name, param in model.named_parameters() if name.startswith(prefixes)}
    groups = [
        {"params": [p for p in trainable if id(p) not in head_ids], "lr": local.lr},
        {"params": [p for p in trainable if id(p) in head_ids], "lr": local.head_lr},
    ]
    return OPTIMIZERS.get(opt.name)([group for group in groups if group["params"]], local, opt)


def _can_fuse(groups: Groups) -> bool | None:
    """True where torch's fused Adam kernel takes every parameter (about 5x faster on CPU than the default loop)."""
    params = [param for group in groups for param in group["params"]]
    supported = {"cpu", "cuda"}
    fusable = all(p.device.type in supported and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
                  for p in params)
    return True if fusable and params else None
