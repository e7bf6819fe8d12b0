"""Hostile sites through the round driver: every attack's test compares the model a round commits with a
reference round.

Three sites train once on version 0 (module fixture); each test feeds their
replies, or hostile variants of them, to a fresh coordinator through
:class:`RoundDriver` and checks the committed head against a coordinator
that received only what the rules let through. The operator's block goes
through the console's API and form, and sampling is checked on the Grid view
Flower's FedAvg samples from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import torch
from flwr.proto.node_pb2 import NodeInfo
from conftest import TINY
from rounds import node_of, open_federation, rebound

from fedelta.common.codec import Limits, decode, encode
from fedelta.common.config import Settings
from fedelta.common.delta import Delta, Dense, state_hash
from fedelta.common.messages import TrainReply
from fedelta.common.upload import upload_binding
from fedelta.common.versions import Downlink
from fedelta.server import control
from fedelta.server.console.app import create_app
from fedelta.server.grid import EligibleGrid
from fedelta.server.rounds import RoundDriver
from fedelta.server.store import VersionStore
from fedelta.server.validation import median

THREE = {"federation.num-sites": 3}
TOKEN = "operator-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Outcome:
    """What one round committed and recorded."""

    sha: str | None
    merged: dict[str, torch.Tensor]
    rejections: list[tuple[str, int, str]]
    uploads: dict[str, tuple[str, float | None, str | None]] = field(default_factory=dict)
    clipped: int = 0


@dataclass(frozen=True)
class Trained:
    """Each site's round-1 reply (trained on version 0) by node id, and what version 0 is."""

    replies: dict[str, TrainReply]
    limits: Limits
    genesis: str
    tensor: str
    shape: tuple[int, ...]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("honest")
    settings = Settings().with_overrides({**TINY, **THREE, "output.dir": str(root / "out")})
    with open_federation(settings, root) as (coordinator, sites):
        replies = {node_of(site): site.train_round(1, coordinator.downlink_for(node_of(site))) for site in sites}
        tensor = sorted(coordinator.allowed)[0]
        return Trained(replies, coordinator.limits, coordinator.head.sha, tensor, coordinator.shapes[tensor])


@pytest.fixture
def honest(trained) -> dict[str, TrainReply]:
    return trained.replies


@pytest.fixture
def three(tiny_settings):
    return tiny_settings.with_overrides(THREE)


def weighing(reply: TrainReply, examples: float) -> TrainReply:
    return replace(reply, metrics={**reply.metrics, "num-examples": examples})


def claiming(reply: TrainReply, site: str) -> TrainReply:
    return replace(reply, site=site)


def with_payload(reply: TrainReply, payload: bytes) -> TrainReply:
    return replace(reply, payload=payload)


def play(driver: RoundDriver, server_round: int, replies: list[tuple[str, TrainReply]]) -> Outcome:
    """Take ``replies`` (node, reply) in round ``server_round`` through the driver and commit."""
    coordinator = driver.coordinator
    for node, reply in replies:
        driver.trained(server_round, node, reply)
    version = driver.commit(server_round)
    merged = {} if version is None else decode(coordinator.store.read_blob(version), coordinator.limits).delta.to_dense()
    uploads = {row.site: (row.node, row.weight, row.note) for row in coordinator.store.site_rounds()
               if row.round == server_round}
    return Outcome(None if version is None else version.sha, merged,
                   [r for r in coordinator.store.rejections() if r[1] == server_round], uploads, coordinator.tally.clipped)


def one_round(settings, root: Path, replies: list[tuple[str, TrainReply]], server_round: int = 1) -> Outcome:
    with open_federation(settings, root) as (coordinator, _):
        return play(RoundDriver(coordinator), server_round, replies)


def same_model(outcome: Outcome, reference: Outcome) -> None:
    assert outcome.sha is not None and outcome.sha == reference.sha
    assert outcome.merged.keys() == reference.merged.keys()
    assert all(torch.equal(outcome.merged[name], reference.merged[name]) for name in outcome.merged)


def nodes(honest: dict[str, TrainReply], *which: str) -> list[tuple[str, TrainReply]]:
    return [(node, honest[node]) for node in which]


