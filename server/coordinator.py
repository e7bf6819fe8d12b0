"""The server's state across rounds, free of Flower: the current weights, the store,
per-site downlinks, who each node is, validation and streaming aggregation, commits, and round records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fedelta.common import report
from fedelta.common.codec import UPLOAD_EXPANSION, Decoded, Limits, decode
from fedelta.common.config import Settings
from fedelta.common.data import hold_out
from fedelta.common.delta import Delta, apply_delta, model_params, state_hash
from fedelta.common.devices import placed, resolve_device
from fedelta.common.methods import METHODS, MethodContext
from fedelta.common.sparsity import base_pattern
from fedelta.common.tasks import task_for
from fedelta.common.versions import MERGED, Downlink, encode_snapshot, load_snapshot
from fedelta.server import control
from fedelta.server.clock import RoundClock
from fedelta.server.downlink import MergedEncoder, shortest_downlink
from fedelta.server.identity import Identities, node_name
from fedelta.server.memory import peak_rss_bytes, rss_bytes
from fedelta.server.merge import HeldUpload, History, Merged, Share, merge
from fedelta.server.resume import reopen_rounds, replay_to, restore
from fedelta.server.store import Version, VersionStore
from fedelta.server.validation import (
    Rejected, check_binding, check_sender, example_weight, rejection_reason, update_norm, validate_update,
)

log = logging.getLogger("fedelta.server")
# Sites' training metrics whose mean over the round's sites goes into metrics.jsonl as ``site_<key>``.
REPORTED_TRAIN_METRICS = ("prune-q", "residual-norm", "budget-keep")


@dataclass
class RoundTally:
    """What one round has seen so far."""

    clock: RoundClock = field(default_factory=RoundClock)
    sites: int = 0
    upload_bytes: int = 0
    downlink_bytes: int = 0
    rejected: int = 0
    clipped: int = 0
    site_metrics: dict[str, float] = field(default_factory=dict)
    train_metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    def train_means(self) -> dict[str, float]:
        """Each reported training metric's mean over the sites that sent it, summed in site-name order."""
        means = {}
        for key in REPORTED_TRAIN_METRICS:
            values = [self.train_metrics[site][key] for site in sorted(self.train_metrics) if key in self.train_metrics[site]]
            if values:
                means[f"site-{key}"] = sum(values) / len(values)
        return means

    def counters(self) -> dict[str, int]:
        return {"sites": self.sites, "upload_bytes": self.upload_bytes,
                "downlink_bytes": self.downlink_bytes, "rejected": self.rejected, "clipped": self.clipped}


def upload_limits(model: Limits, max_decoded_bytes: int) -> Limits:
    """The model's decoding bounds with a bounded expansion, tightened by ``validate.max-decoded-bytes`` when set."""
    max_bytes = min(model.max_bytes, max_decoded_bytes) if max_decoded_bytes else model.max_bytes
    return replace(model, max_bytes=max_bytes, max_expansion=UPLOAD_EXPANSION)


