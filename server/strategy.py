"""FedAvg over sparse deltas: per-site downlinks out, encoded updates in.

Sampling and the round loop are Flower's; this subclass only changes what a
message carries (each site's own downlink instead of the full model) and how
replies become a new version (the coordinator's streaming aggregation).
Flower numbers this process's rounds 1..N; a server resumed on its store maps
them to the federation's rounds (``Coordinator.store_round``), which is what
sites see as ``server-round``. Before a round's training starts, the
coordinator acts on the operator's controls (pause, resume, rollback).
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedelta.server.coordinator import Coordinator


def _held_version(record: ConfigRecord) -> tuple[str, int, str]:
    """The site name, version and weights hash that a reply says its site holds."""
    return str(record["site"]), int(record["version"]), str(record["sha"])


class DeltaFedAvg(FedAvg):
    """FedAvg whose model travels as merged deltas and whose updates are pruned deltas."""

    def __init__(self, coordinator: Coordinator, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.coordinator = coordinator

    def _with_downlinks(self, messages: Iterable[Message]) -> list[Message]:
        personal = []
        for message in messages:
            node = str(message.metadata.dst_node_id)
            downlink = self.coordinator.downlink_for(node)
            content = RecordDict(
                {"config": message.content["config"], "downlink": ConfigRecord(downlink.to_fields())}
            )
            personal.append(
                Message(content=content, message_type=message.metadata.message_type, dst_node_id=message.metadata.dst_node_id)
            )
        return personal

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round = self.coordinator.store_round(server_round)
        self.coordinator.between_rounds(server_round)
        return self._with_downlinks(super().configure_train(server_round, ArrayRecord(), config, grid))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round = self.coordinator.store_round(server_round)
        return self._with_downlinks(super().configure_evaluate(server_round, ArrayRecord(), config, grid))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round = self.coordinator.store_round(server_round)
        valid, failed = self._check_and_log_replies(replies, is_train=True, validate=False)
        for message in failed:
            self.coordinator.site_failed(str(message.metadata.src_node_id), message.error.reason, server_round)
        for message in valid:
            node = str(message.metadata.src_node_id)
            try:
                update, metrics = message.content["update"], message.content["metrics"]
                site, version, sha = _held_version(update)
                payload = bytes(update["payload"])
            except (KeyError, TypeError, ValueError) as error:
                self.coordinator.site_failed(node, f"malformed reply: {error!r}", server_round)
                continue
            self.coordinator.acknowledge(node, site, version, sha)
            self.coordinator.receive(node=node, site=site, server_round=server_round, payload=payload, metrics=dict(metrics))
        version = self.coordinator.commit(server_round)
        merged = MetricRecord({"version": -1 if version is None else version.id, "accepted": float(len(valid))})
        return None, merged

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round = self.coordinator.store_round(server_round)
        replies = list(replies)
        for message in replies:
            node = str(message.metadata.src_node_id)
            if message.has_error():
                self.coordinator.site_failed(node, message.error.reason, server_round)
                continue
            try:
                site, version, sha = _held_version(message.content["ack"])
            except (KeyError, TypeError, ValueError) as error:
                self.coordinator.site_failed(node, f"malformed reply: {error!r}", server_round)
                continue
            self.coordinator.acknowledge(node, site, version, sha)
        metrics = super().aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self.coordinator.tally.site_metrics = {f"site-{k}": float(v) for k, v in metrics.items()}
        return metrics
