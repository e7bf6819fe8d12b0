"""The DAREx and PERP claims on an LLM: DARE and DAREx-q at p = 0.99 and 0.999, magnitude pruning at p = 0.99
without and with PERP recovery steps, on SmolLM2-135M-Instruct over 1,000 site steps.

Full mode: ``llm_thousandfold``'s schedule (the ``llm`` preset for 5 rounds x
50 local steps, every training review, 1,000 test reviews, int8 values), whose
uncompressed federation is the reference (and is reused from there when it
ran). Runs, in the order they are made: DARE and DAREx-q (unlabelled q) at
p = 0.99, the same at p = 0.999 (the DAREx claim: DAREx-q recovers what DARE
loses at p >= 0.99), then magnitude at p = 0.99 without and with 8 recovery
steps (the PERP claim: a few steps training only norms and biases after
magnitude pruning recover what pruning lost). DARE gets no recovery steps:
at p = 0.99 it ends level with the uncompressed federation, so there is
nothing for them to recover (on MiniLM, ``perp --long``, they added nothing
to DARE either)."""

from __future__ import annotations

from typing import Any

from fedelta.simulations.experiments import darex_extreme, llm_frontier, llm_thousandfold, perp, thousandfold
from fedelta.simulations.experiments.harness import figure, overrides_text, save
from fedelta.simulations.experiments.runner import Outcome, Run

NAME = "llm_pruning"
TITLE = "DAREx and PERP on SmolLM2-135M-Instruct: pruners at p = 0.99 and 0.999, with and without recovery"
FULL = dict(llm_thousandfold.FULL)
QUICK = dict(llm_thousandfold.QUICK)
DROPS = (0.99, 0.999)
CLAIMS = ("dare", "darex-q unlabelled")  # the DAREx claim's pruners, at every drop
RECOVERED = ("magnitude",)  # the PERP claim's pruner, at the first drop


def _run(base: dict[str, Any], pruner: str, drop: float, recover: int) -> Run:
    overrides = {**base, **llm_frontier.METHODS["full"], **darex_extreme.PRUNERS[pruner], "prune.drop": drop,
                 "prune.recover-steps": recover}
    label = f"{pruner}, p={drop:g}" + (f", recover {recover}" if recover else "")
    return Run(label, overrides, {"pruner": pruner, "drop": drop, "recover": recover})


def plan(quick: bool) -> list[Run]:
    base = dict(QUICK) if quick else dict(FULL)
    drops = DROPS[:1] if quick else DROPS
    recover = 2 if quick else perp.RECOVER_STEPS
    runs = [llm_thousandfold.uncompressed(base)]
    runs += [_run(base, pruner, drop, 0) for drop in drops for pruner in CLAIMS]
    runs.append(_run(base, "magnitude", drops[0], 0))
    runs += [_run(base, pruner, drops[0], recover) for pruner in RECOVERED]
    return runs


def describe(quick: bool) -> str:
    if quick:
        return f"Quick configuration (tiny Llama): {overrides_text(QUICK)}."
    return (f"Full fine-tuning of SmolLM2-135M-Instruct with {overrides_text(FULL)} and `local.lr` 5e-5; every "
            "round each site prunes its delta with the row's pruner and drop rate p before it uploads (DAREx-q "
            "with its unlabelled q, fitted on layer inputs), and with recovery it then runs `prune.recover-steps` "
            "local steps training only the norm weights (sent dense). Accuracy is on 1,000 held-out reviews "
            "(binomial standard error about 1.3 points); in brackets the best round's. The reference is the "
            "uncompressed federation (fp32, unpruned) on the same schedule.")


def table(outcomes: list[Outcome]) -> str:
    reference = thousandfold.reference(outcomes)
    lines = ["| run | p | recovery steps | final acc (best) | against the uncompressed federation | upload |",
             "|---|---:|---:|---:|---:|---:|"]
    for o in outcomes:
        if o.refused:
            lines.append(f"| {o.run.label} | - | - | not run: {o.refused} | - | - |")
            continue
        gap = f"{(o.accuracy - reference.accuracy) * 100:+.1f}" if reference is not None else "-"
        drop = f"{o.run.tags['drop']:g}" if "drop" in o.run.tags else "-"
        recover = str(o.run.tags.get("recover", "-"))
        lines.append(f"| {o.run.label} | {drop} | {recover} | {darex_extreme.with_best(o)} | {gap} "
                     f"| {o.summary['upload_reduction']:,.0f}x less than dense fp32 |")
    return "\n".join(lines)


def plot(outcomes: list[Outcome], path) -> None:
    plt = figure()
    fig, ax = plt.subplots(figsize=(7, 4))
    done = [o for o in outcomes if not o.refused]
    colors = ["gray" if "reference" in o.run.tags else "tab:green" if o.run.tags.get("recover") else "tab:blue"
              for o in done]
    ax.barh([o.run.label for o in done], [o.accuracy for o in done], color=colors)
    ax.set_xlabel("final accuracy")
    save(plt, fig, path)
