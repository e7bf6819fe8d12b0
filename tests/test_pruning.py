import math

import pytest
import torch

from fedelta.common.delta import Dense, SeededMask, Sparse
from fedelta.common.pruning import PRUNERS, PruneRequest, prune_delta
from fedelta.common.delta import kept_count


def test_registry_lists_foundation_pruners_and_refuses_duplicates():
    assert {"none", "dare", "magnitude"} <= set(PRUNERS.names())
    with pytest.raises(ValueError, match="already registered"):
        PRUNERS.register("dare", summary="", reference="")(lambda *a: None)
    with pytest.raises(ValueError, match="unknown pruner 'nope'"):
        PRUNERS.get("nope")


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.01])
def test_dare_density_within_binomial_tolerance(keep):
    n = 200_000
    entry = PRUNERS.get("dare").prune("w", torch.randn(n), PruneRequest(keep=keep, seed=3))
    assert isinstance(entry, SeededMask)
    sigma = math.sqrt(n * keep * (1 - keep))
    assert abs(entry.count - n * keep) < 5 * sigma


def test_dare_rescales_kept_values_by_one_over_keep():
    delta = torch.randn(1000)
    entry = PRUNERS.get("dare").prune("w", delta, PruneRequest(keep=0.25, seed=9))
    assert torch.equal(entry.flat_values(), delta[entry.positions()] / 0.25)


def test_dare_is_unbiased_over_seeds():
    delta = torch.randn(500)
    keep, seeds = 0.2, 2000
    mean = sum(PRUNERS.get("dare").prune("w", delta, PruneRequest(keep, s)).to_dense() for s in range(seeds)) / seeds
    # each coordinate's estimator has std |δ| sqrt((1-p)/p / seeds)
    bound = 5 * delta.abs() * math.sqrt((1 - keep) / keep / seeds) + 1e-6
    assert ((mean - delta).abs() <= bound).all()


@pytest.mark.parametrize(("numel", "keep"), [(1000, 0.1), (1000, 0.013), (7, 0.5), (50, 0.0001)])
def test_magnitude_keeps_exactly_k_largest(numel, keep):
    delta = torch.randn(numel, generator=torch.Generator().manual_seed(numel))
    entry = PRUNERS.get("magnitude").prune("w", delta, PruneRequest(keep=keep, seed=0))
    k = kept_count(numel, keep)
    assert isinstance(entry, Sparse) and entry.count == k == max(1, round(keep * numel))
    kept = delta.abs()[entry.indices]
    dropped = torch.ones(numel, dtype=torch.bool)
    dropped[entry.indices] = False
    assert kept.min() >= delta.abs()[dropped].max()
    assert torch.equal(entry.values, delta[entry.indices])
    assert (entry.indices[1:] > entry.indices[:-1]).all()


def test_small_tensors_stay_dense():
    delta = prune_delta({"big": torch.randn(4096), "small": torch.randn(10)}, "dare", PruneRequest(0.1, 1), min_size=1024)
    assert isinstance(delta.entries["small"], Dense) and isinstance(delta.entries["big"], SeededMask)
