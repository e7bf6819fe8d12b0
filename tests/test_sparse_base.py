"""Prune Once for All: an exactly sparse base, and every method keeping its zeros through a federated round."""

import json

import pytest
import torch

from rounds import open_federation, run_rounds, train_all
from fedelta.common.codec import encode
from fedelta.common.delta import Delta, Dense
from fedelta.common.methods.registry import weight_matrices
from fedelta.common.model import load_model
from fedelta.common.sparse_base import REPORT_FILE, SparseBaseRequest, cubic_sparsity, prepare_sparse_base
from fedelta.common.sparsity import pattern_of
from fedelta.common.upload import upload_binding

SPARSITY = 0.8
METHODS = ("full", "lnbias", "pafi", "hiwi", "svfit", "lora")


@pytest.fixture(scope="module")
def sparse_base(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("sparse-base") / "base"
    prepare_sparse_base(SparseBaseRequest(sparsity=SPARSITY, out=str(out), model="tiny-bert", steps=6,
                                          batch_size=4, max_length=16))
    return str(out)


def test_cubic_schedule_rises_from_zero_to_the_target():
    values = [cubic_sparsity(step, 8, 0.9) for step in range(10)]
    assert values[0] == 0.0 and values[8] == values[9] == 0.9
    assert all(a < b for a, b in zip(values[:8], values[1:9]))


def test_every_body_matrix_has_exactly_the_requested_zeros(sparse_base):
    bundle = load_model(sparse_base, num_labels=2, seed=0)
    params = dict(bundle.model.named_parameters())
    matrices = weight_matrices(params, bundle.head)
    assert matrices and not any("embed" in name or name in bundle.head for name in matrices)
    for name in matrices:
        assert int((params[name] == 0).sum()) == round(SPARSITY * params[name].numel()), name
    report = json.loads((__import__("pathlib").Path(sparse_base) / REPORT_FILE).read_text())
    assert sorted(report["matrices"]) == matrices
    assert all(value == pytest.approx(SPARSITY, abs=1e-3) for value in report["matrices"].values())
    assert report["bytes"]["sparse_body_zstd"] < report["bytes"]["dense_body_zstd"]
    dense = dict(load_model("tiny-bert", num_labels=2, seed=0).model.named_parameters())
    moved = [n for n in params if n not in bundle.head and n not in matrices and not torch.equal(params[n], dense[n])]
    assert moved, "distillation trains the unpruned tensors too"
    assert all("embed" not in n for n in moved), "embeddings stay frozen"


@pytest.mark.parametrize("method", METHODS)
def test_a_federated_round_keeps_every_pruned_weight_zero(method, sparse_base, tiny_settings, tmp_path):
    settings = tiny_settings.with_overrides({"model.sparse-base": sparse_base, "method.name": method,
                                             "local.lr": 1e-2, "prune.name": "none", "quant.values": "fp32"})
    with open_federation(settings, tmp_path) as (coordinator, sites):
        genesis = {name: value.clone() for name, value in coordinator.params.items()}
        pattern = pattern_of(genesis, coordinator.bundle.head)
        assert pattern and all(int(mask.sum()) == round(SPARSITY * mask.numel()) for mask in pattern.values())
        run_rounds(coordinator, sites, range(1, 3))
        assert coordinator.head.id == 2 and coordinator.store.rejections() == []
        for name, pruned in pattern.items():
            assert int(coordinator.params[name][pruned].ne(0).sum()) == 0, name
        moved = [n for n in coordinator.params if not torch.equal(coordinator.params[n], genesis[n])]
        body_moved = [n for n in moved if n not in coordinator.bundle.head]
        assert body_moved, f"{method} changed no body tensor"
        for site in sites:
            cached = site.state.load_version()
            assert cached.version == 2
            assert all(int(cached.params[n][p].ne(0).sum()) == 0 for n, p in pattern.items())


def test_the_server_rejects_an_update_writing_into_a_pruned_position(sparse_base, tiny_settings, tmp_path):
    settings = tiny_settings.with_overrides({"model.sparse-base": sparse_base})
    with open_federation(settings, tmp_path) as (coordinator, sites):
        name, pruned = next(iter(pattern_of(coordinator.params, coordinator.bundle.head).items()))
        inside = torch.zeros(pruned.shape).masked_fill(~pruned, 0.5)
        outside = inside.clone()
        outside.view(-1)[int(pruned.reshape(-1).nonzero()[0])] = 1e-3
        head = coordinator.head.sha
        metrics = {"num-examples": 10.0}
        assert coordinator.receive(node="0", site="keeps", server_round=1, metrics=metrics,
                                   payload=encode(Delta({name: Dense(inside)}), base=head, meta=upload_binding(1, "keeps")))
        assert not coordinator.receive(node="1", site="writes", server_round=1, metrics=metrics,
                                       payload=encode(Delta({name: Dense(outside)}), base=head,
                                                      meta=upload_binding(1, "writes")))
        (site, _, reason), = coordinator.store.rejections()
        assert site == "writes" and "pruned positions" in reason and name in reason
        assert all(train_all(coordinator, sites, 2))