@pytest.mark.parametrize("poisoned", [1e6, 1e30, 1e300])
def test_a_poisoned_weight_is_clipped_to_the_ratio_bound(three, tmp_path, honest, poisoned):
    examples = [honest[node].metrics["num-examples"] for node in ("0", "1")]
    bound = 4.0 * median(examples)
    replies = [*nodes(honest, "0", "1"), ("2", weighing(honest["2"], poisoned))]

    outcome = one_round(three, tmp_path / "poisoned", replies)
    reference = one_round(three, tmp_path / "reference", [*nodes(honest, "0", "1"), ("2", weighing(honest["2"], bound))])

    same_model(outcome, reference)
    assert outcome.rejections == [] and outcome.clipped == 1 and reference.clipped == 0
    assert outcome.uploads["site-2"][1] == bound and "validate.max-weight-ratio=4" in outcome.uploads["site-2"][2]


def test_a_site_cannot_grow_its_weight_past_its_history(three, tmp_path, honest):
    with open_federation(three, tmp_path / "grown") as (coordinator, sites):
        driver = RoundDriver(coordinator)
        play(driver, 1, nodes(honest, "0", "1", "2"))
        replies = [(node_of(site), site.train_round(2, driver.downlink(node_of(site)))) for site in sites]
        earlier = honest["2"].metrics["num-examples"]
        grown = play(driver, 2, [*replies[:2], ("2", weighing(replies[2][1], 3.9 * earlier))])
    with open_federation(three, tmp_path / "reference") as (coordinator, _):
        driver = RoundDriver(coordinator)
        play(driver, 1, nodes(honest, "0", "1", "2"))
        reference = play(driver, 2, [*replies[:2], ("2", weighing(replies[2][1], 2.0 * earlier))])

    same_model(grown, reference)
    assert "validate.max-weight-growth=2" in grown.uploads["site-2"][2]


def test_weights_cannot_overflow_the_accumulator(three, tmp_path, honest):
    unbounded = three.with_overrides({"validate.max-weight-ratio": 0.0, "validate.max-weight-growth": 0.0,
                                      "validate.max-norm-ratio": 0.0, "federation.min-sites": 1})
    replies = [*nodes(honest, "0", "1"), ("2", weighing(honest["2"], 1e300))]

    outcome = one_round(unbounded, tmp_path / "huge", replies)
    alone = one_round(unbounded, tmp_path / "alone", nodes(honest, "2"))

    assert outcome.sha is not None and outcome.rejections == []
    for name, value in outcome.merged.items():
        assert bool(torch.isfinite(value).all())
        torch.testing.assert_close(value, alone.merged.get(name, torch.zeros_like(value)), rtol=0, atol=0)


def test_an_update_that_overflows_the_merge_is_rejected_and_the_round_merges_the_rest(three, tmp_path, trained):
    honest, limits = trained.replies, trained.limits
    settings = three.with_overrides({"aggregate.name": "dare-merge", "aggregate.density": 0.5,
                                     "validate.max-norm-ratio": 0.0})
    largest = max(float(v.abs().max()) for v in decode(honest["2"].payload, limits).delta.to_dense().values())
    huge = rebound(honest["2"].payload, limits, 1, "site-2", scale=3e38 / largest, values="fp32")

    outcome = one_round(settings, tmp_path / "overflow", [*nodes(honest, "0", "1"), ("2", with_payload(honest["2"], huge))])
    reference = one_round(settings, tmp_path / "reference", nodes(honest, "0", "1"))

    same_model(outcome, reference)
    assert [(site, reason) for site, _, reason in outcome.rejections] == [
        ("site-2", "the merged delta is not finite with this update")]


def test_two_colluding_sites_of_three_are_judged_against_earlier_rounds(three, tmp_path, honest):
    settings = three.with_overrides({"federation.min-sites": 1})
    with open_federation(settings, tmp_path / "colluding") as (coordinator, sites):
        driver = RoundDriver(coordinator)
        play(driver, 1, nodes(honest, "0", "1", "2"))
        replies = [(node_of(site), site.train_round(2, driver.downlink(node_of(site)))) for site in sites]
        loud = [(node, with_payload(reply, rebound(reply.payload, coordinator.limits, 2, reply.site, scale=1e3)))
                for node, reply in replies[1:]]
        colluded = play(driver, 2, [replies[0], *loud])
    with open_federation(settings, tmp_path / "reference") as (coordinator, _):
        driver = RoundDriver(coordinator)
        play(driver, 1, nodes(honest, "0", "1", "2"))
        reference = play(driver, 2, [replies[0]])

    same_model(colluded, reference)
    assert sorted(site for site, _, _ in colluded.rejections) == ["site-1", "site-2"]
    assert all("median of earlier rounds' merged updates" in reason for _, _, reason in colluded.rejections)


