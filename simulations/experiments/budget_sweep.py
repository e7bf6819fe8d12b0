"""Experiment 8, the byte-budget sweep: accuracy against what each site may upload per round, from dense to
10,000x less, for full fine-tuning with DARE under ``upload.budget-bytes`` and for PaFi by its mask size.

Full mode: the frontier's setting (MiniLM on Rotten Tomatoes, 8 sites non-IID
by movie, 4 sampled per round, 6 rounds x 12 local steps). Full fine-tuning
with DARE and int8 values at budgets of 1/10, 1/100 and 1/1,000 of a dense
fp32 delta, and again with every tensor pruned (``prune.min-size`` = 0) at
those and 1/10,000, which the tensors sent whole exceed; PaFi (no
pruner touches its values) at mask densities 5 %, 0.5 % and 0.05 % with fp16
and int8 values; references: the uncompressed federation and centralized full
fine-tuning on the same steps.
"""

from __future__ import annotations

from typing import Any

from fedelta.common.report import human_bytes
from fedelta.simulations.experiments import frontier
from fedelta.simulations.experiments.harness import accuracy_axes, figure, overrides_text, save
from fedelta.simulations.experiments.runner import QUICK, Outcome, Run, centralized_reference, federated_reference
from fedelta.simulations.experiments.thousandfold import MINILM_DELTA_BYTES, QUICK_DELTA_BYTES

NAME = "budget_sweep"
TITLE = "Byte-budget sweep: accuracy against upload bytes per site and round"
FULL = dict(frontier.FULL)
FRACTIONS = (10, 100, 1000)  # budget = dense fp32 delta / fraction; small tensors sent whole, as by default
EVERY_TENSOR_FRACTIONS = (10, 100, 1000, 10000)  # 1/10,000 is below what the small tensors alone take
DARE = {"method.name": "full", "prune.name": "dare", "quant.values": "int8"}
EVERY_TENSOR = {**DARE, "prune.min-size": 0}
PAFI_POINTS: dict[str, dict[str, Any]] = {
    "pafi, 5 %, fp16": {"pafi.density": 0.05, "quant.values": "fp16"},
    "pafi, 0.5 %, fp16": {"pafi.density": 0.005, "quant.values": "fp16"},
    "pafi, 0.5 %, int8": {"pafi.density": 0.005, "quant.values": "int8"},
    "pafi, 0.05 %, int8": {"pafi.density": 0.0005, "quant.values": "int8"},
}
PAFI = {"method.name": "pafi", "local.lr": 1e-2, "prune.name": "none"}


def plan(quick: bool) -> list[Run]:
    base = dict(QUICK) if quick else dict(FULL)
    delta_bytes = QUICK_DELTA_BYTES if quick else MINILM_DELTA_BYTES
    runs = []
    for series, label, overrides, fractions in (
        ("full + DARE under upload.budget-bytes", "full, dare", DARE, (100,) if quick else FRACTIONS),
        ("the same, every tensor pruned", "full, dare (every tensor pruned)", EVERY_TENSOR,
         () if quick else EVERY_TENSOR_FRACTIONS),
    ):
        runs += [Run(f"{label}, budget 1/{fraction:,}",
                     {**base, **overrides, "upload.budget-bytes": delta_bytes // fraction},
                     {"series": series, "budget": delta_bytes // fraction}) for fraction in fractions]
    points = {label: PAFI_POINTS[label] for label in (("pafi, 0.5 %, int8",) if quick else PAFI_POINTS)}
    runs += [Run(label, {**base, **PAFI, **overrides}, {"series": "PaFi by mask density and value type"})
             for label, overrides in points.items()]
    runs += [federated_reference(base), centralized_reference(base)]
    return runs


def describe(quick: bool) -> str:
    if quick:
        return f"Quick configuration (tiny BERT): {overrides_text(QUICK)}."
    return (f"MiniLM on Rotten Tomatoes, sites non-IID by movie, {overrides_text(FULL)}. Full fine-tuning runs "
            f"with {overrides_text(DARE)} and `upload.budget-bytes` set to the given share of a dense fp32 delta "
            f"({human_bytes(MINILM_DELTA_BYTES)}): each site keeps the largest fraction of every pruned tensor "
            "whose encoded upload fits, and reports it ('kept'). Tensors under `prune.min-size` (1,024 elements: "
            "biases and normalization weights) are sent whole, as by default; they alone take more than 1/10,000 "
            "of a dense delta, so the second series prunes every tensor (`prune.min-size=0`). PaFi runs with "
            f"{overrides_text(PAFI)} at the listed `pafi.density` and `quant.values`. 'per upload' is the mean "
            "upload of a site in a round; 'vs dense' divides a dense fp32 delta by it.")


def per_upload(outcome: Outcome) -> float:
    uploads = sum(int(row.get("sites", 0)) for row in outcome.trained_rows())
    return outcome.upload_bytes / uploads if uploads else 0.0


def kept(outcome: Outcome) -> str:
    values = [float(row["site_budget_keep"]) for row in outcome.trained_rows() if "site_budget_keep" in row]
    return f"{sum(values) / len(values):.2%}" if values else "-"


def table(outcomes: list[Outcome]) -> str:
    lines = ["| run | final acc | best acc | per upload | vs dense fp32 | budget | kept |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for o in sorted(outcomes, key=lambda o: -o.accuracy):
        if o.run.tags.get("reference") == "centralized":
            sent = "- | -"
        else:
            sent = f"{human_bytes(per_upload(o))} | {o.summary['upload_reduction']:,.0f}x"
        budget = human_bytes(o.run.tags["budget"]) if "budget" in o.run.tags else "-"
        lines.append(f"| {o.run.label} | {o.accuracy:.3f} | {o.summary['best_accuracy']:.3f} | {sent} | {budget} "
                     f"| {kept(o)} |")
    return "\n".join(lines)


def plot(outcomes: list[Outcome], path) -> None:
    plt = figure()
    fig, ax = plt.subplots(figsize=(8, 5))
    for series, marker in (("full + DARE under upload.budget-bytes", "o-"), ("the same, every tensor pruned", "^--"),
                           ("PaFi by mask density and value type", "s-")):
        points = sorted((per_upload(o), o.accuracy) for o in outcomes if o.run.tags.get("series") == series)
        if points:
            ax.plot([x for x, _ in points], [y for _, y in points], marker, label=series)
    for o in outcomes:
        if o.run.tags.get("reference") == "federated":
            ax.scatter([per_upload(o)], [o.accuracy], marker="*", s=120, color="black", zorder=3, label=o.run.label)
        elif o.run.tags.get("reference") == "centralized":
            ax.axhline(o.accuracy, linestyle="--", color="gray", label=o.run.label)
    accuracy_axes(ax, "bytes per upload, per site and round (log)", log_x=True)
    save(plt, fig, path)
