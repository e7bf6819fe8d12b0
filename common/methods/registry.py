"""The fine-tuning method registry: what a method trains, what it uploads, how uploads resolve.

A method is a :class:`FineTuningMethod` registered by name with its reference
and its options type (``options_type``: a frozen dataclass that validates
itself; config reads it from the section named after the method, such as
``lora.rank``). ``touched`` names the base tensors its uploads may change
(without touching the model); ``attach`` prepares a model for one round of
local training and returns an :class:`Attachment`; ``resolver`` turns the
entries it sends without positions or basis (PaFi's mask, SVFit's singular
vectors) into plain entries, from the weights every party already holds.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fedelta.common.config import MethodSettings
from fedelta.common.delta import BaseMask, Delta, Dense, Entry, SingularOffsets, Sparse, Unresolved
from fedelta.common.registry import Registry

Params = Mapping[str, torch.Tensor]
Memo = Callable[[str, Callable[[], dict[str, torch.Tensor]]], dict[str, torch.Tensor]]


def compute_now(key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A memo that keeps nothing."""
    return compute()


@dataclass(frozen=True)
class MethodContext:
    """What a method may use besides the model: its settings and options, the task head, version 0.

    ``options`` is the method's own options (``Settings.options_for(name)``);
    ``None`` means its defaults. ``peft_task_type`` is peft's name for the
    task the model is built for (``SEQ_CLS``, ``CAUSAL_LM``).
    """

    settings: MethodSettings
    head: Collection[str]
    genesis_sha: str = ""
    genesis: Callable[[], Params] | None = None
    memo: Memo = compute_now
    options: Any = None
    peft_task_type: str = "SEQ_CLS"

    def genesis_params(self) -> Params:
        if self.genesis is None:
            raise ValueError("this method needs the version-0 weights, and none were provided")
        return self.genesis()


def _nothing_formed() -> dict[str, Entry]:
    return {}


def _nothing_to_merge() -> None:
    return None


@dataclass
class Attachment:
    """A method attached to a model for one round of local training.

    ``trainable`` goes to the optimizer. ``touched`` names the base parameters the
    upload may contain. ``formed`` returns, after training and before ``merge``,
    the entries the method builds itself (factors, mask values, singular-value
    offsets); those are sent as they are, and every other touched tensor is sent
    as a pruned dense difference. ``merge`` folds adapters back so the model is
    the unchanged architecture again.
    """

    trainable: list[torch.nn.Parameter]
    touched: list[str]
    formed: Callable[[], dict[str, Entry]] = field(default=_nothing_formed)
    merge: Callable[[], None] = field(default=_nothing_to_merge)

    @property
    def adapted(self) -> bool:
        """Whether the model carries adapter modules until :attr:`merge` folds them back."""
        return self.merge is not _nothing_to_merge


@dataclass(frozen=True)
class Resolver:
    """Positions (by mask spec and tensor) and singular bases (by tensor) held by every party."""

    masks: Mapping[str, Mapping[str, torch.Tensor]] = field(default_factory=dict)
    bases: Mapping[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def resolve(self, delta: Delta) -> Delta:
        """Replace mask-valued and singular-offset entries by explicit ones; raise :class:`Unresolved` if impossible."""
        return Delta({name: self._entry(name, entry) for name, entry in delta.entries.items()})

    def _entry(self, name: str, entry: Entry) -> Entry:
        if isinstance(entry, BaseMask):
            positions = self.masks.get(entry.spec, {}).get(name)
            if positions is None:
                raise Unresolved(f"no {entry.spec!r} mask for {name!r}")
            if positions.numel() != entry.count:
                raise Unresolved(f"{name!r}: {entry.count} values for a {entry.spec!r} mask of {positions.numel()}")
            return Sparse(entry.shape, positions, entry.values)
        if isinstance(entry, SingularOffsets):
            basis = self.bases.get(name)
            if basis is None or basis[0].shape[0] != entry.shape[0] or basis[1].shape[1] != entry.shape[1]:
                raise Unresolved(f"no singular basis of shape {entry.shape} for {name!r}")
            u, vh = basis
            if entry.count != u.shape[1]:
                raise Unresolved(f"{name!r}: {entry.count} singular-value offsets for rank {u.shape[1]}")
            return Dense(singular_update(u, entry.values, vh))
        return entry


def singular_update(u: torch.Tensor, offsets: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """``U diag(offsets) Vh`` in fp32, the same expression on every party."""
    return (u * offsets.to(torch.float32)) @ vh


@dataclass(frozen=True)
class NoOptions:
    """The options of a method that has none."""


class FineTuningMethod:
    """Base class: train exactly the touched tensors; no entries of its own, no options."""

    options_type: type = NoOptions

    def options(self, context: MethodContext) -> Any:
        """This method's options from ``context``, or its defaults when the context carries none."""
        if context.options is None:
            return self.options_type()
        if not isinstance(context.options, self.options_type):
            raise ValueError(f"{type(self).__name__} takes {self.options_type.__name__}, "
                             f"got {type(context.options).__name__}")
        return context.options

    def touched(self, model: torch.nn.Module, context: MethodContext) -> list[str]:
        raise NotImplementedError

    def attach(self, model: torch.nn.Module, context: MethodContext) -> Attachment:
        return train_only(model, self.touched(model, context))

    def resolver(self, context: MethodContext, base: Params) -> Resolver:
        return Resolver()


METHODS: Registry[FineTuningMethod] = Registry("fine-tuning method")


def train_only(model: torch.nn.Module, names: Collection[str]) -> Attachment:
    """Freeze every parameter except ``names``; the delta covers exactly those."""
    chosen = set(names)
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
        if name in chosen:
            trainable.append(param)
    return Attachment(trainable=trainable, touched=sorted(chosen))


def matching(names: Collection[str], patterns: list[str], what: str) -> list[str]:
    """Names matching any glob pattern; an empty match is an error naming the setting."""
    chosen = sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))
    if not chosen:
        raise ValueError(f"{what}: no parameter matches method.targets={','.join(patterns)!r}")
    return chosen


def weight_matrices(params: Params, head: Collection[str]) -> list[str]:
    """2-D weights of linear layers: no embeddings, no task head."""
    return sorted(
        name for name, param in params.items() if param.dim() == 2 and "embed" not in name and name not in set(head)
    )


def targeted_matrices(params: Params, context: MethodContext, what: str) -> list[str]:
    """Weight matrices, narrowed by ``method.targets`` when it is set."""
    names = weight_matrices(params, context.head)
    patterns = context.settings.target_patterns()
    return matching(names, patterns, what) if patterns else names


def parameters_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.detach() for name, param in model.named_parameters()}
