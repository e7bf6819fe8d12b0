"""The server's state across rounds, free of Flower: the current weights, the store,
per-site downlinks, validation and streaming aggregation, commits, and round records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common import report
from common.codec import CodecError, Decoded, Limits, decode
from common.config import Settings
from common.data import hold_out, load_corpus
from common.delta import apply_delta, model_params, state_hash
from common.methods import METHODS, MethodContext
from common.model import load_model
from common.training import evaluate
from common.versions import FROM_SNAPSHOT, MERGED, SNAPSHOT, Downlink, apply_downlink, encode_merged, encode_snapshot
from server.aggregation import AGGREGATORS, Aggregator
from server.store import Version, VersionStore
from server.validation import Rejected, validate_update

log = logging.getLogger("fedelta.server")


@dataclass
class RoundTally:
    """What one round has seen so far."""

    started: float = field(default_factory=time.perf_counter)
    sites: int = 0
    upload_bytes: int = 0
    downlink_bytes: int = 0
    rejected: int = 0
    site_metrics: dict[str, float] = field(default_factory=dict)


class Coordinator:
    """Holds version t, hands out downlinks, turns uploads into version t+1."""

    def __init__(self, settings: Settings, store: VersionStore, out_dir: Path) -> None:
        self.settings = settings
        self.store = store
        self.out_dir = out_dir
        corpus = load_corpus(settings.data)
        _, test_idx = hold_out(corpus, settings.data.test_size, settings.seed)
        self.test = corpus.subset(test_idx)
        self.bundle = load_model(settings.model.path, len(corpus.label_names), settings.seed)
        self.params = model_params(self.bundle.model)
        self.num_params = self.bundle.num_params()
        self.limits = Limits.for_model(self.num_params)
        self.needs_snapshot: set[str] = set()
        self._snapshots: dict[int, bytes] = {}
        self.head = self._restore_or_create_genesis()
        self.genesis_sha = self.store.genesis().sha
        self.method = METHODS.get(settings.method.name)
        self._memo: dict[str, dict[str, torch.Tensor]] = {}
        self.context = MethodContext(settings.method, self.bundle.head, self.genesis_sha, self._genesis_params, self._remember)
        self.allowed = self.method.touched(self.bundle.model, self.context)
        self.resolver = self.method.resolver(self.context, self.params)
        self.tally = RoundTally()
        self.aggregator: Aggregator = AGGREGATORS.get(settings.aggregate.name)()

    def _restore_or_create_genesis(self) -> Version:
        head = self.store.head()
        sha = state_hash(self.params)
        if head is None:
            return self.store.commit_version(
                parent=None, round=0, sha=sha, kind=SNAPSHOT, blob=encode_snapshot(self.params)
            )
        genesis = self.store.genesis()
        path = [genesis, *self.store.chain(genesis.id, head.id)]
        replay = Downlink(FROM_SNAPSHOT, "", [self.store.read_blob(v) for v in path], [v.id for v in path], [v.sha for v in path])
        apply_downlink(self.params, replay, self.limits)
        log.info("resumed at version %d (%s)", head.id, head.sha[:12])
        return head

    def _genesis_params(self) -> dict[str, torch.Tensor]:
        snapshot = decode(self.store.read_blob(self.store.genesis()), self.limits).delta
        return snapshot.to_dense()

    def _remember(self, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def downlink_for(self, node: str) -> Downlink:
        """The shortest way from what ``node`` last acknowledged to the head."""
        known = None if node in self.needs_snapshot else self.store.site_version(node)
        start = self.store.genesis().id if known is None else known
        if start == self.head.id:
            downlink = Downlink(self.head.id, self.head.sha)
        else:
            chain = self.store.chain(start, self.head.id)
            if len(chain) > self.settings.downlink.max_chain or node in self.needs_snapshot:
                downlink = Downlink(FROM_SNAPSHOT, "", [self._head_snapshot()], [self.head.id], [self.head.sha])
            else:
                blobs = [self.store.read_blob(v) for v in chain]
                downlink = Downlink(start, self.store.version(start).sha, blobs, [v.id for v in chain], [v.sha for v in chain])
        self.tally.downlink_bytes += downlink.size()
        return downlink

    def _head_snapshot(self) -> bytes:
        if self.head.id not in self._snapshots:
            self._snapshots = {self.head.id: encode_snapshot(self.params)}
        return self._snapshots[self.head.id]

    def site_failed(self, node: str, reason: str, server_round: int) -> None:
        """A site could not run its round; it gets a full snapshot next time."""
        self.needs_snapshot.add(node)
        self.store.record_rejection(site=f"node-{node}", round=server_round, reason=f"site error: {reason}")
        self.tally.rejected += 1

    def acknowledge(self, node: str, site: str, version: int, sha: str) -> None:
        known = self.store.version(version).sha == sha if version <= self.head.id else False
        self.store.set_site_version(node, site, version if known else None)
        if known:
            self.needs_snapshot.discard(node)

    def receive(self, *, node: str, site: str, server_round: int, payload: bytes, metrics: dict[str, float]) -> bool:
        """Decode, validate and aggregate one upload; a rejected one is recorded and dropped."""
        self.tally.upload_bytes += len(payload)
        self.tally.sites += 1
        try:
            decoded = decode(payload, self.limits)
            decoded = Decoded(self.resolver.resolve(decoded.delta), decoded.meta)
            validate_update(decoded, base_sha=self.head.sha, params=self.params, allowed=self.allowed)
            self.aggregator.add(decoded.delta, metrics["num-examples"])
        except (CodecError, Rejected, ValueError) as error:
            self.store.record_rejection(site=site, round=server_round, reason=str(error))
            self.tally.rejected += 1
            log.warning("rejected update from %s in round %d: %s", site, server_round, error)
            return False
        finally:
            self.store.record_site_round(site=site, node=node, round=server_round, upload_bytes=len(payload), metrics=metrics)
        return True

    def commit(self, server_round: int) -> Version | None:
        """Merge the accepted uploads into the next version, or keep the head if too few."""
        aggregator, self.aggregator = self.aggregator, AGGREGATORS.get(self.settings.aggregate.name)()
        if aggregator.count < self.settings.federation.min_sites:
            log.warning("round %d: %d accepted updates < federation.min-sites; no new version", server_round, aggregator.count)
            return None
        blob = encode_merged(aggregator.result(), base=self.head.sha)
        apply_delta(self.params, decode(blob, self.limits).delta)
        sha = state_hash(self.params)
        self.head = self.store.commit_version(parent=self.head.id, round=server_round, sha=sha, kind=MERGED, blob=blob)
        self.resolver = self.method.resolver(self.context, self.params)
        return self.head

    def finish_round(self, server_round: int) -> dict[str, Any]:
        """Evaluate the head on the held-out test set and record the round."""
        result = evaluate(self.bundle.model, self.bundle.tokenizer, self.test, max_length=self.settings.model.max_length)
        tally, self.tally = self.tally, RoundTally()
        row = {
            "round": server_round,
            "version": self.head.id,
            "version_sha256": self.head.sha,
            "accuracy": result.accuracy,
            "loss": result.loss,
            "sites": tally.sites,
            "upload_bytes": tally.upload_bytes,
            "dense_update_bytes": 4 * self.num_params * tally.sites,
            "downlink_bytes": tally.downlink_bytes,
            "rejected": tally.rejected,
            "seconds": time.perf_counter() - tally.started,
            **{key.replace("-", "_"): value for key, value in tally.site_metrics.items()},
        }
        self.store.record_round(server_round, self.head.id, row)
        report.append_row(self.out_dir, row)
        return row
