"""Stale, new and damaged sites reach the head by the shortest path, checked by hash."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from rounds import evaluate_all, open_federation, run_rounds, train_all

from fedelta.client.site import Site, simulated_site_data
from fedelta.client.state import WEIGHTS_FILE, SiteState
from fedelta.common.versions import FROM_SNAPSHOT, VersionMismatch

ONE_SITE_ROUNDS = {"federation.min-sites": 1}


def test_stale_new_and_far_behind_sites_take_the_shortest_checked_path(tiny_settings, tmp_path):
    settings = tiny_settings.with_overrides({**ONE_SITE_ROUNDS, "downlink.max-chain": 2})
    with open_federation(settings, tmp_path) as (coordinator, sites):
        run_rounds(coordinator, sites, range(1, 2))
        run_rounds(coordinator, sites[:1], range(2, 4))
        assert coordinator.head.id == 3 and coordinator.store.site_version("1") == 1

        stale = coordinator.downlink_for("1")
        assert (stale.base_version, stale.versions) == (1, [2, 3])
        assert evaluate_all(coordinator, sites) == [(3, coordinator.head.sha)] * 2

        newcomer = Site(settings, "site-new", tmp_path / "sites" / "new", simulated_site_data(settings, 1, 2))
        far = coordinator.downlink_for("new")
        assert (far.base_version, far.versions) == (FROM_SNAPSHOT, [3])
        reply = newcomer.evaluate_round(far)
        assert (reply.version, reply.sha) == (3, coordinator.head.sha)

        run_rounds(coordinator, sites[:1], range(4, 5))
        step = coordinator.downlink_for("1")
        assert (step.base_version, step.versions) == (3, [4])
        assert evaluate_all(coordinator, sites)[1] == (4, coordinator.head.sha)


def _damage(path: Path, how: str) -> None:
    if how == "missing":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_a_site_with_an_empty_or_corrupt_cache_catches_up_before_it_trains_again(tiny_settings, tmp_path, how):
    with open_federation(tiny_settings.with_overrides(ONE_SITE_ROUNDS), tmp_path) as (coordinator, sites):
        run_rounds(coordinator, sites, range(1, 2))
        _damage(sites[0].state.root / WEIGHTS_FILE, how)
        assert sites[0].state.load_version() is None

        with pytest.raises(VersionMismatch, match="holds nothing"):
            sites[0].train_round(2, coordinator.downlink_for("0"))
        coordinator.site_failed("0", "cache lost", 2)
        assert train_all(coordinator, sites[1:], 2) == [True]
        assert coordinator.commit(2).id == 2

        recovery = coordinator.downlink_for("0")
        assert recovery.base_version == FROM_SNAPSHOT
        assert evaluate_all(coordinator, sites) == [(2, coordinator.head.sha)] * 2
        assert train_all(coordinator, sites, 3) == [True, True]
        assert coordinator.commit(3).id == 3


def _counting_loads(monkeypatch) -> list[str]:
    """Every read of a site's weights file from now on, by cache folder."""
    reads: list[str] = []
    load = SiteState.load_version

    def counted(state: SiteState):
        reads.append(state.root.name)
        return load(state)

    monkeypatch.setattr(SiteState, "load_version", counted)
    return reads


def test_sites_keeping_their_weights_commit_the_same_versions_and_read_their_cache_once(tiny_settings, tmp_path,
                                                                                        monkeypatch):
    settings = tiny_settings.with_overrides({"rounds": 2})
    heads = {}
    for keep in (False, True):
        reads = _counting_loads(monkeypatch)
        with open_federation(settings, tmp_path / str(keep)) as (coordinator, sites):
            for site in sites:
                site.keep_weights = site.state.journal = keep
            run_rounds(coordinator, sites, range(1, 3))
            held = evaluate_all(coordinator, sites)
            heads[keep] = [version.sha for version in coordinator.store.versions()]
            assert held == [(2, coordinator.head.sha)] * 2
        # four syncs per site (two rounds, each a training and an evaluation message), the last without a move
        assert sorted(reads) == (["0"] * 5 + ["1"] * 5 if not keep else ["0", "1"])
    assert heads[True] == heads[False]


