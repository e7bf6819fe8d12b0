"""In-process federations for tests: a Coordinator and Site objects exchanging real bytes, without Flower."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedelta.client.site import Site, simulated_site_data
from fedelta.common.config import Settings
from fedelta.server.coordinator import Coordinator
from fedelta.server.store import VersionStore


@contextmanager
def open_federation(settings: Settings, root: Path) -> Iterator[tuple[Coordinator, list[Site]]]:
    """A coordinator on ``root/state`` and ``federation.num-sites`` sites caching under ``root/sites``."""
    store = VersionStore(root / "state")
    try:
        coordinator = Coordinator(settings, store, root / "out")
        count = settings.federation.num_sites
        sites = [
            Site(settings, f"site-{i}", root / "sites" / str(i), simulated_site_data(settings, i, count))
            for i in range(count)
        ]
        yield coordinator, sites
    finally:
        store.close()


def node_of(site: Site) -> str:
    """The node id a site talks to the coordinator as: ``site-3`` is node ``3``."""
    return site.name.removeprefix("site-")


def train_all(coordinator: Coordinator, sites: list[Site], server_round: int) -> list[bool]:
    """Every site syncs, trains and uploads."""
    accepted = []
    for site in sites:
        node = node_of(site)
        reply = site.train_round(server_round, coordinator.downlink_for(node))
        coordinator.acknowledge(node, site.name, reply.version, reply.sha)
        accepted.append(
            coordinator.receive(node=node, site=site.name, server_round=server_round,
                                payload=reply.payload, metrics=reply.metrics)
        )
    return accepted


def evaluate_all(coordinator: Coordinator, sites: list[Site]) -> list[tuple[int, str]]:
    """Every site syncs to the head and acknowledges; returns what each holds."""
    held = []
    for site in sites:
        version, sha, _ = site.evaluate_round(coordinator.downlink_for(node_of(site)))
        coordinator.acknowledge(node_of(site), site.name, version, sha)
        held.append((version, sha))
    return held


def run_rounds(coordinator: Coordinator, sites: list[Site], rounds: range) -> None:
    for server_round in rounds:
        train_all(coordinator, sites, server_round)
        coordinator.commit(server_round)
        evaluate_all(coordinator, sites)
        coordinator.finish_round(server_round)
