"""Full fine-tuning: every parameter trains and may appear in the delta."""

import torch

from fedelta.common.methods.registry import METHODS, FineTuningMethod, MethodContext


class Full(FineTuningMethod):
    def touched(self, model: torch.nn.Module, context: MethodContext) -> list[str]:
        return sorted(name for name, _ in model.named_parameters())


METHODS.register("full", summary="train every parameter (baseline)", reference="-")(Full())
