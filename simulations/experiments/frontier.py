"""Experiment 1, the methods frontier: every method x a few pruning settings, accuracy against bytes sent.

Full mode: MiniLM on Rotten Tomatoes, 8 sites non-IID by movie, half of them
sampled per round, 6 rounds x 12 local steps; full fine-tuning with three
pruning settings, lnbias and hiwi unpruned and with DARE p = 0.9, pafi, lora
and svfit unpruned (they send values on a mask, factors and singular values
whole, which no pruner touches);
references: centralized full fine-tuning (one site holding all the training
data, as many optimizer steps as the federation takes in all) and uncompressed
federated full fine-tuning (fp32, no pruning).
Longer schedule (``--long``): 10 rounds x 25 local steps (1,000 site steps in
all, as many as about 1,000 centralized steps), 1,000 test reviews.
"""

from __future__ import annotations

from typing import Any

from fedelta.common.report import human_bytes
from fedelta.simulations.compare_methods import RUNS as METHOD_RUNS
from fedelta.simulations.experiments.harness import accuracy_axes, figure, frontier, overrides_text, save
from fedelta.simulations.experiments.runner import QUICK, Outcome, Run, centralized_reference, federated_reference

NAME = "frontier"
TITLE = "Methods frontier: accuracy against upload bytes"
FULL = {"federation.num-sites": 8, "federation.fraction-train": 0.5, "rounds": 6, "local.steps": 12}
LONG = {**FULL, "rounds": 10, "local.steps": 25, "data.test-size": 1000}  # 1,000 site steps in all
PRUNING: dict[str, dict[str, Any]] = {
    "none": {"prune.name": "none"},
    "dare p=0.9": {"prune.name": "dare", "prune.drop": 0.9},
    "magnitude 1% + feedback": {"prune.name": "magnitude", "prune.density": 0.01, "feedback.enabled": True},
}
# pafi, lora and svfit send formed entries whole (values on the base's mask, factors, singular-value
# offsets): the pruners never touch them, so only their unpruned runs are planned.
FULL_PRUNING_BY_METHOD = {"full": tuple(PRUNING), "pafi": ("none",), "lora": ("none",), "svfit": ("none",)}
FULL_PRUNING_OTHERS = ("none", "dare p=0.9")
QUICK_GRID = {"full": ("dare p=0.9",), "lnbias": ("none",)}


def plan(quick: bool, long: bool = False) -> list[Run]:
    base = dict(QUICK) if quick else dict(LONG if long else FULL)
    grid = QUICK_GRID if quick else {method: FULL_PRUNING_BY_METHOD.get(method, FULL_PRUNING_OTHERS)
                                     for method in METHOD_RUNS}
    runs = []
    for method, prunings in grid.items():
        lr = {} if quick else {k: float(v) for k, v in METHOD_RUNS[method].items() if k == "local.lr"}
        for pruning in prunings:
            runs.append(Run(f"{method}, {pruning}", {**base, "method.name": method, **lr, **PRUNING[pruning]},
                            {"method": method, "pruning": pruning}))
    runs += [federated_reference(base), centralized_reference(base)]
    return runs


def describe(quick: bool, long: bool = False) -> str:
    if quick:
        return f"Quick configuration (tiny BERT): {overrides_text(QUICK)}."
    return (f"MiniLM on Rotten Tomatoes, sites non-IID by movie, {overrides_text(LONG if long else FULL)}, "
            "default settings "
            "otherwise; each method's learning rate as in the methods comparison. Upload bytes are the total "
            "over all rounds and sites. The centralized reference is one site holding all the training data, taking "
            "as many optimizer steps per round as the sampled sites take together; it sends nothing and is not on "
            "the plot. Frontier points: no other run sends fewer or equal bytes with higher accuracy. 'last round' "
            "is the accuracy change over the final round: near zero where a run has plateaued.")


def table(outcomes: list[Outcome]) -> str:
    on_frontier = set(frontier([(o.upload_bytes, o.accuracy) for o in outcomes if "reference" not in o.run.tags]))
    federated = [o for o in outcomes if "reference" not in o.run.tags]
    marks = {id(federated[i]) for i in on_frontier}
    lines = ["| run | final acc | best acc | last round | total upload | vs dense fp32 | frontier |",
             "|---|---:|---:|---:|---:|---:|:---:|"]
    for o in sorted(outcomes, key=lambda o: -o.accuracy):
        sent = ("- | -" if o.run.tags.get("reference") == "centralized"
                else f"{human_bytes(o.upload_bytes)} | {o.summary['upload_reduction']:.0f}x")
        lines.append(f"| {o.run.label} | {o.accuracy:.3f} | {o.summary['best_accuracy']:.3f} | {last_change(o)} "
                     f"| {sent} | {'yes' if id(o) in marks else ''} |")
    return "\n".join(lines)


def last_change(outcome: Outcome) -> str:
    """Accuracy change over the final round, signed, or "-" for a one-round run."""
    accuracies = [row["accuracy"] for row in outcome.rows if "accuracy" in row]
    return f"{accuracies[-1] - accuracies[-2]:+.3f}" if len(accuracies) >= 2 else "-"


def plot(outcomes: list[Outcome], path) -> None:
    plt = figure()
    federated = [o for o in outcomes if "reference" not in o.run.tags and o.upload_bytes > 0]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter([o.upload_bytes for o in federated], [o.accuracy for o in federated], color="tab:blue", zorder=3)
    best = [federated[i] for i in frontier([(o.upload_bytes, o.accuracy) for o in federated])]
    ax.plot([o.upload_bytes for o in best], [o.accuracy for o in best], color="tab:red", label="frontier")
    for o in best:
        ax.annotate(o.run.label, (o.upload_bytes, o.accuracy), fontsize=7, xytext=(4, 4), textcoords="offset points")
    for o, style in zip([o for o in outcomes if "reference" in o.run.tags], ("--", ":"), strict=False):
        ax.axhline(o.accuracy, linestyle=style, color="gray", label=o.run.label)
    accuracy_axes(ax, "total upload bytes (log)", log_x=True)
    save(plt, fig, path)
