"""A finished run's outcome read from its store: which runs trained nothing, and the one-line reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedelta.server.outcome import gist, rounds_before, run_failure
from fedelta.server.store import VersionStore

TRACEBACK = "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: no data for this site\n"


def _store(root: Path) -> VersionStore:
    store = VersionStore(root)
    store.commit_version(parent=None, round=0, sha="s0", kind="snapshot", blob=b"zero")
    store.record_round(0, 0, {"round": 0})
    return store


def _round(store: VersionStore, number: int, *, commit: bool = False, failures: int = 0, uploads: int = 0,
           rejected: int = 0) -> None:
    head = store.head()
    if commit:
        head = store.commit_version(parent=head.id, round=number, sha=f"s{number}", kind="merged", blob=bytes([number]))
    for site in range(failures):
        store.record_rejection(site=f"node-{site}", round=number, reason=f"site error: {TRACEBACK}")
    for site in range(uploads):
        store.record_site_round(site=f"site-{site}", node=f"n{site}", round=number, upload_bytes=10, metrics={})
    for site in range(rejected):
        store.record_rejection(site=f"site-{site}", round=number, reason="payload of 8546 bytes exceeds the limit of 1")
    store.record_round(number, head.id, {"round": number})


@pytest.mark.parametrize("rounds, reason", [
    ([{"failures": 2}, {"failures": 2}],
     "every site failed in every round (4 failures in 2 rounds); the first: ValueError: no data for this site"),
    ([{"uploads": 2, "rejected": 1}],
     "no round committed a version (1 round, 1 rejected update or failed site); "
     "the first: payload of 8546 bytes exceeds the limit of 1"),
], ids=["every-site-fails", "uploads-rejected"])
def test_a_run_whose_rounds_committed_nothing_says_why_in_one_line(tmp_path, rounds, reason):
    store = _store(tmp_path)
    for number, happened in enumerate(rounds, start=1):
        _round(store, number, **happened)
    store.close()
    assert run_failure(tmp_path, 0) == reason


def test_one_committed_round_or_no_new_round_is_no_failure(tmp_path):
    store = _store(tmp_path)
    _round(store, 1, failures=2)
    _round(store, 2, commit=True, uploads=2)
    store.close()
    assert run_failure(tmp_path, 0) is None
    assert rounds_before(tmp_path) == 2 and run_failure(tmp_path, 2) is None


def test_a_resumed_run_is_judged_by_its_own_rounds(tmp_path):
    store = _store(tmp_path)
    _round(store, 1, commit=True, uploads=2)
    _round(store, 2, failures=2)
    store.commit_version(parent=1, round=2, sha="s0", kind="rollback", blob=b"zero")
    store.close()
    assert run_failure(tmp_path, 1).startswith("every site failed in every round (2 failures in 1 round)")
    assert rounds_before(tmp_path / "missing") == 0


def test_gist_is_one_short_line():
    assert gist(TRACEBACK) == "ValueError: no data for this site"
    assert gist("x" * 500) == "x" * 197 + "..."


def test_fedelta_server_exits_1_with_the_reason_when_its_run_committed_nothing(tmp_path, capsys):
    from fedelta.server.cmd_server import outcome_code

    store = _store(tmp_path)
    _round(store, 1, failures=2)
    store.close()
    summary = tmp_path / "results" / "summary.json"
    summary.parent.mkdir()
    summary.write_text("{}")
    assert outcome_code(0, summary, tmp_path, 0) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("fedelta server: every site failed in every round (2 failures in 1 round); the first: ")
    assert outcome_code(0, summary, tmp_path, 1) == 0 and "run finished" in capsys.readouterr().out
