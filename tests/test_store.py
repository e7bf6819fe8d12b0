from pathlib import Path

import pytest

from fedelta.server.store import Control, Rejection, SiteNode, SiteRound, StoreError, VersionStore, plain_text


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
