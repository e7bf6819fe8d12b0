"""A site's training step against a plain PyTorch loop, and a round against its sites' training.

``python -m fedelta.simulations.bench_site --json`` takes a preset (``--preset``,
default ``default``: MiniLM, batch 16) and, for each fine-tuning method:

- **site**: a site's round as ``Site.train_round`` runs it, with ``--steps``
  and with twice as many local steps; the training seconds the site reports
  (``seconds-train``: attaching the method, building the optimizer, the
  steps) differ by ``--steps`` steps, so their difference over ``--steps`` is
  one step through the site's code (batches formed and tokenized as it trains,
  the progress bar, the device placement), without the fixed cost of the
  round, which ``site_fixed_seconds`` reports (one untimed round of one step
  goes first, so that first-use costs fall on neither);
- **plain**: the same model from version 0 with the same method attached, the
  same optimizer, and the same batches (taken from the task beforehand, in
  the same order), trained by a bare ``forward, backward, step`` loop: one
  step is the median of ``--steps`` timed steps after one untimed;
- ``step_ratio`` = site step / plain step.

Then one in-process round of the preset (the experiments' in-process
backend: ``RoundDriver.run_round``, sites one after another, server
evaluation included): ``round_vs_training`` = the
round's seconds over the sum of its sites' training seconds, with the
round's phases (see the README's "Where a round's time goes"). Everything
runs on this machine's CPU threads as torch is configured (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

from fedelta.simulations.presets import PRESETS, preset


def _settings(preset_name: str, overrides: dict[str, Any], out: Path):
    from fedelta.simulations.experiments.runner import defaults

    return defaults().with_overrides({**preset(preset_name), **overrides, "output.dir": str(out)})


def _genesis_sha(settings, data) -> str:
    from fedelta.common.delta import model_params, state_hash
    from fedelta.common.tasks import task_for

    return state_hash(model_params(task_for(settings).load_model(data.num_labels, settings.seed).model))


def site_seconds(settings, folder: Path, steps: int) -> dict[str, float]:
    """What a site reports of one round of ``steps`` local steps on version 0."""
    from fedelta.client.site import Site, simulated_site_data
    from fedelta.common.versions import Downlink

    run = settings.with_overrides({"local.steps": steps})
    data = simulated_site_data(run, 0, run.federation.num_sites)
    genesis = _genesis_sha(run, data)
    site = Site(run, "site-0", folder / f"site-{steps}", data)
    reply = site.train_round(1, Downlink(0, genesis), genesis)
    return {key: float(value) for key, value in reply.metrics.items() if key.startswith("seconds")}


def plain_step_seconds(settings, folder: Path, steps: int) -> float:
    """One step of a bare loop over the site's model, method, optimizer and batches (median of ``steps``)."""
    import torch

    from fedelta.client.site import Site, simulated_site_data
    from fedelta.common.devices import placed, resolve_device, to_device
    from fedelta.common.methods import METHODS
    from fedelta.common.optimizers import make_optimizer
    from fedelta.common.upload import upload_seed

    data = simulated_site_data(settings, 0, settings.federation.num_sites)
    site = Site(settings, "site-0", folder / "plain", data)
    bundle = site.task.load_model(data.num_labels, settings.seed)
    model = bundle.model
    genesis = _genesis_sha(settings, data)
    attachment = METHODS.get(settings.method.name).attach(model, site.method_context(bundle.head, genesis))
    seed = upload_seed(settings.seed, 1, site.name)
    batches = list(islice(site.task.batches(bundle, site.data.train, seed), steps + 1))
    times = []
    device = resolve_device(settings.local.device)
    with placed(model, device):
        optimizer = make_optimizer(model, attachment.trainable, bundle.head, settings.local, settings.optimizer)
        model.train()
        for batch in batches:
            batch = to_device(batch, device)
            started = time.perf_counter()
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def round_seconds(preset_name: str, folder: Path) -> dict[str, Any]:
    """One in-process round of the preset: its seconds, its phases and its sites' training seconds."""
    from fedelta.common import report
    from fedelta.simulations.experiments.runner import run_inprocess

    run_inprocess({**preset(preset_name), "rounds": 1}, folder)
    row = next(row for row in report.read_rows(folder) if row["round"] == 1)
    rows = _site_rows(folder)
    training = sum(site["metrics"].get("seconds-train", 0.0) for site in rows)
    return {"sites": len(rows), "seconds": row["seconds"], "phases": row["phases"], "sites_training_seconds": training,
            "round_vs_training": round(row["seconds"] / training, 3) if training else None}


def _site_rows(folder: Path) -> list[dict[str, Any]]:
    from fedelta.server.store import VersionStore

    store = VersionStore.attach(folder / "state")
    try:
        return [{"site": row.site, "metrics": row.metrics} for row in store.site_rounds()]
    finally:
        store.close()


def run(preset_name: str, steps: int, methods: list[str]) -> dict[str, Any]:
    from tqdm.auto import tqdm

    rows = []
    with tempfile.TemporaryDirectory(prefix="fedelta-bench-site-") as tmp:
        folder = Path(tmp)
        for method in tqdm(methods, desc="bench_site", disable=not sys.stderr.isatty()):
            settings = _settings(preset_name, {"method.name": method}, folder / method)
            site_seconds(settings, folder / method / "warm-up", 1)  # first-use costs (kernels, caches) out of the way
            short, long = site_seconds(settings, folder / method, steps), site_seconds(settings, folder / method, 2 * steps)
            site_step = (long["seconds-train"] - short["seconds-train"]) / steps
            plain_step = plain_step_seconds(settings, folder / method, steps)
            rows.append({
                "method": method, "site_step_seconds": round(site_step, 6), "plain_step_seconds": round(plain_step, 6),
                "step_ratio": round(site_step / plain_step, 3),
                "site_fixed_seconds": round(short["seconds-train"] - steps * site_step, 3),
                "site_round_seconds": {key: round(value, 3) for key, value in short.items()},
            })
        whole = round_seconds(preset_name, folder / "round")
    return {"preset": preset_name, "steps": steps, "rows": rows, "round": whole}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"preset {report['preset']}, {report['steps']} and {2 * report['steps']} local steps per site round",
             "", "| method | site step (s) | plain step (s) | site / plain | site's fixed cost (s) |",
             "|---|---:|---:|---:|---:|"]
    for row in report["rows"]:
        lines.append(f"| {row['method']} | {row['site_step_seconds']:.4f} | {row['plain_step_seconds']:.4f} | "
                     f"{row['step_ratio']:.2f} | {row['site_fixed_seconds']:.2f} |")
    whole = report["round"]
    lines += ["", f"one round of {whole['sites']} sites: {whole['seconds']:.1f} s, "
              f"{whole['sites_training_seconds']:.1f} s of it the sites' training "
              f"(round / training = {whole['round_vs_training']})"]
    phases = sorted(whole["phases"].items(), key=lambda item: -item[1])
    lines.append("phases: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases if seconds >= 0.05))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from fedelta.common.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="the federation (default: default)")
    parser.add_argument("--steps", type=int, default=4, help="timed local steps (the site also runs twice as many)")
    parser.add_argument("--methods", default=",".join(METHODS.names()),
                        help="comma-separated methods (default: every one)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    args = parser.parse_args(argv)
    methods = [name for name in args.methods.split(",") if name]
    unknown = [name for name in methods if name not in METHODS.names()]
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown}; known: {', '.join(METHODS.names())}")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report = run(args.preset, args.steps, methods)
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
