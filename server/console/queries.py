"""What the console shows, read from a running server's store: plain JSON-ready dicts, one function per page."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import asdict
from typing import Any

from fedelta.common.report import reduction, summarize
from fedelta.server import control
from fedelta.server.control import Control
from fedelta.server.store import VersionStore

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
    for row in store.select("SELECT site, round FROM site_rounds"):
        uploads[row["round"]].add(row["site"])
    refused: dict[int, list[str]] = defaultdict(list)
    for site, number, _ in store.rejections():
        refused[number].append(site)
    rows = []
    for complete in (True, False):
        for record in store.round_records(complete=complete):
            rows.append({**record, "state": "finished" if complete else "evaluating"})
    known = {row["round"] for row in rows}
    for number in sorted(set(uploads) - known):
        sent = store.select("SELECT SUM(upload_bytes) AS total FROM site_rounds WHERE round = ?", (number,))
        rows.append({"round": number, "state": "training", "sites": len(uploads[number]),
                     "upload_bytes": sent[0]["total"] or 0, "rejected": len(refused[number])})
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
    recent = store.select("SELECT DISTINCT site FROM site_rounds WHERE round > ? ORDER BY site", (last - RECENT_ROUNDS,))
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
        "recent_sites": [row["site"] for row in recent],
        "total_upload_bytes": totals["total_upload_bytes"],
        "total_downlink_bytes": totals["total_downlink_bytes"],
        "total_dense_update_bytes": totals["total_dense_update_bytes"],
        "upload_reduction": totals["upload_reduction"],
        "rejected": len(store.rejections()),
        "pending_controls": len(control.requests(store, where="settled IS NULL")),
        "now": time.time(),
    }


def sites(store: VersionStore) -> list[dict[str, Any]]:
    """Per site: when it was last seen, what it holds, what it sent, its mean training metrics, rejections."""
    head = store.head()
    found: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return found.setdefault(name, {
            "site": name, "nodes": [], "last_seen": None, "version": None, "behind": None, "rounds": 0,
            "last_round": None, "upload_bytes": 0, "mean_metrics": {}, "rejections": 0,
        })

    for row in store.select("SELECT node, site, version, last_seen FROM sites ORDER BY last_seen"):
        site = entry(row["site"] or f"node-{row['node']}")
        site["nodes"].append(row["node"])
        site["last_seen"], site["version"] = row["last_seen"], row["version"]
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in store.select("SELECT site, round, upload_bytes, metrics FROM site_rounds ORDER BY round"):
        site = entry(row["site"])
        site["rounds"] += 1
        site["last_round"] = row["round"]
        site["upload_bytes"] += row["upload_bytes"]
        for key, value in json.loads(row["metrics"]).items():
            if isinstance(value, int | float):
                sums[row["site"]][key].append(float(value))
    aliases = {f"node-{node}": name for name, site in found.items() for node in site["nodes"]}
    for name, _, _ in store.rejections():
        entry(aliases.get(name, name))["rejections"] += 1
    for name, site in found.items():
        site["mean_metrics"] = {key: sum(values) / len(values) for key, values in sorted(sums[name].items())}
        if head is not None and site["version"] is not None:
            site["behind"] = head.id - site["version"]
    return sorted(found.values(), key=lambda site: site["site"])


def versions(store: VersionStore) -> list[dict[str, Any]]:
    """Every committed version, newest first, with what made it and how its weights scored."""
    done = control.requests(store, where="ok = 1 AND action = ?", params=(control.ROLLBACK,))
    rolled = {request.result: request.version for request in done}
    scored = {row["version_sha256"]: row["accuracy"] for row in store.round_records()}
    rows = store.select(
        "SELECT id, parent, sha256, round, kind, blob_bytes, snapshot_bytes, created FROM versions ORDER BY id DESC"
    )
    return [
        {
            "version": row["id"], "parent": row["parent"], "sha256": row["sha256"], "round": row["round"],
            "kind": row["kind"], "delta_bytes": row["blob_bytes"], "snapshot_bytes": row["snapshot_bytes"],
            "created": row["created"], "rollback_of": rolled.get(row["id"]),
            "accuracy": scored.get(row["sha256"]),
            "delta_url": f"/versions/{row['id']}/delta", "export_url": f"/versions/{row['id']}/export.zip",
        }
        for row in rows
    ]


def rejections(store: VersionStore) -> list[dict[str, Any]]:
    rows = store.select("SELECT id, site, round, reason, created FROM rejections ORDER BY id DESC")
    return [dict(row) for row in rows]


def controls(store: VersionStore) -> list[dict[str, Any]]:
    """Operator requests, newest first, with what the server made of them."""
    return [control_row(c) for c in reversed(control.requests(store))]


def control_row(request: Control) -> dict[str, Any]:
    state = "pending" if request.ok is None else "done" if request.ok else "refused"
    return asdict(request) | {"state": state}
