import pytest
import torch

from fedelta.common.delta import Delta, Dense, SeededMask, Sparse, seeded_mask
from fedelta.common.pruning import PruneRequest, prune_delta
from fedelta.common.config import AggregateSettings
from fedelta.common.aggregation import WeightedMean, make_aggregator

SHAPES = {"a.weight": (32, 16), "a.bias": (16,), "b.weight": (8, 8)}


def _site_delta(seed: int, pruner: str) -> Delta:
    gen = torch.Generator().manual_seed(seed)
    dense = {name: torch.randn(shape, generator=gen) for name, shape in SHAPES.items() if seed % 3 or name != "b.weight"}
    return prune_delta(dense, pruner, PruneRequest(keep=0.3, seed=seed))


@pytest.mark.parametrize("pruner", ["none", "dare", "magnitude"])
def test_streaming_mean_equals_dense_reference(pruner):
    deltas = [_site_delta(seed, pruner) for seed in range(1, 6)]
    weights = [10.0, 3.0, 7.0, 1.0, 25.0]
    streaming = WeightedMean()
    for delta, weight in zip(deltas, weights):
        streaming.add(delta, weight)
    merged = streaming.result()
    for name, shape in SHAPES.items():
        reference = sum(
            w * (d.entries[name].to_dense() if name in d.entries else torch.zeros(shape)) for d, w in zip(deltas, weights)
        ) / sum(weights)
        torch.testing.assert_close(merged.entries[name].to_dense(), reference, rtol=1e-6, atol=1e-7)
    assert streaming.count == 5


def test_only_touched_tensors_are_allocated():
    streaming = WeightedMean()
    streaming.add(Delta({"a.bias": Sparse((16,), torch.tensor([2, 5]), torch.tensor([1.0, -1.0]))}), 2.0)
    merged = streaming.result()
    assert merged.names() == ["a.bias"]
    assert merged.entries["a.bias"].to_dense().nonzero().reshape(-1).tolist() == [2, 5]


def test_merged_dare_is_unbiased_when_sites_agree():
    truth = torch.randn(4000)
    streaming = WeightedMean()
    for seed in range(64):
        positions = seeded_mask(seed, "w", truth.numel(), 0.25).nonzero().reshape(-1)
        streaming.add(Delta({"w": SeededMask((4000,), "w", seed, 0.25, truth[positions] / 0.25, positions)}), 1.0)
    error = streaming.result().entries["w"].to_dense() - truth
    # per coordinate std is |δ| sqrt(3/64); the mean over 4000 coordinates is far tighter
    assert error.mean().abs() < 0.05 and error.std() < 0.35 * truth.std()


def test_bad_weights_and_empty_results_are_errors():
    streaming = make_aggregator(AggregateSettings(), seed=0)
    with pytest.raises(ValueError, match="no delta"):
        streaming.result()
    with pytest.raises(ValueError, match="weight"):
        streaming.add(Delta({"x": Dense(torch.ones(2))}), 0.0)


def test_unknown_aggregator_names_the_setting():
    with pytest.raises(ValueError, match="aggregate.name"):
        make_aggregator(AggregateSettings(name="median"), seed=0)


def test_result_reuses_the_accumulators_in_place():
    streaming = WeightedMean()
    streaming.add(Delta({"x": Dense(torch.ones(3))}), 2.0)
    state = streaming._state["x"]
    merged = streaming.result()
    assert merged.entries["x"].values is state and torch.equal(state, torch.ones(3))


# sums of exactly 1, 1 - 2**-53 and 1 + 2**-40: all round to 1 in fp32
@pytest.mark.parametrize("weights", [[0.25, 0.75], [0.1] * 10, [0.5, 0.5 + 2**-40]])
def test_weights_summing_to_one_in_fp32_give_the_divided_mean_bit_for_bit(weights):
    deltas = [_site_delta(seed, "dare") for seed in range(1, len(weights) + 1)]
    streaming, summed = WeightedMean(), WeightedMean()
    for delta, weight in zip(deltas, weights):
        streaming.add(delta, weight)
        summed.add(delta, weight)
    total = sum(weights)
    sums = {name: state.clone() for name, state in summed._state.items()}
    merged = streaming.result()
    for name, state in sums.items():
        assert torch.equal(merged.entries[name].values.view(torch.int32), state.div_(total).view(torch.int32))


