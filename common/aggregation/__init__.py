"""Streaming aggregation of decoded deltas, and the aggregator registry.

An aggregator receives decoded deltas one at a time with their weights and
holds only fp32 tensors for parameters that some delta touched; the merged
delta is produced once at the end, in place, one tensor at a time. A position
a site did not send counts as zero for that site (unbiased under DARE's
rescale). Each aggregator is registered in :data:`AGGREGATORS` with its
reference; importing this package registers them all.
"""

from fedelta.common.aggregation.registry import AGGREGATORS, Accumulator, Aggregator, make_aggregator
from fedelta.common.aggregation import fedavg, merging  # noqa: F401  (registration)
from fedelta.common.aggregation.fedavg import WeightedMean

__all__ = ["AGGREGATORS", "Accumulator", "Aggregator", "WeightedMean", "make_aggregator"]
