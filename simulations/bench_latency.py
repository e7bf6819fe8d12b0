"""Inference latency of merged models against the base model, measured side by side.

    python -m fedelta.simulations.bench_latency [--model PATH|tiny-bert] [--repeats N] [--json]

For every fine-tuning method: attach it, take one training step so adapters are
non-zero, then time the forward pass of (a) the merged model and (b) the model
with the method still attached (adapters or parametrizations live), each
interleaved with the base model on the same batch of real reviews. Reports the
median ratio model/base; latency-free methods merge to a ratio within noise of 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from fedelta.common.config import DataSettings, MethodSettings
from fedelta.common.data import load_corpus
from fedelta.common.methods import METHODS, MethodContext
from fedelta.common.model import load_model, model_name


def _time_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    started = time.perf_counter()
    with torch.no_grad():
        model(**batch)
    return time.perf_counter() - started


def ratio_to_base(model: torch.nn.Module, base: torch.nn.Module, batch: dict, repeats: int) -> tuple[float, float, float]:
    """Median of per-pair ratios, timing the two models alternately (after a warm-up)."""
    for _ in range(2):
        _time_forward(base, batch), _time_forward(model, batch)
    pairs = [(_time_forward(base, batch), _time_forward(model, batch)) for _ in range(repeats)]
    ratio = statistics.median(m / b for b, m in pairs)
    return ratio, statistics.median(b for b, _ in pairs) * 1e3, statistics.median(m for _, m in pairs) * 1e3


def prepared(model_path: str, method: str, batch: dict, settings: MethodSettings):
    bundle = load_model(model_path, num_labels=2, seed=0)
    genesis = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}
    attachment = METHODS.get(method).attach(bundle.model, MethodContext(settings, bundle.head, "bench", lambda: genesis))
    optimizer = torch.optim.AdamW(attachment.trainable, lr=1e-3)
    bundle.model.train()
    loss = bundle.model(**batch, labels=torch.zeros(batch["input_ids"].shape[0], dtype=torch.long)).loss
    loss.backward()
    optimizer.step()
    bundle.model.eval()
    return bundle.model, attachment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help='model.path ("" = bundled MiniLM, or tiny-bert)')
    parser.add_argument("--batch", type=int, default=32, help="reviews per forward pass")
    parser.add_argument("--repeats", type=int, default=30, help="timed pairs per model")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    base = load_model(args.model, num_labels=2, seed=0)
    corpus = load_corpus(DataSettings())
    batch = dict(base.tokenizer(corpus.texts[: args.batch], padding=True, truncation=True, max_length=64,
                                return_tensors="pt"))
    rows = []
    for method in METHODS.names():
        settings = MethodSettings(name=method)
        model, attachment = prepared(args.model, method, batch, settings)
        if attachment.adapted:
            ratio, base_ms, model_ms = ratio_to_base(model, base.model, batch, args.repeats)
            rows.append({"method": method, "merged": False, "ratio_to_base": ratio, "base_ms": base_ms,
                         "model_ms": model_ms})
        attachment.merge()
        ratio, base_ms, model_ms = ratio_to_base(model, base.model, batch, args.repeats)
        rows.append({"method": method, "merged": True, "ratio_to_base": ratio, "base_ms": base_ms,
                     "model_ms": model_ms})
    if args.json:
        print(json.dumps({"model": model_name(args.model), "batch": args.batch, "rows": rows}, indent=2))
    else:
        for row in rows:
            state = "merged" if row["merged"] else "attached"
            print(f"{row['method']:<8} {state:<9} {row['ratio_to_base']:.3f}x  "
                  f"({row['model_ms']:.1f} ms vs base {row['base_ms']:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
