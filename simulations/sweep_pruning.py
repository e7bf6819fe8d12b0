"""Test accuracy after pruning a real fine-tuning delta, per drop rate and pruner (no retraining).

    python -m fedelta.simulations.sweep_pruning [--quick] [--out DIR]

Fine-tunes the model centrally on Rotten Tomatoes (all parameters, the site's
loop and learning rates) once per optimizer (``adamw``, and ``adamr``, which
decays toward the base weights), then for every drop rate p and pruner prunes
the delta exactly as a site would (tensors under ``prune.min-size`` stay
dense; darex-q and importance get the layer inputs of one unlabelled batch of
training texts) and evaluates base + pruned delta on a held-out test set.
``--quick`` runs the tiny BERT on a few examples (seconds). Writes
``DIR/sweep.json``, ``DIR/sweep.md`` and ``DIR/sweep.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

DROPS = (0.5, 0.9, 0.95, 0.99)
PRUNERS = ("dare", "darex-q", "magnitude", "importance")
OPTIMIZERS = ("adamw", "adamr")


def delta_stats(delta: dict) -> dict[str, float]:
    import torch

    flat = torch.cat([value.reshape(-1) for value in delta.values()])
    return {"mean_abs": float(flat.abs().mean()), "std": float(flat.std()), "l2": float(flat.norm())}


def run_optimizer(optimizer: str, args: argparse.Namespace, corpus: Any, train_idx: list[int], test: Any) -> dict:
    import random

    import torch

    from fedelta.common.config import LocalSettings, OptimizerSettings
    from fedelta.common.delta import extract_delta, model_params
    from fedelta.common.model import load_model
    from fedelta.common.optimizers import make_optimizer
    from fedelta.common.pruning import PruneRequest, prune_delta
    from fedelta.common.pruning.calibration import calibrate, with_delta_applied
    from fedelta.common.training import evaluate, train

    torch.manual_seed(args.seed)
    bundle = load_model(args.model, len(corpus.label_names), args.seed)
    model, params = bundle.model, model_params(bundle.model)
    before = {name: value.clone() for name, value in params.items()}
    local = LocalSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, head_lr=args.head_lr)
    opt = make_optimizer(model, list(model.parameters()), bundle.head, local, OptimizerSettings(optimizer, lambda_=args.lam))
    started = time.perf_counter()
    result = train(model, bundle.tokenizer, corpus.subset(train_idx), opt, steps=args.steps,
                   batch_size=args.batch_size, max_length=args.max_length, seed=args.seed)
    delta = extract_delta(params, before, list(params))

    def accuracy() -> float:
        return evaluate(model, bundle.tokenizer, test, max_length=args.max_length).accuracy

    unpruned = accuracy()
    texts = random.Random(args.seed).sample([corpus.texts[i] for i in train_idx], args.calibration_size)
    calibration = calibrate(model, bundle.tokenizer, texts, max_length=args.max_length)
    cells = []
    for drop in DROPS:
        for pruner in PRUNERS:
            request = PruneRequest(1 - drop, args.seed, calibration)
            pruned = prune_delta(delta, pruner, request, args.min_size)
            acc = with_delta_applied(params, before, pruned, lambda: (accuracy(), 0.0))[0]
            q = statistics.fmean(request.stats.values()) if request.stats else None
            cells.append({"drop": drop, "pruner": pruner, "accuracy": acc, "mean_q": q})
            print(f"  {optimizer} p={drop} {pruner:<10} acc {acc:.3f}" + (f" (mean q {q:.4f})" if q else ""), flush=True)
    return {"optimizer": optimizer, "train_loss": result.loss, "unpruned": unpruned, "delta": delta_stats(delta),
            "seconds": time.perf_counter() - started, "cells": cells}


def markdown(report: dict) -> str:
    lines = []
    for run in report["runs"]:
        stats = run["delta"]
        lines += [f"**{run['optimizer']}**: unpruned accuracy {run['unpruned']:.3f}; delta mean |d| "
                  f"{stats['mean_abs']:.2e}, std {stats['std']:.2e}", "",
                  "| p | " + " | ".join(PRUNERS) + " |", "|---:|" + "---:|" * len(PRUNERS)]
        for drop in DROPS:
            row = {c["pruner"]: c for c in run["cells"] if c["drop"] == drop}
            cells = []
            for pruner in PRUNERS:
                q = row[pruner]["mean_q"]
                cells.append(f"{row[pruner]['accuracy']:.3f}" + (f" (q {q:.3f})" if q is not None else ""))
            lines.append(f"| {drop} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    figure, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), sharey=True, squeeze=False)
    for axis, run in zip(axes[0], runs):
        for pruner in PRUNERS:
            points = [(c["drop"], c["accuracy"]) for c in run["cells"] if c["pruner"] == pruner]
            axis.plot([str(p) for p, _ in points], [a for _, a in points], marker="o", label=pruner)
        axis.axhline(run["unpruned"], color="black", linestyle="--", label="unpruned")
        axis.set_title(f"{run['optimizer']}")
        axis.set_xlabel("drop rate p")
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny BERT, a few steps and examples (a test)")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep_pruning"), help="output folder")
    parser.add_argument("--steps", type=int, default=120, help="fine-tuning steps per optimizer")
    parser.add_argument("--eval-size", type=int, default=500, help="held-out test examples")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per example")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate of the pretrained body")
    parser.add_argument("--head-lr", type=float, default=3e-3, help="learning rate of the new task head")
    parser.add_argument("--lam", type=float, default=20.0, help="adamr: strength of the decay toward the base")
    parser.add_argument("--calibration-size", type=int, default=32, help="unlabelled texts for layer inputs")
    parser.add_argument("--min-size", type=int, default=1024, help="tensors smaller than this stay dense")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="comma-separated: adamw,adamr")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.model = "tiny-bert" if args.quick else ""
    if args.quick:
        args.steps, args.eval_size, args.max_length, args.calibration_size = 3, 24, 16, 8
    import torch

    from fedelta.common.config import DataSettings
    from fedelta.common.data import hold_out, load_corpus
    from fedelta.common.model import model_name

    torch.set_num_threads(min(2, torch.get_num_threads()))
    corpus = load_corpus(DataSettings())
    pool, test_idx = hold_out(corpus, args.eval_size, args.seed)
    runs = [run_optimizer(name, args, corpus, pool, corpus.subset(test_idx))
            for name in args.optimizers.split(",") if name]
    report = {"model": model_name(args.model), "steps": args.steps, "eval_size": len(test_idx),
              "max_length": args.max_length, "lr": args.lr, "head_lr": args.head_lr, "adamr_lambda": args.lam,
              "machine": platform.machine(), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(report, indent=2))
    (args.out / "sweep.md").write_text(markdown(report))
    plot(report, args.out / "sweep.png")
    print(markdown(report))
    print(f"results: {args.out}/sweep.json, sweep.md, sweep.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