@pytest.mark.parametrize("kind", ["no entries", "all zero"])
def test_an_empty_upload_with_a_huge_weight_is_rejected(three, tmp_path, trained, kind):
    honest = trained.replies
    entries = {} if kind == "no entries" else {trained.tensor: Dense(torch.zeros(trained.shape))}
    empty = encode(Delta(entries), base=trained.genesis, meta=upload_binding(1, "site-2"))
    replies = [*nodes(honest, "0", "1"), ("2", weighing(with_payload(honest["2"], empty), 1e30))]

    outcome = one_round(three, tmp_path / "empty", replies)
    reference = one_round(three, tmp_path / "reference", nodes(honest, "0", "1"))
    alone = one_round(three, tmp_path / "alone", [replies[0], replies[2]])

    same_model(outcome, reference)
    assert [(site, reason) for site, _, reason in outcome.rejections] == [
        ("site-2", "empty update: no entries, or every value zero")]
    assert alone.sha is None and alone.merged == {}


@pytest.mark.parametrize("registered", [False, True])
def test_a_node_claiming_another_sites_name_is_recorded_under_its_own(three, tmp_path, trained, registered):
    honest = trained.replies
    impostor = claiming(with_payload(honest["2"], rebound(honest["2"].payload, trained.limits, 1, "site-0")), "site-0")
    own = "site-2" if registered else "node-2"
    with open_federation(three, tmp_path / "claimed") as (coordinator, _):
        driver = RoundDriver(coordinator)
        if registered:
            driver.register({"0": "site-0", "1": "site-1", "2": "site-2"})
        outcome = play(driver, 1, [*nodes(honest, "0", "1"), ("2", impostor)])
        held = {node.node: node.site for node in coordinator.store.site_nodes()}
    reference = one_round(three, tmp_path / "reference", nodes(honest, "0", "1"))

    same_model(outcome, reference)
    assert outcome.uploads["site-0"][0] == "0" and outcome.uploads[own][0] == "2"
    assert outcome.uploads["site-0"][1] is not None and outcome.uploads[own][1] is None
    assert [(site, reason) for site, _, reason in outcome.rejections] == [
        (own, f"node 2 claims to be site 'site-0', but it is '{own}'")]
    assert held == {"0": "site-0", "1": "site-1", "2": own}


def test_a_second_upload_of_a_site_in_a_round_is_rejected(three, tmp_path, honest):
    outcome = one_round(three, tmp_path / "twice", [*nodes(honest, "0", "1", "2"), ("0", honest["0"])])
    reference = one_round(three, tmp_path / "reference", nodes(honest, "0", "1", "2"))

    same_model(outcome, reference)
    assert [(site, reason) for site, _, reason in outcome.rejections] == [
        ("site-0", "site 'site-0' already has an accepted upload in this round; only the first counts")]


def test_a_replay_from_another_round_is_rejected(three, tmp_path, trained):
    honest = trained.replies
    fresh = [(node, with_payload(honest[node], rebound(honest[node].payload, trained.limits, 2, f"site-{node}")))
             for node in ("1", "2")]
    with open_federation(three, tmp_path / "replayed") as (coordinator, _):
        driver = RoundDriver(coordinator)
        assert play(driver, 1, nodes(honest, "0")).sha is None
        replayed = play(driver, 2, [*nodes(honest, "0"), *fresh])
    reference = one_round(three, tmp_path / "reference", fresh, server_round=2)

    same_model(replayed, reference)
    assert [(site, reason) for site, _, reason in replayed.rejections] == [
        ("site-0", "upload is bound to round '1' and site 'site-0', not to round 2 and site 'site-0': "
                   "a replay or a forgery")]


def test_a_replay_from_another_site_is_rejected(three, tmp_path, honest):
    replayed = with_payload(honest["1"], honest["0"].payload)
    outcome = one_round(three, tmp_path / "replayed", [*nodes(honest, "0"), ("1", replayed), *nodes(honest, "2")])
    reference = one_round(three, tmp_path / "reference", nodes(honest, "0", "2"))

    same_model(outcome, reference)
    assert [(site, reason) for site, _, reason in outcome.rejections] == [
        ("site-1", "upload is bound to round '1' and site 'site-0', not to round 1 and site 'site-1': "
                   "a replay or a forgery")]


@dataclass
class Recorded:
    """A site in process whose training replies are kept by round."""

    site: object
    replies: dict[int, TrainReply] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.site.name

    def train_round(self, server_round: int, downlink: Downlink, genesis_sha: str = "") -> TrainReply:
        self.replies[server_round] = self.site.train_round(server_round, downlink, genesis_sha)
        return self.replies[server_round]

    def evaluate_round(self, downlink: Downlink):
        return self.site.evaluate_round(downlink)


