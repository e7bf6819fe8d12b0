"""FedAvg over sparse deltas: per-site downlinks out, encoded updates in.

Sampling and the round loop are Flower's; this subclass only changes what a
message carries (each site's own downlink instead of the full model), which
nodes sampling sees (:class:`~fedelta.server.grid.EligibleGrid`: it tells the
round driver the name each node's key was registered under and leaves out the
nodes of sites the operator blocked), and hands every reply to the round
driver (:mod:`fedelta.server.rounds`), which owns the protocol. Flower numbers
this process's rounds 1..N; a server resumed on its store maps them to the
federation's rounds, which is what sites see as ``server-round``.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedelta.common.messages import EvaluateReply, SiteFailure, TrainReply
from fedelta.server.grid import EligibleGrid
from fedelta.server.progress import RoundProgress
from fedelta.server.rounds import RoundDriver


def _node(message: Message) -> str:
    return str(message.metadata.src_node_id)


def _reply(message: Message, kind: type[TrainReply] | type[EvaluateReply], record: str):
    """A Flower reply as the driver's reply type, or a failure saying why it cannot be one."""
    if message.has_error():
        return SiteFailure(message.error.reason)
    try:
        return kind.from_fields(message.content[record], message.content["metrics"])
    except (KeyError, TypeError, ValueError) as error:
        return SiteFailure(f"malformed reply: {error}")


class DeltaFedAvg(FedAvg):
    """FedAvg whose model travels as merged deltas and whose updates are pruned deltas."""

    def __init__(self, driver: RoundDriver, progress: RoundProgress, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.driver = driver
        self.progress = progress

    def _eligible(self, grid: Grid) -> Grid:
        """``grid`` as sampling sees it: the nodes of blocked sites left out, every node's registered name told."""
        return EligibleGrid(grid, self.driver.register, self.driver.shut_out)

    def _with_downlinks(self, messages: Iterable[Message]) -> list[Message]:
        personal = []
        for message in messages:
            downlink = self.driver.downlink(str(message.metadata.dst_node_id))
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
        server_round = self.driver.store_round(server_round)
        self.driver.open(server_round)
        messages = self._with_downlinks(
            super().configure_train(server_round, ArrayRecord(), config, self._eligible(grid))
        )
        self.progress.phase(server_round, "sites training", sites=len(messages))
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round = self.driver.store_round(server_round)
        messages = self._with_downlinks(
            super().configure_evaluate(server_round, ArrayRecord(), config, self._eligible(grid))
        )
        self.progress.phase(server_round, "sites evaluating", sites=len(messages))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round = self.driver.store_round(server_round)
        self.progress.phase(server_round, "committing")
        accepted = 0
        for message in replies:
            accepted += self.driver.trained(server_round, _node(message), _reply(message, TrainReply, "update"))
        version = self.driver.commit(server_round)
        return None, MetricRecord({"version": -1 if version is None else version.id, "accepted": float(accepted)})

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round = self.driver.store_round(server_round)
        for message in replies:
            self.driver.evaluated(server_round, _node(message), _reply(message, EvaluateReply, "ack"))
        means = self.driver.site_means()
        return MetricRecord(means) if means else None
