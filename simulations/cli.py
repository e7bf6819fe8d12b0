"""The ``fedelta`` command line: ``simulate``, ``methods``, ``console``, ``prepare-sparse-base``, and ``keys``, ``server``, ``site`` for deployment."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _simulate(args: argparse.Namespace) -> int:
    from common.config import Settings, parse_assignment
    from simulations.engine import PROJECT_DIR, run_flower_simulation
    from simulations.presets import preset

    overrides = preset(args.preset)
    for item in args.set:
        key, value = parse_assignment(item)
        overrides[key] = value
    out = Path(args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    overrides["output.dir"] = str(out)
    if args.state_dir:
        overrides["output.state-dir"] = str(Path(args.state_dir).resolve())
    settings = _defaults(PROJECT_DIR).with_overrides(overrides)
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


def _defaults(project_dir: Path):
    import tomllib

    from common.config import Settings

    data = tomllib.loads((project_dir / "pyproject.toml").read_text())
    return Settings.from_run_config(data["tool"]["flwr"]["app"]["config"])


def _methods(args: argparse.Namespace) -> int:
    from common.methods import METHODS
    from common.pruning import PRUNERS
    from common.quantization import VALUE_TYPES
    from server.aggregation import AGGREGATORS

    registries = (
        ("fine-tuning methods (method.name)", METHODS),
        ("pruners (prune.name)", PRUNERS),
        ("value types (quant.values)", VALUE_TYPES),
        ("aggregators (aggregate.name)", AGGREGATORS),
    )
    for title, registry in registries:
        print(f"{title}:")
        for entry in registry:
            print(f"  {entry.name:<12} {entry.summary}\n  {'':<12} ref: {entry.reference}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedelta",
        description="Federated delta distribution: sites fine-tune a shared model and upload pruned, "
        "compressed deltas; the server merges them into versioned updates.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    simulate = commands.add_parser(
        "simulate",
        help="run a federation on Flower's Simulation Engine",
        description="Run the fedelta Flower app on the Simulation Engine and write metrics.jsonl, "
        "summary.json, summary.md and plot.png.",
    )
    simulate.add_argument("--preset", default="default", help="default | smoke (default: default)")
    simulate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a setting of [tool.flwr.app.config], e.g. --set prune.drop=0.99")
    simulate.add_argument("--out", help="results folder (default: runs/<timestamp>)")
    simulate.add_argument("--state-dir", help="version store folder (default: OUT/state); a store that "
                          "already holds versions is resumed from its last committed version")
    simulate.add_argument("--verbose", action="store_true", help="show Flower's debug log")
    simulate.set_defaults(handler=_simulate)
    methods = commands.add_parser("methods", help="list fine-tuning methods, pruners, value types and aggregators")
    methods.set_defaults(handler=_methods)
    from server.console import cli as cmd_console
    from simulations import cmd_keys, cmd_server, cmd_site, cmd_sparse_base

    for command in (cmd_console, cmd_keys, cmd_server, cmd_site, cmd_sparse_base):
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError, RuntimeError, subprocess.SubprocessError) as error:
        print(f"fedelta: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
