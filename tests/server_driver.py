"""A server process for the crash tests: Coordinator and two sites, rounds as Flower runs them.

``python tests/server_driver.py STATE_DIR WORK_DIR --rounds N [--kill POINT ROUND]`` prints
one JSON line per event (start, commit, finish) and, with ``--kill``, SIGKILLs
itself at POINT of store round ROUND:

- ``mid-round``: after the first site's update was received;
- ``blob-write``: halfway through writing a blob file of the commit;
- ``mid-commit``: inside the commit's SQLite transaction, after the version row was inserted;
- ``after-commit``: once the version is committed, before the round is evaluated and recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch

from fedelta.client.site import Site, simulated_site_data
from fedelta.common.config import Settings
from fedelta.server import store as server_store
from fedelta.server.coordinator import Coordinator
from fedelta.server.rounds import RoundDriver

TINY = {
    "model.path": "tiny-bert", "federation.num-sites": 2, "local.steps": 2, "local.batch-size": 4,
    "local.lr": 1e-3, "data.test-size": 32, "data.max-site-examples": 32, "model.max-length": 16,
    "store.snapshot-every": 2, "downlink.prune": "magnitude", "downlink.density": 0.05,
}


def emit(**event: object) -> None:
    print(json.dumps(event), flush=True)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, kill_round: int, current: dict[str, int]) -> None:
    """Patch the store so that the commit of ``kill_round`` (while ``current["round"]`` is it) dies at ``point``."""

    def in_round() -> bool:
        return current["round"] == kill_round

    if point == "blob-write":
        real_write = server_store.write_bytes_atomic

        def half_write(path: Path, data: bytes) -> None:
            if not in_round():
                return real_write(path, data)
            with open(path.parent / f".{path.name}.crash.tmp", "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            die()

        server_store.write_bytes_atomic = half_write
    if point == "mid-commit":
        real_round = server_store.VersionStore._write_round

        def dying_round(self, round, version, record, *, complete):  # noqa: ANN001, A002
            real_round(self, round, version, record, complete=complete)
            if not complete and in_round():
                die()

        server_store.VersionStore._write_round = dying_round


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("state")
    parser.add_argument("work")
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--kill", nargs=2, metavar=("POINT", "ROUND"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    settings = Settings().with_overrides({**TINY, "rounds": args.rounds, "output.dir": str(work / "out")})
    coordinator = Coordinator(settings, server_store.VersionStore(Path(args.state)), work / "out")
    current = {"round": 0}
    point, kill_round = (args.kill[0], int(args.kill[1])) if args.kill else ("", -1)
    arm(point, kill_round, current)
    residual = sum(float(r.double().square().sum()) for r in coordinator.encoder.residual.values())
    emit(event="start", head=coordinator.head.id, sha=coordinator.head.sha, last_round=coordinator.rounds.last,
         residual=residual)
    sites = {str(i): Site(settings, f"site-{i}", work / "sites" / str(i), simulated_site_data(settings, i, 2))
             for i in range(2)}
    driver = RoundDriver(coordinator)
    driver.finish(coordinator.store_round(0))
    for flower_round in range(1, max(0, args.rounds - coordinator.rounds.last) + 1):
        server_round = current["round"] = coordinator.store_round(flower_round)
        driver.open(server_round)
        for node, site in sites.items():
            driver.trained(server_round, node, site.train_round(server_round, driver.downlink(node)))
            if point == "mid-round" and server_round == kill_round:
                die()
        version = driver.commit(server_round)
        residual = sum(float(r.double().square().sum()) for r in coordinator.encoder.residual.values())
        emit(event="commit", round=server_round, version=version.id, sha=version.sha, residual=residual)
        if point == "after-commit" and server_round == kill_round:
            die()
        for node, site in sites.items():
            driver.evaluated(server_round, node, site.evaluate_round(driver.downlink(node)))
        row = driver.finish(server_round)
        emit(event="finish", round=server_round, version=row["version"], sha=row["version_sha256"])
    coordinator.store.close()


if __name__ == "__main__":
    main()