def test_a_site_blocked_from_the_console_sits_out_until_unblocked_across_a_restart(three, tmp_path):
    root = tmp_path / "blocked"
    with open_federation(three, root) as (coordinator, sites):
        console = create_app(root / "state", TOKEN).test_client()
        recorded = {node_of(site): Recorded(site) for site in sites}
        driver = RoundDriver(coordinator)
        driver.run_round(1, recorded)
        asked = console.post("/api/actions/block", json={"site": "site-2"}, headers=BEARER)
        driver.run_round(2, recorded)
        listed = {site["site"]: site["blocked"] for site in console.get("/api/sites").get_json()}
        page = console.get("/sites").get_data(as_text=True)
        two = coordinator.head
    with open_federation(three, root) as (coordinator, sites):  # the server restarts
        console = create_app(root / "state", TOKEN).test_client()
        driver = RoundDriver(coordinator)
        late = sites[2].train_round(3, driver.downlink("2"))
        driver.open(3)
        refused = play(driver, 3, [("2", late)])
        driver.finish(3)
        form = console.post("/actions/unblock", data={"site": "site-2", "token": TOKEN})
        again = {node_of(site): Recorded(site) for site in sites}
        driver.run_round(4, again)
        merged = {row.site: row.weight for row in coordinator.store.site_rounds() if row.round == 4}
        outcomes = [(c["action"], c["site"], c["state"]) for c in console.get("/api/actions").get_json()]
        head = coordinator.head
    with open_federation(three, tmp_path / "reference") as (coordinator, _):
        driver = RoundDriver(coordinator)
        play(driver, 1, [(node, site.replies[1]) for node, site in recorded.items()])
        reference = play(driver, 2, [(node, recorded[node].replies[2]) for node in ("0", "1")])

    assert asked.status_code == 202 and asked.get_json()["control"]["site"] == "site-2"
    assert 2 not in recorded["2"].replies and two.sha == reference.sha
    assert listed == {"site-0": False, "site-1": False, "site-2": True}
    assert '<tr id="site-site-2">' in page and page.count('<span class="pill bad">blocked</span>') == 1
    assert refused.sha is None and [(site, reason) for site, _, reason in refused.rejections] == [
        ("site-2", "site 'site-2' is blocked by the operator")]
    assert form.status_code == 303 and outcomes == [("unblock", "site-2", "done"), ("block", "site-2", "done")]
    assert set(again["2"].replies) == {4} and head.id == 3 and all(weight is not None for weight in merged.values())
    assert sorted(merged) == ["site-0", "site-1", "site-2"]


@pytest.mark.parametrize(("body", "error"), [
    ({}, "block needs a site name"),
    ({"site": "site 2"}, "site must be a site name"),
    ({"site": "site-2", "version": 1}, "block takes no version"),
    ({"site": 2}, "site must be a string"),
])
def test_a_block_request_without_a_site_name_is_refused(tmp_path, body, error):
    store = VersionStore(tmp_path / "state")
    store.commit_version(parent=None, round=0, sha="s0", kind="snapshot", blob=b"zero")
    store.commit_version(parent=0, round=1, sha="s1", kind="merged", blob=b"one")
    console = create_app(tmp_path / "state", TOKEN).test_client()

    answer = console.post("/api/actions/block", json=body, headers=BEARER)

    assert answer.status_code == 400 and error in answer.get_json()["error"]
    assert store.controls() == [] and store.blocked_sites() == []
    store.close()


class Connected:
    """What Flower's Grid tells the ServerApp of the connected nodes: their ids and registered names."""

    def __init__(self, names: dict[int, str]) -> None:
        self.names = names

    def get_nodes(self) -> list[NodeInfo]:
        return [NodeInfo(node_id=node, name=name) for node, name in self.names.items()]


def test_sampling_sees_no_node_of_a_blocked_site_and_each_node_by_its_registered_name(three, tmp_path):
    with open_federation(three, tmp_path) as (coordinator, _):
        control.request(coordinator.store, control.BLOCK, site="site-2")
        driver = RoundDriver(coordinator)
        driver.open(1)
        sampled = EligibleGrid(Connected({11: "site-0", 12: "site-1", 13: "site-2", 14: ""}), driver.register,
                               driver.shut_out)

        eligible = list(sampled.get_node_ids())
        named = {node: coordinator.identities.site_of(node) for node in ("11", "12", "13", "14")}

    assert eligible == [11, 12, 14]
    assert named == {"11": "site-0", "12": "site-1", "13": "site-2", "14": None}
