"""Experiment 3, PERP recovery: accuracy of pruned uploads with and without a few recovery steps
(``prune.recover-steps``) that retrain only norms and biases after pruning.

Full mode: MiniLM on Rotten Tomatoes, 4 sites by movie, 3 rounds x 8 local
steps at learning rate 3e-4, 500 test reviews (as experiment 2, whose runs
without recovery are reused), magnitude and DARE at p = 0.9, 0.99 and 0.999, recovery 0 or 8 steps.
Longer schedule (``--long``): 10 rounds x 25 local steps, 1,000 test reviews, p = 0.99 and 0.999.
"""

from __future__ import annotations

from fedelta.simulations.experiments.darex_extreme import with_best
from fedelta.simulations.experiments.harness import figure, overrides_text, save
from fedelta.simulations.experiments.runner import QUICK, Outcome, Run

NAME = "perp"
TITLE = "PERP recovery after pruning"
FULL = {"rounds": 3, "local.steps": 8, "data.test-size": 500, "local.lr": 3e-4}
LONG = {**FULL, "rounds": 10, "local.steps": 25, "data.test-size": 1000}  # 1,000 site steps in all
LONG_DROPS = (0.99, 0.999)  # where the claim is that recovery matters
PRUNERS = ("magnitude", "dare")
DROPS = (0.9, 0.99, 0.999)
RECOVER_STEPS = 8


def plan(quick: bool, long: bool = False) -> list[Run]:
    base = dict(QUICK) if quick else dict(LONG if long else FULL)
    drops = (0.99,) if quick else LONG_DROPS if long else DROPS
    pruners = ("magnitude",) if quick else PRUNERS
    recover = 2 if quick else RECOVER_STEPS
    runs = []
    for pruner in pruners:
        for drop in drops:
            for steps in (0, recover):
                label = f"{pruner}, p={drop:g}, recover {steps}"
                runs.append(Run(label, {**base, "prune.name": pruner, "prune.drop": drop, "prune.recover-steps": steps},
                                {"pruner": pruner, "drop": drop, "recover": steps}))
    return runs


def describe(quick: bool, long: bool = False) -> str:
    base = QUICK if quick else {"model.path": "MiniLM", "data.name": "rotten-tomatoes", **(LONG if long else FULL)}
    return (f"Full fine-tuning with {overrides_text(base)}; after pruning, each site runs `prune.recover-steps` "
            "local steps training only LayerNorm and bias tensors (sent dense) before it uploads. Accuracies are the "
            "final round's, in brackets the best round's; change compares the final ones.")


def table(outcomes: list[Outcome]) -> str:
    by_key = {(o.run.tags["pruner"], o.run.tags["drop"], o.run.tags["recover"] > 0): o for o in outcomes}
    lines = ["| pruner | p | without recovery | with recovery | change | upload with / without |",
             "|---|---:|---:|---:|---:|---:|"]
    for pruner, drop in dict.fromkeys((o.run.tags["pruner"], o.run.tags["drop"]) for o in outcomes):
        plain, recovered = by_key.get((pruner, drop, False)), by_key.get((pruner, drop, True))
        if plain is None or recovered is None:
            continue
        change, upload_ratio = recovered.accuracy - plain.accuracy, recovered.upload_bytes / plain.upload_bytes
        lines.append(f"| {pruner} | {drop:g} | {with_best(plain)} | {with_best(recovered)} "
                     f"| {change:+.3f} | {upload_ratio:.2f}x |")
    return "\n".join(lines)


def plot(outcomes: list[Outcome], path) -> None:
    plt = figure()
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [o.run.label for o in outcomes]
    colors = ["tab:green" if o.run.tags["recover"] else "tab:gray" for o in outcomes]
    ax.barh(labels, [o.accuracy for o in outcomes], color=colors)
    ax.set_xlabel("final accuracy")
    save(plt, fig, path)
