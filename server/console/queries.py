"""What the console shows, read from a running server's store: plain JSON-ready dicts, one function per page."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import asdict
from typing import Any

from fedelta.common.report import reduction, summarize
from fedelta.server import control
from fedelta.server.store import Control, VersionStore

RECENT_ROUNDS = 3


def server_state(store: VersionStore) -> dict[str, Any]:
    """What the server last said it was doing, and whether its process still holds the store."""
    status = store.read_meta(control.STATUS) or {"state": "unknown", "round": None, "since": None, "pid": None}
    alive = _holder_alive(store)
    state = status["state"]
    if not alive and state != "finished":
        state = "stopped"
    elif state == "training" and any(
        row["round"] == status["round"] for row in store.round_records(complete=False)
    ):
        state = "evaluating"
    return {**status, "state": state, "server_running": alive, "paused": control.is_paused(store)}


def _holder_alive(store: VersionStore) -> bool:
    """Whether the process named in the store's lock file is running."""
    try:
        pid = int((store.root / "lock").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def rounds(store: VersionStore) -> list[dict[str, Any]]:
    """Every round: finished, committed (being evaluated), or training now (counts so far)."""
    uploads: dict[int, set[str]] = defaultdict(set)
    sent: dict[int, int] = defaultdict(int)
    for upload in store.site_rounds():
        uploads[upload.round].add(upload.site)
        sent[upload.round] += upload.upload_bytes
    refused: dict[int, list[str]] = defaultdict(list)
    for site, number, _ in store.rejections():
        refused[number].append(site)
    rows = []
    for complete in (True, False):
        for record in store.round_records(complete=complete):
            rows.append({**record, "state": "finished" if complete else "evaluating"})
    known = {row["round"] for row in rows}
    for number in sorted(set(uploads) - known):
        rows.append({"round": number, "state": "training", "sites": len(uploads[number]),
                     "upload_bytes": sent[number], "rejected": len(refused[number])})
    for row in rows:
        number = row["round"]
        row["accepted"] = len(uploads[number] - set(refused[number]))
        if "dense_update_bytes" in row:
            row["reduction"] = reduction(row["dense_update_bytes"], row["upload_bytes"])
    return sorted(rows, key=lambda row: row["round"])


def overview(store: VersionStore) -> dict[str, Any]:
    head = store.head()
    all_rounds = rounds(store)
    finished = [row for row in all_rounds if row["state"] == "finished"]
    totals = summarize(finished, {})
    last = max((row["round"] for row in all_rounds), default=0)
    latest = finished[-1] if finished else None
    return {
        "server": server_state(store),
        "head": None if head is None else {"version": head.id, "sha256": head.sha, "round": head.round, "kind": head.kind},
        "versions": 0 if head is None else head.id + 1,
        "latest_round": last,
        "finished_rounds": len([row for row in finished if row["round"] > 0]),
        "latest_accuracy": None if latest is None else latest["accuracy"],
        "latest_accuracy_round": None if latest is None else latest["round"],
        "best_accuracy": totals["best_accuracy"],
        "recent_rounds": RECENT_ROUNDS,
        "recent_sites": store.sites_uploaded_after(last - RECENT_ROUNDS),
        "total_upload_bytes": totals["total_upload_bytes"],
        "total_downlink_bytes": totals["total_downlink_bytes"],
        "total_dense_update_bytes": totals["total_dense_update_bytes"],
        "upload_reduction": totals["upload_reduction"],
        "rejected": len(store.rejections()),
        "pending_controls": len(store.controls(pending=True)),
        "now": time.time(),
    }


def sites(store: VersionStore) -> list[dict[str, Any]]:
    """Per site: when it was last seen, what it holds, what it sent, its mean training metrics, rejections,
    and whether the operator blocked it (a blocked site is listed even before it is first seen)."""
    head = store.head()
    found: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return found.setdefault(name, {
            "site": name, "nodes": [], "last_seen": None, "version": None, "behind": None, "rounds": 0,
            "last_round": None, "upload_bytes": 0, "mean_metrics": {}, "rejections": 0, "blocked": False,
        })

    for node in store.site_nodes():
        site = entry(node.site or f"node-{node.node}")
        site["nodes"].append(node.node)
        site["last_seen"], site["version"] = node.last_seen, node.version
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for upload in store.site_rounds():
        site = entry(upload.site)
        site["rounds"] += 1
        site["last_round"] = upload.round
        site["upload_bytes"] += upload.upload_bytes
        for key, value in upload.metrics.items():
            if isinstance(value, int | float):
                sums[upload.site][key].append(float(value))
    aliases = {f"node-{node}": name for name, site in found.items() for node in site["nodes"]}
    for name, _, _ in store.rejections():
        entry(aliases.get(name, name))["rejections"] += 1
    for name in store.blocked_sites():
        entry(name)["blocked"] = True
    for name, site in found.items():
        site["mean_metrics"] = {key: sum(values) / len(values) for key, values in sorted(sums[name].items())}
        if head is not None and site["version"] is not None:
            site["behind"] = head.id - site["version"]
    return sorted(found.values(), key=lambda site: site["site"])


def versions(store: VersionStore) -> list[dict[str, Any]]:
    """Every committed version, newest first, with what made it and how its weights scored."""
    rolled = {request.result: request.version for request in store.done_controls((control.ROLLBACK,))}
    scored = {row["version_sha256"]: row["accuracy"] for row in store.round_records()}
    return [
        {
            "version": version.id, "parent": version.parent, "sha256": version.sha, "round": version.round,
            "kind": version.kind, "delta_bytes": version.blob_bytes, "snapshot_bytes": version.snapshot_bytes,
            "created": version.created, "rollback_of": rolled.get(version.id),
            "accuracy": scored.get(version.sha),
            "delta_url": f"/versions/{version.id}/delta", "export_url": f"/versions/{version.id}/export.zip",
        }
        for version in reversed(store.versions())
    ]


def rejections(store: VersionStore) -> list[dict[str, Any]]:
    """Every rejection, newest first."""
    return [asdict(rejection) for rejection in reversed(store.rejection_records())]


def controls(store: VersionStore) -> list[dict[str, Any]]:
    """Operator requests, newest first, with what the server made of them."""
    return [control_row(c) for c in reversed(store.controls())]


def control_row(request: Control) -> dict[str, Any]:
    state = "pending" if request.ok is None else "done" if request.ok else "refused"
    return asdict(request) | {"state": state}
