"""The pruner registry with each pruner's traits, what a pruner is asked, and the loop that prunes a delta."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from fedelta.common.config import PruneSettings
from fedelta.common.delta import Delta, Dense, Entry
from fedelta.common.registry import Registry


@dataclass(frozen=True)
class Calibration:
    """What activation-aware pruners know about the model's inputs.

    ``inputs`` maps the name of a linear layer's weight to a batch of that
    layer's inputs (rows x in_features), captured on unlabelled text. ``q`` is
    a global DAREx-q keep scale chosen on labelled data; it overrides the
    per-layer closed form.
    """

    inputs: Mapping[str, torch.Tensor] = field(default_factory=dict)
    q: float | None = None

    def __post_init__(self) -> None:
        if self.q is not None and not 0.0 < self.q <= 1.0:
            raise ValueError(f"calibration q must be in (0, 1], got {self.q}")

    def inputs_for(self, name: str, delta: torch.Tensor) -> torch.Tensor | None:
        """The inputs multiplying ``delta`` (out x in), or ``None`` when it is not such a weight."""
        inputs = self.inputs.get(name)
        if inputs is None or delta.dim() != 2 or inputs.dim() != 2 or inputs.shape[1] != delta.shape[1]:
            return None
        return inputs


@dataclass(frozen=True)
class PruneRequest:
    """What a pruner needs besides the tensor: the fraction to keep, a seed, optionally calibration.

    Pruners may record one number per tensor in ``stats`` (darex-q: the q it used).
    """

    keep: float
    seed: int
    calibration: Calibration | None = None
    stats: dict[str, float] = field(default_factory=dict, compare=False)

    def inputs_for(self, name: str, delta: torch.Tensor) -> torch.Tensor | None:
        return None if self.calibration is None else self.calibration.inputs_for(name, delta)


PruneFunction = Callable[[str, torch.Tensor, PruneRequest], Entry]


def never(settings: PruneSettings) -> bool:
    """A pruner that never needs labels."""
    return False


@dataclass(frozen=True)
class Pruner:
    """A registered pruner: its function and the traits everyone else acts on.

    ``rescales``: kept values are scaled up (1/q), so an error-feedback residual
    would grow; config refuses it with ``feedback.enabled`` and on the downlink.
    ``needs_inputs``: it uses captured layer inputs, so a site calibrates.
    ``needs_labels``: whether, under these settings, it chooses on a labelled
    local validation split, which a site then carves from its training data.
    ``drops``: it keeps the requested fraction of each tensor, so a byte budget
    can choose that fraction.
    """

    prune: PruneFunction
    drops: bool = True
    rescales: bool = False
    needs_inputs: bool = False
    needs_labels: Callable[[PruneSettings], bool] = never


PRUNERS: Registry[Pruner] = Registry("pruner")


def pruner(
    name: str, *, summary: str, reference: str, drops: bool = True, rescales: bool = False,
    needs_inputs: bool = False, needs_labels: Callable[[PruneSettings], bool] = never,
) -> Callable[[PruneFunction], PruneFunction]:
    """Decorator registering a prune function with its traits in :data:`PRUNERS` under ``name``."""

    def add(prune: PruneFunction) -> PruneFunction:
        unit = Pruner(prune, drops=drops, rescales=rescales, needs_inputs=needs_inputs, needs_labels=needs_labels)
        PRUNERS.register(name, summary=summary, reference=reference)(unit)
        return prune

    return add


def prune_delta(
    dense: Mapping[str, torch.Tensor], pruner: str, request: PruneRequest, min_size: int = 0,
    keep_dense: frozenset[str] = frozenset(),
) -> Delta:
    """Prune each tensor with ``pruner``; tensors under ``min_size`` elements or in ``keep_dense`` stay dense."""
    prune = PRUNERS.get(pruner).prune
    entries: dict[str, Entry] = {}
    for name in sorted(dense):
        tensor = dense[name]
        small = tensor.numel() < min_size or name in keep_dense
        entries[name] = Dense(tensor) if small else prune(name, tensor, request)
    return Delta(entries)
