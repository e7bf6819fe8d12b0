"""The fine-tuning method registry and the Attachment a method returns."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from common.registry import Registry


def _nothing_to_merge() -> None:
    return None


@dataclass
class Attachment:
    """A method attached to a model for one round of local training.

    ``trainable`` goes to the optimizer; ``touched`` names the base parameters the
    upload may contain; ``merge`` folds any adapter back into those parameters so
    the model is the unchanged architecture again.
    """

    trainable: list[torch.nn.Parameter]
    touched: list[str]
    merge: Callable[[], None] = field(default=_nothing_to_merge)


Method = Callable[[torch.nn.Module, Collection[str]], Attachment]
METHODS: Registry[Method] = Registry("fine-tuning method")


def train_only(model: torch.nn.Module, names: Collection[str]) -> Attachment:
    """Freeze every parameter except ``names``; the delta covers exactly those."""
    chosen = set(names)
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
        if name in chosen:
            trainable.append(param)
    return Attachment(trainable=trainable, touched=sorted(chosen))
