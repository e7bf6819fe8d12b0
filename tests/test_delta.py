import tracemalloc

import numpy as np
import pytest
import torch

from fedelta.common.delta import (
    Delta, Dense, SeededMask, Sparse, apply_delta, extract_delta, kept_count, scatter_add, seeded_mask,
    seeded_positions, state_hash,
)
from fedelta.common import entries
from fedelta.common.entries import (
    _SPLITMIX_LAST_SHIFT, _SPLITMIX_MULTIPLIERS, _SPLITMIX_SHIFTS, _splitmix64_int, _walk_int, feistel_grid,
)


def _params():
    gen = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(6, 5, generator=gen), "a.bias": torch.randn(5, generator=gen)}


def _mixed_delta():
    positions = seeded_mask(3, "a.weight", 30, 0.5).nonzero().reshape(-1)
    return Delta({
        "a.weight": SeededMask((6, 5), "a.weight", 3, 0.5, torch.arange(positions.numel(), dtype=torch.float32) * 1e-3),
        "a.bias": Sparse((5,), torch.tensor([0, 3]), torch.tensor([0.5, -0.25])),
    })


def test_a_bad_delta_leaves_the_weights_untouched():
    params = _params()
    original = {k: v.clone() for k, v in params.items()}
    bad = Delta({"a.bias": Dense(torch.ones(5)), "a.weight": Dense(torch.full((6, 5), float("inf")))})
    with pytest.raises(ValueError, match="non-finite"):
        apply_delta(params, bad)
    for name in params:
        assert torch.equal(params[name], original[name])


def test_apply_adds_exactly_the_dense_form():
    params = _params()
    expected = {k: v + _mixed_delta().to_dense().get(k, torch.zeros_like(v)) for k, v in params.items()}
    apply_delta(params, _mixed_delta())
    for name in params:
        assert torch.equal(params[name], expected[name])


@pytest.mark.parametrize(
    ("delta", "fragment"),
    [
        (Delta({"a.weight": Dense(torch.full((6, 5), float("nan")))}), "non-finite"),
        (Delta({"a.weight": Dense(torch.zeros(5, 6))}), "shape"),
        (Delta({"b.weight": Dense(torch.zeros(2))}), "unknown parameter"),
        (Delta({"a.bias": Dense(torch.ones(5)), "a.weight": Dense(torch.full((6, 5), float("inf")))}), "non-finite"),
    ],
)
def test_bad_delta_is_refused_and_leaves_params_untouched(delta, fragment):
    params = _params()
    before = state_hash(params)
    with pytest.raises(ValueError, match=fragment):
        apply_delta(params, delta)
    assert state_hash(params) == before


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_scatter_add_sums_exactly_as_index_add(dtype, requires_grad):
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(4096, generator=gen).to(dtype).requires_grad_(requires_grad)
    positions = torch.randperm(4096, generator=gen)[:700].sort().values
    values = torch.randn(700, generator=gen).to(dtype)
    expected = target.detach().clone().index_add_(0, positions, values)
    with torch.no_grad():
        scatter_add(target.view(-1), positions, values)
    assert torch.equal(target.detach(), expected) and target.requires_grad == requires_grad
    if requires_grad:
        with pytest.raises(RuntimeError, match="leaf Variable"):
            scatter_add(target.view(-1), positions, values)  # outside no_grad, as index_add_ refuses it


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("flat_dtype", DTYPES)
@pytest.mark.parametrize("value_dtype", DTYPES)
def test_a_weighted_scatter_add_sums_exactly_as_index_add_of_the_scaled_values(flat_dtype, value_dtype):
    gen = torch.Generator().manual_seed(3)
    target = torch.randn(4096, generator=gen).to(flat_dtype)
    positions = torch.randperm(4096, generator=gen)[:700].sort().values
    values = torch.randn(700, generator=gen).to(value_dtype)
    for weight in (1.0, 0.37, 3.0):
        expected = target.clone().index_add_(0, positions, (values * weight).to(flat_dtype))
        scatter_add(target, positions, values, weight)
        assert torch.equal(target.view(torch.uint8), expected.view(torch.uint8)), weight  # to the bit


