"""HiWi: an adapter on pretrained parameters, P' = P + f(P A) B, merged into P after training.

The rows of P are the adapter's inputs. Only P' - P travels, so the upload does
not grow with the adapter width. Built on ``torch.nn.utils.parametrize``.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import torch
from torch.nn.utils import parametrize

from fedelta.common.config import require
from fedelta.common.methods.registry import METHODS, Attachment, FineTuningMethod, MethodContext, matching, parameters_of

# Default targets, the first that matches the model: the FFN intermediate biases (BERT-like models); for
# models without biases (Llama), the RMSNorm gains of the FFN's input, the per-unit vectors that shape it.
DEFAULT_TARGETS = (["*intermediate.dense.bias"], ["*post_attention_layernorm.weight"])


@dataclass(frozen=True)
class HiWiOptions:
    """``hiwi.width``: the adapter width r (A: n x r, B: r x n); the upload does not grow with it."""

    width: int = 8

    def __post_init__(self) -> None:
        require(self.width >= 1, "hiwi.width", "must be >= 1")


class HiWiAdapter(torch.nn.Module):
    """``P -> P + gelu(P A) B`` over the rows of P; B starts at zero, so P' = P at first.

    A is held as ``a = n A`` (n the row length) and used as ``a / n``: the same
    function, with Adam steps of the right size. Adam moves every entry of a tensor
    by about the learning rate per step, so a directly held A would move each hidden
    unit of ``P A`` by up to ``lr * sum|P|``, a sum over n entries (about 200 * lr on
    MiniLM's 1536-wide FFN biases): the units blow up within a round and P' - P
    swamps P. Through ``a / n`` one step moves a unit by at most ``lr * mean|P|``,
    whatever n.
    """

    def __init__(self, shape: torch.Size, width: int, generator: torch.Generator) -> None:
        super().__init__()
        self.fan_in = shape[-1]
        # A = a / n starts with entries of variance 1 / n, so P A starts at the scale of P's entries.
        self.a = torch.nn.Parameter(torch.randn(self.fan_in, width, generator=generator) * math.sqrt(self.fan_in))
        self.b = torch.nn.Parameter(torch.zeros(width, self.fan_in))

    def hidden(self, weight: torch.Tensor) -> torch.Tensor:
        """The adapter's hidden units ``P A``, one row per row of P."""
        return weight.reshape(-1, self.fan_in) @ self.a / self.fan_in

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (torch.nn.functional.gelu(self.hidden(weight)) @ self.b).reshape(weight.shape)


class HiWi(FineTuningMethod):
    options_type = HiWiOptions

    def targets(self, model: torch.nn.Module, context: MethodContext) -> list[str]:
        names = [n for n in parameters_of(model) if n not in set(context.head)]
        patterns = context.settings.target_patterns() or next(
            (found for found in DEFAULT_TARGETS if any(fnmatch.fnmatchcase(n, p) for n in names for p in found)),
            DEFAULT_TARGETS[0],
        )
        return matching(names, patterns, "hiwi")

    def touched(self, model: torch.nn.Module, context: MethodContext) -> list[str]:
        return sorted(set(self.targets(model, context)) | set(context.head))

    def attach(self, model: torch.nn.Module, context: MethodContext) -> Attachment:
        targets = self.targets(model, context)
        touched = self.touched(model, context)
        for param in model.parameters():
            param.requires_grad_(False)
        generator = torch.Generator().manual_seed(len(targets))
        width = self.options(context).width
        trainable: list[torch.nn.Parameter] = []
        owners = []
        for name in targets:
            module_name, _, tensor_name = name.rpartition(".")
            module = model.get_submodule(module_name)
            adapter = HiWiAdapter(getattr(module, tensor_name).shape, width, generator)
            parametrize.register_parametrization(module, tensor_name, adapter)
            trainable.extend(adapter.parameters())
            owners.append((module, tensor_name))
        head = {name: param for name, param in model.named_parameters() if name in set(context.head)}
        for param in head.values():
            param.requires_grad_(True)
        trainable.extend(head.values())

        def merge() -> None:
            for module, tensor_name in owners:
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)

        return Attachment(trainable=trainable, touched=touched, merge=merge)


METHODS.register(
    "hiwi",
    summary="adapter of width hiwi.width on pretrained parameters (default: FFN intermediate biases), merged; "
    "sends P'-P",
    reference="Liao, Meng, Monz 2023, Parameter-Efficient Fine-Tuning without Introducing New Latency (HiWi)",
)(HiWi())
