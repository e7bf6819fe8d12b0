"""The local training loop every task uses, and a sequence classifier's batches and evaluation."""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from fedelta.common.data import Corpus
from fedelta.common.devices import autocast_for, device_of, to_device
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


def shuffled(count: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless shuffled mini-batches of indices into ``count`` examples (a new permutation per pass)."""
    rng = random.Random(seed)
    order = list(range(count))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]


def fit(
    model: torch.nn.Module, batches: Iterator[dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer, *,
    steps: int, seed: int,
) -> TrainResult:
    """``steps`` optimizer steps on the loss the model computes for each batch (its ``labels`` included),
    on the device the model is on (bf16 autocast for the forward pass on CUDA).

    ``seed`` fixes every random draw of the forward pass (dropout), whatever
    the process did before; torch's global random state is left as it was.
    """
    model.train()
    device = device_of(model)
    total_loss, examples = 0.0, 0
    with seeded(seed), _progress(steps, "train") as bar:
        for _ in range(steps):
            batch = to_device(next(batches), device)
            with autocast_for(device):
                output = model(**batch)
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            optimizer.step()
            size = len(batch["input_ids"])
            total_loss += output.loss.item() * size
            examples += size
            bar.update(1)
            bar.set_postfix(loss=f"{output.loss.item():.3f}")
    model.eval()
    return TrainResult(steps=steps, examples=examples, loss=total_loss / examples)


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
    """``steps`` optimizer steps of cross-entropy on shuffled batches of a labelled ``corpus``."""
    if len(corpus) == 0:
        raise ValueError("cannot train on an empty data set")
    return fit(model, labelled_batches(tokenizer, corpus, batch_size, max_length, seed), optimizer, steps=steps, seed=seed)


def labelled_batches(
    tokenizer: object, corpus: Corpus, batch_size: int, max_length: int, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches of a labelled ``corpus``, tokenized, with their ``labels``."""
    for chosen in shuffled(len(corpus), batch_size, seed):
        inputs = _tokenize(tokenizer, [corpus.texts[i] for i in chosen], max_length)
        yield {**inputs, "labels": torch.tensor([corpus.labels[i] for i in chosen])}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, tokenizer: object, corpus: Corpus, *, batch_size: int = 64, max_length: int = 64
) -> EvalResult:
    """Accuracy and mean cross-entropy over ``corpus`` (sorted by length for tight padding)."""
    if len(corpus) == 0:
        return EvalResult(accuracy=0.0, loss=0.0, examples=0)
    model.eval()
    device = device_of(model)
    order = sorted(range(len(corpus)), key=lambda i: len(corpus.texts[i]))
    correct, total_loss = 0, 0.0
    with _progress(len(order), "eval") as bar:
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            labels = torch.tensor([corpus.labels[i] for i in chosen])
            inputs = to_device(_tokenize(tokenizer, [corpus.texts[i] for i in chosen], max_length), device)
            with autocast_for(device):
                logits = model(**inputs).logits.float().cpu()
            total_loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(-1) == labels).sum())
            bar.update(len(chosen))
    return EvalResult(accuracy=correct / len(order), loss=total_loss / len(order), examples=len(order))
