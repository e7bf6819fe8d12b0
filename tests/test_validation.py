"""Each kind of bad update is rejected and recorded; the round still commits the good ones."""

import pytest
import torch
from rounds import open_federation, rebound

from fedelta.common.codec import encode
from fedelta.common.delta import Delta, Dense, Sparse, state_hash
from fedelta.server.validation import Rejected, bounded_weights, example_weight, median, norm_outliers, update_norm

TIGHT = {"validate.max-decoded-bytes": 1_000_000, "validate.max-norm-ratio": 10.0}


def _scaled(payload: bytes, limits, factor: float, site: str) -> bytes:
    """The upload with every value times ``factor``, bound to round 1 and ``site``."""
    return rebound(payload, limits, 1, site, scale=factor, values="fp16")


def _bad_uploads(coordinator, good: bytes) -> dict[str, tuple[bytes, float]]:
    head = coordinator.head.sha
    name, embeddings = "bert.encoder.layer.0.attention.self.query.weight", "bert.embeddings.word_embeddings.weight"
    shape = tuple(coordinator.params[embeddings].shape)
    return {
        "corrupt": (good[:-40] + bytes(40), 10.0),
        "wrong base": (encode(Delta({name: Dense(torch.zeros(32, 32))}), base="0" * 64), 10.0),
        "nan": (encode(Delta({name: Sparse((32, 32), torch.tensor([3]), torch.tensor([float("nan")]))}), base=head), 10.0),
        "wrong shape": (encode(Delta({name: Dense(torch.zeros(32, 33))}), base=head), 10.0),
        "unknown tensor": (encode(Delta({"not.a.parameter": Dense(torch.zeros(3))}), base=head), 10.0),
        "too large": (encode(Delta({embeddings: Dense(torch.randn(shape) * 1e-3)}), base=head), 10.0),
        "huge norm": (_scaled(good, coordinator.limits, 1e4, "huge norm"), 10.0),
        "no examples": (good, 0.0),
    }


def test_every_bad_kind_is_rejected_and_recorded_and_the_round_commits_the_good_ones(tiny_settings, tmp_path):
    with open_federation(tiny_settings.with_overrides(TIGHT), tmp_path) as (coordinator, sites):
        replies = [site.train_round(1, coordinator.downlink_for(str(i))) for i, site in enumerate(sites)]
        before = state_hash(coordinator.params)
        bad = _bad_uploads(coordinator, replies[0].payload)
        for kind, (payload, examples) in bad.items():
            coordinator.receive(node="9", site=kind, server_round=1, payload=payload,
                                metrics={"num-examples": examples})
        assert state_hash(coordinator.params) == before and [u.site for u in coordinator.held] == ["huge norm"]
        for index, (site, reply) in enumerate(zip(sites, replies)):
            assert coordinator.receive(node=str(index), site=site.name, server_round=1, payload=reply.payload,
                                       metrics=reply.metrics)
        version = coordinator.commit(1)
        assert version is not None and version.id == 1
        row = coordinator.finish_round(1)
        reasons = {site: reason for site, round_, reason in coordinator.store.rejections() if round_ == 1}

    assert set(reasons) == set(bad) and row["rejected"] == len(bad) and row["sites"] == len(bad) + 2
    expected = {
        "corrupt": "zstd", "wrong base": "not the current", "nan": "non-finite", "wrong shape": "shape",
        "unknown tensor": "outside the method", "too large": "exceeds the limit of 1000000",
        "huge norm": "validate.max-norm-ratio", "no examples": "num-examples",
    }
    for kind, fragment in expected.items():
        assert fragment in reasons[kind], (kind, reasons[kind])


def test_an_update_outside_the_method_is_rejected(tiny_settings, tmp_path):
    settings = tiny_settings.with_overrides({"method.name": "lnbias"})
    with open_federation(settings, tmp_path) as (coordinator, _):
        name = "bert.encoder.layer.0.attention.self.query.weight"
        payload = encode(Delta({name: Dense(torch.zeros(32, 32))}), base=coordinator.head.sha)
        assert not coordinator.receive(node="0", site="s", server_round=1, payload=payload,
                                       metrics={"num-examples": 5.0})
        assert name in coordinator.store.rejections()[0][2]


