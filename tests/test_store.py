import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from fedelta.server.store import Control, Rejection, SiteNode, SiteRound, StoreError, VersionStore, plain_text

# The two tables schema 3 changed, as schema 2 made them, with a row each.
SCHEMA_2 = """
CREATE TABLE site_rounds (site TEXT NOT NULL, round INTEGER NOT NULL, node TEXT NOT NULL,
    upload_bytes INTEGER NOT NULL, metrics TEXT NOT NULL, PRIMARY KEY (site, round));
CREATE TABLE controls (id INTEGER PRIMARY KEY, action TEXT NOT NULL, version INTEGER, requested REAL NOT NULL,
    settled REAL, ok INTEGER, outcome TEXT, result INTEGER);
INSERT INTO site_rounds VALUES ('site-a', 1, 'n1', 10, '{}');
INSERT INTO controls (action, requested, ok) VALUES ('pause', 0, 1);
PRAGMA user_version = 2;
"""


def test_versions_chain_and_blobs(tmp_path):
    store = VersionStore(tmp_path)
    genesis = store.commit_version(parent=None, round=0, sha="s0", kind="snapshot", blob=b"zero")
    one = store.commit_version(parent=genesis.id, round=1, sha="s1", kind="merged", blob=b"one")
    two = store.commit_version(parent=one.id, round=2, sha="s2", kind="merged", blob=b"two")
    assert (genesis.id, one.id, two.id) == (0, 1, 2)
    assert store.head() == two and store.genesis() == genesis
    assert [v.id for v in store.chain(0, 2)] == [1, 2] and store.chain(2, 2) == []
    assert store.read_blob(one) == b"one"
    store.close()
    reopened = VersionStore(tmp_path)
    assert reopened.head() == two


def test_altered_blob_is_detected(tmp_path):
    store = VersionStore(tmp_path)
    version = store.commit_version(parent=None, round=0, sha="s0", kind="snapshot", blob=b"zero")
    (tmp_path / "blobs" / version.blob).write_bytes(b"evil")
    with pytest.raises(StoreError, match="does not match"):
        store.read_blob(version)


def test_no_temporary_files_are_left_behind(tmp_path):
    store = VersionStore(tmp_path)
    store.commit_version(parent=None, round=0, sha="s0", kind="snapshot", blob=b"x" * 1000)
    assert [p.name for p in (tmp_path / "blobs").iterdir() if p.name.startswith(".")] == []


def test_a_blob_written_in_pieces_is_stored_as_the_same_bytes_would_be(tmp_path):
    store = VersionStore(tmp_path)
    genesis = store.commit_version(parent=None, round=0, sha="s0", kind="snapshot", blob=b"zero")
    with store.blob_writer() as writer:
        for piece in (b"mer", bytearray(b"ged "), memoryview(b"delta")):
            writer.write(piece)
    one = store.commit_version(parent=genesis.id, round=1, sha="s1", kind="merged", blob=writer.stored)
    twin = VersionStore(tmp_path / "twin")
    twin.commit_version(parent=None, round=0, sha="s0", kind="snapshot", blob=b"zero")
    assert (one.blob, one.blob_bytes) == (twin.commit_version(parent=0, round=1, sha="s1", kind="merged",
                                                              blob=b"merged delta").blob, 12)
    assert store.read_blob(one) == b"merged delta"

    with pytest.raises(OSError, match="disk full"), store.blob_writer() as writer:
        writer.write(b"half a blob")
        raise OSError("disk full")
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == sorted([genesis.blob, one.blob])


def test_site_versions_and_rejections(tmp_path):
    store = VersionStore(tmp_path)
    assert store.site_version("n1") is None
    store.set_site_version("n1", "site-a", 3)
    store.set_site_version("n1", None, 4)
    assert store.site_version("n1") == 4
    store.record_rejection(site="site-a", round=2, reason="nan")
    assert store.rejections() == [("site-a", 2, "nan")]
    (rejection,) = store.rejection_records()
    assert rejection == Rejection(1, "site-a", 2, "nan", rejection.created)
    store.set_site_version("n2", None, None)
    nodes = store.site_nodes()
    assert nodes == [SiteNode("n1", "site-a", 4, nodes[0].last_seen), SiteNode("n2", None, None, nodes[1].last_seen)]


def test_site_rounds_in_round_order(tmp_path):
    store = VersionStore(tmp_path)
    for round, site in ((2, "b"), (1, "b"), (2, "a")):
        store.record_site_round(site=site, node=f"n-{site}", round=round, upload_bytes=10 * round, metrics={"a": 1})
    assert [row.round for row in store.site_rounds()] == [1, 2, 2]
    assert store.site_rounds()[0] == SiteRound("b", 1, "n-b", 10, {"a": 1})
    assert store.sites_uploaded_after(1) == ["a", "b"] and store.sites_uploaded_after(2) == []


