"""The round protocol, written once and free of Flower: the steps of a round and their order.

A round opens (the operator's pending controls are settled), each sampled site
gets its downlink and answers with a training reply (the server acknowledges
the version the site holds and admits its upload), the accepted uploads are
committed as the next version, each site gets the downlink to the new head and
answers with an evaluation reply (acknowledged again), and the round finishes
(the head is evaluated on the server's test set and the round recorded).

A reply is taken as coming from the site its node is bound to (see
:mod:`fedelta.server.identity`: the name the node's key was registered under,
which the strategy passes from Flower, else the name it first claimed); the
name the reply gives is only a claim that must agree. A node bound to a site
the operator blocked is not asked to take part.

Each step is timed on the round's clock (:mod:`fedelta.server.clock`) as its
phase, and the time between steps as the wait for the sites; the round's
record splits its seconds into those phases.

The Flower strategy (:mod:`fedelta.server.strategy`) calls these steps from
Flower's hooks; :meth:`RoundDriver.run_round` calls them in order on sites in
this process (the in-process experiment backend and the tests).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from fedelta.common.messages import EvaluateReply, SiteFailure, TrainReply
from fedelta.common.versions import Downlink
from fedelta.server.clock import RoundClock
from fedelta.server.coordinator import Coordinator
from fedelta.server.store import Version

log = logging.getLogger("fedelta.server")
WEIGHT_METRIC = "num-examples"
SECONDS = "seconds"  # sites' timings (``seconds``, ``seconds-<phase>``): the round's phases, not test metrics


class SiteLink(Protocol):
    """A site the driver talks to directly (in process): the two calls a Flower message would make."""

    name: str

    def train_round(self, server_round: int, downlink: Downlink, genesis_sha: str = "") -> TrainReply: ...

    def evaluate_round(self, downlink: Downlink) -> EvaluateReply: ...


class RoundDriver:
    """Takes a coordinator through each round's steps; Flower or a loop in process supplies the replies."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self._evaluations: dict[str, EvaluateReply] = {}

    @property
    def genesis_sha(self) -> str:
        return self.coordinator.genesis_sha

    def store_round(self, flower_round: int) -> int:
        """The federation's round number for round ``flower_round`` of this server process."""
        return self.coordinator.store_round(flower_round)

    @property
    def clock(self) -> RoundClock:
        """The current round's clock: each step below is timed as its phase, the time between steps as waiting."""
        return self.coordinator.tally.clock

    def open(self, server_round: int, *, concurrent: bool = True) -> None:
        """Settle the operator's pending controls (waiting while paused) before training starts; the round's
        sites then run at once (``concurrent``, as under Flower) or one after another."""
        self.coordinator.between_rounds(server_round, concurrent=concurrent)
        self._evaluations = {}

    def register(self, names: Mapping[str, str]) -> None:
        """What the transport says each node is: node id -> the name its key was registered under ("" = none)."""
        self.coordinator.register_nodes(names)

    def shut_out(self, node: str) -> bool:
        """Whether ``node`` belongs to a site the operator blocked: it is not sent this round's messages."""
        return self.coordinator.shut_out(node)

    def downlink(self, node: str) -> Downlink:
        """What ``node`` receives to reach the head from the version it last acknowledged."""
        with self.clock.step("downlink"):
            return self.coordinator.downlink_for(node)

    def trained(self, server_round: int, node: str, reply: TrainReply | SiteFailure) -> bool:
        """Take one site's training reply; whether its upload was admitted."""
        with self.clock.step("receive"):
            if isinstance(reply, SiteFailure):
                self.coordinator.site_failed(node, reply.reason, server_round)
                return False
            site = self.coordinator.identify(node, reply.site)
            self.clock.report(site, reply.metrics)
            self.coordinator.acknowledge(node, site, reply.version, reply.sha)
            return self.coordinator.receive(
                node=node, site=site, claim=reply.site, server_round=server_round, payload=reply.payload,
                metrics=reply.metrics,
            )

    def commit(self, server_round: int) -> Version | None:
        """The next version from the admitted uploads, or ``None`` when too few were admitted."""
        try:
            with self.clock.step("commit"):
                return self.coordinator.commit(server_round)
        finally:
            self.clock.committed()

    def evaluated(self, server_round: int, node: str, reply: EvaluateReply | SiteFailure) -> None:
        """Take one site's evaluation reply: acknowledge the version it now holds, keep its metrics."""
        with self.clock.step("other"):
            if isinstance(reply, SiteFailure):
                self.coordinator.site_failed(node, reply.reason, server_round)
                return
            site = self.coordinator.identify(node, reply.site)
            self.clock.report(site, reply.metrics)
            self.coordinator.acknowledge(node, site, reply.version, reply.sha)
            self._evaluations[site] = reply

    def site_means(self) -> dict[str, float]:
        """The sites' local test metrics, averaged by their test examples, in site-name order."""
        replies = [self._evaluations[site] for site in sorted(self._evaluations)]
        weights = [reply.metrics.get(WEIGHT_METRIC, 0.0) for reply in replies]
        total = sum(weights)
        if not replies or total <= 0:
            return {}
        named = {key for reply in replies for key in reply.metrics}
        keys = sorted(key for key in named if key != WEIGHT_METRIC and not key.startswith(SECONDS))
        return {
            key: sum(weight * reply.metrics.get(key, 0.0) for weight, reply in zip(weights, replies)) / total
            for key in keys
        }

    def finish(self, server_round: int) -> dict[str, Any]:
        """Evaluate the head on the server's test set and record the round; its metrics row."""
        self.coordinator.tally.site_metrics = {f"site-{key}": value for key, value in self.site_means().items()}
        self._evaluations = {}
        return self.coordinator.finish_round(server_round)

    def run_round(self, server_round: int, sites: Mapping[str, SiteLink]) -> dict[str, Any]:
        """One whole round with sites in this process (``sites`` maps node ids to sites); its metrics row.

        These sites are this process's own, so each node is bound to its site's
        name as a registered key would be; sites the operator blocked (by the
        time the round opens) sit the round out.
        """
        self.open(server_round, concurrent=False)
        self.register({node: site.name for node, site in sites.items()})
        sites = {node: site for node, site in sites.items() if not self.shut_out(node)}
        for node, site in sites.items():
            self.trained(server_round, node, _train(site, server_round, self.downlink(node), self.genesis_sha))
        self.commit(server_round)
        for node, site in sites.items():
            self.evaluated(server_round, node, _evaluate(site, self.downlink(node)))
        return self.finish(server_round)


def _train(site: SiteLink, server_round: int, downlink: Downlink, genesis_sha: str) -> TrainReply | SiteFailure:
    """A site's training reply; an error in the site becomes a failure, as a Flower error message would."""
    try:
        return site.train_round(server_round, downlink, genesis_sha)
    except Exception as error:  # noqa: BLE001 - a failing site must not end the round, as under Flower
        log.warning("site %s failed to train in round %d: %r", site.name, server_round, error)
        return SiteFailure(repr(error))


def _evaluate(site: SiteLink, downlink: Downlink) -> EvaluateReply | SiteFailure:
    try:
        return site.evaluate_round(downlink)
    except Exception as error:  # noqa: BLE001 - as in _train
        log.warning("site %s failed to evaluate: %r", site.name, error)
        return SiteFailure(repr(error))
