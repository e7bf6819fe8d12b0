"""Experiment 7, three orders of magnitude: configurations sending 1,000x less than dense fp32 deltas up and
100x less down, against the uncompressed federation, on a budget of about 1,000 centralized-equivalent steps.

Full mode: MiniLM on Rotten Tomatoes, 8 sites non-IID by movie, 4 sampled per
round, 10 rounds x 25 local steps (1,000 site steps in all), 1,000 test
reviews. Runs: the uncompressed federation (full fine-tuning, fp32, unpruned),
centralized full fine-tuning with the same 1,000 steps, full fine-tuning with
DARE p = 0.9 (the 43x point of the frontier), PaFi with fp16 and int8 values,
and full fine-tuning with DARE under byte budgets both ways
(``upload.budget-bytes`` = 1/1,000 and ``downlink.budget-bytes`` = 1/100 of a
dense fp32 delta).
"""

from __future__ import annotations

from typing import Any

from fedelta.common.report import human_bytes
from fedelta.simulations.experiments import frontier
from fedelta.simulations.experiments.harness import accuracy_axes, figure, overrides_text, save
from fedelta.simulations.experiments.runner import QUICK, Outcome, Run, centralized_reference, federated_reference

NAME = "thousandfold"
TITLE = "Three orders of magnitude: 1,000x less up, 100x less down"
FULL = dict(frontier.LONG)  # the frontier's longer schedule: its uncompressed and centralized runs are shared
UP_TARGET, DOWN_TARGET, POINTS_TARGET = 1000.0, 100.0, 0.01
MINILM_DELTA_BYTES = 90_855_944  # a dense fp32 delta of MiniLM with its 2-class head
QUICK_DELTA_BYTES = 4_045_704  # the same for the quick mode's tiny BERT


def candidates(delta_bytes: int) -> dict[str, dict[str, Any]]:
    """The compressed configurations, by label, the ones meant to meet the bar first."""
    return {
        "pafi, int8": {"method.name": "pafi", "local.lr": 1e-2, "prune.name": "none", "quant.values": "int8"},
        "full, dare under budgets (1/1000 up, 1/100 down), int8": {
            "method.name": "full", "prune.name": "dare", "quant.values": "int8",
            "upload.budget-bytes": delta_bytes // 1000, "downlink.prune": "magnitude",
            "downlink.budget-bytes": delta_bytes // 100},
    }


def context(delta_bytes: int) -> dict[str, dict[str, Any]]:
    """Runs that place the candidates: PaFi's fp16 values and the frontier's 43x point, on the same schedule."""
    return {
        "pafi, fp16": {"method.name": "pafi", "local.lr": 1e-2, "prune.name": "none"},
        "full, dare p=0.9": {"method.name": "full", "prune.name": "dare", "prune.drop": 0.9},
    }


def plan(quick: bool) -> list[Run]:
    base = dict(QUICK) if quick else dict(FULL)
    delta_bytes = QUICK_DELTA_BYTES if quick else MINILM_DELTA_BYTES
    runs = [federated_reference(base)]
    chosen = candidates(delta_bytes)
    if quick:
        chosen = {label: chosen[label] for label in ("pafi, int8",)}
    runs += [Run(label, {**base, **overrides}, {"candidate": label}) for label, overrides in chosen.items()]
    runs.append(centralized_reference(base))
    if not quick:
        runs += [Run(label, {**base, **overrides}, {"context": label})
                 for label, overrides in context(delta_bytes).items()]
    return runs


def describe(quick: bool) -> str:
    if quick:
        return f"Quick configuration (tiny BERT): {overrides_text(QUICK)}."
    return (f"MiniLM on Rotten Tomatoes, sites non-IID by movie, {overrides_text(FULL)}, default settings otherwise "
            "(PaFi at its methods-comparison learning rate 1e-2). 'up' divides what the sites would send as dense "
            "fp32 deltas of the whole model by what they sent; 'down' divides the same dense total by the bytes "
            "the sites received. 'gap' is the final accuracy minus the uncompressed federation's final accuracy. "
            f"A run meets the bar when up >= {UP_TARGET:,.0f}x, down >= {DOWN_TARGET:,.0f}x and its final accuracy "
            f"is within {POINTS_TARGET * 100:.0f} point of the uncompressed federation's. The centralized reference "
            "is one site holding all the training data, taking as many steps per round as the sampled sites take "
            "together.")


def best_of_final_two(outcome: Outcome) -> float:
    accuracies = [float(row["accuracy"]) for row in outcome.rows if row["round"] > 0 and "accuracy" in row]
    return max(accuracies[-2:])


def down_reduction(outcome: Outcome) -> float:
    received = float(outcome.summary.get("total_downlink_bytes") or 0)
    return float(outcome.summary["total_dense_update_bytes"]) / received if received else float("inf")


def reference(outcomes: list[Outcome]) -> Outcome | None:
    return next((o for o in outcomes if o.run.tags.get("reference") == "federated"), None)


def meets_bar(outcome: Outcome, bar: Outcome | None) -> bool:
    return (bar is not None and "candidate" in outcome.run.tags
            and outcome.summary["upload_reduction"] >= UP_TARGET and down_reduction(outcome) >= DOWN_TARGET
            and outcome.accuracy >= bar.accuracy - POINTS_TARGET)


def table(outcomes: list[Outcome]) -> str:
    bar = reference(outcomes)
    lines = ["| run | final acc | best of final two | gap | total upload | up | down | meets the bar |",
             "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for o in sorted(outcomes, key=lambda o: -o.accuracy):
        gap = f"{(o.accuracy - bar.accuracy) * 100:+.1f}" if bar is not None else "-"
        if o.run.tags.get("reference") == "centralized":
            sent = "- | - | -"
        else:
            sent = (f"{human_bytes(o.upload_bytes)} | {o.summary['upload_reduction']:,.0f}x "
                    f"| {down_reduction(o):,.0f}x")
        lines.append(f"| {o.run.label} | {o.accuracy:.3f} | {best_of_final_two(o):.3f} | {gap} | {sent} "
                     f"| {'yes' if meets_bar(o, bar) else ''} |")
    return "\n".join(lines)


def plot(outcomes: list[Outcome], path) -> None:
    plt = figure()
    fig, (up, down) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    sending = [o for o in outcomes if o.run.tags.get("reference") != "centralized"]
    for ax, reduction, target, name in ((up, lambda o: o.summary["upload_reduction"], UP_TARGET, "up"),
                                        (down, down_reduction, DOWN_TARGET, "down")):
        ax.scatter([reduction(o) for o in sending], [o.accuracy for o in sending], color="tab:blue", zorder=3)
        for o in sending:
            ax.annotate(o.run.label, (reduction(o), o.accuracy), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.axvline(target, color="tab:red", linestyle=":", label=f"{target:,.0f}x")
        for o in outcomes:
            if o.run.tags.get("reference") == "centralized":
                ax.axhline(o.accuracy, linestyle="--", color="gray", label=o.run.label)
        accuracy_axes(ax, f"times less than dense fp32, {name} (log)", log_x=True)
    save(plt, fig, path)