def test_accumulators_carved_from_one_arena_start_at_zero_and_never_overlap(monkeypatch):
    from fedelta.common.aggregation import arena

    monkeypatch.setattr(arena, "CHUNK_BYTES", 3 * arena.PAGE)  # several mappings, and a tensor larger than one
    shapes = [(7,), (arena.PAGE // 4 - 3,), (0, 5), (5, 3 * arena.PAGE // 4 + 1), (1,), (300, 2)]
    carved = arena.Arena()
    states = [carved.zeros(shape) for shape in shapes]
    for shape, state in zip(shapes, states, strict=True):
        assert state.shape == shape and state.dtype == torch.float32 and state.is_contiguous() and not state.any()
    for k, state in enumerate(states):
        state.fill_(k + 1)
    assert all(torch.all(state == k + 1) for k, state in enumerate(states))  # no tensor wrote into another
    starts = sorted((s.data_ptr(), s.data_ptr() + 4 * s.numel()) for s in states if s.numel())
    assert all(end <= next_start for (_, end), (next_start, _) in zip(starts, starts[1:]))


def test_an_arena_whose_populate_advice_is_refused_still_hands_out_zeroed_writable_tensors(monkeypatch):
    from fedelta.common.aggregation import arena

    monkeypatch.setattr(arena, "MADV_POPULATE_WRITE", -1)  # refused as an invalid advice
    state = arena.Arena().zeros((3, arena.PAGE))
    assert state.shape == (3, arena.PAGE) and not state.any()
    state += 2
    assert torch.all(state == 2)


def test_an_arena_carves_again_from_a_mapping_once_nothing_carved_from_it_is_alive(monkeypatch):
    from fedelta.common.aggregation import arena

    monkeypatch.setattr(arena, "CHUNK_BYTES", 4 * arena.PAGE)
    monkeypatch.setattr(arena, "RESERVE", arena.Reserve())
    first = arena.Arena()
    done, alive = first.zeros((arena.PAGE,)), first.zeros((arena.PAGE,))  # a whole mapping each
    freed_at, alive_at = done.data_ptr(), alive.data_ptr()
    kept = alive[5:].view(-1, 1)  # a view outlives its tensor
    done.fill_(3.0)
    alive.fill_(3.0)
    del first, done, alive

    again = arena.Arena()
    reused = again.zeros((arena.PAGE // 2,))
    assert reused.data_ptr() == freed_at and not reused.any()  # the idle mapping, zeroed
    beside = again.zeros((arena.PAGE // 4,))
    assert beside.data_ptr() == freed_at + 2 * arena.PAGE and not beside.any()  # carved on from the same one
    other = again.zeros((arena.PAGE,))
    assert other.data_ptr() not in (freed_at, alive_at) and not other.any()  # the other is in use through ``kept``
    other.fill_(1.0)
    assert torch.all(kept == 3.0)


def test_the_reserve_keeps_only_the_mappings_the_last_arena_used(monkeypatch):
    from fedelta.common.aggregation import arena

    monkeypatch.setattr(arena, "CHUNK_BYTES", 4 * arena.PAGE)
    monkeypatch.setattr(arena, "RESERVE", arena.Reserve())
    wide = arena.Arena()
    states = [wide.zeros((arena.PAGE,)) for _ in range(3)]  # a whole mapping each
    del states, wide
    assert arena.RESERVE.held_bytes() == 3 * 4 * arena.PAGE
    narrow = arena.Arena()
    state = narrow.zeros((arena.PAGE,))  # one mapping reused; the two idle ones are still kept for now
    assert arena.RESERVE.held_bytes() == 3 * 4 * arena.PAGE
    del state, narrow
    arena.Arena().zeros((arena.PAGE,))
    assert arena.RESERVE.held_bytes() == 4 * arena.PAGE  # the two the last arena did not use are gone


def test_accumulators_of_any_size_sum_exactly(monkeypatch):
    from fedelta.common.aggregation import arena

    monkeypatch.setattr(arena, "CHUNK_BYTES", 1 << 20)
    shape = ((1 << 20) // 4 // 256 + 3, 256)  # just over one mapping
    gen = torch.Generator().manual_seed(0)
    values = [torch.randn(shape, generator=gen) for _ in range(3)]
    streaming = WeightedMean()
    for value in values:
        streaming.add(Delta({"w": Dense(value)}), 0.5)
    assert torch.equal(streaming.result().entries["w"].values, (values[0] * 0.5 + values[1] * 0.5 + values[2] * 0.5) / 1.5)
