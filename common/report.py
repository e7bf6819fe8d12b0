"""Run results on disk: metrics.jsonl rows, the per-round table, summary.json/.md, plot.png, and portable paths."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedelta.common.atomic import write_bytes_atomic

ROUND_FIELDS = (
    "round", "version", "version_sha256", "accuracy", "loss", "sites", "upload_bytes",
    "dense_update_bytes", "downlink_bytes", "rejected", "seconds",
)
TABLE_HEADER = f"{'round':>5} {'version':>7} {'acc':>6} {'loss':>6} {'sites':>5} {'upload':>10} {'dense':>10} {'reduce':>7} {'down':>10} {'rej':>3} {'secs':>6}"


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


def table_row(row: Mapping[str, Any]) -> str:
    ratio = reduction(row["dense_update_bytes"], row["upload_bytes"])
    return (
        f"{row['round']:>5} {row['version']:>7} {row['accuracy']:>6.3f} {row['loss']:>6.3f} {row['sites']:>5} "
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


def summarize(rows: list[dict[str, Any]], config: Mapping[str, Any]) -> dict[str, Any]:
    trained = [row for row in rows if row["round"] > 0] or rows
    upload = sum(row["upload_bytes"] for row in trained)
    dense = sum(row["dense_update_bytes"] for row in trained)
    return {
        "final_accuracy": trained[-1]["accuracy"] if trained else None,
        "best_accuracy": max((row["accuracy"] for row in trained), default=None),
        "initial_accuracy": rows[0]["accuracy"] if rows and rows[0]["round"] == 0 else None,
        "rounds": len([row for row in rows if row["round"] > 0]),
        "final_version": trained[-1]["version"] if trained else None,
        "final_version_sha256": trained[-1]["version_sha256"] if trained else None,
        "total_upload_bytes": upload,
        "total_dense_update_bytes": dense,
        "total_downlink_bytes": sum(row["downlink_bytes"] for row in trained),
        "upload_reduction": reduction(dense, upload),
        "total_rejected": sum(row["rejected"] for row in trained),
        "total_seconds": sum(row["seconds"] for row in rows),
        "config": dict(config),
    }


def write_summary(out_dir: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """summary.json, summary.md and plot.png from metrics.jsonl in ``out_dir``."""
    rows = read_rows(out_dir)
    summary = summarize(rows, config)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out_dir / "summary.md").write_text(_markdown(rows, summary), encoding="utf-8")
    if rows:
        _plot(rows, out_dir / "plot.png")
    return summary


def _markdown(rows: list[dict[str, Any]], summary: Mapping[str, Any]) -> str:
    config = summary["config"]
    lines = [
        "# fedelta run",
        "",
        f"method `{config.get('method.name')}`, pruner `{config.get('prune.name')}` "
        f"(drop {config.get('prune.drop')}), values `{config.get('quant.values')}`, "
        f"{config.get('federation.num-sites')} sites, {summary['rounds']} rounds, seed {config.get('seed')}.",
        "",
        f"- final accuracy: **{summary['final_accuracy']:.4f}** (best {summary['best_accuracy']:.4f})"
        if summary["final_accuracy"] is not None else "- no round finished",
        f"- upload: {human_bytes(summary['total_upload_bytes'])} vs {human_bytes(summary['total_dense_update_bytes'])}"
        f" dense fp32 — **{summary['upload_reduction']:.1f}x** less",
        f"- downlink: {human_bytes(summary['total_downlink_bytes'])}; rejected updates: {summary['total_rejected']}",
        "",
        "| round | version | accuracy | loss | sites | upload | dense | reduction | downlink | rejected | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = reduction(row["dense_update_bytes"], row["upload_bytes"])
        lines.append(
            f"| {row['round']} | {row['version']} | {row['accuracy']:.4f} | {row['loss']:.4f} | {row['sites']} "
            f"| {human_bytes(row['upload_bytes'])} | {human_bytes(row['dense_update_bytes'])} "
            f"| {f'{ratio:.1f}x' if ratio else '-'} | {human_bytes(row['downlink_bytes'])} | {row['rejected']} "
            f"| {row['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = round_figure(rows)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def round_figure(rows: list[dict[str, Any]]):  # noqa: ANN201 - a matplotlib Figure
    """Accuracy per round and upload against dense per round, whole rounds on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [row["round"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(rounds, [row["accuracy"] for row in rows], marker="o")
    left.set(xlabel="round", ylabel="test accuracy", title="Server held-out accuracy")
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
