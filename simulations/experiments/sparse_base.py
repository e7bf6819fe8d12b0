"""Experiment 4, Prune Once for All: bases pruned once to S = 0.5, 0.8, 0.9 (distilled from the dense base),
then federated fine-tuning that keeps their zeros, against the dense base.

Full mode: MiniLM; each base from ``fedelta prepare-sparse-base`` with 150
distillation steps on Rotten Tomatoes text (labels unused, the server's test
reviews excluded); federations as experiment 1's full fine-tuning with DARE
p = 0.9 (8 sites by movie, 4 sampled per round, 6 rounds x 12 local steps),
so the dense-base run is experiment 1's and is reused from it.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedelta.common.report import human_bytes
from fedelta.simulations.experiments import frontier
from fedelta.simulations.experiments.harness import accuracy_axes, figure, overrides_text, save
from fedelta.simulations.experiments.runner import QUICK, Outcome, Run, defaults, run_all, slug

NAME = "sparse_base"
TITLE = "Prune Once for All: sparse bases against the dense base"
FULL = {**frontier.FULL, "method.name": "full", **frontier.PRUNING["dare p=0.9"]}
SPARSITIES = (0.5, 0.8, 0.9)
PREPARE_STEPS = 150


def prepared_base(sparsity: float, folder: Path, quick: bool) -> dict:
    """The sparse base at ``folder`` (made now unless a finished one is there) and its report."""
    from fedelta.common.sparse_base import REPORT_FILE, SparseBaseRequest, prepare_sparse_base

    if (folder / REPORT_FILE).is_file():
        return json.loads((folder / REPORT_FILE).read_text())
    print(f"preparing a base at sparsity {sparsity:g} in {folder} ...", flush=True)
    request = SparseBaseRequest(
        sparsity=sparsity, out=str(folder), model=QUICK["model.path"] if quick else "",
        steps=6 if quick else PREPARE_STEPS, batch_size=4 if quick else 16, max_length=24 if quick else 64,
    )
    return prepare_sparse_base(request)


def outcomes(quick: bool, out: Path, backend: str) -> list[Outcome]:
    base = dict(QUICK) if quick else dict(FULL)
    runs = [Run("dense base", base, {"sparsity": 0.0})]
    for sparsity in (0.5, 0.9) if quick else SPARSITIES:
        folder = (out / "bases" / f"s{sparsity:g}").resolve()
        report = prepared_base(sparsity, folder, quick)
        runs.append(Run(f"sparse base S={sparsity:g}", {**base, "model.sparse-base": str(folder)},
                        {"sparsity": sparsity, "base": report}))
    finished = run_all(runs, out, backend)
    for outcome in finished:
        state = out / slug(outcome.run.label) / "state"
        if "base" in outcome.run.tags and not outcome.refused and state.is_dir():
            outcome.run.tags["zeros"] = zeros_kept(state, outcome.summary["config"])
    return finished


def zeros_kept(state: Path, config: dict) -> dict[str, int]:
    """How many body weights version 0 holds at zero, and how many of them the last version still does.

    The last version is rebuilt from the run's store the way a restarting
    server does (its newest snapshot plus the merged deltas after it, each
    checked by hash).
    """
    from fedelta.common.codec import Limits
    from fedelta.common.delta import model_params
    from fedelta.common.model import load_model
    from fedelta.common.sparsity import pattern_of
    from fedelta.server.resume import replay_to
    from fedelta.server.store import VersionStore

    settings = defaults().with_overrides(config)
    store = VersionStore.attach(state)
    try:
        bundle = load_model(settings.model.source, len(store.read_meta("labels")), settings.seed)
        params = model_params(bundle.model)
        pattern = pattern_of(params, bundle.head)
        replay_to(store, store.head().id, params, Limits.for_model(bundle.num_params()))
    finally:
        store.close()
    kept = sum(int((params[name][pruned] == 0).sum()) for name, pruned in pattern.items())
    return {"pruned": sum(int(pruned.sum()) for pruned in pattern.values()), "kept": kept}


def describe(quick: bool) -> str:
    base = QUICK if quick else {"model.path": "MiniLM", "data.name": "rotten-tomatoes", **FULL}
    steps = 6 if quick else PREPARE_STEPS
    return (f"Federations with {overrides_text(base)} and default settings otherwise (on the dense base this is "
            f"experiment 1's full fine-tuning with DARE p = 0.9). Each sparse base: `fedelta prepare-sparse-base "
            f"--sparsity S` with {steps} distillation steps; its body's weight matrices keep exactly "
            "round(S x size) zeros, which every delta and version keeps. Download: the body's weights as "
            "zstd-compressed fp32 in the wire format (zeros sent as index gaps when that is smaller), against the "
            "dense base's. Zeros kept: of the body weights version 0 holds "
            "at zero, how many the last version (rebuilt from the run's store, hash-checked) still holds at zero.")


def table(outcomes: list[Outcome]) -> str:
    dense = next((o for o in outcomes if o.run.tags["sparsity"] == 0.0), None)
    dense_bytes = next((o.run.tags["base"]["bytes"]["dense_body_zstd"] for o in outcomes if "base" in o.run.tags),
                       None)
    lines = ["| base | matrix sparsity | model sparsity | download (zstd) | vs dense | zeros kept in last version "
             "| final acc | vs dense base |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for o in outcomes:
        report = o.run.tags.get("base")
        change = f"{o.accuracy - dense.accuracy:+.3f}" if dense else "-"
        if report is None:
            download = human_bytes(dense_bytes) if dense_bytes else "-"
            lines.append(f"| {o.run.label} | 0 | 0 | {download} | 1.00x | - | {o.accuracy:.3f} | - |")
            continue
        sizes = report["bytes"]
        zeros = o.run.tags.get("zeros")
        kept = f"{zeros['kept']:,} of {zeros['pruned']:,}" if zeros else "-"
        lines.append(f"| {o.run.label} | {report['targeted_sparsity']:.4f} | {report['model_sparsity']:.4f} "
                     f"| {human_bytes(sizes['sparse_body_zstd'])} "
                     f"| {sizes['dense_body_zstd'] / sizes['sparse_body_zstd']:.2f}x smaller | {kept} "
                     f"| {o.accuracy:.3f} | {change} |")
    return "\n".join(lines)


def plot(outcomes: list[Outcome], path) -> None:
    plt = figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    points = sorted(outcomes, key=lambda o: o.run.tags["sparsity"])
    ax.plot([o.run.tags["sparsity"] for o in points], [o.accuracy for o in points], marker="o")
    for o in points:
        ax.annotate(f"{o.accuracy:.3f}", (o.run.tags["sparsity"], o.accuracy), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    accuracy_axes(ax, "base sparsity S (0 = dense base)", legend=False)
    save(plt, fig, path)
