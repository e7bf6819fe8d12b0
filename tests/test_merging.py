"""TIES and DARE merging against hand-computed tiny examples."""

import pytest
import torch

from fedelta.common.config import AggregateSettings
from fedelta.common.delta import Delta, Dense, Sparse, seeded_mask
from fedelta.common.aggregation import AGGREGATORS, make_aggregator
from fedelta.common.aggregation.merging import SignElectedMean, merge_seed

TASKS = ([1.0, -2.0, 0.5, 3.0, 0.1], [-1.5, -1.0, 0.2, -0.5, 2.0], [0.7, 1.0, -0.4, 1.0, -0.3])


def _merge(name: str, deltas, weights, density: float, seed: int = 0) -> torch.Tensor:
    merger = make_aggregator(AggregateSettings(name=name, density=density), seed)
    for index, (values, weight) in enumerate(zip(deltas, weights)):
        merger.add(Delta({"w": Dense(torch.tensor(values))}), weight, key=f"1|{'abc'[index]}")
    return merger.result().entries["w"].to_dense()


def test_ties_trims_elects_signs_and_averages_the_agreeing_values():
    # density 0.6 of 5 values keeps the 3 largest |values| of each task:
    #   [1, -2, 0, 3, 0], [-1.5, -1, 0, 0, 2], [0.7, 1, 0, 1, 0]
    # elected signs (sum): [+0.2, -2, 0, +4, +2] -> means of the agreeing values:
    #   (1 + 0.7) / 2, (-2 - 1) / 2, 0, (3 + 1) / 2, 2
    merged = _merge("ties", TASKS, [1.0, 1.0, 1.0], density=0.6)
    torch.testing.assert_close(merged, torch.tensor([0.85, -1.5, 0.0, 2.0, 2.0]), rtol=0, atol=1e-7)


def test_ties_weights_the_election_and_the_disjoint_mean_by_examples():
    # weights 1, 2, 1 on the same trimmed tasks: weighted sums [-1.3, -3, 0, 4, 4]
    #   -> -1.5 (only task 2 is negative), (1*-2 + 2*-1) / 3, 0, (3 + 1) / 2, 2*2 / 2
    merged = _merge("ties", TASKS, [1.0, 2.0, 1.0], density=0.6)
    torch.testing.assert_close(merged, torch.tensor([-1.5, -4.0 / 3.0, 0.0, 2.0, 2.0]), rtol=0, atol=1e-7)


def test_dare_merge_drops_rescales_and_averages():
    masks = [seeded_mask(merge_seed(7, key), "w", 6, 0.5).tolist() for key in ("1|a", "1|b")]
    assert masks == [[True, True, False, True, False, False], [False, True, False, True, False, True]]
    # kept values doubled: [2, 4, 0, 8, 0, 0] (weight 1) and [0, 10, 0, 6, 0, 2] (weight 3), mean over weight 4
    merged = _merge("dare-merge", ([1.0, 2, 3, 4, 5, 6], [6.0, 5, 4, 3, 2, 1]), [1.0, 3.0], density=0.5, seed=7)
    torch.testing.assert_close(merged, torch.tensor([0.5, 8.5, 0.0, 6.5, 0.0, 1.5]), rtol=0, atol=1e-7)


def test_dare_merge_is_unbiased_over_many_sites():
    truth = torch.linspace(-1.0, 1.0, 2000)
    merger = make_aggregator(AggregateSettings(name="dare-merge", density=0.25), seed=3)
    for site in range(200):
        merger.add(Delta({"w": Dense(truth.clone())}), 1.0, key=f"1|site-{site}")
    error = merger.result().entries["w"].to_dense() - truth
    # per coordinate std is |truth| sqrt(3/200) <= 0.123; the mean over 2000 coordinates is much tighter
    assert error.abs().mean() < 0.12 and error.mean().abs() < 0.01


@pytest.mark.parametrize("name", ["ties", "dare-merge", "dare-ties"])
def test_full_density_without_conflicts_reduces_to_the_weighted_mean(name):
    deltas = ([1.0, 2.0, 0.0, 4.0], [3.0, 0.0, 0.0, 2.0])
    merged = _merge(name, deltas, [1.0, 3.0], density=1.0)
    mean = _merge("fedavg", deltas, [1.0, 3.0], density=1.0)
    if name == "dare-merge":
        torch.testing.assert_close(merged, mean, rtol=0, atol=1e-7)
    else:
        # the disjoint mean ignores sites that sent 0 at a coordinate: (1*2)/1 at index 1
        torch.testing.assert_close(merged, torch.tensor([2.5, 2.0, 0.0, 2.5]), rtol=0, atol=1e-7)


def test_sign_election_allocates_only_touched_tensors_and_accepts_sparse_entries():
    merger = SignElectedMean()
    merger.add(Delta({"b": Sparse((8,), torch.tensor([1, 6]), torch.tensor([2.0, -1.0]))}), 1.0)
    merger.add(Delta({"b": Sparse((8,), torch.tensor([1, 6]), torch.tensor([-1.0, -3.0]))}), 1.0)
    merged = merger.result()
    assert merged.names() == ["b"] and merger.count == 2
    assert merged.entries["b"].to_dense().tolist() == [0, 2.0, 0, 0, 0, 0, -2.0, 0]


def test_every_aggregator_is_registered_with_a_reference():
    assert {"fedavg", "ties", "dare-merge", "dare-ties"} <= set(AGGREGATORS.names())
    assert all(entry.summary and entry.reference for entry in AGGREGATORS)
