"""Activation-aware pruning, labelled DAREx-q and PERP recovery inside a site's round (tiny BERT)."""

from __future__ import annotations

import pytest
import torch

from fedelta.client.site import Site, simulated_site_data
from rounds import node_of, open_federation
from fedelta.common.codec import decode
from fedelta.common.delta import Dense, SeededMask, Sparse
from fedelta.common.methods.lnbias import norm_and_bias_names
from fedelta.common.model import load_model
from fedelta.common.optimizers import make_optimizer


@pytest.mark.parametrize(
    ("overrides", "kind", "q_metric"),
    [
        ({"prune.name": "darex-q"}, SeededMask, True),
        ({"prune.name": "darex-q", "prune.q-mode": "labelled"}, SeededMask, True),
        ({"prune.name": "importance", "quant.values": "int8"}, Sparse, False),
        ({"prune.name": "magnitude", "quant.values": "ternary", "feedback.enabled": True}, Sparse, False),
    ],
)
def test_a_round_with_each_new_pruner_reports_its_metrics(tiny_settings, tmp_path, overrides, kind, q_metric):
    settings = tiny_settings.with_overrides({"prune.drop": 0.9, "prune.calibration-size": 8, **overrides})
    with open_federation(settings, tmp_path) as (coordinator, sites):
        replies = []
        for site in sites:
            node = node_of(site)
            replies.append(site.train_round(1, coordinator.downlink_for(node)))
            coordinator.receive(node=node, site=site.name, server_round=1, payload=replies[-1].payload,
                                metrics=replies[-1].metrics)
        coordinator.commit(1)
        coordinator.finish_round(1)
    reply = replies[0]
    entries = decode(reply.payload, coordinator.limits).delta.entries
    weight = "bert.encoder.layer.0.intermediate.dense.weight"
    assert isinstance(entries[weight], kind)
    metrics_file = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert ("site_prune_q" in metrics_file[-1]) == q_metric and "site_residual_norm" in metrics_file[-1]
    if q_metric:
        assert 0 < reply.metrics["prune-q-min"] <= reply.metrics["prune-q"] <= reply.metrics["prune-q-max"]
    if settings.prune.q_mode == "labelled":
        assert reply.metrics["prune-q-min"] == reply.metrics["prune-q-max"]


def test_labelled_mode_carves_a_validation_split_from_training(tiny_settings, tmp_path):
    settings = tiny_settings.with_overrides({"prune.name": "darex-q", "prune.q-mode": "labelled"})
    plain = tiny_settings.with_overrides({"prune.name": "darex-q"})
    data = Site(settings, "site-0", tmp_path / "a", simulated_site_data(settings, 0, 2)).data
    reference = Site(plain, "site-0", tmp_path / "b", simulated_site_data(plain, 0, 2)).data
    assert data.validation is not None and len(data.validation) >= 1
    assert sorted(data.train.texts + data.validation.texts) == sorted(reference.train.texts)
    assert data.test.texts == reference.test.texts


@pytest.mark.parametrize(
    ("overrides", "carved"),
    [({"prune.name": "darex-q", "prune.q-mode": "labelled"}, True), ({"prune.name": "darex-q"}, False),
     ({"prune.name": "magnitude", "prune.q-mode": "labelled"}, False)],
)
def test_a_site_carves_a_validation_split_only_for_a_pruner_that_needs_labels(tiny_settings, tmp_path, overrides,
                                                                               carved):
    settings = tiny_settings.with_overrides(overrides)
    site = Site(settings, "site-0", tmp_path, simulated_site_data(settings, 0, 2))
    assert site.pruner.needs_labels(settings.prune) == carved
    assert (site.data.validation is not None) == carved


@pytest.mark.parametrize(
    ("overrides", "inputs", "q"),
    [({"prune.name": "magnitude"}, False, False), ({"prune.name": "dare"}, False, False),
     ({"prune.name": "importance"}, True, False), ({"prune.name": "darex-q"}, True, False),
     ({"prune.name": "darex-q", "prune.q-mode": "labelled"}, True, True)],
)
def test_calibration_follows_the_pruners_traits(tiny_settings, tmp_path, overrides, inputs, q):
    settings = tiny_settings.with_overrides({"prune.calibration-size": 4, **overrides})
    site = Site(settings, "site-0", tmp_path, simulated_site_data(settings, 0, 2))
    bundle = load_model("tiny-bert", 2, settings.seed)
    before = {name: value.clone() for name, value in bundle.model.named_parameters()}
    weight = "bert.encoder.layer.0.intermediate.dense.weight"
    delta = {weight: torch.randn_like(before[weight]) * 1e-3}
    calibration = site.calibration(bundle, before, delta, seed=1)
    if not (inputs or q):
        assert calibration is None
        return
    assert bool(calibration.inputs) == inputs and weight in calibration.inputs
    assert (calibration.q is not None) == q


def test_recovery_sends_norms_and_biases_dense_and_fixes_the_pruned_rest(tiny_settings, tmp_path):
    settings = tiny_settings.with_overrides({"prune.name": "magnitude", "prune.drop": 0.9, "prune.recover-steps": 2})
    baseline = tiny_settings.with_overrides({"prune.name": "magnitude", "prune.drop": 0.9})
    replies = []
    for index, chosen in enumerate((settings, baseline)):
        with open_federation(chosen, tmp_path / str(index)) as (coordinator, sites):
            replies.append(decode(sites[0].train_round(1, coordinator.downlink_for("0")).payload, coordinator.limits))
    recovered, plain = (reply.delta.entries for reply in replies)
    model = load_model("tiny-bert", 2, 0).model
    norms_biases = set(norm_and_bias_names(model)) & set(recovered)
    assert norms_biases and all(isinstance(recovered[name], Dense) for name in norms_biases)
    weight = "bert.encoder.layer.0.intermediate.dense.weight"
    assert torch.equal(recovered[weight].indices, plain[weight].indices)
    assert torch.equal(recovered[weight].values, plain[weight].values)
    changed = [n for n in norms_biases if not torch.equal(recovered[n].to_dense(), plain[n].to_dense())]
    assert changed


def test_recovery_under_adamr_decays_toward_the_rounds_base(tiny_settings, tmp_path, monkeypatch):
    from fedelta.common.pruning import recover as recover_module

    built = []

    def recording(model, *args, **kwargs):
        optimizer = make_optimizer(model, *args, **kwargs)
        built.append((model, optimizer))
        return optimizer

    monkeypatch.setattr(recover_module, "make_optimizer", recording)
    settings = tiny_settings.with_overrides({"prune.name": "magnitude", "prune.drop": 0.9, "prune.recover-steps": 2,
                                             "optimizer.name": "adamr"})
    with open_federation(settings, tmp_path) as (coordinator, sites):
        sites[0].train_round(1, coordinator.downlink_for("0"))
    (model, optimizer), = built
    version_0 = dict(load_model("tiny-bert", 2, settings.seed).model.named_parameters())
    anchored = {name: optimizer.anchors[param] for name, param in model.named_parameters()
                if param in optimizer.anchors}
    assert anchored and set(anchored) <= set(norm_and_bias_names(model))
    for name, anchor in anchored.items():
        assert torch.equal(anchor, version_0[name].detach()), name
