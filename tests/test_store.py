from pathlib import Path

import pytest

from fedelta.server.store import StoreError, VersionStore


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
