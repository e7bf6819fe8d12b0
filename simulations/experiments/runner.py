"""Running one planned federation and reading back its results: a ``fedelta simulate`` subprocess, or in process.

The Flower backend runs ``fedelta simulate`` (the Simulation
Engine, as a user would); the in-process backend drives the same Coordinator
and Site code without Flower, in seconds on a tiny model (quick modes). Both
write ``metrics.jsonl`` and ``summary.json`` through :mod:`fedelta.common.report`.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedelta.common import report

# The quick modes' base: a 2-layer BERT built from a config, a slice of the data.
QUICK: dict[str, Any] = {
    "model.path": "tiny-bert", "federation.num-sites": 2, "rounds": 1, "local.steps": 2, "local.batch-size": 8,
    "local.lr": 1e-3, "data.test-size": 32, "data.max-site-examples": 32, "model.max-length": 16,
}
BACKENDS = ("flower", "inprocess")
REVISION_FILE = "commit.txt"  # the commit a run was made with, next to its summary.json
REUSED_FILE = "reused-from.txt"  # in a run folder copied from another experiment's identical run


@dataclass(frozen=True)
class Run:
    """One planned federation: a label for tables and the settings it overrides."""

    label: str
    overrides: dict[str, Any]
    tags: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """A finished run (``summary`` and per-round ``rows``), or a refused one with the reason."""

    run: Run
    summary: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    refused: str = ""
    revision: str = ""
    reused: bool = False

    @property
    def accuracy(self) -> float:
        return float(self.summary["final_accuracy"])

    @property
    def upload_bytes(self) -> float:
        return float(self.summary["total_upload_bytes"])

    def trained_rows(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["round"] > 0]


def defaults():
    """The project's default settings."""
    from fedelta.common.config import Settings

    return Settings()


def federated_reference(base: dict[str, Any]) -> Run:
    """The uncompressed federation on ``base``: full fine-tuning, fp32 values, nothing pruned."""
    return Run("reference: federated full, uncompressed",
               {**base, "method.name": "full", "prune.name": "none", "quant.values": "fp32"},
               {"reference": "federated"})


def centralized_reference(base: dict[str, Any]) -> Run:
    """One site holding all the training data, taking as many steps per round as ``base``'s sampled sites."""
    steps = int(base["local.steps"]) * defaults().with_overrides(base).federation.sites_per_round
    return Run("reference: centralized full",
               {**base, "method.name": "full", "prune.name": "none", "quant.values": "fp32",
                "federation.num-sites": 1, "federation.min-sites": 1, "federation.fraction-train": 1.0,
                "data.partition": "iid", "local.steps": steps},
               {"reference": "centralized"})


def refusal(overrides: dict[str, Any]) -> str:
    """Why these settings cannot run here (a refused combination, an unknown setting or unit), or ``""``."""
    try:
        defaults().with_overrides(overrides)
    except ValueError as error:
        return str(error)
    return ""


def execute(run: Run, out: Path, backend: str, shared: Path | None = None) -> Outcome:
    """Run ``run`` into ``out``, or record why it was refused.

    A finished run already in ``out`` is reused; so is one anywhere two levels
    under ``shared`` (another experiment's run folders) whose settings are
    exactly ``run``'s: its metrics, summary and commit are copied into ``out``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    reason = refusal(run.overrides)
    if reason:
        return Outcome(run, refused=reason)
    started = time.perf_counter()
    if not (out / "summary.json").is_file() and shared is not None:
        twin = find_twin(run.overrides, shared, out)
        if twin is not None:
            copy_finished(twin, out)
    if not (out / "summary.json").is_file():
        revision = commit()
        (run_flower if backend == "flower" else run_inprocess)(run.overrides, out)
        (out / REVISION_FILE).write_text(revision + "\n")
    summary = json.loads((out / "summary.json").read_text())
    if "config" in summary and settings_key(summary["config"]) != _wanted_key(run.overrides):
        raise ValueError(f"{out} holds a finished run with other settings than {run.label!r}; "
                         "move that folder away or use another --runs folder")
    revision_file = out / REVISION_FILE
    revision = revision_file.read_text().strip() if revision_file.is_file() else "unknown"
    return Outcome(run, summary, report.read_rows(out), time.perf_counter() - started, revision=revision,
                   reused=(out / REUSED_FILE).is_file())


def settings_key(config: dict[str, Any]) -> str:
    """A run's settings as comparable text, leaving out where its files go."""
    kept = {k: v for k, v in config.items() if not k.startswith("output.")}
    return json.dumps(kept, sort_keys=True, default=str)


def _wanted_key(overrides: dict[str, Any]) -> str:
    """:func:`settings_key` of the settings ``overrides`` give, as a run's summary.json records them."""
    return settings_key(json.loads(json.dumps(defaults().with_overrides(overrides).to_run_config(), default=str)))