def test_a_site_keeping_its_weights_builds_its_reading_model_once_and_scores_as_a_new_one(tiny_settings, tmp_path,
                                                                                         monkeypatch):
    settings = tiny_settings.with_overrides({"rounds": 3})
    rows, builds = {}, {}
    for keep in (False, True):
        with open_federation(settings, tmp_path / str(keep)) as (coordinator, sites):
            built = []
            for site in sites:
                site.keep_weights = site.state.journal = keep
                monkeypatch.setattr(site.task, "load_model",
                                    lambda *args, load=site.task.load_model, name=site.name: built.append(name)
                                    or load(*args))
            run_rounds(coordinator, sites, range(1, 4))
            assert evaluate_all(coordinator, sites) == [(3, coordinator.head.sha)] * 2
            heads = [version.sha for version in coordinator.store.versions()][1:]
        rows[keep] = [{key: row[key] for key in ("version_sha256", "accuracy", "site_accuracy", "site_loss")}
                      for row in map(json.loads, (tmp_path / str(keep) / "out" / "metrics.jsonl").open())]
        builds[keep] = sorted(built)
    assert rows[True] == rows[False] and [row["version_sha256"] for row in rows[True]] == heads
    # per site, without a kept model: one model for each message. With one: a model for round 1's training,
    # and one on version 0 for its evaluation (which moves it to version 1), kept to read from then on and
    # copied for each training message
    assert builds[False] == ["site-0"] * 7 + ["site-1"] * 7 and builds[True] == ["site-0"] * 2 + ["site-1"] * 2


def test_a_site_keeping_its_weights_reads_its_cache_once_another_process_moved_it_on(tiny_settings, tmp_path,
                                                                                    monkeypatch):
    with open_federation(tiny_settings.with_overrides(ONE_SITE_ROUNDS), tmp_path) as (coordinator, sites):
        kept = Site(tiny_settings, "site-0", sites[0].state.root, sites[0].data, keep_weights=True)
        run_rounds(coordinator, [kept, sites[1]], range(1, 2))
        evaluate_all(coordinator, [kept])
        run_rounds(coordinator, sites, range(2, 3))  # another Site object on the same folder moves it to version 2
        evaluate_all(coordinator, sites)
        assert kept.state.version_on_disk() == (2, coordinator.head.sha)

        reads = _counting_loads(monkeypatch)
        reply = kept.train_round(3, coordinator.downlink_for("0"))
        assert (reply.version, reply.sha, reads) == (2, coordinator.head.sha, ["0"])


def test_a_site_lending_its_held_weights_to_an_evaluation_lets_them_go_when_the_downlink_fails(tiny_settings, tmp_path,
                                                                                              monkeypatch):
    with open_federation(tiny_settings.with_overrides(ONE_SITE_ROUNDS), tmp_path) as (coordinator, sites):
        kept = Site(tiny_settings, "site-0", sites[0].state.root, sites[0].data, keep_weights=True)
        run_rounds(coordinator, [kept, sites[1]], range(1, 2))
        assert train_all(coordinator, sites[1:], 2) == [True] and coordinator.commit(2).id == 2
        step = coordinator.downlink_for("0")
        assert (step.base_version, step.versions) == (1, [2])

        with pytest.raises(VersionMismatch, match="version 2: hash"):
            kept.evaluate_round(replace(step, shas=["0" * 64]))  # applied in place, then refused
        reads = _counting_loads(monkeypatch)
        reply = kept.evaluate_round(step)
        assert (reply.version, reply.sha, reads) == (2, coordinator.head.sha, ["0"])
        assert kept.state.version_on_disk() == (2, coordinator.head.sha)


def test_a_training_model_copied_from_the_reading_model_uploads_what_a_built_one_would(tiny_settings, tmp_path,
                                                                                     monkeypatch):
    # Building the bundled MiniLM draws its new head from torch's global generator; a copy draws nothing.
    # LoRA's matrices, drawn when the method is attached, must not depend on which of the two happened.
    settings = tiny_settings.with_overrides({**ONE_SITE_ROUNDS, "model.path": "", "method.name": "lora",
                                             "local.steps": 1})
    payloads, builds = {}, {}
    for keep in (False, True):
        with open_federation(settings, tmp_path / str(keep)) as (coordinator, sites):
            site = sites[0]
            site.keep_weights = site.state.journal = keep
            built = []
            monkeypatch.setattr(site.task, "load_model",
                                lambda *args, load=site.task.load_model: built.append(1) or load(*args))
            run_rounds(coordinator, [site], range(1, 2))
            payloads[keep] = site.train_round(2, coordinator.downlink_for("0")).payload
            builds[keep] = len(built)
    assert builds == {False: 3, True: 2}  # round 2's training model: built, or copied from the kept one
    assert payloads[True] == payloads[False]
