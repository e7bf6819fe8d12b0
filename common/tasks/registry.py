"""The task registry (``task.name``): what a federation trains, on which data, scored how.

A task is registered by name with a factory that binds it to the run's
settings. It reads the data (the bundled corpora or a file), builds version 0
of the model, trains on batches it forms, evaluates, and names what the
evaluation reports. Everything else (methods, pruners, the codec, the store,
aggregation) sees only the model's parameters and does not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from fedelta.common.config import Settings
from fedelta.common.model import ModelBundle
from fedelta.common.registry import Registry
from fedelta.common.training import TrainResult


@dataclass(frozen=True)
class Evaluation:
    """What evaluating a model on some examples found; ``accuracy`` and ``perplexity`` where the task defines them."""

    examples: int
    loss: float
    accuracy: float | None = None
    perplexity: float | None = None

    def metrics(self) -> dict[str, float]:
        """The defined metrics by name, with ``num-examples`` (what weights the sites' means)."""
        found = {"num-examples": float(self.examples), "loss": self.loss}
        if self.accuracy is not None:
            found["accuracy"] = self.accuracy
        if self.perplexity is not None:
            found["perplexity"] = self.perplexity
        return found

    def score(self) -> tuple[float, float]:
        """What a choice among models maximises: accuracy where defined (else minus the loss), then minus the loss."""
        return (self.accuracy if self.accuracy is not None else -self.loss), -self.loss


class Task(Protocol):
    """A task bound to the run's settings."""

    settings: Settings
    peft_task_type: str  # peft's TaskType name for LoRA on this task's models
    export_class: str  # the transformers auto class that loads an exported version
    metric_names: tuple[str, ...]  # what evaluate reports, in the round table's order
    takes_sparse_base: bool  # whether version 0 may come from `fedelta prepare-sparse-base` (a classifier)

    def load_data(self) -> Any:
        """The configured examples (``data.path``, else the bundled ``data.name``)."""

    def load_file(self, path: Path, labels: tuple[str, ...] | None = None) -> Any:
        """A deployed site's own data file, checked; ``labels`` fixes a classifier's label set."""

    def load_model(self, num_labels: int, seed: int) -> ModelBundle:
        """Version 0: the pretrained model (plus a seeded head where the task adds one)."""

    def batches(self, bundle: ModelBundle, data: Any, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        """Endless shuffled training batches of ``data`` as the model takes them (its ``labels`` included)."""

    def train(self, bundle: ModelBundle, data: Any, optimizer: torch.optim.Optimizer, *, steps: int,
              seed: int) -> TrainResult:
        """``steps`` optimizer steps on :meth:`batches` of ``data``."""

    def evaluate(self, bundle: ModelBundle, data: Any) -> Evaluation:
        """The model's metrics on ``data``."""

    def calibration_texts(self, bundle: ModelBundle, data: Any, count: int, seed: int) -> list[str]:
        """Up to ``count`` unlabelled inputs whose layer activations activation-aware pruners capture."""

    def describe(self, data: Any) -> str:
        """A one-line summary of some examples, for a site's log."""


TaskFactory = Callable[[Settings], Task]
TASKS: Registry[TaskFactory] = Registry("task")


def task_for(settings: Settings) -> Task:
    """The task ``task.name`` names, bound to ``settings``."""
    return TASKS.get(settings.task.name)(settings)
