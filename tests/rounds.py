"""In-process federations for tests: the round driver over a Coordinator and Site objects exchanging real bytes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedelta.client.site import Site, simulated_site_data
from fedelta.common.codec import Limits, decode, encode
from fedelta.common.config import Settings
from fedelta.common.delta import Delta, Dense, Sparse
from fedelta.common.phases import PHASES
from fedelta.common.upload import upload_binding
from fedelta.server.coordinator import Coordinator
from fedelta.server.rounds import RoundDriver
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
    """Every site syncs, trains and uploads (errors in a site propagate); whether each upload was admitted."""
    driver = RoundDriver(coordinator)
    return [
        driver.trained(server_round, node_of(site), site.train_round(server_round, driver.downlink(node_of(site))))
        for site in sites
    ]


def evaluate_all(coordinator: Coordinator, sites: list[Site]) -> list[tuple[int, str]]:
    """Every site syncs to the head and acknowledges; returns what each holds."""
    driver = RoundDriver(coordinator)
    held = []
    for site in sites:
        reply = site.evaluate_round(driver.downlink(node_of(site)))
        driver.evaluated(coordinator.rounds.last, node_of(site), reply)
        held.append((reply.version, reply.sha))
    return held


def run_rounds(coordinator: Coordinator, sites: list[Site], rounds: range) -> None:
    """Whole rounds through the round driver, every site taking part."""
    driver = RoundDriver(coordinator)
    for server_round in rounds:
        driver.run_round(server_round, {node_of(site): site for site in sites})


def assert_phases_add_up(row: dict) -> None:
    """A metrics row's phases: every phase named, each at least 0, together the round's seconds."""
    assert set(row["phases"]) == set(PHASES)
    assert all(seconds >= 0 for seconds in row["phases"].values())
    assert abs(sum(row["phases"].values()) - row["seconds"]) <= 1e-9 * max(1.0, row["seconds"])


def rebound(payload: bytes, limits: Limits, server_round: int, site: str, *, scale: float = 1.0,
            values: str = "") -> bytes:
    """The same upload bound to another round and site (what a site re-encoding another's upload sends), its
    values times ``scale`` (sent as ``values``, default: as they came)."""
    decoded = decode(payload, limits)
    entries = decoded.delta.entries
    if scale != 1.0:
        entries = {name: Dense((entry.to_dense().double() * scale).float()) if entry.positions() is None
                   else Sparse(entry.shape, entry.positions(), (entry.flat_values().double() * scale).float())
                   for name, entry in entries.items()}
    meta = {key: value for key, value in decoded.meta.items() if key in ("method", "prune")}
    return encode(Delta(entries), base=decoded.base, values=values or decoded.meta["values"],
                  meta={**meta, **upload_binding(server_round, site)})
