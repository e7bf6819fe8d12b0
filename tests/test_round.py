"""One federated round without Flower: coordinator and sites exchanging real bytes."""

import pytest
import torch

from rounds import open_federation
from rounds import train_all as _train_all
from fedelta.common.codec import encode
from fedelta.common.delta import Delta, Dense, state_hash
from fedelta.server.coordinator import Coordinator
from fedelta.server.store import VersionStore


@pytest.fixture
def federation(tiny_settings, tmp_path):
    with open_federation(tiny_settings, tmp_path) as (coordinator, sites):
        yield coordinator, sites


def test_server_and_every_site_hold_the_same_hash_after_each_round(federation):
    coordinator, sites = federation
    for server_round in (1, 2):
        assert all(_train_all(coordinator, sites, server_round))
        version = coordinator.commit(server_round)
        assert version is not None and version.id == server_round
        assert version.sha == state_hash(coordinator.params)
        for index, site in enumerate(sites):
            reply = site.evaluate_round(coordinator.downlink_for(str(index)))
            site_version, sha, metrics = reply.version, reply.sha, reply.metrics
            coordinator.acknowledge(str(index), site.name, site_version, sha)
            assert (site_version, sha) == (version.id, version.sha)
            assert site.state.load_version().sha == version.sha
            assert 0.0 <= metrics["accuracy"] <= 1.0
        row = coordinator.finish_round(server_round)
        assert row["version_sha256"] == version.sha and row["sites"] == len(sites)


def test_a_restarted_coordinator_resumes_at_the_committed_hash(federation, tiny_settings, tmp_path):
    coordinator, sites = federation
    _train_all(coordinator, sites, 1)
    committed = coordinator.commit(1)
    coordinator.store.close()
    again = Coordinator(tiny_settings, VersionStore(tmp_path / "state"), tmp_path / "out")
    assert again.head == committed and state_hash(again.params) == committed.sha
    assert again.store_round(1) == 2
    again.store.close()


def _bad_payloads(coordinator, good: bytes):
    name = next(iter(coordinator.params))
    shape = tuple(coordinator.params[name].shape)
    head = coordinator.head.sha
    return {
        "truncated": good[: len(good) // 2],
        "wrong base": encode(Delta({name: Dense(torch.zeros(shape))}), base="0" * 64),
        "nan": encode(Delta({name: Dense(torch.full(shape, float("nan")))}), base=head),
        "wrong shape": encode(Delta({name: Dense(torch.zeros(shape[0] + 1, *shape[1:]))}), base=head),
        "unknown tensor": encode(Delta({"not.a.parameter": Dense(torch.zeros(3))}), base=head),
    }


def test_bad_updates_are_rejected_recorded_and_never_touch_the_model(federation):
    coordinator, sites = federation
    good = sites[0].train_round(1, coordinator.downlink_for("0"))
    before = state_hash(coordinator.params)
    for reason, payload in _bad_payloads(coordinator, good.payload).items():
        assert not coordinator.receive(node="9", site=f"bad-{reason}", server_round=1, payload=payload,
                                       metrics={"num-examples": 10.0})
    assert state_hash(coordinator.params) == before and not coordinator.held
    reasons = {site: reason for site, _, reason in coordinator.store.rejections()}
    assert set(reasons) == {f"bad-{r}" for r in _bad_payloads(coordinator, good.payload)}
    assert "not the current" in reasons["bad-wrong base"] and "non-finite" in reasons["bad-nan"]
    assert "shape" in reasons["bad-wrong shape"] and "outside the method" in reasons["bad-unknown tensor"]
    assert coordinator.receive(node="0", site="site-0", server_round=1, payload=good.payload, metrics=good.metrics)
    other = sites[1].train_round(1, coordinator.downlink_for("1"))
    assert coordinator.receive(node="1", site="site-1", server_round=1, payload=other.payload, metrics=other.metrics)
    assert coordinator.commit(1) is not None
    assert coordinator.tally.rejected == 5


def test_too_few_accepted_updates_commit_nothing(federation):
    coordinator, sites = federation
    reply = sites[0].train_round(1, coordinator.downlink_for("0"))
    coordinator.receive(node="0", site="site-0", server_round=1, payload=reply.payload, metrics=reply.metrics)
    head = coordinator.head
    assert coordinator.commit(1) is None and coordinator.head == head


def test_site_with_lost_cache_catches_up_by_chain(federation):
    coordinator, sites = federation
    for server_round in (1, 2):
        _train_all(coordinator, sites, server_round)
        coordinator.commit(server_round)
    (sites[0].state.root / "weights.safetensors").unlink()
    coordinator.store.set_site_version("0", "site-0", None)
    reply = sites[0].evaluate_round(coordinator.downlink_for("0"))
    assert (reply.version, reply.sha) == (coordinator.head.id, coordinator.head.sha)


def test_error_feedback_residual_identity(tiny_settings):
    from fedelta.common.codec import Limits
    from fedelta.common.upload import make_upload

    settings = tiny_settings.with_overrides({"prune.name": "magnitude", "feedback.enabled": True, "prune.min-size": 0})
    gen = torch.Generator().manual_seed(0)
    delta = {"w": torch.randn(300, generator=gen), "b": torch.randn(20, generator=gen)}
    residual = {"w": torch.randn(300, generator=gen) * 0.1}
    upload = make_upload(delta, residual, settings, base="0" * 64, seed=1, limits=Limits(1 << 20, 10_000))
    for name, value in delta.items():
        target = value + residual.get(name, torch.zeros_like(value))
        rebuilt = upload.sent.entries[name].to_dense() + upload.residual[name]
        torch.testing.assert_close(rebuilt, target, rtol=0, atol=1e-6)
        assert upload.sent.entries[name].count == round(0.1 * value.numel())
    assert upload.residual["w"].abs().sum() > 0
