"""What every experiment shares: its command line, provenance, the results folder, tables and plots.

An experiment module defines ``NAME``, ``TITLE``, ``describe(quick)``,
``plan(quick)`` (a list of runs) or ``outcomes(quick, out, backend)``,
``table(outcomes)`` (markdown) and ``plot(outcomes, path)``. Its results folder
holds ``section.md`` (title, provenance, configuration, table, plot link),
``plot.png`` and ``outcomes.json``; ``python -m fedelta.simulations.experiments results``
puts the sections into ``simulations/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from fedelta.common.report import portable_paths
from fedelta.simulations.experiments.runner import BACKENDS, Outcome, Run, refusal, run_all, run_key

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
RUNS_DIR = Path("runs") / "experiments"


def hardware() -> str:
    """CPU, cores, memory, Python and torch of this machine, in one line."""
    import torch

    memory = ""
    try:
        with open("/proc/meminfo") as handle:
            kib = int(handle.readline().split()[1])
        memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} cores{memory}, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__} on {torch.get_num_threads()} thread(s)")


BACKEND_TEXT = {
    "flower": "each run a `fedelta simulate` process on Flower's Simulation Engine",
    "inprocess": "runs in process (the same Coordinator and Site code as `fedelta simulate`, without Ray)",
}


def provenance(outcomes: list[Outcome], backend: str) -> str:
    seeds = sorted({o.summary["config"]["seed"] for o in outcomes if o.summary})
    revisions = ", ".join(f"`{r}`" for r in sorted({o.revision for o in outcomes})) or "-"
    return (f"Code of commit {revisions}; seed {', '.join(map(str, seeds)) or '-'}; {BACKEND_TEXT[backend]}; "
            f"{hardware()}; written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")


def overrides_text(overrides: dict[str, Any]) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in overrides.items()) or "-"


def write_results(module: ModuleType, outcomes: list[Outcome], quick: bool, results: Path, backend: str, *,
                  long: bool = False, planned: int | None = None) -> Path:
    """section.md, plot.png and outcomes.json of one experiment; returns the section's path.

    With ``planned`` larger than the outcomes, the section says how many runs are still to come.
    """
    results.mkdir(parents=True, exist_ok=True)
    done = [o for o in outcomes if not o.refused]
    if done:
        module.plot(done, results / "plot.png")
    labels_by_reason: dict[str, list[str]] = {}
    for outcome in outcomes:
        if outcome.refused:
            labels_by_reason.setdefault(outcome.refused, []).append(outcome.run.label)
    refused = [f"- {'; '.join(labels)}: {reason}" for reason, labels in labels_by_reason.items()]
    mode = " (quick mode)" if quick else " (longer schedule)" if long else ""
    flags = (" --quick" if quick else "") + (" --long" if long else "")
    lines = [
        f"## {module.TITLE}{mode}",
        "",
        f"`python -m fedelta.simulations.experiments run {module.NAME}{flags} --backend {backend}`. "
        f"{provenance(done, backend)}",
        "",
        module.describe(quick, long) if long else module.describe(quick),
        "",
        module.table(done) if done else "No run finished.",
    ]
    if planned is not None and planned > len(outcomes):
        lines += ["", f"**In progress: {len(outcomes)} of {planned} planned runs finished.** The same command runs "
                  "the rest, reusing the runs recorded in this folder's outcomes.json."]
    if refused:
        lines += ["", "Not run (the settings refuse the combination, or this code lacks the unit):", "", *refused]
    if done:
        lines += ["", f"![{module.TITLE}](results/{results.name}/plot.png)"]
    section = results / "section.md"
    section.write_text("\n".join(lines) + "\n")
    (results / "outcomes.json").write_text(json.dumps([_record(o) for o in outcomes], indent=2) + "\n")
    return section


def _record(outcome: Outcome) -> dict[str, Any]:
    """One outcome as ``outcomes.json`` holds it: folders relative to the working folder, never absolute."""
    summary = {k: v for k, v in outcome.summary.items() if k != "config"}
    return portable_paths({
        "label": outcome.run.label, "overrides": outcome.run.overrides, "tags": outcome.run.tags,
        "refused": outcome.refused, "commit": outcome.revision, "seconds": outcome.seconds, "summary": summary,
        "seed": outcome.summary.get("config", {}).get("seed"), "rows": outcome.rows,
    })


def recorded_outcomes(path: Path) -> dict[str, Outcome]:
    """The finished runs an earlier (perhaps interrupted) sitting recorded in ``outcomes.json``, by
    :func:`~fedelta.simulations.experiments.runner.run_key`; none when the file does not exist."""
    if not path.is_file():
        return {}
    found = {}
    for record in json.loads(path.read_text()):
        if record.get("refused") or record.get("seed") is None or not record.get("summary"):
            continue
        run = Run(record["label"], record["overrides"], record.get("tags", {}))
        found[run_key(run)] = Outcome(run, {**record["summary"], "config": {"seed": record["seed"]}}, record["rows"],
                                      record.get("seconds", 0.0), revision=record["commit"], reused=True)
    return found


def run_experiment(module: ModuleType, *, quick: bool, backend: str, runs: Path, results: Path,
                   long: bool = False, start: bool = True) -> list[Outcome]:
    """Plan and execute every run of ``module``, then write its results folder.

    Runs recorded in the results folder's outcomes.json with the same label and
    settings are not run again, and the folder is rewritten after every run, so
    an interrupted experiment resumes where it stopped, on this machine or on
    another with the committed results. Without ``start``, only the runs that
    have finished are written up, and none is made.
    """
    planned = None
    if hasattr(module, "outcomes"):
        if not start:
            raise SystemExit(f"{module.NAME} prepares inputs between its runs; run it whole instead of collecting")
        outcomes = module.outcomes(quick, runs, backend)
    else:
        plan = module.plan(quick, long) if long else module.plan(quick)
        planned = len(plan)

        def progress(done: list[Outcome]) -> None:
            write_results(module, done, quick, results, backend, long=long, planned=planned)

        outcomes = run_all(plan, runs, backend, recorded=recorded_outcomes(results / "outcomes.json"),
                           progress=progress, start=start)
    section = write_results(module, outcomes, quick, results, backend, long=long, planned=planned)
    print(section.read_text())
    return outcomes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny model, few runs, in process: seconds (for tests)")
    parser.add_argument("--long", action="store_true", help="the longer schedule (frontier, darex_extreme, perp: "
                        "10 rounds x 25 local steps, 1,000 test reviews); results go to simulations/results/NAME-long")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="flower (fedelta simulate subprocesses; the full mode's default) or inprocess "
                        "(the quick mode's default)")
    parser.add_argument("--runs", help=f"folder for the runs (default {RUNS_DIR}/NAME[-quick]); finished runs "
                        "found there are reused, and so is a finished run with exactly the same settings in a "
                        "sibling folder (another experiment's)")
    parser.add_argument("--shard", metavar="K/N", help="run only planned runs K, K+N, K+2N, ... (0 <= K < N) and "
                        "write no results, so N processes can share an experiment; a later run without --shard "
                        "reuses their runs and writes the results")
    parser.add_argument("--collect", action="store_true", help="write the results folder from the runs that "
                        "have finished (recorded, in --runs, or with the same settings in a sibling folder) and "
                        "make none, e.g. while --shard processes are still at work")
    parser.add_argument("--results", help="folder for section.md, plot.png, outcomes.json (default "
                        "simulations/results/NAME, or runs/experiments/NAME-quick/results with --quick)")


def main_for(module: ModuleType, args: argparse.Namespace) -> int:
    long = bool(getattr(args, "long", False))
    if long and not hasattr(module, "LONG"):
        raise SystemExit(f"{module.NAME} has no longer schedule; --long works with "
                         "frontier, darex_extreme and perp")
    name = module.NAME + ("-long" if long else "") + ("-quick" if args.quick else "")
    runs = Path(args.runs) if args.runs else RUNS_DIR / name
    default_results = runs / "results" if args.quick else RESULTS_DIR / (module.NAME + ("-long" if long else ""))
    results = Path(args.results) if args.results else default_results
    backend = args.backend or ("inprocess" if args.quick else "flower")
    if args.shard and args.collect:
        raise SystemExit("--shard makes runs and --collect makes none; use one of them")
    if args.shard:
        index, count = parse_shard(args.shard)
        if not hasattr(module, "plan"):
            raise SystemExit(f"{module.NAME} prepares inputs between its runs and cannot be split with --shard")
        plan = module.plan(args.quick, long) if long else module.plan(args.quick)
        accepted = [run for run in plan if not refusal(run.overrides)]
        run_all(accepted[index::count], runs, backend)
        return 0
    run_experiment(module, quick=args.quick, backend=backend, runs=runs, results=results, long=long,
                   start=not args.collect)
    return 0


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` as (K, N), with 0 <= K < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise SystemExit(f"--shard must be K/N, e.g. 0/2, got {text!r}") from None
    if not 0 <= index < count:
        raise SystemExit(f"--shard K/N needs 0 <= K < N, got {text!r}")
    return index, count


def frontier(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (fewer or equal bytes and higher accuracy), by bytes."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    kept, best = [], float("-inf")
    for index in order:
        if points[index][1] > best:
            kept.append(index)
            best = points[index][1]
    return kept


def figure():
    """A fresh matplotlib figure on the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(plt, fig, path: Path) -> None:
    """Lay out, write as PNG and release a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def accuracy_axes(ax, xlabel: str, *, log_x: bool = False, legend: bool = True) -> None:
    """Label an accuracy plot's axes (optionally a log x axis) and draw its legend."""
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("final accuracy")
    if legend:
        ax.legend(fontsize=7)