def test_a_scatter_add_with_a_position_outside_or_a_count_off_writes_nothing():
    target = torch.zeros(100)
    with pytest.raises(IndexError, match="position 100 is outside a tensor of 100"):
        scatter_add(target, torch.tensor([3, 50, 100]), torch.ones(3), 0.5)
    with pytest.raises(ValueError, match="2 positions for 3 values"):
        scatter_add(target, torch.tensor([3, 50]), torch.ones(3))
    assert not target.any()


@pytest.mark.parametrize("target_dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("value_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_adding_a_weighted_entry_sums_exactly_as_index_add_of_its_fp32_scaled_values(target_dtype, value_dtype):
    from fedelta.common.delta import add_entry

    gen = torch.Generator().manual_seed(2)
    target = torch.randn(4096, generator=gen).to(target_dtype)
    positions = torch.randperm(4096, generator=gen)[:700].sort().values
    values = torch.randn(700, generator=gen).to(value_dtype)
    for weight in (1.0, 0.37):
        expected = target.clone().index_add_(0, positions, (values.to(torch.float32) * weight).to(target_dtype))
        add_entry(target, Sparse((4096,), positions, values), weight)
        assert torch.equal(target, expected)


def test_state_hash_sees_one_bit():
    params = _params()
    before = state_hash(params)
    params["a.bias"].view(torch.int32)[0] ^= 1
    assert state_hash(params) != before


def test_seeded_mask_is_deterministic_and_seed_dependent():
    a = seeded_mask(7, "x", 10_000, 0.3)
    assert torch.equal(a, seeded_mask(7, "x", 10_000, 0.3))
    assert not torch.equal(a, seeded_mask(8, "x", 10_000, 0.3))
    assert not torch.equal(a, seeded_mask(7, "y", 10_000, 0.3))
    assert seeded_mask(7, "x", 100, 1.0).all()


def test_seeded_positions_are_pinned_by_the_wire_format():
    # Every party must derive these exact positions from (seed, name, numel, keep): a change here
    # is a change of the wire format (container.FORMAT).
    assert seeded_positions(7, "x", 1000, 0.01).tolist() == [145, 158, 265, 277, 346, 507, 553, 562, 571, 700]
    assert seeded_positions(2**40 + 3, "model.layers.0.mlp.up_proj.weight", 576 * 1536, 0.001)[:8].tolist() == [
        638, 3754, 6282, 6698, 8536, 9482, 10603, 13079]


@pytest.mark.parametrize("numel", [2, 3, 17, 384, 1000, 4097])
def test_the_compiled_walk_permutes_like_the_integer_definition(numel):
    from fedelta.common.kernels import seeded_walk

    rows, cols = feistel_grid(numel)
    assert rows * cols >= numel > (rows - 1) * cols and rows * cols - numel < rows
    round_keys = [_splitmix64_int(key) for key in (1, 2, 3, 4)]
    walked = {}
    for dtype in (np.int32, np.int64):
        out = np.empty(numel, dtype=dtype)
        seeded_walk(numel, rows, cols, np.array(round_keys, dtype=np.uint64), _SPLITMIX_SHIFTS, _SPLITMIX_MULTIPLIERS,
                    _SPLITMIX_LAST_SHIFT, out)
        walked[dtype] = out.tolist()
    assert walked[np.int32] == walked[np.int64] == [_walk_int(x, numel, (rows, cols), round_keys) for x in range(numel)]
    assert sorted(walked[np.int64]) == list(range(numel))  # every point of 0 .. numel - 1 once


@pytest.mark.parametrize("numel", [1, 2, 3, 5, 17, 64, 1000, 4097, 65_537, 300_001])
@pytest.mark.parametrize("keep", [1e-4, 0.01, 0.3, 0.999])
def test_seeded_positions_are_k_distinct_increasing_positions_in_range(numel, keep):
    positions = seeded_positions(11, "w", numel, keep)
    assert positions.dtype == torch.int64 and positions.numel() == kept_count(numel, keep)
    assert bool((positions[1:] > positions[:-1]).all()) and 0 <= int(positions[0]) and int(positions[-1]) < numel


@pytest.mark.parametrize("numel,keep", [(300_001, 0.3), (300_001, 0.01), (2_000_003, 0.05), (4_160, 0.999)])
def test_seeded_positions_are_the_same_whichever_sort_runs(monkeypatch, numel, keep):
    monkeypatch.setattr(entries, "BITMAP_DENSITY", 1 << 62)
    drawn = []
    for bitmap_from in (0, 1 << 62):  # every mask through the bitmap, then none
        monkeypatch.setattr(entries, "BITMAP_FROM", bitmap_from)
        drawn.append(seeded_positions(11, "w", numel, keep))
    assert all(positions.dtype == torch.int64 for positions in drawn)
    assert drawn[0].tolist() == drawn[1].tolist() and len(set(drawn[0].tolist())) == kept_count(numel, keep)


def test_the_bitmap_sorts_positions_at_every_bit_of_its_words():
    from fedelta.common.kernels import sorted_through_bitmap

    rng = np.random.default_rng(5)
    numel = 64 * 9 + 7  # a last word only partly inside
    for positions in (np.arange(numel), rng.permutation(numel)[:200], np.array([numel - 1, 0, 63, 64])):
        for dtype in (np.int32, np.int64):
            out = np.empty(positions.size, dtype=np.int64)
            sorted_through_bitmap(positions.astype(dtype), numel, out)
            assert out.tolist() == sorted(positions.tolist())


def test_seeded_positions_keep_every_position_equally_often():
    numel, keep, seeds = 97, 0.2, 4000
    hits = torch.zeros(numel)
    for seed in range(seeds):
        hits[seeded_positions(seed, "w", numel, keep)] += 1
    expected = seeds * kept_count(numel, keep) / numel  # 783.5 per position
    # binomial std about 25; 5 std covers every one of 97 positions with room to spare
    assert float((hits - expected).abs().max()) < 5 * (expected * (1 - keep)) ** 0.5


def test_seeded_positions_are_pairwise_independent():
    # P(p and p + d both kept) over many seeds, against k(k-1) / (n(n-1)) for a uniformly random k-subset:
    # a weak permutation shows up here (two rounds over the 32 x 32 grid give 1.19 at d = 32, one grid row).
    numel, keep, seeds = 1000, 0.1, 3000
    masks = torch.stack([seeded_mask(seed, "w", numel, keep) for seed in range(seeds)]).double()
    k = kept_count(numel, keep)
    expected = k * (k - 1) / (numel * (numel - 1))
    for distance in (1, 2, 3, 8, 32, 64, 500):
        both = float((masks[:, :-distance] * masks[:, distance:]).mean())
        assert abs(both / expected - 1) < 0.04, (distance, both / expected)


def test_seeded_positions_take_memory_for_the_kept_entries_only():
    numel, keep = 40_000_000, 0.001
    tracemalloc.start()
    try:
        positions = seeded_positions(3, "big", numel, keep)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    kept = positions.numel()
    # the int64 result plus working space for one chunk of the permutation, not a byte per position
    assert peak <= 8 * kept + (4 << 20) and peak < numel // 4


def test_extract_names_only_the_trained_tensors():
    before = _params()
    after = {k: v.clone() for k, v in before.items()}
    after["a.bias"][2] += 1.0
    delta = extract_delta(after, before, ["a.bias"])
    assert set(delta) == {"a.bias"}
    assert delta["a.bias"].nonzero().reshape(-1).tolist() == [2]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_every_non_finite_value_is_found_in_any_chunk_of_any_dtype(dtype, bad):
    from fedelta.common.delta import FINITE_CHUNK, all_finite

    values = torch.full((2 * FINITE_CHUNK + 5,), torch.finfo(dtype).max, dtype=dtype)  # the largest finite value
    assert all_finite(values) and all_finite(values[:-5].reshape(-1, 8)) and all_finite(values[:0])
    assert all_finite(values[::3])
    for at in (0, FINITE_CHUNK - 1, FINITE_CHUNK, values.numel() - 1):
        spoiled = values.clone()
        spoiled[at] = bad
        assert not all_finite(spoiled) and not all_finite(spoiled[at::3]), at
        assert all_finite(spoiled[at + 1 :]) and all_finite(spoiled[:at])
