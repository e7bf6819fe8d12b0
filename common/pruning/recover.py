"""PERP-style recovery after pruning: a few steps on normalization and bias tensors, the pruned delta fixed."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from math import prod
from typing import TYPE_CHECKING, Any

import torch

from fedelta.common.config import Settings
from fedelta.common.delta import Delta, Entry, model_params
from fedelta.common.optimizers import AdamR, make_optimizer
from fedelta.common.quantization import VALUE_TYPES, round_trip
from fedelta.common.registry import Registry

if TYPE_CHECKING:
    from fedelta.common.model import ModelBundle
    from fedelta.common.tasks import Task

RECOVERY: Registry[Callable[..., dict[str, torch.Tensor]]] = Registry("recovery")


def as_received(entry: Entry, values: str) -> torch.Tensor:
    """The dense fp32 tensor a receiver decodes for ``entry`` sent with value type ``values``."""
    decoded = round_trip(VALUE_TYPES.get(values), entry.flat_values().reshape(-1))
    positions = entry.positions()
    if positions is None:
        return decoded.reshape(entry.shape)
    out = torch.zeros(prod(entry.shape), dtype=torch.float32)
    out[positions] = decoded
    return out.reshape(entry.shape)


@RECOVERY.register(
    "perp",
    summary="after pruning, prune.recover-steps steps training only normalization and bias tensors on top of "
    "the pruned delta as sent; those are sent dense (0 = off)",
    reference="Zimmer et al. 2023, PERP: Rethinking the Prune-Retrain Paradigm in the Era of LLMs, arXiv:2312.15230",
)
def recover(
    task: Task,
    bundle: ModelBundle,
    data: Any,
    *,
    base: Mapping[str, torch.Tensor],
    pruned: Delta,
    names: Collection[str],
    head: list[str],
    settings: Settings,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Train only ``names`` for ``prune.recover-steps`` steps on top of base + the pruned delta as sent.

    Every other pruned tensor is set to its base value plus exactly what the
    server will decode, and stays fixed. Returns the new deltas of ``names``
    (to be sent dense); the model is left holding the recovered weights.
    """
    model = bundle.model
    params = model_params(model)
    with torch.no_grad():
        for name, entry in pruned.entries.items():
            if name not in names:
                params[name].copy_(base[name] + as_received(entry, settings.quant.values))
    trainable = [param for name, param in model.named_parameters() if name in names]
    flags = {name: param.requires_grad for name, param in model.named_parameters()}
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    try:
        optimizer = make_optimizer(model, trainable, head, settings.local, settings.optimizer)
        if isinstance(optimizer, AdamR):  # decay toward the round's base, as in local training
            optimizer.anchor_to({param: base[name] for name, param in model.named_parameters() if name in names})
        task.train(bundle, data, optimizer, steps=settings.prune.recover_steps, seed=seed)
    finally:
        for name, param in model.named_parameters():
            param.requires_grad_(flags[name])
    with torch.no_grad():
        return {name: params[name].detach().to(torch.float32) - base[name].to(torch.float32) for name in names}