def find_twin(overrides: dict[str, Any], shared: Path, out: Path) -> Path | None:
    """A finished run folder ``shared/*/*`` (not ``out``) made with exactly the settings ``overrides`` give."""
    wanted = _wanted_key(overrides)
    for summary_file in sorted(shared.glob("*/*/summary.json")):
        folder = summary_file.parent
        if folder.resolve() == out.resolve():
            continue
        try:
            config = json.loads(summary_file.read_text())["config"]
        except (OSError, ValueError, KeyError):
            continue
        if settings_key(config) == wanted:
            return folder
    return None


def copy_finished(source: Path, out: Path) -> None:
    """Copy a finished run's files (not its store or site caches) into ``out``, noting where they came from."""
    out.mkdir(parents=True, exist_ok=True)
    for item in sorted(source.iterdir()):
        if item.is_file() and item.name != "summary.json":
            shutil.copy2(item, out / item.name)
    (out / REUSED_FILE).write_text(f"{source.resolve()}\n")
    shutil.copy2(source / "summary.json", out / "summary.json")  # last: it marks the copy finished


def commit() -> str:
    """``git rev-parse HEAD`` of this checkout, marked ``+changes`` when tracked files differ from it."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "HEAD") or "unknown"
    return f"{head}+changes" if git("status", "--porcelain", "--untracked-files=no") else head


def run_flower(overrides: dict[str, Any], out: Path) -> None:
    """One ``fedelta simulate`` subprocess on the Simulation Engine."""
    command = [sys.executable, "-m", "fedelta", "simulate", "--out", str(out)]
    for key, value in overrides.items():
        command += ["--set", f"{key}={_toml(value)}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"simulate failed ({out}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def _toml(value: Any) -> str:
    """A value as ``--set`` reads it (TOML, else bare text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def run_inprocess(overrides: dict[str, Any], out: Path) -> None:
    """The same rounds without Flower: the round driver with sampled sites in this process.

    A run cut short resumes in ``out`` after its last committed round, on the
    sites' kept state, with the same sites sampled for each round as an
    uninterrupted run would sample.
    """
    from fedelta.client.site import Site, simulated_site_data
    from fedelta.server.coordinator import Coordinator
    from fedelta.server.rounds import RoundDriver
    from fedelta.server.store import VersionStore

    settings = defaults().with_overrides({**overrides, "output.dir": str(out)})
    out.mkdir(parents=True, exist_ok=True)
    store = VersionStore(out / "state")
    try:
        driver = RoundDriver(Coordinator(settings, store, out))
        count = settings.federation.num_sites
        sites = {str(i): Site(settings, f"site-{i}", out / "sites" / str(i), simulated_site_data(settings, i, count),
                              keep_weights=True)
                 for i in range(count)}
        sampler = random.Random(settings.seed)
        done = driver.coordinator.rounds.last
        if done:
            print(f"  resuming after round {done} of {settings.rounds}", flush=True)
        driver.finish(done)
        for server_round in range(1, settings.rounds + 1):
            chosen = sorted(sampler.sample(sorted(sites), settings.federation.sites_per_round))
            if server_round > done:
                driver.run_round(server_round, {node: sites[node] for node in chosen})
        report.write_summary(out, settings.to_run_config())
    finally:
        store.close()


def run_key(run: Run) -> str:
    """A planned run's label and settings as comparable text."""
    return json.dumps([run.label, run.overrides], sort_keys=True, default=str)


def finished(run: Run, out: Path, shared: Path | None = None) -> bool:
    """Whether ``run`` needs no rounds made: refused, finished in ``out``, or finished as a twin under ``shared``."""
    return bool(refusal(run.overrides)) or (out / "summary.json").is_file() or (
        shared is not None and find_twin(run.overrides, shared, out) is not None)


def run_all(runs: list[Run], out: Path, backend: str, *, recorded: dict[str, Outcome] | None = None,
            progress: Callable[[list[Outcome]], None] | None = None, start: bool = True) -> list[Outcome]:
    """Every run in turn, each in ``out/<label>``, printing one line per run.

    A run found in ``recorded`` (by :func:`run_key`) is taken from there;
    ``progress`` is called with the outcomes so far after each run. Without
    ``start``, a run that has not finished (see :func:`finished`) is left out
    rather than made.
    """
    outcomes = []
    for index, run in enumerate(runs, 1):
        print(f"[{index}/{len(runs)}] {run.label} ...", flush=True)
        known = (recorded or {}).get(run_key(run))
        if known is None and not start and not finished(run, out / slug(run.label), out.parent):
            print("  not finished: left out", flush=True)
            continue
        outcome = known if known is not None else execute(run, out / slug(run.label), backend, shared=out.parent)
        outcomes.append(outcome)
        if progress is not None:
            progress(outcomes)
        if outcome.refused:
            print(f"  refused: {outcome.refused}", flush=True)
        else:
            reused = (" (recorded in outcomes.json)" if known is not None
                      else " (reused: the same settings ran in another experiment)" if outcome.reused else "")
            print(f"  accuracy {outcome.accuracy:.3f}, upload {report.human_bytes(outcome.upload_bytes)}, "
                  f"{outcome.seconds:.0f} s{reused}", flush=True)
    return outcomes


def slug(label: str) -> str:
    """A folder name for a run label."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in label).strip("-") or "run"