class Coordinator:
    """Holds version t, hands out downlinks, turns uploads into version t+1."""

    def __init__(self, settings: Settings, store: VersionStore, out_dir: Path) -> None:
        self.settings = settings
        self.store = store
        self.out_dir = out_dir
        self.task = task_for(settings)
        corpus = self.task.load_data()
        _, test_idx = hold_out(corpus, settings.data.test_size, settings.seed)
        self.test = corpus.subset(test_idx)
        self.bundle = self.task.load_model(len(corpus.label_names), settings.seed)
        self.params = model_params(self.bundle.model)
        self.shapes = {name: tuple(param.shape) for name, param in self.params.items()}
        self.num_params = self.bundle.num_params()
        self.limits = Limits.for_model(self.num_params)
        self.upload_limits = upload_limits(self.limits, settings.validate.max_decoded_bytes)
        self.needs_snapshot: set[str] = set()
        self._snapshots: dict[int, bytes] = {}
        self.head, residual = restore(store, self.params, self.limits)
        self.rounds = reopen_rounds(store, out_dir)
        self.genesis_sha = self.store.genesis().sha
        self.encoder = MergedEncoder(settings.downlink, settings.prune.min_size, self.limits, residual)
        self.method = METHODS.get(settings.method.name)
        self._memo: dict[str, dict[str, torch.Tensor]] = {}
        self.context = MethodContext(settings.method, self.bundle.head, self.genesis_sha, self._genesis_params,
                                     self._remember, settings.options_for(settings.method.name),
                                     self.task.peft_task_type)
        self.allowed = self.method.touched(self.bundle.model, self.context)
        self.pattern = base_pattern(settings.model.sparse_base, self.context)
        self.resolver = self.method.resolver(self.context, self.params)
        self.tally = RoundTally()
        self.held: list[HeldUpload] = []
        self.identities = Identities()
        self.blocked = frozenset(store.blocked_sites())
        store.write_meta("settings", settings.to_run_config())
        store.write_meta("labels", list(corpus.label_names))
        control.write_status(store, "starting", self.rounds.last)

    def store_round(self, flower_round: int) -> int:
        """The federation's round number for round ``flower_round`` of this server process."""
        return self.rounds.last + flower_round

    def between_rounds(self, server_round: int, *, concurrent: bool = True) -> None:
        """Act on the operator's pending controls before round ``server_round`` starts (waiting while paused);
        the round's clock starts after that, its sites training at once (``concurrent``) or one by one."""
        control.between_rounds(self.store, server_round, self.rollback_to)
        self.blocked = frozenset(self.store.blocked_sites())
        self.tally.clock.open(concurrent=concurrent)

    def register_nodes(self, names: Mapping[str, str]) -> None:
        """Bind each node id to the name the transport knows it by (its key's registered name)."""
        for node, name in names.items():
            if name:
                self.identities.register(node, name)

    def identify(self, node: str, claim: str) -> str:
        """The site ``node`` is (see :mod:`fedelta.server.identity`); ``claim`` is what its reply says."""
        return self.identities.identify(node, claim)

    def shut_out(self, node: str) -> bool:
        """Whether ``node`` is bound to a site the operator blocked (it is then not asked to take part)."""
        return self.identities.site_of(node) in self.blocked

    def rollback_to(self, version_id: int, server_round: int) -> Version:
        """Commit a new head whose weights are those of committed version ``version_id``.

        Its parent is the current head and its blob a full snapshot, so sites
        reach it by the usual hash-checked downlink; the downlink residual of
        the abandoned line is dropped.
        """
        target = self.store.version(version_id)
        if target.id == self.head.id:
            raise ValueError(f"version {version_id} is already the head")
        if target.sha == self.head.sha:
            raise ValueError(f"the head already holds version {version_id}'s weights")
        previous = encode_snapshot(self.params)
        try:
            replay_to(self.store, target.id, self.params, self.limits)
            sha = state_hash(self.params)
            snapshot = encode_snapshot(self.params)
            self.head = self.store.commit_version(
                parent=self.head.id, round=server_round, sha=sha, kind=control.ROLLBACK, blob=snapshot, snapshot=snapshot,
            )
        except BaseException:
            load_snapshot(self.params, decode(previous, self.limits).delta)
            raise
        self.encoder.residual = {}
        self._snapshots = {self.head.id: snapshot}
        self.resolver = self.method.resolver(self.context, self.params)
        log.warning("rolled back: version %d holds version %d's weights (%s)", self.head.id, target.id, sha[:12])
        return self.head

    def _genesis_params(self) -> dict[str, torch.Tensor]:
        snapshot = decode(self.store.read_blob(self.store.genesis()), self.limits).delta
        return snapshot.to_dense()

    def _remember(self, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def downlink_for(self, node: str) -> Downlink:
        """The shortest hash-checked way from what ``node`` last acknowledged to the head."""
        downlink = shortest_downlink(
            self.store, self.head, self.store.site_version(node), max_chain=self.settings.downlink.max_chain,
            snapshot=self._head_snapshot, snapshot_only=node in self.needs_snapshot,
        )
        self.tally.downlink_bytes += downlink.size()
        return downlink

    def _head_snapshot(self) -> bytes:
        if self.head.id not in self._snapshots:
            blob = self.store.read_snapshot(self.head) if self.head.snapshot else encode_snapshot(self.params)
            self._snapshots = {self.head.id: blob}
        return self._snapshots[self.head.id]

    def site_failed(self, node: str, reason: str, server_round: int) -> None:
        """A site could not run its round; it gets a full snapshot next time."""
        self.needs_snapshot.add(node)
        site = self.identities.site_of(node) or node_name(node)
        self.store.record_rejection(site=site, round=server_round, reason=f"site error: {reason}")
        self.tally.rejected += 1

    def acknowledge(self, node: str, site: str, version: int, sha: str) -> None:
        known = 0 <= version <= self.head.id and self.store.version(version).sha == sha
        self.store.set_site_version(node, site, version if known else None)
        if known:
            self.needs_snapshot.discard(node)

    def receive(
        self, *, node: str, site: str, server_round: int, payload: bytes, metrics: dict[str, float],
        claim: str | None = None,
    ) -> bool:
        """Decode, resolve and validate one upload from ``site`` and hold it for :meth:`commit`; a rejected
        one is recorded.

        ``site`` is who the server knows the sender to be; ``claim`` (what its
        reply says) must agree. A blocked site, a second upload of a site in
        the round, an upload bound to another round or site, and an empty one
        are rejected. The upload is held as its bytes with its norm;
        :meth:`commit` adds the held uploads in site-name order, so the merged
        delta does not depend on the order in which sites replied.
        """
        self.tally.upload_bytes += len(payload)
        self.tally.sites += 1
        again = any(upload.site == site for upload in self.held)
        try:
            check_sender(node, site, claim, blocked=site in self.blocked, again=again)
            self.tally.train_metrics[site] = {
                key: float(metrics[key])
                for key in REPORTED_TRAIN_METRICS if isinstance(metrics.get(key), int | float)
            }
            weight = example_weight(metrics)
            decoded = self._validated(payload)
            check_binding(decoded.meta, server_round, site)
            norm = update_norm(decoded.delta)
            if not norm:
                raise Rejected("empty update: no entries, or every value zero")
            self.held.append(HeldUpload(site, payload, weight, norm))
        except Exception as error:  # noqa: BLE001 - whatever an upload provokes rejects it; the round goes on
            self._reject(site, server_round, rejection_reason(error))
            return False
        finally:
            if not again:
                self.store.record_site_round(site=site, node=node, round=server_round, upload_bytes=len(payload),
                                             metrics=metrics)
        return True

    def admitted(self, payload: bytes) -> Delta:
        """Decode one upload within limits, resolve method-specific entries, validate against the head (or raise)."""
        return self._validated(payload).delta

    def _validated(self, payload: bytes) -> Decoded:
        decoded = decode(payload, self.upload_limits, shapes=self.shapes)
        decoded = Decoded(self.resolver.resolve(decoded.delta), decoded.meta)
        validate_update(
            decoded, base_sha=self.head.sha, params=self.params, allowed=self.allowed, pattern=self.pattern
        )
        return decoded

    def _reject(self, site: str, server_round: int, reason: str) -> None:
        self.store.record_rejection(site=site, round=server_round, reason=reason)
        self.tally.rejected += 1
        log.warning("rejected update from %s in round %d: %s", site, server_round, reason)

    def _merge(self, server_round: int) -> Merged | None:
        held, self.held = self.held, []
        history = History(self.store.merged_weights(server_round), self.store.merged_contributions(server_round))
        return merge(held, history, self.settings, admit=self.admitted,
                     reject=lambda site, reason: self._reject(site, server_round, reason), server_round=server_round)

    def _count_clips(self, shares: Sequence[Share], server_round: int) -> None:
        for share in shares:
            if share.note:
                self.tally.clipped += 1
                log.warning("round %d, site %s: %s", server_round, share.upload.site, share.note)

    def _record_shares(self, shares: Sequence[Share], server_round: int) -> None:
        """Each merged upload's weight and weighted norm: the history later rounds' bounds come from."""
        for share in shares:
            self.store.record_merged(site=share.upload.site, round=server_round, weight=share.weight,
                                     contribution=share.contribution, note=share.note)

    def commit(self, server_round: int) -> Version | None:
        """Merge the accepted uploads into the next version, or keep the head if too few.

        The weights move by exactly what the stored (and sent) blob decodes to;
        if the store cannot commit, they are brought back to the head from the store.
        """
        merged = self._merge(server_round)
        if merged is None:
            log.warning("round %d: fewer accepted updates than federation.min-sites; no new version", server_round)
            return None
        self._count_clips(merged.shares, server_round)
        parent, version_id = self.head, self.head.id + 1
        try:
            with self.store.blob_writer() as blob:
                residual = self.encoder.encode_into(self.params, merged.delta, blob, base=parent.sha, seed=version_id)
            sha = state_hash(self.params)
            every = self.settings.store.snapshot_every
            snapshot = encode_snapshot(self.params) if every and version_id % every == 0 else None
            record = {"round": server_round, "version": version_id, "version_sha256": sha, **self.tally.counters()}
            self.head = self.store.commit_version(
                parent=parent.id, round=server_round, sha=sha, kind=MERGED, blob=blob.stored, snapshot=snapshot,
                residual=self.encoder.residual_blob(residual, sha), record=record,
            )
        except BaseException:
            replay_to(self.store, parent.id, self.params, self.limits)
            raise
        self._record_shares(merged.shares, server_round)
        self.encoder.residual = residual
        self._snapshots = {} if snapshot is None else {self.head.id: snapshot}
        self.resolver = self.method.resolver(self.context, self.params)
        return self.head

    def finish_round(self, server_round: int) -> dict[str, Any]:
        """Evaluate the head on the held-out test set and record the round.

        A round finished before a restart is not evaluated again; one committed
        before a restart but not evaluated keeps the counts recorded at commit.
        """
        tally, self.tally = self.tally, RoundTally()
        if server_round in self.rounds.finished:
            return self.rounds.finished[server_round]
        device = resolve_device(self.settings.local.device)
        with tally.clock.step("server_evaluate"), placed(self.bundle.model, device):
            result = self.task.evaluate(self.bundle, self.test)
        self.params = model_params(self.bundle.model)
        counters = self.rounds.pending.pop(server_round, tally.counters())
        rss = rss_bytes()
        seconds, phases = tally.clock.close()
        site_phases = tally.clock.site_means()
        row = {
            "round": server_round,
            "version": self.head.id,
            "version_sha256": self.head.sha,
            "accuracy": result.accuracy,
            "loss": result.loss,
            **({} if result.perplexity is None else {"perplexity": result.perplexity}),
            "sites": counters["sites"],
            "upload_bytes": counters["upload_bytes"],
            "dense_update_bytes": 4 * self.num_params * counters["sites"],
            "downlink_bytes": counters["downlink_bytes"],
            "rejected": counters["rejected"],
            "server_rss_bytes": rss,
            "server_peak_rss_bytes": max(peak_rss_bytes(), rss),  # the kernel raises its mark lazily
            "seconds": seconds,
            "phases": phases,
            **({"site_phases": site_phases} if site_phases else {}),
            **{key.replace("-", "_"): value for key, value in {**tally.train_means(), **tally.site_metrics}.items()},
        }
        self.store.record_round(server_round, self.head.id, row)
        report.append_row(self.out_dir, row)
        return row
