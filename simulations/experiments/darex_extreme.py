"""Experiment 2, DAREx at the extreme: DARE, DAREx-q (both q modes), magnitude and importance at p = 0.9,
0.99, 0.999, with AdamW and AdamR, pruning every round, with and without error feedback.

Full mode: MiniLM on Rotten Tomatoes, 4 sites by movie, 3 rounds x 8 local
steps at learning rate 3e-4 (3x the default, so 24 steps per site move the
model off the majority class), fp16 values, 500 test reviews; error feedback
runs with AdamW only
(36 federations, and the same federation unpruned with each optimizer as the
reference). Combinations the settings refuse (error feedback with a rescaling
pruner) are listed as such.

Longer schedule (``--long``): 10 rounds x 25 local steps (1,000 site steps),
1,000 test reviews; DARE and DAREx-q (both q modes) at p = 0.99 and 0.999 with
AdamW, and the unpruned federation: 7 federations.
"""

from __future__ import annotations

from typing import Any

from fedelta.common.report import human_bytes
from fedelta.simulations.experiments.harness import accuracy_axes, figure, overrides_text, save
from fedelta.simulations.experiments.runner import QUICK, Outcome, Run

NAME = "darex_extreme"
TITLE = "DAREx at the extreme: pruners at p = 0.9, 0.99, 0.999"
FULL = {"rounds": 3, "local.steps": 8, "data.test-size": 500, "local.lr": 3e-4}
LONG = {**FULL, "rounds": 10, "local.steps": 25, "data.test-size": 1000}  # 1,000 site steps in all
# The longer schedule re-tests the claim itself (DAREx-q recovers what DARE loses at p >= 0.99) with AdamW only.
LONG_PRUNERS = ("dare", "darex-q unlabelled", "darex-q labelled")
LONG_DROPS, LONG_OPTIMIZERS = (0.99, 0.999), ("adamw",)
PRUNERS: dict[str, dict[str, Any]] = {
    "dare": {"prune.name": "dare"},
    "darex-q unlabelled": {"prune.name": "darex-q", "prune.q-mode": "unlabelled"},
    "darex-q labelled": {"prune.name": "darex-q", "prune.q-mode": "labelled"},
    "magnitude": {"prune.name": "magnitude"},
    "importance": {"prune.name": "importance"},
}
DROPS = (0.9, 0.99, 0.999)
OPTIMIZERS = ("adamw", "adamr")
FEEDBACK_BY_OPTIMIZER = {"adamw": (False, True), "adamr": (False,)}
LINE_BY_OPTIMIZER = {"adamw": "-", "adamr": "--"}
QUICK_PRUNERS = ("dare", "darex-q unlabelled", "magnitude")


def plan(quick: bool, long: bool = False) -> list[Run]:
    base = dict(QUICK) if quick else dict(LONG if long else FULL)
    pruners = QUICK_PRUNERS if quick else LONG_PRUNERS if long else tuple(PRUNERS)
    drops = (0.99,) if quick else LONG_DROPS if long else DROPS
    optimizers = ("adamr",) if quick else LONG_OPTIMIZERS if long else OPTIMIZERS
    runs = [Run(f"no pruning, {optimizer}", {**base, "prune.name": "none", "optimizer.name": optimizer},
                {"pruner": "none", "drop": 0.0, "optimizer": optimizer, "feedback": False})
            for optimizer in optimizers]
    for pruner in pruners:
        for drop in drops:
            for optimizer in optimizers:
                for feedback in (False,) if quick or long else FEEDBACK_BY_OPTIMIZER[optimizer]:
                    label = f"{pruner}, p={drop:g}, {optimizer}{', feedback' if feedback else ''}"
                    overrides = {**base, **PRUNERS[pruner], "prune.drop": drop, "optimizer.name": optimizer,
                                 "feedback.enabled": feedback}
                    runs.append(Run(label, overrides, {"pruner": pruner, "drop": drop, "optimizer": optimizer,
                                                        "feedback": feedback}))
    return runs


