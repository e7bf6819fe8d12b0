"""LoRA through peft, merged after training; uploads carry the factors, not the product.

The server forms sum_k w_k (B_k A_k) exactly from each site's factors; averaging
A and B separately would not give the average update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedelta.common.config import require
from fedelta.common.delta import Entry, LowRank
from fedelta.common.methods.registry import METHODS, Attachment, FineTuningMethod, MethodContext


@dataclass(frozen=True)
class LoRAOptions:
    """``lora.rank``: the rank r of every adapter pair (lora_alpha = 2r)."""

    rank: int = 8

    def __post_init__(self) -> None:
        require(self.rank >= 1, "lora.rank", "must be >= 1")


def target_modules(model: torch.nn.Module, context: MethodContext) -> list[str]:
    """Module names peft will adapt: ``method.targets`` patterns, else peft's default for the architecture."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    patterns = context.settings.target_patterns()
    suffixes = patterns or DEFAULTS.get(getattr(model.config, "model_type", ""), [])
    if not suffixes:
        raise ValueError("lora: no default target modules for this architecture; set method.targets")
    chosen = sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.split(".")[0] not in {h.split(".")[0] for h in context.head}
        and any(name == s or name.endswith(f".{s}") for s in suffixes)
    )
    if not chosen:
        raise ValueError(f"lora: no linear module matches method.targets={','.join(suffixes)!r}")
    return chosen


class LoRA(FineTuningMethod):
    options_type = LoRAOptions

    def touched(self, model: torch.nn.Module, context: MethodContext) -> list[str]:
        return sorted({f"{name}.weight" for name in target_modules(model, context)} | set(context.head))

    def attach(self, model: torch.nn.Module, context: MethodContext) -> Attachment:
        from peft import LoraConfig, TaskType, get_peft_model
        from peft.tuners.lora import LoraLayer

        touched = self.touched(model, context)
        modules = target_modules(model, context)
        rank = self.options(context).rank
        config = LoraConfig(
            task_type=TaskType[context.peft_task_type], r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=modules
        )
        peft_model = get_peft_model(model, config)
        trainable = [param for param in peft_model.parameters() if param.requires_grad]
        layers = {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}

        def formed() -> dict[str, Entry]:
            entries: dict[str, Entry] = {}
            for name, layer in layers.items():
                scale = layer.scaling["default"]
                a = layer.lora_A["default"].weight.detach().clone()
                b = layer.lora_B["default"].weight.detach() * scale
                entries[f"{name}.weight"] = LowRank(a, b)
            return entries

        def merge() -> None:
            peft_model.merge_and_unload()

        return Attachment(trainable=trainable, touched=touched, formed=formed, merge=merge)


METHODS.register(
    "lora",
    summary="peft LoRA adapters of rank lora.rank, merged after training; sends the factors A, B",
    reference="Hu et al. 2022, LoRA: Low-Rank Adaptation of Large Language Models (via peft)",
)(LoRA())