def test_too_few_accepted_updates_after_the_norm_check_commit_nothing(tiny_settings, tmp_path):
    with open_federation(tiny_settings, tmp_path) as (coordinator, sites):
        reply = sites[0].train_round(1, coordinator.downlink_for("0"))
        coordinator.receive(node="0", site="site-0", server_round=1, payload=reply.payload, metrics=reply.metrics)
        coordinator.receive(node="1", site="loud", server_round=1,
                            payload=_scaled(reply.payload, coordinator.limits, 1e3, "loud"), metrics=reply.metrics)
        head = coordinator.head
        assert coordinator.commit(1) is None and coordinator.head == head
        assert [site for site, _, _ in coordinator.store.rejections()] == ["loud"]
        assert coordinator.finish_round(1)["version"] == head.id


@pytest.mark.parametrize(
    ("norms", "ratio", "outliers"),
    [
        ([1.0, 1.2, 0.9, 50.0], 10.0, [3]),
        ([1.0, 1.2, 0.9, 10.0], 10.0, []),
        ([1.0, 1.2, 0.9, 10.01], 10.0, [3]),
        ([1.0, 30.0], 10.0, [1]),
        ([5.0], 10.0, []),
        ([1.0, 1e9], 0.0, []),
    ],
)
def test_norm_outliers_compare_with_the_median_of_the_others(norms, ratio, outliers):
    assert sorted(norm_outliers(norms, ratio)) == outliers


def test_update_norm_is_the_l2_norm_over_all_entries():
    delta = Delta({"a": Dense(torch.tensor([3.0, 0.0])), "b": Sparse((10,), torch.tensor([1, 7]), torch.tensor([4.0, 12.0]))})
    assert update_norm(delta) == 13.0


@pytest.mark.parametrize("value", [0.0, -3.0, float("nan"), float("inf"), "12", True, None])
def test_only_a_finite_positive_number_of_examples_is_a_weight(value):
    with pytest.raises(Rejected, match="num-examples"):
        example_weight({"num-examples": value})
    assert example_weight({"num-examples": 12}) == 12.0


@pytest.mark.parametrize(
    ("norms", "earlier", "outliers"),
    [
        ([1.0, 806.0, 800.0], None, []),  # two colluders of three pass against the round alone
        ([1.0, 806.0, 800.0], 1.1, [1, 2]),  # fewer than three others: earlier rounds' median
        ([1.0, 1.2, 11.5], 1.1, [2]),
        ([1.0, 1.2, 0.9, 806.0, 800.0], 1.1, [3, 4]),  # two of five: the round's median of others
        ([1.0, 1.2, 806.0, 800.0, 810.0], 1.1, []),  # three of five: not caught (earlier rounds are not asked)
        ([1.0, 1.2, 0.9, 1.1, 806.0], 1e6, [4]),
        ([50.0], 1.0, [0]),
    ],
)
def test_norm_outliers_fall_back_to_earlier_rounds_with_fewer_than_three_others(norms, earlier, outliers):
    assert sorted(norm_outliers(norms, 10.0, earlier)) == outliers


def test_weights_are_clipped_by_the_others_median_and_by_each_sites_history():
    weights = bounded_weights({"a": 10.0, "b": 12.0, "c": 1e300, "d": 40.0}, {"a": 4.0, "d": 30.0},
                              max_ratio=4.0, max_growth=2.0)
    assert {site: weight.value for site, weight in weights.items()} == {"a": 8.0, "b": 12.0, "c": 48.0, "d": 40.0}
    assert weights["a"].note == ("num-examples 10 clipped to 8 by validate.max-weight-growth=2 times its largest "
                                 "earlier weight 4")
    assert weights["c"].note == ("num-examples 1e+300 clipped to 48 by validate.max-weight-ratio=4 times the median "
                                 "12 of the round's other weights")
    assert weights["b"].note == weights["d"].note == ""
    unbounded = bounded_weights({"a": 1.0, "b": 1e300}, {"a": 0.5}, max_ratio=0.0, max_growth=0.0)
    assert [weight.value for weight in unbounded.values()] == [1.0, 1e300]


def test_the_median_of_huge_weights_stays_finite():
    assert median([1.7e308, 1.7e308]) == 1.7e308 and median([3.0, 1.0, 2.0]) == 2.0
