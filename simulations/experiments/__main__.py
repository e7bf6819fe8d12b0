"""``python -m fedelta.simulations.experiments``: run an experiment, or put the results into simulations/RESULTS.md.

    python -m fedelta.simulations.experiments run NAME [--quick | --long] [--backend flower|inprocess]
        [--runs DIR] [--results DIR] [--shard K/N | --collect]
    python -m fedelta.simulations.experiments results [--results-md FILE]
    python -m fedelta.simulations.experiments list
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

EXPERIMENTS = (
    "frontier", "darex_extreme", "perp", "sparse_base", "scale", "llm_frontier", "thousandfold", "budget_sweep",
    "llm_thousandfold", "llm_pruning",
)
BEGIN, END = "<!-- experiment:{} -->", "<!-- /experiment:{} -->"


def load(name: str) -> ModuleType:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"fedelta.simulations.experiments.{name}")


def update_results_md(results_md: Path, results_dir: Path) -> list[str]:
    """Replace (or append) each experiment's marked section with its ``section.md``; returns the names written."""
    text = results_md.read_text() if results_md.is_file() else "# Results\n"
    written = []
    for name in (variant for experiment in EXPERIMENTS for variant in (experiment, f"{experiment}-long")):
        section = results_dir / name / "section.md"
        if not section.is_file():
            continue
        block = f"{BEGIN.format(name)}\n{section.read_text().rstrip()}\n{END.format(name)}"
        begin, end = text.find(BEGIN.format(name)), text.find(END.format(name))
        if begin >= 0 and end > begin:
            text = text[:begin] + block + text[end + len(END.format(name)):]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        written.append(name)
    results_md.write_text(text)
    return written


def main(argv: list[str] | None = None) -> int:
    from fedelta.simulations.experiments import harness

    parser = argparse.ArgumentParser(prog="python -m fedelta.simulations.experiments", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one experiment and write its results folder")
    run.add_argument("name", choices=EXPERIMENTS)
    harness.add_arguments(run)
    results = commands.add_parser("results", help="put every results/NAME/section.md into RESULTS.md")
    results.add_argument("--results-md", default=str(harness.RESULTS_DIR.parent / "RESULTS.md"))
    results.add_argument("--results-dir", default=str(harness.RESULTS_DIR))
    commands.add_parser("list", help="name and first docstring line of each experiment")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in EXPERIMENTS:
            print(f"{name:<14} {load(name).__doc__.splitlines()[0]}")
        return 0
    if args.command == "results":
        written = update_results_md(Path(args.results_md), Path(args.results_dir))
        print(f"updated {args.results_md}: {', '.join(written) or 'no experiment has results yet'}")
        return 0
    return harness.main_for(load(args.name), args)


if __name__ == "__main__":
    sys.exit(main())
