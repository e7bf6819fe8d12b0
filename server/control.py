"""Operator controls, acted on between rounds: pause, resume, roll back to a committed version,
and block or unblock a site.

The console writes each request as a row of the store's ``controls`` table;
the server settles the pending rows, in order, before it starts a round. While
the last settled pause is not followed by a resume, the server keeps settling
new rows and waits. A rollback to version k commits a new version whose weights
are version k's (its parent is the head, its blob a full snapshot), so sites
reach it through the usual hash-checked downlink and nothing is deleted. A
blocked site (by the name it is known by, see :mod:`fedelta.server.identity`)
is not asked to take part and its uploads are rejected from the next round
on, until it is unblocked; the store keeps the requests, so a restarted server
keeps the block.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from fedelta.server.identity import is_site_name
from fedelta.server.store import Control, StoreError, Version, VersionStore

PAUSE, RESUME, ROLLBACK, BLOCK, UNBLOCK = "pause", "resume", "rollback", "block", "unblock"
POLL_SECONDS = 1.0
STATUS = "status"

Rollback = Callable[[int, int], Version]


@dataclass(frozen=True)
class Outcome:
    """What the server made of a request: done or refused, said in words, and the version it made."""

    ok: bool
    text: str
    result: int | None = None


Settler = Callable[[VersionStore, Control, int, Rollback], Outcome]


def _pause(store: VersionStore, control: Control, next_round: int, rollback: Rollback) -> Outcome:
    return Outcome(True, f"paused before round {next_round}")


def _resume(store: VersionStore, control: Control, next_round: int, rollback: Rollback) -> Outcome:
    return Outcome(True, f"resumed at round {next_round}")


def _rollback(store: VersionStore, control: Control, next_round: int, rollback: Rollback) -> Outcome:
    try:
        made = rollback(int(control.version or 0), next_round)  # checked: a rollback names a version
    except (KeyError, ValueError, StoreError) as error:
        return Outcome(False, f"refused: {error}")
    return Outcome(True, f"version {made.id} holds version {control.version}'s weights", made.id)


def _block(store: VersionStore, control: Control, next_round: int, rollback: Rollback) -> Outcome:
    if control.site in store.blocked_sites():
        return Outcome(False, f"refused: site {control.site!r} is already blocked")
    return Outcome(True, f"site {control.site!r} blocked from round {next_round}")


def _unblock(store: VersionStore, control: Control, next_round: int, rollback: Rollback) -> Outcome:
    if control.site not in store.blocked_sites():
        return Outcome(False, f"refused: site {control.site!r} is not blocked")
    return Outcome(True, f"site {control.site!r} takes part again from round {next_round}")


# Each action and how the server settles it.
SETTLERS: dict[str, Settler] = {PAUSE: _pause, RESUME: _resume, ROLLBACK: _rollback, BLOCK: _block,
                                UNBLOCK: _unblock}
ACTIONS = tuple(SETTLERS)
NEEDS_VERSION = (ROLLBACK,)
NEEDS_SITE = (BLOCK, UNBLOCK)


def check_request(action: str, version: int | None, site: str | None = None) -> None:
    """A request names a known action; a rollback (and only a rollback) names a version, a block or an
    unblock (and only they) a site."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
    if (action in NEEDS_VERSION) != (version is not None):
        raise ValueError("a rollback needs a version to roll back to" if action in NEEDS_VERSION
                         else f"{action} takes no version")
    if version is not None and version < 0:
        raise ValueError(f"version must be >= 0, not {version}")
    if (action in NEEDS_SITE) != (site is not None):
        raise ValueError(f"{action} needs a site name" if action in NEEDS_SITE else f"{action} takes no site")
    if site is not None and not is_site_name(site):
        raise ValueError(f"site must be a site name (letters, digits, '.', '_' or '-', at most 63), not {site[:80]!r}")


def request(store: VersionStore, action: str, version: int | None = None, site: str | None = None) -> Control:
    """Record a checked request for the server to act on before its next round."""
    check_request(action, version, site)
    return store.add_control(action, version, site)


def is_paused(store: VersionStore) -> bool:
    """Whether the newest settled pause or resume was a pause."""
    settled = store.done_controls((PAUSE, RESUME))
    return bool(settled) and settled[-1].action == PAUSE


def write_status(store: VersionStore, state: str, round: int) -> None:
    """What the server is doing, for the console: ``starting``, ``training``, ``paused`` or ``finished``."""
    store.write_meta(STATUS, {"state": state, "round": round, "since": time.time(), "pid": os.getpid()})


def settle(store: VersionStore, control: Control, next_round: int, rollback: Rollback) -> None:
    """Act on one request and record the outcome."""
    try:
        check_request(control.action, control.version, control.site)
    except ValueError as error:
        outcome = Outcome(False, f"refused: {error}")
    else:
        outcome = SETTLERS[control.action](store, control, next_round, rollback)
    store.settle_control(control.id, ok=outcome.ok, outcome=outcome.text, result=outcome.result)


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