def describe(quick: bool, long: bool = False) -> str:
    base = QUICK if quick else {"model.path": "MiniLM", "data.name": "rotten-tomatoes", **(LONG if long else FULL)}
    if long:
        return (f"Full fine-tuning with {overrides_text(base)}, AdamW, no error feedback; every round each site "
                "prunes its delta with the row's pruner and drop rate p (the fraction of entries dropped). The claim "
                "re-tested: DAREx-q (its per-tensor q chosen without labels, or one global q chosen on a labelled "
                "validation split) recovers what DARE loses at p = 0.99 and beyond. The best round's accuracy is "
                "shown beside the final one.")
    return (f"Full fine-tuning with {overrides_text(base)}; every round each site prunes its delta with the "
            "row's pruner and drop rate p (the fraction of entries dropped). AdamR decays toward the round's base "
            "weights (optimizer.lambda = 0.1). Error feedback (where the pruner allows it) was run with AdamW "
            "only, to fit the grid into one session on this machine. Three rounds is early in training (accuracy still "
            "moves by several points from one round to the next), so the best round's accuracy is shown beside the "
            "final one as a measure of that swing, not as a chosen model.")


def table(outcomes: list[Outcome]) -> str:
    columns = sorted({(o.run.tags["optimizer"], o.run.tags["feedback"]) for o in outcomes})
    header = " | ".join(f"{opt}{' + feedback' if fb else ''}" for opt, fb in columns)
    lines = [f"| pruner | p | {header} |", "|---|---:|" + "---:|" * len(columns)]
    cells: dict[tuple, Outcome] = {
        (o.run.tags["pruner"], o.run.tags["drop"], o.run.tags["optimizer"], o.run.tags["feedback"]): o
        for o in outcomes
    }
    pruners = list(dict.fromkeys(o.run.tags["pruner"] for o in outcomes))
    for pruner in pruners:
        for drop in sorted({o.run.tags["drop"] for o in outcomes if o.run.tags["pruner"] == pruner}):
            row = [with_best(cells[(pruner, drop, *c)]) if (pruner, drop, *c) in cells else "-" for c in columns]
            lines.append(f"| {pruner} | {drop:g} | {' | '.join(row)} |")
    optimizer = columns[0][0]
    drops = sorted({o.run.tags["drop"] for o in outcomes if o.run.tags["pruner"] != "none"})
    uploads = [f"| pruner | {' | '.join(f'p = {d:g}' for d in drops)} |", "|---|" + "---:|" * len(drops)]
    for pruner in (p for p in pruners if p != "none"):
        row = [human_bytes(cells[(pruner, d, optimizer, False)].upload_bytes)
               if (pruner, d, optimizer, False) in cells else "-" for d in drops]
        uploads.append(f"| {pruner} | {' | '.join(row)} |")
    return ("Final accuracy, in brackets the best round's (`none`: the same federation with nothing pruned):"
            "\n\n" + "\n".join(lines)
            + f"\n\nUpload of a whole run (all sites and rounds), {optimizer} without feedback:\n\n"
            + "\n".join(uploads))


def with_best(outcome: Outcome) -> str:
    """Final accuracy and, in brackets, the best round's: how far the last round swung."""
    return f"{outcome.accuracy:.3f} ({outcome.summary['best_accuracy']:.3f})"


def plot(outcomes: list[Outcome], path) -> None:
    plt = figure()
    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[tuple[str, str, bool], list[Outcome]] = {}
    references = [o for o in outcomes if o.run.tags["pruner"] == "none"]
    for o in outcomes:
        if o not in references:
            series.setdefault((o.run.tags["pruner"], o.run.tags["optimizer"], o.run.tags["feedback"]), []).append(o)
    colors = {pruner: f"C{i}" for i, pruner in enumerate(dict.fromkeys(key[0] for key in series))}
    for (pruner, optimizer, feedback), points in series.items():
        points.sort(key=lambda o: o.run.tags["drop"])
        style = ":" if feedback else LINE_BY_OPTIMIZER[optimizer]
        label = f"{pruner}, {optimizer}{' + feedback' if feedback else ''}"
        ax.plot([1 - o.run.tags["drop"] for o in points], [o.accuracy for o in points], marker="o",
                color=colors[pruner], linestyle=style, label=label)
    for o in references:
        ax.axhline(o.accuracy, linestyle="-.", color="grey", linewidth=0.8)
        ax.text(0.01, o.accuracy, f"no pruning, {o.run.tags['optimizer']}", transform=ax.get_yaxis_transform(),
                fontsize=7, color="grey", va="bottom")
    accuracy_axes(ax, "fraction kept, 1 - p (log)", log_x=True)
    ax.invert_xaxis()
    save(plt, fig, path)
