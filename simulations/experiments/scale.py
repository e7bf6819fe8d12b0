"""Experiment 5, scale: 10, 30 and 100 simulated sites with 10 sampled per round, on a tiny step budget.

Each round's record carries the server process's resident memory (now and
peak, read from the kernel in the process that runs the ServerApp: the
``fedelta simulate`` process itself) and the round's seconds; both should stay
flat as the number of sites grows, since the server holds one accumulator and
only the sampled sites' replies. Full mode: the 2-layer tiny BERT (the
model's size adds a constant; `simulations/bench_aggregate.py` measures
MiniLM-sized aggregation), 2 local steps of 8 reviews, 5 rounds.
"""

from __future__ import annotations

import statistics

from fedelta.simulations.experiments.harness import figure, overrides_text, save
from fedelta.simulations.experiments.runner import QUICK, Outcome, Run

NAME = "scale"
TITLE = "Scale: server memory and round time against the number of sites"
FULL = {"model.path": "tiny-bert", "rounds": 5, "local.steps": 2, "local.batch-size": 8, "local.lr": 1e-3,
        "model.max-length": 32, "data.test-size": 200}
SITES = (10, 30, 100)
SAMPLED = 10


def fraction(sampled: int, sites: int) -> float:
    """``federation.fraction-train`` that samples exactly ``sampled`` of ``sites`` (Flower takes int(n * f))."""
    return min(1.0, (sampled + 0.5) / sites)


def plan(quick: bool) -> list[Run]:
    base = dict(QUICK) if quick else dict(FULL)
    sites, sampled = ((4, 8), 2) if quick else (SITES, SAMPLED)
    return [
        Run(f"{n} sites, {sampled} sampled",
            {**base, "federation.num-sites": n, "federation.fraction-train": fraction(sampled, n),
             "federation.min-sites": min(2, sampled)},
            {"sites": n, "sampled": sampled})
        for n in sites
    ]


def describe(quick: bool) -> str:
    base = QUICK if quick else FULL
    return (f"{overrides_text(base)}; full fine-tuning, DARE p = 0.9. Per round: the seconds from the start of "
            "training to the end of the server's evaluation, and the server process's resident memory at the "
            "end of the round (`server_rss_bytes` in metrics.jsonl) and its peak so far (`server_peak_rss_bytes`, the "
            "kernel's high-water mark, or a reading above it, since the kernel raises the mark lazily). Round 1 "
            "includes loading and first-touch costs.")


def _mb(value: float) -> str:
    return f"{value / 1e6:.0f} MB"


def peak(rows: list[dict]) -> int:
    """The server's peak resident memory over ``rows``: at least every reading of it."""
    return max(max(r["server_peak_rss_bytes"], r["server_rss_bytes"]) for r in rows)


def table(outcomes: list[Outcome]) -> str:
    ordered = sorted(outcomes, key=lambda o: o.run.tags["sites"])
    lines = ["| sites | sampled / round | seconds / round (median, rounds 2+) | server RSS after round 1 | "
             "after last round | server peak RSS | upload / round |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for o in ordered:
        rows = o.trained_rows()
        later = rows[1:] or rows
        lines.append(
            f"| {o.run.tags['sites']} | {statistics.mean(r['sites'] for r in rows):.0f} "
            f"| {statistics.median(r['seconds'] for r in later):.2f} | {_mb(rows[0]['server_rss_bytes'])} "
            f"| {_mb(rows[-1]['server_rss_bytes'])} | {_mb(peak(rows))} "
            f"| {statistics.mean(r['upload_bytes'] for r in rows) / 1e6:.2f} MB |"
        )
    first, last = ordered[0], ordered[-1]
    if len(ordered) > 1:
        seconds = [statistics.median(r["seconds"] for r in (o.trained_rows()[1:] or o.trained_rows()))
                   for o in (first, last)]
        memory = [o.trained_rows()[-1]["server_rss_bytes"] for o in (first, last)]
        lines += ["", f"From {first.run.tags['sites']} to {last.run.tags['sites']} sites the median round time "
                  f"changes by {100 * (seconds[1] / seconds[0] - 1):+.0f} % and the server's resident memory after "
                  f"the last round by {(memory[1] - memory[0]) / 1e6:+.0f} MB."]
    return "\n".join(lines)


def plot(outcomes: list[Outcome], path) -> None:
    plt = figure()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for o in sorted(outcomes, key=lambda o: o.run.tags["sites"]):
        rows = o.trained_rows()
        rounds = [r["round"] for r in rows]
        left.plot(rounds, [r["seconds"] for r in rows], marker="o", label=o.run.label)
        right.plot(rounds, [r["server_rss_bytes"] / 1e6 for r in rows], marker="o", label=o.run.label)
    left.set_xlabel("round")
    left.set_ylabel("seconds per round")
    right.set_xlabel("round")
    right.set_ylabel("server resident memory (MB)")
    for ax in (left, right):
        ax.set_ylim(bottom=0)
        ax.xaxis.get_major_locator().set_params(integer=True)
    left.legend(fontsize=7)
    save(plt, fig, path)
