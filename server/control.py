"""Operator controls, acted on between rounds: pause, resume, and roll back to a committed version.

The console writes each request as a row of the store's ``controls`` table;
the server settles the pending rows, in order, before it starts a round. While
the last settled pause is not followed by a resume, the server keeps settling
new rows and waits. A rollback to version k commits a new version whose weights
are version k's (its parent is the head, its blob a full snapshot), so sites
reach it through the usual hash-checked downlink and nothing is deleted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from fedelta.server.store import Control, StoreError, Version, VersionStore

PAUSE, RESUME, ROLLBACK = "pause", "resume", "rollback"
ACTIONS = (PAUSE, RESUME, ROLLBACK)
POLL_SECONDS = 1.0
STATUS = "status"

Rollback = Callable[[int, int], Version]


def check_request(action: str, version: int | None) -> None:
    """A request names a known action; a rollback (and only a rollback) names a version."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
    if (action == ROLLBACK) != (version is not None):
        raise ValueError("a rollback needs a version to roll back to" if action == ROLLBACK
                         else f"{action} takes no version")
    if version is not None and version < 0:
        raise ValueError(f"version must be >= 0, not {version}")


def request(store: VersionStore, action: str, version: int | None = None) -> Control:
    """Record a checked request for the server to act on before its next round."""
    check_request(action, version)
    return store.add_control(action, version)


def is_paused(store: VersionStore) -> bool:
    """Whether the newest settled pause or resume was a pause."""
    settled = store.done_controls((PAUSE, RESUME))
    return bool(settled) and settled[-1].action == PAUSE


def write_status(store: VersionStore, state: str, round: int) -> None:
    """What the server is doing, for the console: ``starting``, ``training``, ``paused`` or ``finished``."""
    store.write_meta(STATUS, {"state": state, "round": round, "since": time.time(), "pid": os.getpid()})


def settle(store: VersionStore, control: Control, next_round: int, rollback: Rollback) -> None:
    """Act on one request and record the outcome."""
    if control.action == PAUSE:
        store.settle_control(control.id, ok=True, outcome=f"paused before round {next_round}")
    elif control.action == RESUME:
        store.settle_control(control.id, ok=True, outcome=f"resumed at round {next_round}")
    elif control.action == ROLLBACK and control.version is not None:
        try:
            made = rollback(control.version, next_round)
        except (KeyError, ValueError, StoreError) as error:
            store.settle_control(control.id, ok=False, outcome=f"refused: {error}")
            return
        store.settle_control(control.id, ok=True, result=made.id,
                             outcome=f"version {made.id} holds version {control.version}'s weights")
    else:
        store.settle_control(control.id, ok=False, outcome=f"refused: unknown request {control.action!r}")


def between_rounds(
    store: VersionStore, next_round: int, rollback: Rollback, *,
    sleep: Callable[[float], None] = time.sleep, poll: float = POLL_SECONDS,
) -> None:
    """Settle pending requests; while paused, keep settling them and wait for a resume."""
    announced = False
    while True:
        for control in store.controls(pending=True):
            settle(store, control, next_round, rollback)
        if not is_paused(store):
            break
        if not announced:
            write_status(store, "paused", next_round - 1)
            announced = True
        sleep(poll)
    write_status(store, "training", next_round)
