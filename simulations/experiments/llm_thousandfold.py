"""Three orders of magnitude on an LLM: SmolLM2-135M-Instruct configurations sending 1,000x less than dense
fp32 deltas up and 100x less down, against the uncompressed federation, on 1,000 centralized-equivalent steps.

Full mode: the ``llm`` preset's federation (Rotten Tomatoes as an instruction
task, 4 sites by movie, every site every round) for 5 rounds x 50 local steps
(1,000 site steps of 8 examples), every training review, 1,000 test reviews.
Runs, in the order they are made: the uncompressed federation (full
fine-tuning, fp32, unpruned), full fine-tuning with DARE under byte budgets
both ways (``upload.budget-bytes`` = 1/1,000 and ``downlink.budget-bytes`` =
1/100 of a dense fp32 delta, int8 values), hiwi (the norm gains in front of
each feed-forward block, about 30,000x under dense on the LLM frontier), and
centralized full fine-tuning on the same 1,000 steps. Tables and the plot are
``thousandfold``'s, with the same bar.
"""

from __future__ import annotations

from typing import Any

from fedelta.simulations.experiments import llm_frontier, thousandfold
from fedelta.simulations.experiments.harness import overrides_text
from fedelta.simulations.experiments.runner import Run, centralized_reference, federated_reference
from fedelta.simulations.presets import preset

NAME = "llm_thousandfold"
TITLE = "Three orders of magnitude on SmolLM2-135M-Instruct: 1,000x less up, 100x less down"
# 4 sites x 5 rounds x 50 steps = 1,000 site steps; every training review is some site's (no cap).
FULL: dict[str, Any] = {**preset("llm"), "rounds": 5, "local.steps": 50, "data.test-size": 1000,
                        "data.max-site-examples": 0}
QUICK = dict(llm_frontier.QUICK)
SMOLLM2_DELTA_BYTES = 538_060_032  # a dense fp32 delta of SmolLM2-135M (tied embeddings counted once)
QUICK_DELTA_BYTES = 3_989_376  # the same for the quick mode's tiny Llama


def candidates(delta_bytes: int) -> dict[str, dict[str, Any]]:
    """The compressed configurations, by label, in the order they run."""
    budgeted = thousandfold.candidates(delta_bytes)["full, dare under budgets (1/1000 up, 1/100 down), int8"]
    return {
        "full, dare under budgets (1/1000 up, 1/100 down), int8": {**budgeted, **llm_frontier.METHODS["full"]},
        "hiwi, int8": {"method.name": "hiwi", **llm_frontier.METHODS["hiwi"], "quant.values": "int8"},
    }


def uncompressed(base: dict[str, Any]) -> Run:
    """The uncompressed federation on ``base`` at full fine-tuning's learning rate: the bar, and the same run
    for every experiment on this schedule."""
    return federated_reference({**base, **llm_frontier.METHODS["full"]})


def plan(quick: bool) -> list[Run]:
    base = dict(QUICK) if quick else dict(FULL)
    delta_bytes = QUICK_DELTA_BYTES if quick else SMOLLM2_DELTA_BYTES
    runs = [uncompressed(base)]
    chosen = candidates(delta_bytes)
    if quick:
        chosen = {label: chosen[label] for label in ("hiwi, int8",)}
    runs += [Run(label, {**base, **overrides}, {"candidate": label}) for label, overrides in chosen.items()]
    runs.append(centralized_reference({**base, **llm_frontier.METHODS["full"]}))
    return runs


def describe(quick: bool) -> str:
    if quick:
        return f"Quick configuration (tiny Llama): {overrides_text(QUICK)}."
    return (f"SmolLM2-135M-Instruct on Rotten Tomatoes as an instruction task, sites non-IID by movie, "
            f"{overrides_text(FULL)}; `local.lr` 5e-5 for full fine-tuning and 1e-2 for hiwi, as on the LLM "
            "frontier. Accuracy is on 1,000 held-out reviews (the likelier of `positive` / `negative`, binomial "
            "standard error about 1.3 points). 'up' divides what the sites would send as dense fp32 deltas of "
            "the whole model (538 MB each) by what they sent; 'down' divides the same dense total by the bytes "
            "the sites received. 'gap' is the final accuracy minus the uncompressed federation's final accuracy. "
            f"A run meets the bar when up >= {thousandfold.UP_TARGET:,.0f}x, down >= "
            f"{thousandfold.DOWN_TARGET:,.0f}x and its final accuracy is within "
            f"{thousandfold.POINTS_TARGET * 100:.0f} point of the uncompressed federation's. The centralized "
            "reference is one site holding all the training data, taking as many steps per round as the sites "
            "take together.")


table = thousandfold.table
plot = thousandfold.plot
