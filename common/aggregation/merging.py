"""TIES and DARE merging as streaming aggregators: sparsify each update, then combine.

A preset is a row of :data:`PRESETS`: a sparsifier applied to every incoming
delta and a combiner. Sparsifiers: ``trim`` keeps the ``aggregate.density``
largest |values| of each tensor (TIES); ``dare`` keeps each carried value with
probability ``aggregate.density`` on a seeded mask and rescales it by the
inverse (DARE). Combiners: the weighted mean (:class:`WeightedMean`), or TIES'
sign election with a disjoint weighted mean (:class:`SignElectedMean`). Memory
does not grow with the number of sites: the mean holds one fp32 tensor per
touched parameter, sign election four.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from math import prod

import torch

from fedelta.common.config import AggregateSettings
from fedelta.common.delta import Delta, Entry, Sparse, kept_count, seeded_positions
from fedelta.common.aggregation.fedavg import WeightedMean
from fedelta.common.aggregation.registry import AGGREGATORS, Accumulator, Aggregator, check_weight

Sparsifier = Callable[[str, Entry, float, int], Entry]


def carried(entry: Entry) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat positions and fp32 values an entry carries (every position for dense ones)."""
    values = entry.flat_values().to(torch.float32)
    positions = entry.positions()
    return (torch.arange(values.numel()) if positions is None else positions), values


def trim(name: str, entry: Entry, density: float, seed: int) -> Entry:
    """TIES trim: keep the round(density * numel) largest |values| of the tensor."""
    positions, values = carried(entry)
    k = kept_count(prod(entry.shape), density)
    if values.numel() > k:
        top = torch.topk(values.abs(), k, sorted=False).indices.sort().values
        positions, values = positions[top], values[top]
    return Sparse(entry.shape, positions, values)


def dare(name: str, entry: Entry, density: float, seed: int) -> Entry:
    """DARE: keep a seeded ``density`` fraction of the carried values, rescaled by 1/density."""
    positions, values = carried(entry)
    if density >= 1.0:
        return Sparse(entry.shape, positions, values)
    keep = seeded_positions(seed, name, values.numel(), density)
    return Sparse(entry.shape, positions[keep], values[keep] / density)


def merge_seed(seed: int, key: str) -> int:
    """A 63-bit seed for the server's mask of one update (``key`` names its round and site)."""
    digest = hashlib.sha256(f"server-merge|{seed}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class SignElectedMean(Accumulator):
    """TIES' elect and disjoint merge, weighted by examples.

    Per coordinate: the elected sign is that of Σ wₖ δₖ; the result is the
    weighted mean of the values that share it (Σ wₖ δₖ / Σ wₖ over those k),
    and 0 where the mass is 0. With equal weights this is the paper's rule.
    The state of a tensor stacks its positive mass, negative mass, and the
    weights behind each.
    """

    def add(self, delta: Delta, weight: float, key: str = "") -> None:
        check_weight(weight)
        for name, entry in delta.entries.items():
            up_mass, down_mass, up_weight, down_weight = self._state_for(name, (4, *entry.shape)).view(4, -1)
            positions, values = carried(entry)
            for mass, total, chosen in ((up_mass, up_weight, values > 0), (down_mass, down_weight, values < 0)):
                where = positions[chosen]
                mass[where] += weight * values[chosen]
                total[where] += weight
        self._count += 1

    def result(self) -> Delta:
        return self._merged(elect)


def elect(state: torch.Tensor) -> torch.Tensor:
    """The disjoint mean of the values agreeing with the elected sign, from a tensor's stacked state.

    Computed in the state's own rows (means over the weights, then masked by
    the elected sign), so it needs one extra tensor, not three.
    """
    up_mass, down_mass, up_weight, down_weight = state
    up_mean = torch.div(up_mass, up_weight.clamp_(min=torch.finfo(torch.float32).tiny), out=up_weight)
    down_mean = torch.div(down_mass, down_weight.clamp_(min=torch.finfo(torch.float32).tiny), out=down_weight)
    elected = up_mass.add_(down_mass)
    up_mean.mul_(elected > 0)
    down_mean.mul_(elected < 0)
    return up_mean.add_(down_mean).clone()


class Sparsified:
    """Sparsify each incoming delta, then hand it to an inner aggregator."""

    def __init__(self, inner: Aggregator, sparsify: Sparsifier, density: float, seed: int) -> None:
        self.inner, self.sparsify, self.density, self.seed = inner, sparsify, density, seed

    @property
    def count(self) -> int:
        return self.inner.count

    def add(self, delta: Delta, weight: float, key: str = "") -> None:
        seed = merge_seed(self.seed, key)
        entries = {name: self.sparsify(name, entry, self.density, seed) for name, entry in delta.entries.items()}
        self.inner.add(Delta(entries), weight, key)

    def result(self) -> Delta:
        return self.inner.result()


TIES = "Yadav et al. 2023, TIES-Merging: Resolving Interference When Merging Models, arXiv:2306.01708"
DARE = "Yu et al. 2024, Language Models are Super Mario (DARE), arXiv:2311.03099"
PRESETS: tuple[tuple[str, Sparsifier, Callable[[], Aggregator], str, str], ...] = (
    ("ties", trim, SignElectedMean,
     "trim each update to its aggregate.density largest |values|, elect signs by weighted mass, disjoint mean", TIES),
    ("dare-merge", dare, WeightedMean,
     "drop each update's values with p = 1 - aggregate.density, rescale by 1/(1-p), weighted mean", DARE),
    ("dare-ties", dare, SignElectedMean,
     "DARE drop and rescale, then TIES sign election and disjoint mean", f"{DARE}; {TIES}"),
)


def _factory(sparsify: Sparsifier, combiner: Callable[[], Aggregator]) -> Callable[[AggregateSettings, int], Aggregator]:
    def build(settings: AggregateSettings, seed: int) -> Aggregator:
        return Sparsified(combiner(), sparsify, settings.density, seed)

    return build


for _name, _sparsify, _combiner, _summary, _reference in PRESETS:
    AGGREGATORS.register(_name, summary=_summary, reference=_reference)(_factory(_sparsify, _combiner))
