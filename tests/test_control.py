"""Operator controls in process: rollback commits a copy of an old version that sites reach by hash; pause waits."""

import pytest
from rounds import evaluate_all, open_federation, run_rounds

from fedelta.common.data import load_corpus
from fedelta.common.delta import state_hash
from fedelta.server import control


def test_rollback_commits_the_old_weights_as_a_new_head_that_sites_and_a_restart_reach(tiny_settings, tmp_path):
    with open_federation(tiny_settings, tmp_path) as (coordinator, sites):
        store = coordinator.store
        run_rounds(coordinator, sites, range(1, 3))
        old, abandoned = store.version(1), store.version(2)
        request = control.request(store, control.ROLLBACK, 1)

        coordinator.between_rounds(3)

        head = coordinator.head
        assert (head.id, head.parent, head.kind, head.sha) == (3, 2, control.ROLLBACK, old.sha)
        assert state_hash(coordinator.params) == old.sha
        settled = store.control(request.id)
        assert (settled.ok, settled.result) == (True, 3)
        assert coordinator.downlink_for("0").versions == [3]
        assert evaluate_all(coordinator, sites) == [(3, old.sha)] * 2

        run_rounds(coordinator, sites, range(3, 4))
        assert (coordinator.head.id, coordinator.head.parent) == (4, 3)
        assert store.rejections() == []
        assert store.version(2) == abandoned and [v.id for v in store.chain(0, 4)] == [1, 2, 3, 4]
        final = coordinator.head.sha
        assert evaluate_all(coordinator, sites) == [(4, final)] * 2
    with open_federation(tiny_settings, tmp_path) as (restarted, _):
        assert (restarted.head.id, state_hash(restarted.params)) == (4, final)


def test_a_refused_rollback_changes_nothing(tiny_settings, tmp_path):
    with open_federation(tiny_settings, tmp_path) as (coordinator, sites):
        run_rounds(coordinator, sites, range(1, 2))
        store, head = coordinator.store, coordinator.head
        for version in (99, 1):
            control.request(store, control.ROLLBACK, version)
        coordinator.between_rounds(2)
        outcomes = [(c.ok, c.outcome) for c in store.controls()]
        assert outcomes == [(False, "refused: 'no version 99'"), (False, "refused: version 1 is already the head")]
        assert coordinator.head == head == store.head() and state_hash(coordinator.params) == head.sha


def test_a_repeated_rollback_commits_one_version(tiny_settings, tmp_path):
    with open_federation(tiny_settings, tmp_path) as (coordinator, sites):
        run_rounds(coordinator, sites, range(1, 3))
        store = coordinator.store
        for _ in range(2):  # a double-clicked form
            control.request(store, control.ROLLBACK, 1)
        coordinator.between_rounds(3)
        outcomes = [c.ok for c in store.controls()]
        assert outcomes == [True, False]
        assert "already holds version 1's weights" in store.controls()[1].outcome
        assert coordinator.head.id == 3 and store.head().sha == store.version(1).sha


def test_pause_waits_between_rounds_and_settles_requests_until_resumed(tiny_settings, tmp_path):
    with open_federation(tiny_settings, tmp_path) as (coordinator, sites):
        run_rounds(coordinator, sites, range(1, 3))
        store = coordinator.store
        control.request(store, control.PAUSE)
        seen: list[dict] = []

        def operator(_: float) -> None:
            seen.append(store.read_meta(control.STATUS))
            if len(seen) == 1:
                control.request(store, control.ROLLBACK, 1)
            else:
                control.request(store, control.RESUME)

        control.between_rounds(store, 3, coordinator.rollback_to, sleep=operator)

        assert [(s["state"], s["round"]) for s in seen] == [("paused", 2), ("paused", 2)]
        assert [(c.action, c.ok) for c in store.controls()] == [("pause", True), ("rollback", True), ("resume", True)]
        assert store.head().sha == store.version(1).sha and not control.is_paused(store)
        assert store.read_meta(control.STATUS)["state"] == "training"


def test_the_store_records_what_rebuilds_the_model(tiny_settings, tmp_path):
    with open_federation(tiny_settings, tmp_path) as (coordinator, _):
        assert coordinator.store.read_meta("settings") == tiny_settings.to_run_config()
        assert coordinator.store.read_meta("labels") == list(load_corpus(tiny_settings.data).label_names)
        assert coordinator.store.read_meta(control.STATUS)["state"] == "starting"


@pytest.mark.parametrize("action, version, message", [
    ("stop", None, "unknown action 'stop'"),
    ("rollback", None, "a rollback needs a version"),
    ("pause", 3, "pause takes no version"),
    ("rollback", -1, "version must be >= 0"),
])
def test_bad_requests_are_refused_by_name(action, version, message):
    with pytest.raises(ValueError, match=message):
        control.check_request(action, version)
