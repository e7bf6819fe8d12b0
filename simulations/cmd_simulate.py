"""``fedelta simulate``: a federation on Flower's Simulation Engine in this process, with its results."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedelta.common.config import Settings

ENGINE_LOG = "engine.log"


@contextmanager
def engine_output_to(log: Path | None) -> Iterator[None]:
    """Inside the block, everything written to this process's stdout and stderr (Flower's log, Ray's
    warnings, the sites' workers, transformers' bars) goes to ``log``; the ServerApp's own lines still
    reach the terminal through the descriptor it finds in ``FEDELTA_TERMINAL_FD``. ``None``: change nothing."""
    from fedelta.server.progress import TERMINAL_FD

    if log is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    os.environ[TERMINAL_FD] = str(saved[1])
    with open(log, "ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            os.environ.pop(TERMINAL_FD, None)


def _tail(path: Path, lines: int) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def final_scores(summary: dict) -> str:
    """How the last round scored: accuracy where the task defines it, else loss and perplexity."""
    if summary["final_accuracy"] is not None:
        return f"final accuracy {summary['final_accuracy']:.4f} (best {summary['best_accuracy']:.4f})"
    if summary["final_loss"] is None:
        return "no round finished"
    perplexity = summary.get("final_perplexity")
    return f"final loss {summary['final_loss']:.4f}" + ("" if perplexity is None else f", perplexity {perplexity:.2f}")


def _simulate(args: argparse.Namespace) -> int:
    import torch

    from fedelta.common.config import Settings, parse_assignment
    from fedelta.server.outcome import rounds_before
    from fedelta.simulations.engine import refuse_unplaceable_sites, run_flower_simulation
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
    refuse_unplaceable_sites(settings, cpus=os.cpu_count() or 1, gpus=torch.cuda.device_count())
    refuse_unsplittable_data(settings)
    state = Path(settings.output.state_dir) if settings.output.state_dir else out / "state"
    if (out / "metrics.jsonl").exists() and not (state / "store.sqlite").exists():
        raise ValueError(f"{out} already holds a run whose store is not in {state}; choose another --out")
    before = rounds_before(state)
    out.mkdir(parents=True, exist_ok=True)
    log = None if args.verbose else out / ENGINE_LOG
    print(f"fedelta: {settings.federation.num_sites} sites, {settings.rounds} rounds, method "
          f"{settings.method.name}, pruner {settings.prune.name} (keep {settings.prune.keep:g}), "
          f"values {settings.quant.values}; results in {out}" + (f" (engine log: {log.name})" if log else ""),
          flush=True)
    with engine_output_to(log):
        run_flower_simulation(overrides, settings.federation, verbose=args.verbose)
    return _report(out, state, before, log)


def refuse_unsplittable_data(settings: Settings) -> None:
    """Stop before anything starts when the data cannot be read (the row and column of a bad file) or
    split into the sites' shares as ``data.partition`` asks (each site would fail every round)."""
    from fedelta.common.data import site_shares
    from fedelta.common.tasks import task_for

    site_shares(task_for(settings).load_data(), settings.data, settings.federation.num_sites, settings.seed)


def _report(out: Path, state: Path, before: int, log: Path | None) -> int:
    """The run's final line and where its results are; 1 with a one-line reason when it trained nothing."""
    from fedelta.server.outcome import run_failure

    summary_path = out / "summary.json"
    if not summary_path.is_file():
        where = f"; the last lines of {log}:\n{_tail(log, 30)}" if log else "; see the log above"
        print(f"fedelta: the simulation ended without a summary{where}", file=sys.stderr)
        return 1
    summary = json.loads(summary_path.read_text())
    failure = run_failure(state, before)
    if failure is None:
        print(f"\n{final_scores(summary)}; upload {summary['upload_reduction']:.1f}x smaller than dense fp32")
    print(f"results: {out}/metrics.jsonl, summary.json, summary.md, plot.png, phases.png")
    if failure is not None:
        print(f"fedelta: {failure}; see {log or 'the log above'}", file=sys.stderr)
        return 1
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``simulate`` on the ``fedelta`` command line."""
    from fedelta.simulations.presets import PRESETS

    simulate = commands.add_parser(
        "simulate",
        help="run a federation on Flower's Simulation Engine",
        description="Run the fedelta Flower app on the Simulation Engine and write metrics.jsonl, "
        "summary.json, summary.md, plot.png and phases.png. It prints a start line, one progress bar per round "
        "(on a terminal) and the round table; Flower's, Ray's and the sites' output goes to OUT/engine.log. "
        "It exits 1 with a one-line reason when no round committed a version (every site failed, or every "
        "upload was rejected).",
    )
    simulate.add_argument("--preset", default="default", choices=sorted(PRESETS),
                          help="named settings to start from (default: default)")
    simulate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a setting (see the README's settings table), e.g. --set prune.drop=0.99")
    simulate.add_argument("--out", help="results folder (default: runs/<timestamp>)")
    simulate.add_argument("--state-dir", help="version store folder (default: OUT/state); a store that "
                          "already holds versions is resumed from its last committed version")
    simulate.add_argument("--verbose", action="store_true",
                          help="show Flower's, Ray's and the sites' output here (with Flower's debug log) "
                          "instead of writing it to OUT/engine.log")
    simulate.set_defaults(handler=_simulate)
