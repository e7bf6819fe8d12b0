"""Downlink compression: the residual identity, and server and sites staying bit-identical."""

import pytest
import torch
from rounds import evaluate_all, open_federation, run_rounds, train_all

from fedelta.common.codec import Limits, decode
from fedelta.common.config import DownlinkSettings, Settings
from fedelta.common.delta import Delta, Dense, Sparse, state_hash
from fedelta.server.coordinator import Coordinator
from fedelta.server.downlink import MergedEncoder
from fedelta.server.store import VersionStore

LIMITS = Limits(max_bytes=1 << 24, max_elements=1 << 20)
COMPRESSED = {"downlink.prune": "magnitude", "downlink.density": 0.05, "downlink.values": "fp16"}


def _merged(seed: int) -> Delta:
    gen = torch.Generator().manual_seed(seed)
    return Delta({"w": Dense(torch.randn(40, 50, generator=gen)), "b": Dense(torch.randn(50, generator=gen))})


def test_sent_plus_new_residual_equals_merged_plus_old_residual():
    encoder = MergedEncoder(DownlinkSettings(prune="magnitude", density=0.3, values="fp16"), 0, LIMITS)
    for seed in (1, 2, 3):
        merged = _merged(seed)
        old = {name: value.clone() for name, value in encoder.residual.items()}
        blob, residual = encoder.encode(merged, base="a" * 64, seed=seed)
        sent = decode(blob, LIMITS)
        assert sent.meta["values"] == "fp16" and sent.meta["kind"] == "merged"
        for name, entry in merged.entries.items():
            target = entry.to_dense() + old.get(name, torch.zeros(entry.shape))
            torch.testing.assert_close(sent.delta.entries[name].to_dense() + residual[name], target, rtol=0, atol=1e-6)
            assert sent.delta.entries[name].count == round(0.3 * entry.count)
        encoder.residual = residual
    assert all(value.abs().sum() > 0 for value in encoder.residual.values())


def test_without_compression_the_merged_delta_travels_exactly():
    encoder = MergedEncoder(DownlinkSettings(), 0, LIMITS)
    merged = _merged(4)
    blob, residual = encoder.encode(merged, base="a" * 64, seed=0)
    assert residual == {} and encoder.residual_blob(residual, "a" * 64) is None
    for name, entry in decode(blob, LIMITS).delta.entries.items():
        assert torch.equal(entry.to_dense(), merged.entries[name].to_dense())


def test_a_mostly_zero_merged_delta_travels_with_indices():
    values = torch.zeros(100)
    values[[3, 50]] = 1.0
    encoder = MergedEncoder(DownlinkSettings(), 0, LIMITS)
    blob, _ = encoder.encode(Delta({"z": Dense(values), "d": Dense(torch.ones(4))}), base="ab" * 32, seed=1)
    entries = decode(blob, LIMITS).delta.entries
    assert isinstance(entries["z"], Sparse) and entries["z"].indices.tolist() == [3, 50]
    assert isinstance(entries["d"], Dense)


def test_compressed_downlink_keeps_sites_bit_identical_and_its_residual_survives_a_restart(tiny_settings, tmp_path):
    settings = tiny_settings.with_overrides(COMPRESSED)
    with open_federation(settings, tmp_path) as (coordinator, sites):
        run_rounds(coordinator, sites, range(1, 3))
        head, residual = coordinator.head, coordinator.encoder.residual
        assert head.residual is not None and sum(float(r.abs().sum()) for r in residual.values()) > 0
        assert decode(coordinator.store.read_blob(head), coordinator.limits).meta["values"] == "fp16"
        assert evaluate_all(coordinator, sites) == [(2, head.sha)] * 2
        assert state_hash(coordinator.params) == head.sha
        coordinator.store.close()
        again = Coordinator(settings, VersionStore(tmp_path / "state"), tmp_path / "out")
        try:
            assert state_hash(again.params) == head.sha and set(again.encoder.residual) == set(residual)
            assert all(torch.equal(again.encoder.residual[name], value) for name, value in residual.items())
        finally:
            again.store.close()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [({"downlink.prune": "dare"}, "downlink.prune"), ({"downlink.values": "fp8"}, "downlink.values"),
     ({"downlink.density": 0.0}, "downlink.density"), ({"store.snapshot-every": -1}, "store.snapshot-every"),
     ({"validate.max-norm-ratio": 0.5}, "validate.max-norm-ratio"), ({"aggregate.density": 2.0}, "aggregate.density")],
)
def test_bad_server_settings_name_the_field(overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        Settings().with_overrides(overrides)


def test_a_commit_the_store_refuses_brings_the_weights_back_to_the_head(tiny_settings, tmp_path, monkeypatch):
    with open_federation(tiny_settings, tmp_path) as (coordinator, sites):
        run_rounds(coordinator, sites, range(1, 2))
        head = coordinator.head
        train_all(coordinator, sites, 2)

        def refuse(**fields):
            raise OSError("disk full")

        monkeypatch.setattr(coordinator.store, "commit_version", refuse)
        with pytest.raises(OSError, match="disk full"):
            coordinator.commit(2)
        assert coordinator.head == head and state_hash(coordinator.params) == head.sha
