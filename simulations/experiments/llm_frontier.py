"""The LLM frontier: every method federated on SmolLM2-135M-Instruct, accuracy against upload bytes.

Full mode: the ``llm`` preset's federation (Rotten Tomatoes as an instruction
task, 4 sites by movie, 300 held-out reviews scored by the likelier label word)
for each method: full fine-tuning unpruned, with DARE p = 0.9 and with
DARE p = 0.99, and lnbias, pafi, lora, svfit and hiwi unpruned (what they send
is small already, and pafi, lora and svfit send formed entries that no pruner
touches); every run sends int8 values. References: the zero-shot model
(version 0) and centralized full fine-tuning (one site holding all the training
data, as many optimizer steps as the federation takes in all).
"""

from __future__ import annotations

from typing import Any

from fedelta.common.report import human_bytes
from fedelta.simulations.experiments.harness import accuracy_axes, figure, frontier, overrides_text, save
from fedelta.simulations.experiments.runner import Outcome, Run, defaults
from fedelta.simulations.presets import preset

NAME = "llm_frontier"
TITLE = "LLM frontier: SmolLM2-135M-Instruct, accuracy against upload bytes"
QUICK: dict[str, Any] = {**preset("llm-smoke"), "rounds": 1, "local.steps": 2}
# Learning rates per method: the body's full fine-tuning takes small steps; methods that train few
# parameters (or a reparametrisation of them) take larger ones, as in the MiniLM methods comparison.
METHODS: dict[str, dict[str, Any]] = {
    "full": {"local.lr": 5e-5},
    "lnbias": {"local.lr": 3e-3, "prune.name": "none"},
    "pafi": {"local.lr": 1e-3, "prune.name": "none"},
    "lora": {"local.lr": 1e-3, "prune.name": "none"},
    "svfit": {"local.lr": 3e-3, "prune.name": "none"},
    "hiwi": {"local.lr": 1e-2, "prune.name": "none"},
}
FULL_PRUNING: dict[str, dict[str, Any]] = {
    "none": {"prune.name": "none"},
    "dare p=0.9": {"prune.name": "dare", "prune.drop": 0.9},
    "dare p=0.99": {"prune.name": "dare", "prune.drop": 0.99},
}


def base(quick: bool) -> dict[str, Any]:
    return dict(QUICK) if quick else preset("llm")


def plan(quick: bool) -> list[Run]:
    settings = base(quick)
    runs = []
    for pruning, overrides in ({"dare p=0.9": FULL_PRUNING["dare p=0.9"]} if quick else FULL_PRUNING).items():
        runs.append(Run(f"full, {pruning}", {**settings, "method.name": "full", **METHODS["full"], **overrides},
                        {"method": "full", "pruning": pruning}))
    for method in (("lnbias",) if quick else ("lnbias", "pafi", "lora", "svfit", "hiwi")):
        runs.append(Run(f"{method}", {**settings, "method.name": method, **METHODS[method]},
                        {"method": method, "pruning": "none"}))
    steps = int(settings["local.steps"]) * defaults().with_overrides(settings).federation.sites_per_round
    runs.append(Run("reference: centralized full",
                    {**settings, "method.name": "full", **METHODS["full"], "prune.name": "none",
                     "quant.values": "fp32", "federation.num-sites": 1, "federation.min-sites": 1,
                     "data.partition": "iid", "local.steps": steps},
                    {"reference": "centralized"}))
    return runs


def describe(quick: bool) -> str:
    if quick:
        return f"Quick configuration (tiny Llama): {overrides_text(QUICK)}."
    return (f"SmolLM2-135M-Instruct as the `llm` preset runs it: {overrides_text(preset('llm'))}; per method "
            f"{overrides_text({m: o['local.lr'] for m, o in METHODS.items()})} as `local.lr`, full fine-tuning "
            "with DARE as listed. Accuracy is on 300 held-out reviews (the likelier of `positive` / `negative`, "
            "binomial standard error about 2.4 points); zero-shot is version 0 of any run. Upload bytes are the "
            "total over all rounds and sites; 'vs dense' divides what the same sites would send as dense fp32 "
            "deltas of the whole model (538 MB each) by it. The centralized reference is one site holding all "
            "the training data, taking as many optimizer steps per round as the sites take together; it sends "
            "nothing and is not on the plot.")


def zero_shot(outcomes: list[Outcome]) -> float | None:
    """Version 0's accuracy: the same untrained model in every run."""
    for outcome in outcomes:
        if outcome.rows and outcome.rows[0]["round"] == 0:
            return float(outcome.rows[0]["accuracy"])
    return None


def table(outcomes: list[Outcome]) -> str:
    federated = [o for o in outcomes if "reference" not in o.run.tags]
    marks = {id(federated[i]) for i in frontier([(o.upload_bytes, o.accuracy) for o in federated])}
    lines = ["| run | final acc | best acc | final loss | total upload | vs dense fp32 | frontier |",
             "|---|---:|---:|---:|---:|---:|:---:|"]
    start = zero_shot(outcomes)
    if start is not None:
        lines.append(f"| reference: zero-shot (version 0) | {start:.3f} | - | - | - | - | |")
    for o in sorted(outcomes, key=lambda o: -o.accuracy):
        sent = ("- | -" if o.run.tags.get("reference") == "centralized"
                else f"{human_bytes(o.upload_bytes)} | {o.summary['upload_reduction']:.0f}x")
        lines.append(f"| {o.run.label} | {o.accuracy:.3f} | {o.summary['best_accuracy']:.3f} "
                     f"| {o.summary['final_loss']:.3f} | {sent} | {'yes' if id(o) in marks else ''} |")
    return "\n".join(lines)


def plot(outcomes: list[Outcome], path) -> None:
    plt = figure()
    federated = [o for o in outcomes if "reference" not in o.run.tags and o.upload_bytes > 0]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter([o.upload_bytes for o in federated], [o.accuracy for o in federated], color="tab:blue", zorder=3)
    for o in federated:
        ax.annotate(o.run.label, (o.upload_bytes, o.accuracy), fontsize=7, xytext=(4, 4), textcoords="offset points")
    best = [federated[i] for i in frontier([(o.upload_bytes, o.accuracy) for o in federated])]
    ax.plot([o.upload_bytes for o in best], [o.accuracy for o in best], color="tab:red", label="frontier")
    references = [(o.accuracy, o.run.label) for o in outcomes if "reference" in o.run.tags]
    start = zero_shot(outcomes)
    if start is not None:
        references.append((start, "reference: zero-shot (version 0)"))
    for (accuracy, label), style in zip(references, ("--", ":"), strict=False):
        ax.axhline(accuracy, linestyle=style, color="gray", label=label)
    accuracy_axes(ax, "total upload bytes (log)", log_x=True)
    save(plt, fig, path)
