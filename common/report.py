"""Run results on disk: metrics.jsonl rows, the per-round table, summary.json/.md, plot.png, phases.png, and
portable paths."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedelta.common.atomic import write_bytes_atomic
from fedelta.common.phases import PHASE_COLORS, PHASES

ROUND_FIELDS = (
    "round", "version", "version_sha256", "accuracy", "loss", "sites", "upload_bytes",
    "dense_update_bytes", "downlink_bytes", "rejected", "seconds", "phases",
)
# Evaluation metrics a round may carry, with their column in the table: heading, width, format.
METRIC_COLUMNS = {"accuracy": ("acc", 6, ".3f"), "loss": ("loss", 6, ".3f"), "perplexity": ("ppl", 8, ".2f")}
CLASSIFIER_METRICS = ("accuracy", "loss")


def table_header(metrics: tuple[str, ...] = CLASSIFIER_METRICS) -> str:
    """The round table's heading, with a column for each of ``metrics``."""
    scores = " ".join(f"{METRIC_COLUMNS[name][0]:>{METRIC_COLUMNS[name][1]}}" for name in metrics)
    return (f"{'round':>5} {'version':>7} {scores} {'sites':>5} {'upload':>10} {'dense':>10} {'reduce':>7} "
            f"{'down':>10} {'rej':>3} {'secs':>6}")


TABLE_HEADER = table_header()


def portable_path(path: str | Path, start: Path | None = None) -> str:
    """``path`` as results files name it: relative to ``start`` (default: the working folder), ``/``-separated."""
    return Path(os.path.relpath(path, start or Path.cwd())).as_posix()


def portable_paths(value: Any, start: Path | None = None) -> Any:
    """JSON data with every absolute path in its text replaced by :func:`portable_path`."""
    if isinstance(value, str):
        return portable_path(value, start) if os.path.isabs(value) else value
    if isinstance(value, Mapping):
        return {key: portable_paths(item, start) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [portable_paths(item, start) for item in value]
    return value


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def reduction(dense: float, actual: float) -> float:
    return dense / actual if actual else 0.0


def _score(row: Mapping[str, Any], name: str) -> str:
    _, width, form = METRIC_COLUMNS[name]
    value = row.get(name)
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{form}}"


def table_row(row: Mapping[str, Any], metrics: tuple[str, ...] = CLASSIFIER_METRICS) -> str:
    """One round of the table (a metric the round lacks shows as ``-``)."""
    ratio = reduction(row["dense_update_bytes"], row["upload_bytes"])
    scores = " ".join(_score(row, name) for name in metrics)
    return (
        f"{row['round']:>5} {row['version']:>7} {scores} {row['sites']:>5} "
        f"{human_bytes(row['upload_bytes']):>10} {human_bytes(row['dense_update_bytes']):>10} "
        f"{(f'{ratio:.1f}x' if ratio else '-'):>7} {human_bytes(row['downlink_bytes']):>10} "
        f"{row['rejected']:>3} {row['seconds']:>6.1f}"
    )


