"""Whether a finished run trained: a version committed by one of its rounds, else a one-line reason."""

from __future__ import annotations

from pathlib import Path

from fedelta.server import control
from fedelta.server.store import VersionStore

REASON_CHARS = 200


def rounds_before(state_dir: Path) -> int:
    """The last round the store in ``state_dir`` recorded before a run starts (0 for a new store)."""
    if not (Path(state_dir) / "store.sqlite").is_file():
        return 0
    store = VersionStore.attach(state_dir)
    try:
        return store.last_round() or 0
    finally:
        store.close()


def run_failure(state_dir: Path, after_round: int) -> str | None:
    """Why the rounds finished after ``after_round`` trained nothing (none committed a version), or None.

    A run that finished no new round (a finished store resumed) did not fail.
    """
    store = VersionStore.attach(state_dir)
    try:
        rounds = [record["round"] for record in store.round_records() if record["round"] > after_round]
        committed = [version for version in store.versions()
                     if version.round > after_round and version.kind != control.ROLLBACK]
        if not rounds or committed:
            return None
        problems = [reason for _, number, reason in store.rejections() if number > after_round]
        if problems and not store.sites_uploaded_after(after_round):
            return (f"every site failed in every round ({_count(len(problems), 'failure')} in "
                    f"{_count(len(rounds), 'round')}); the first: {gist(problems[0])}")
        first = f"; the first: {gist(problems[0])}" if problems else ""
        refused = _count(len(problems), "rejected update or failed site", "rejected updates or failed sites")
        return f"no round committed a version ({_count(len(rounds), 'round')}, {refused}){first}"
    finally:
        store.close()


def gist(reason: str) -> str:
    """The last non-empty line of a (possibly multi-line) failure, at most :data:`REASON_CHARS` long."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    last = lines[-1] if lines else reason.strip()
    return last if len(last) <= REASON_CHARS else last[: REASON_CHARS - 3] + "..."


def _count(number: int, one: str, many: str = "") -> str:
    return f"{number} {one if number == 1 else many or one + 's'}"