def test_versions_oldest_first_with_their_commit_time(tmp_path):
    store = VersionStore(tmp_path)
    genesis = store.commit_version(parent=None, round=0, sha="s0", kind="snapshot", blob=b"zero")
    one = store.commit_version(parent=0, round=1, sha="s1", kind="merged", blob=b"one")
    assert store.versions() == [genesis, one] and genesis.created is not None


def test_controls_are_added_settled_and_listed(tmp_path):
    store = VersionStore(tmp_path)
    pause = store.add_control("pause")
    rollback = store.add_control("rollback", 0)
    assert pause == Control(1, "pause", None, pause.requested) and store.control(2) == rollback
    assert store.controls() == store.controls(pending=True) == [pause, rollback]
    store.settle_control(pause.id, ok=True, outcome="paused")
    store.settle_control(rollback.id, ok=False, outcome="refused")
    settled = store.control(pause.id)
    assert (settled.ok, settled.outcome, settled.result) == (True, "paused", None) and settled.settled is not None
    assert store.control(rollback.id).ok is False and store.controls(pending=True) == []
    assert store.done_controls(("pause", "resume")) == [settled] and store.done_controls(("rollback",)) == []
    with pytest.raises(KeyError):
        store.control(3)


def test_an_attached_console_adds_controls_the_owner_sees(tmp_path):
    owner = VersionStore(tmp_path)
    console = VersionStore.attach(tmp_path, writable=True)
    try:
        made = console.add_control("resume")
        assert owner.controls(pending=True) == [made]
    finally:
        console.close()
        owner.close()


def test_a_store_attaches_by_a_relative_path(tmp_path, monkeypatch):
    owner = VersionStore(tmp_path / "state")
    head = owner.commit_version(parent=None, round=0, sha="s0", kind="snapshot", blob=b"zero")
    monkeypatch.chdir(tmp_path)
    reader = VersionStore.attach(Path("state"))
    try:
        assert reader.head() == head and reader.read_blob(head) == b"zero"
    finally:
        reader.close()
        owner.close()


def test_a_rejection_reason_is_stored_as_plain_text_with_its_lines(tmp_path):
    store = VersionStore(tmp_path)
    coloured = ("\x1b[31mTraceback\x1b[0m (most recent call last):\r\n  File \"x.py\"\x07\u200b\n"
                "ValueError:\tbad \x1b]0;title\x07\n\n")
    store.record_rejection(site="site-a", round=1, reason=coloured)
    assert store.rejections() == [
        ("site-a", 1, "Traceback (most recent call last):\n  File \"x.py\"\nValueError: bad")]
    assert plain_text("one line") == "one line"


def test_blocks_are_the_newest_carried_out_block_or_unblock_per_site(tmp_path):
    store = VersionStore(tmp_path)
    for action, site, ok in (("block", "a", True), ("block", "b", True), ("unblock", "a", True),
                             ("block", "c", False), ("unblock", "b", False), ("block", "d", None)):
        made = store.add_control(action, site=site)
        if ok is not None:
            store.settle_control(made.id, ok=ok, outcome="")
    assert store.blocked_sites() == ["b"]
    assert store.control(1).site == "a"


def test_merged_weights_and_contributions_are_those_of_earlier_rounds(tmp_path):
    store = VersionStore(tmp_path)
    for round, site, weight in ((1, "a", 4.0), (2, "a", 8.0), (2, "b", None), (3, "a", 16.0)):
        store.record_site_round(site=site, node=site, round=round, upload_bytes=1, metrics={})
        if weight is not None:
            store.record_merged(site=site, round=round, weight=weight, contribution=weight / 2, note="clipped")
    assert store.merged_weights(3) == {"a": 8.0} and store.merged_weights(1) == {}
    assert sorted(store.merged_contributions(3)) == [2.0, 4.0]
    assert store.site_rounds()[0] == SiteRound("a", 1, "a", 1, {}, 4.0, 2.0, "clipped")


def _old_store(root: Path, script: str) -> Path:
    root.mkdir()
    with closing(sqlite3.connect(root / "store.sqlite")) as db:
        db.executescript(script)
    return root


def test_a_store_of_schema_2_is_migrated_with_its_rows_and_an_older_one_is_refused(tmp_path):
    two = _old_store(tmp_path / "two", SCHEMA_2)
    store = VersionStore(two)
    assert store.site_rounds() == [SiteRound("site-a", 1, "n1", 10, {})]
    assert store.controls() == [Control(1, "pause", None, 0.0, None, True, None, None, None)]
    store.add_control("block", site="site-a")
    store.close()
    reopened = VersionStore(two)
    assert reopened.controls()[-1].site == "site-a"
    reopened.close()

    one = _old_store(tmp_path / "one", "CREATE TABLE versions (id INTEGER PRIMARY KEY); PRAGMA user_version = 1;")
    with pytest.raises(StoreError, match="schema 1, not 3"):
        VersionStore(one)
