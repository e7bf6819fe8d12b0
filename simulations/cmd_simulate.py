"""``fedelta simulate``: a federation on Flower's Simulation Engine in this process, with its results."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _simulate(args: argparse.Namespace) -> int:
    from fedelta.common.config import Settings, parse_assignment
    from fedelta.simulations.engine import run_flower_simulation
    from fedelta.simulations.presets import preset

    overrides = preset(args.preset)
    for item in args.set:
        key, value = parse_assignment(item)
        overrides[key] = value
    out = Path(args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    overrides["output.dir"] = str(out)
    if args.state_dir:
        overrides["output.state-dir"] = str(Path(args.state_dir).resolve())
    settings = Settings().with_overrides(overrides)
    state = Path(settings.output.state_dir) if settings.output.state_dir else out / "state"
    if (out / "metrics.jsonl").exists() and not (state / "store.sqlite").exists():
        raise ValueError(f"{out} already holds a run whose store is not in {state}; choose another --out")
    print(f"fedelta: {settings.federation.num_sites} sites, {settings.rounds} rounds, method "
          f"{settings.method.name}, pruner {settings.prune.name} (keep {settings.prune.keep:g}), "
          f"values {settings.quant.values}; results in {out}", flush=True)
    run_flower_simulation(overrides, settings.federation.num_sites, verbose=args.verbose)
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        print(f"fedelta: the simulation ended without a summary; see the log above ({out})", file=sys.stderr)
        return 1
    summary = json.loads(summary_path.read_text())
    print(f"\nfinal accuracy {summary['final_accuracy']:.4f} (best {summary['best_accuracy']:.4f}); "
          f"upload {summary['upload_reduction']:.1f}x smaller than dense fp32")
    print(f"results: {out}/metrics.jsonl, summary.json, summary.md, plot.png")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``simulate`` on the ``fedelta`` command line."""
    from fedelta.simulations.presets import PRESETS

    simulate = commands.add_parser(
        "simulate",
        help="run a federation on Flower's Simulation Engine",
        description="Run the fedelta Flower app on the Simulation Engine and write metrics.jsonl, "
        "summary.json, summary.md and plot.png.",
    )
    simulate.add_argument("--preset", default="default", choices=sorted(PRESETS),
                          help="named settings to start from (default: default)")
    simulate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a setting (see `fedelta methods` and the README), e.g. --set prune.drop=0.99")
    simulate.add_argument("--out", help="results folder (default: runs/<timestamp>)")
    simulate.add_argument("--state-dir", help="version store folder (default: OUT/state); a store that "
                          "already holds versions is resumed from its last committed version")
    simulate.add_argument("--verbose", action="store_true", help="show Flower's debug log")
    simulate.set_defaults(handler=_simulate)
