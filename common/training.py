"""Local training and evaluation loops for a sequence classifier on a Corpus."""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from fedelta.common.data import Corpus
from fedelta.common.seeding import seeded


@dataclass(frozen=True)
class TrainResult:
    steps: int
    examples: int
    loss: float


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    loss: float
    examples: int


def _progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, leave=False, disable=not sys.stderr.isatty())


def _tokenize(tokenizer: object, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    return tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def _batches(corpus: Corpus, batch_size: int, seed: int) -> Iterator[tuple[list[str], list[int]]]:
    """Endless shuffled mini-batches (a new permutation per pass)."""
    rng = random.Random(seed)
    order = list(range(len(corpus)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            yield [corpus.texts[i] for i in chosen], [corpus.labels[i] for i in chosen]


def train(
    model: torch.nn.Module,
    tokenizer: object,
    corpus: Corpus,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    batch_size: int,
    max_length: int,
    seed: int,
) -> TrainResult:
    """``steps`` optimizer steps of cross-entropy on shuffled batches of ``corpus``.

    ``seed`` fixes the batches and every random draw of the forward pass
    (dropout), whatever the process did before; torch's global random state is
    left as it was.
    """
    if len(corpus) == 0:
        raise ValueError("cannot train on an empty data set")
    model.train()
    batches = _batches(corpus, batch_size, seed)
    total_loss, examples = 0.0, 0
    with seeded(seed), _progress(steps, "train") as bar:
        for _ in range(steps):
            texts, labels = next(batches)
            inputs = _tokenize(tokenizer, texts, max_length)
            output = model(**inputs, labels=torch.tensor(labels))
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            optimizer.step()
            total_loss += output.loss.item() * len(labels)
            examples += len(labels)
            bar.update(1)
            bar.set_postfix(loss=f"{output.loss.item():.3f}")
    model.eval()
    return TrainResult(steps=steps, examples=examples, loss=total_loss / examples)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, tokenizer: object, corpus: Corpus, *, batch_size: int = 64, max_length: int = 64
) -> EvalResult:
    """Accuracy and mean cross-entropy over ``corpus`` (sorted by length for tight padding)."""
    if len(corpus) == 0:
        return EvalResult(accuracy=0.0, loss=0.0, examples=0)
    model.eval()
    order = sorted(range(len(corpus)), key=lambda i: len(corpus.texts[i]))
    correct, total_loss = 0, 0.0
    with _progress(len(order), "eval") as bar:
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            labels = torch.tensor([corpus.labels[i] for i in chosen])
            inputs = _tokenize(tokenizer, [corpus.texts[i] for i in chosen], max_length)
            logits = model(**inputs).logits
            total_loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(-1) == labels).sum())
            bar.update(len(chosen))
    return EvalResult(accuracy=correct / len(order), loss=total_loss / len(order), examples=len(order))
