"""Sequence classification: a new seeded head on the pretrained body, labelled text, accuracy and cross-entropy."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fedelta.common.config import Settings
from fedelta.common.data import Corpus, load_corpus, load_file
from fedelta.common.model import ModelBundle, load_model
from fedelta.common.tasks.registry import TASKS, Evaluation
from fedelta.common.training import TrainResult, evaluate, fit, labelled_batches


class Classification:
    """Text in, one of a fixed set of labels out."""

    peft_task_type = "SEQ_CLS"
    metric_names = ("accuracy", "loss")
    takes_sparse_base = True
    export_class = "AutoModelForSequenceClassification"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tokenizer: Any = None  # read once, then shared by every model this task loads

    def load_data(self) -> Corpus:
        return load_corpus(self.settings.data)

    def load_file(self, path: Path, labels: tuple[str, ...] | None = None) -> Corpus:
        return load_file(path, labels)

    def load_model(self, num_labels: int, seed: int) -> ModelBundle:
        bundle = load_model(self.settings.model.source, num_labels, seed, self._tokenizer)
        self._tokenizer = bundle.tokenizer
        return bundle

    def batches(self, bundle: ModelBundle, data: Corpus, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        return labelled_batches(bundle.tokenizer, data, self.settings.local.batch_size, self.settings.model.max_length,
                                seed)

    def train(self, bundle: ModelBundle, data: Corpus, optimizer: torch.optim.Optimizer, *, steps: int,
              seed: int) -> TrainResult:
        if len(data) == 0:
            raise ValueError("cannot train on an empty data set")
        return fit(bundle.model, self.batches(bundle, data, seed), optimizer, steps=steps, seed=seed)

    def evaluate(self, bundle: ModelBundle, data: Corpus) -> Evaluation:
        result = evaluate(bundle.model, bundle.tokenizer, data, max_length=self.settings.model.max_length)
        return Evaluation(examples=result.examples, loss=result.loss, accuracy=result.accuracy)

    def calibration_texts(self, bundle: ModelBundle, data: Corpus, count: int, seed: int) -> list[str]:
        return random.Random(seed).sample(data.texts, min(count, len(data)))

    def describe(self, data: Corpus) -> str:
        counts = Counter(data.labels)
        shares = ", ".join(f"{name} {counts.get(i, 0)}" for i, name in enumerate(data.label_names))
        return f"{len(data)} examples ({shares})"


TASKS.register(
    "classification",
    summary="sequence classification: a seeded head on the pretrained body; text,label data; accuracy and loss",
    reference="Devlin et al. 2019, BERT (fine-tuning with a task head)",
)(Classification)
