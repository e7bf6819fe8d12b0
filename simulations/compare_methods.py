"""Run one short simulation per fine-tuning method and tabulate accuracy against bytes sent.

    python -m fedelta.simulations.compare_methods [--quick] [--methods full,lnbias,...] [--out DIR]

Each method runs in its own ``fedelta simulate`` process with the default
setting (MiniLM, Rotten Tomatoes, 4 sites by movie) under the same training
budget (:data:`BUDGET`) and the per-method overrides in :data:`RUNS`;
``--quick`` uses the smoke preset instead.
Writes ``DIR/methods.json`` and ``DIR/methods.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from fedelta.common.report import human_bytes
from fedelta.simulations.experiments.runner import run_flower
from fedelta.simulations.presets import preset

# Every run gets the same budget (BUDGET); parameter-efficient methods move few
# values, so they get larger learning rates (picked by a short centralized probe,
# not a sweep) and send their values unpruned; full fine-tuning keeps DARE p=0.9.
BUDGET = {"rounds": "6", "local.steps": "24"}
RUNS: dict[str, dict[str, str]] = {
    "full": {},
    "lnbias": {"local.lr": "5e-3", "prune.name": "none"},
    "pafi": {"local.lr": "1e-2", "prune.name": "none"},
    "hiwi": {"local.lr": "3e-2", "prune.name": "none"},
    "svfit": {"local.lr": "1e-1", "prune.name": "none"},
    "lora": {"local.lr": "3e-3", "prune.name": "none"},
}


def run_one(method: str, out: Path, quick: bool) -> dict:
    overrides = {"method.name": method, **RUNS[method]}
    if not quick:
        overrides = {**BUDGET, **overrides}
    started = time.perf_counter()
    run_flower({**(preset("smoke") if quick else {}), **overrides}, out / method)
    summary = json.loads((out / method / "summary.json").read_text())
    site_rounds = summary["rounds"] * summary["config"]["federation.num-sites"]
    return {
        "method": method,
        "overrides": overrides,
        "final_accuracy": summary["final_accuracy"],
        "best_accuracy": summary["best_accuracy"],
        "upload_bytes_per_site_round": summary["total_upload_bytes"] / site_rounds,
        "upload_reduction": summary["upload_reduction"],
        "downlink_bytes_per_site_round": summary["total_downlink_bytes"] / site_rounds,
        "seconds": time.perf_counter() - started,
    }


def to_markdown(rows: list[dict], quick: bool) -> str:
    lines = [
        f"Configuration: {'smoke preset' if quick else 'default'} plus each row's overrides; "
        f"seed 0; {platform.machine()} CPU, {platform.python_version()}.",
        "",
        "| method | overrides | final acc | best acc | upload / site-round | vs dense fp32 | downlink / site-round | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        overrides = ", ".join(f"`{k}={v}`" for k, v in row["overrides"].items()) or "-"
        lines.append(
            f"| {row['method']} | {overrides} | {row['final_accuracy']:.3f} | {row['best_accuracy']:.3f} "
            f"| {human_bytes(row['upload_bytes_per_site_round'])} | {row['upload_reduction']:.0f}x "
            f"| {human_bytes(row['downlink_bytes_per_site_round'])} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke preset (tiny model), for tests")
    parser.add_argument("--methods", default=",".join(RUNS), help="comma-separated subset of methods")
    parser.add_argument("--out", default="runs/methods", help="folder for the runs and the tables")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if method not in RUNS:
            parser.error(f"unknown method {method!r}; choose from {', '.join(RUNS)}")
        print(f"running {method} ...", flush=True)
        rows.append(run_one(method, out, args.quick))
        print(f"  accuracy {rows[-1]['final_accuracy']:.3f}, "
              f"{human_bytes(rows[-1]['upload_bytes_per_site_round'])} per site-round", flush=True)
    (out / "methods.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "methods.md").write_text(to_markdown(rows, args.quick))
    print(to_markdown(rows, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
