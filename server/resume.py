"""Starting a server on its store: create version 0, or rebuild the head from the newest
snapshot and the merged deltas after it, and pick up the round records where they stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedelta.common import report
from fedelta.common.codec import Limits
from fedelta.common.delta import state_hash
from fedelta.common.versions import FROM_SNAPSHOT, SNAPSHOT, Downlink, apply_downlink, encode_snapshot
from fedelta.server.downlink import Residual, check_residual_names, load_residual
from fedelta.server.store import Version, VersionStore

log = logging.getLogger("fedelta.server")


@dataclass(frozen=True)
class RoundLog:
    """Rounds the store already knows: the last one, finished records, and committed-but-unfinished ones."""

    last: int = 0
    finished: dict[int, dict[str, Any]] = field(default_factory=dict)
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)


def restore(store: VersionStore, params: Mapping[str, torch.Tensor], limits: Limits) -> tuple[Version, Residual]:
    """Bring ``params`` (freshly built version 0) to the store's head; a new store gets version 0.

    Refuses a store whose version 0 is not what the settings build (another
    model, seed or label set), since sites build version 0 themselves.
    """
    sha = state_hash(params)
    head = store.head()
    if head is None:
        snapshot = encode_snapshot(params)
        return store.commit_version(parent=None, round=0, sha=sha, kind=SNAPSHOT, blob=snapshot, snapshot=snapshot), {}
    genesis = store.genesis()
    if genesis.sha != sha:
        raise ValueError(
            f"setting 'output.state-dir': the store in {store.root} starts from version 0 {genesis.sha[:12]}, "
            f"but model.path, seed and the data's labels build {sha[:12]}; use these settings' state folder or a new one"
        )
    steps = replay_to(store, head.id, params, limits)
    residual = load_residual(store.read_residual(head), limits)
    check_residual_names(residual, params)
    if head.id:
        log.info("resumed at version %d (%s): a snapshot + %d merged deltas", head.id, head.sha[:12], steps)
    return head, residual


def replay_to(store: VersionStore, version_id: int, params: Mapping[str, torch.Tensor], limits: Limits) -> int:
    """Overwrite ``params`` with committed version ``version_id``: its newest snapshot, then the
    merged deltas after it, each checked by hash. Returns how many merged deltas were applied.
    """
    base = store.latest_snapshot(version_id)
    chain = store.chain(base.id, version_id)
    replay = Downlink(
        FROM_SNAPSHOT, "", [store.read_snapshot(base), *(store.read_blob(v) for v in chain)],
        [base.id, *(v.id for v in chain)], [base.sha, *(v.sha for v in chain)],
    )
    apply_downlink(params, replay, limits)
    return len(chain)


def reopen_rounds(store: VersionStore, out_dir: Path) -> RoundLog:
    """Round records so far; forget a round cut short; rewrite ``metrics.jsonl`` from the store."""
    last = store.last_round() or 0
    store.discard_after(last)
    finished = store.round_records()
    report.rewrite_rows(out_dir, finished)
    return RoundLog(
        last=last,
        finished={row["round"]: row for row in finished},
        pending={row["round"]: row for row in store.round_records(complete=False)},
    )