def append_row(out_dir: Path, row: Mapping[str, Any]) -> None:
    missing = set(ROUND_FIELDS) - set(row)
    if missing:
        raise ValueError(f"metrics row lacks {sorted(missing)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(dict(row)) + "\n")


def rewrite_rows(out_dir: Path, rows: list[Mapping[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` with ``rows`` at once (a resumed server starts from its store's records)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(dict(row)) + "\n" for row in rows)
    write_bytes_atomic(out_dir / "metrics.jsonl", text.encode("utf-8"))


def read_rows(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def metrics_of(rows: list[Mapping[str, Any]]) -> tuple[str, ...]:
    """The evaluation metrics these rounds report, in table order (accuracy and loss always have a column)."""
    return tuple(name for name in METRIC_COLUMNS if name in CLASSIFIER_METRICS or any(name in row for row in rows))


def summarize(rows: list[dict[str, Any]], config: Mapping[str, Any]) -> dict[str, Any]:
    trained = [row for row in rows if row["round"] > 0] or rows
    upload = sum(row["upload_bytes"] for row in trained)
    dense = sum(row["dense_update_bytes"] for row in trained)
    scored = [row["accuracy"] for row in trained if row.get("accuracy") is not None]
    return {
        "final_accuracy": trained[-1].get("accuracy") if trained else None,
        "best_accuracy": max(scored, default=None),
        "initial_accuracy": rows[0].get("accuracy") if rows and rows[0]["round"] == 0 else None,
        "final_loss": trained[-1]["loss"] if trained else None,
        "final_perplexity": trained[-1].get("perplexity") if trained else None,
        "rounds": len([row for row in rows if row["round"] > 0]),
        "final_version": trained[-1]["version"] if trained else None,
        "final_version_sha256": trained[-1]["version_sha256"] if trained else None,
        "total_upload_bytes": upload,
        "total_dense_update_bytes": dense,
        "total_downlink_bytes": sum(row["downlink_bytes"] for row in trained),
        "upload_reduction": reduction(dense, upload),
        "total_rejected": sum(row["rejected"] for row in trained),
        "total_seconds": sum(row["seconds"] for row in rows),
        "phase_seconds": phase_totals(rows),
        "config": dict(config),
    }


def write_summary(out_dir: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """summary.json, summary.md, plot.png and phases.png from metrics.jsonl in ``out_dir``."""
    rows = read_rows(out_dir)
    summary = summarize(rows, config)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out_dir / "summary.md").write_text(_markdown(rows, summary), encoding="utf-8")
    if rows:
        _plot(round_figure(rows), out_dir / "plot.png")
    if any(row.get("phases") for row in rows):
        _plot(phase_figure(rows), out_dir / "phases.png")
    return summary


def _final_line(summary: Mapping[str, Any]) -> str:
    if summary["final_loss"] is None:
        return "- no round finished"
    parts = []
    if summary["final_accuracy"] is not None:
        parts.append(f"final accuracy: **{summary['final_accuracy']:.4f}** (best {summary['best_accuracy']:.4f})")
    parts.append(f"final loss {summary['final_loss']:.4f}")
    if summary["final_perplexity"] is not None:
        parts.append(f"perplexity {summary['final_perplexity']:.2f}")
    return "- " + "; ".join(parts)


def _markdown(rows: list[dict[str, Any]], summary: Mapping[str, Any]) -> str:
    config = summary["config"]
    metrics = metrics_of(rows)
    lines = [
        "# fedelta run",
        "",
        f"method `{config.get('method.name')}`, pruner `{config.get('prune.name')}` "
        f"(drop {config.get('prune.drop')}), values `{config.get('quant.values')}`, "
        f"{config.get('federation.num-sites')} sites, {summary['rounds']} rounds, seed {config.get('seed')}.",
        "",
        _final_line(summary),
        f"- upload: {human_bytes(summary['total_upload_bytes'])} vs {human_bytes(summary['total_dense_update_bytes'])}"
        f" dense fp32 — **{summary['upload_reduction']:.1f}x** less",
        f"- downlink: {human_bytes(summary['total_downlink_bytes'])}; rejected updates: {summary['total_rejected']}",
        "",
        f"| round | version | {' | '.join(metrics)} | sites | upload | dense | reduction | downlink | rejected | seconds |",
        "|---:|---:|" + "---:|" * len(metrics) + "---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = reduction(row["dense_update_bytes"], row["upload_bytes"])
        scores = " | ".join("-" if row.get(name) is None else f"{row[name]:.4f}" for name in metrics)
        lines.append(
            f"| {row['round']} | {row['version']} | {scores} | {row['sites']} "
            f"| {human_bytes(row['upload_bytes'])} | {human_bytes(row['dense_update_bytes'])} "
            f"| {f'{ratio:.1f}x' if ratio else '-'} | {human_bytes(row['downlink_bytes'])} | {row['rejected']} "
            f"| {row['seconds']:.1f} |"
        )
    return "\n".join(lines + _phase_lines(rows, summary)) + "\n"


def phase_totals(rows: list[Mapping[str, Any]]) -> dict[str, float]:
    """Seconds per phase over the rounds that report phases (every phase, 0 where it did not occur)."""
    return {name: sum(row.get("phases", {}).get(name, 0.0) for row in rows) for name in PHASES}


def _phase_lines(rows: list[Mapping[str, Any]], summary: Mapping[str, Any]) -> list[str]:
    """The seconds of each phase per round, with totals and shares (phases that never took time left out)."""
    timed = [row for row in rows if row.get("phases")]
    totals = summary["phase_seconds"]
    names = [name for name in PHASES if totals[name] > 0]
    if not timed or not names:
        return []
    whole = sum(totals.values())
    lines = ["", "## Where the time went", "", "Seconds per phase (see the README's phases of a round).", "",
             f"| round | {' | '.join(names)} | seconds |", "|---:|" + "---:|" * (len(names) + 1)]
    for row in timed:
        lines.append(f"| {row['round']} | " + " | ".join(f"{row['phases'].get(name, 0.0):.2f}" for name in names)
                     + f" | {row['seconds']:.2f} |")
    lines.append("| total | " + " | ".join(f"{totals[name]:.2f}" for name in names) + f" | {whole:.2f} |")
    lines.append("| share | " + " | ".join(f"{totals[name] / whole:.1%}" for name in names) + " | 100% |")
    return lines


def _plot(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)


def phase_figure(rows: list[dict[str, Any]]):  # noqa: ANN201 - a matplotlib Figure
    """Each round's seconds as a bar stacked by phase, whole rounds on the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    timed = [row for row in rows if row.get("phases")]
    rounds = [row["round"] for row in timed]
    fig, axes = plt.subplots(figsize=(10, 4))
    bottom = [0.0] * len(timed)
    for name in PHASES:
        seconds = [row["phases"].get(name, 0.0) for row in timed]
        if any(seconds):
            axes.bar(rounds, seconds, 0.7, bottom=bottom, label=name, color=PHASE_COLORS[name])
            bottom = [low + high for low, high in zip(bottom, seconds)]
    axes.set(xlabel="round", ylabel="seconds", title="Where each round's time went")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes.get_legend_handles_labels()  # listed top to bottom, as the bars stack
    axes.legend(handles[::-1], labels[::-1], loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.tight_layout()
    return fig


def round_figure(rows: list[dict[str, Any]]):  # noqa: ANN201 - a matplotlib Figure
    """Accuracy per round and upload against dense per round, whole rounds on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [row["round"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if any(row.get("accuracy") is not None for row in rows):
        left.plot(rounds, [row.get("accuracy") for row in rows], marker="o")
        left.set(xlabel="round", ylabel="test accuracy", title="Server held-out accuracy")
    else:
        left.plot(rounds, [row["loss"] for row in rows], marker="o")
        left.set(xlabel="round", ylabel="response-token loss", title="Server held-out loss")
    left.grid(alpha=0.3)
    trained = [row for row in rows if row["round"] > 0]
    right.bar([r["round"] - 0.2 for r in trained], [r["dense_update_bytes"] for r in trained], 0.4, label="dense fp32")
    right.bar([r["round"] + 0.2 for r in trained], [r["upload_bytes"] for r in trained], 0.4, label="sent")
    right.set(xlabel="round", ylabel="bytes (log)", yscale="log", title="Upload per round")
    right.legend()
    for axes in (left, right):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig
