"""Full fine-tuning: every parameter trains and may appear in the delta."""

from collections.abc import Collection

import torch

from common.methods.registry import METHODS, Attachment, train_only


@METHODS.register("full", summary="train every parameter (baseline)", reference="-")
def full(model: torch.nn.Module, head: Collection[str]) -> Attachment:
    return train_only(model, [name for name, _ in model.named_parameters()])
