"""Checks every decoded update must pass before it may touch the accumulator, the weights it is
merged with, and the norm bound.

A site's weight is its reported ``num-examples``, clipped (never rejected: an
honest site with much data keeps taking part, at a bounded share) to
``validate.max-weight-growth`` times the largest weight the site was given in
earlier rounds, then to ``validate.max-weight-ratio`` times the median weight
of the round's other validated updates. The norm bound judges each update's
weighted norm (its L2 norm times its weight over the round's median weight)
against the median of the round's others when there are at least
:data:`MIN_OTHERS` of them, else against the median of earlier rounds' merged
updates: the median of two values is their mean, which two colluding sites
drag along with them.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from fedelta.common.codec import Decoded
from fedelta.common.delta import Delta, check_delta_fits
from fedelta.common.sparsity import Pattern, violations
from fedelta.common.upload import upload_binding

MAX_REASON_CHARS = 500
MIN_OTHERS = 3  # fewer other updates than this: the norm bound comes from earlier rounds
MIN_EXAMPLES = 1.0


class Rejected(ValueError):
    """An update that fails validation; the reason is recorded and shown to operators."""


def rejection_reason(error: Exception) -> str:
    """What a rejection records, on one line: a ``ValueError``'s message, or any other error's type and message."""
    text = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
    return " ".join(text.split())[:MAX_REASON_CHARS]


def validate_update(
    decoded: Decoded,
    *,
    base_sha: str,
    params: Mapping[str, torch.Tensor],
    allowed: Collection[str],
    pattern: Pattern | None = None,
) -> None:
    """Base hash, tensor names (within the method's), shapes, finite values, a sparse base's zeros."""
    if decoded.base != base_sha:
        raise Rejected(f"update was made on base {decoded.base[:12]}, not the current {base_sha[:12]}")
    outside = set(decoded.delta.entries) - set(allowed)
    if outside:
        raise Rejected(f"update touches tensors outside the method: {sorted(outside)[:3]}")
    try:
        check_delta_fits(params, decoded.delta)
    except ValueError as error:
        raise Rejected(str(error)) from error
    written = violations(decoded.delta, pattern)
    if written:
        raise Rejected(f"update writes into pruned positions of the sparse base: {written[:3]}")


def check_sender(node: str, site: str, claim: str | None, *, blocked: bool, again: bool) -> None:
    """Refuse an upload by who sent it: a blocked site, a node claiming another site, a second upload."""
    if blocked:
        raise Rejected(f"site {site!r} is blocked by the operator")
    if claim is not None and claim != site:
        raise Rejected(f"node {node} claims to be site {claim[:64]!r}, but it is {site!r}")
    if again:
        raise Rejected(f"site {site!r} already has an accepted upload in this round; only the first counts")


def check_binding(meta: Mapping[str, str], server_round: int, site: str) -> None:
    """The upload's header names the round it answers and the site that sent it (a replay names others)."""
    expected = upload_binding(server_round, site)
    bound = {key: str(meta.get(key, "none"))[:64] for key in expected}
    if bound != expected:
        raise Rejected(f"upload is bound to round {bound['round']!r} and site {bound['site']!r}, "
                       f"not to round {server_round} and site {site!r}: a replay or a forgery")


def example_weight(metrics: Mapping[str, object]) -> float:
    """A site's reported weight, its ``num-examples``: a finite number of at least one example."""
    value = metrics.get("num-examples")
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value >= MIN_EXAMPLES
    ):
        raise Rejected(f"num-examples must be a finite number >= {MIN_EXAMPLES:g}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Weight:
    """The weight an update is merged with, and why it is less than the ``reported`` one (when it is)."""

    value: float
    reported: float
    note: str = ""

    def clipped(self, cap: float, rule: str) -> Weight:
        """This weight, or ``cap`` with a note naming ``rule`` when it is larger."""
        if self.value <= cap:
            return self
        return Weight(cap, self.reported, f"num-examples {self.reported:.6g} clipped to {cap:.6g} by {rule}")


def bounded_weights(
    reported: Mapping[str, float], earlier: Mapping[str, float], *, max_ratio: float, max_growth: float
) -> dict[str, Weight]:
    """Each site's weight: its reported one clipped by its history (``earlier``: its largest weight in
    earlier rounds) times ``max_growth``, then by ``max_ratio`` times the median of the others' (0 = off)."""
    weights = {site: Weight(value, value) for site, value in reported.items()}
    if max_growth:
        weights = {site: _within_growth(weight, earlier[site], max_growth) if site in earlier else weight
                   for site, weight in weights.items()}
    if max_ratio and len(weights) > 1:
        values = {site: weight.value for site, weight in weights.items()}
        weights = {site: _within_ratio(weight, median(_others(values, site)), max_ratio)
                   for site, weight in weights.items()}
    return weights


def _within_growth(weight: Weight, largest: float, max_growth: float) -> Weight:
    return weight.clipped(max_growth * largest,
                          f"validate.max-weight-growth={max_growth:g} times its largest earlier weight {largest:.6g}")


def _within_ratio(weight: Weight, others: float, max_ratio: float) -> Weight:
    return weight.clipped(max_ratio * others,
                          f"validate.max-weight-ratio={max_ratio:g} times the median {others:.6g} of the round's "
                          "other weights")


def weighted_norms(norms: Mapping[str, float], weights: Mapping[str, float]) -> dict[str, float]:
    """Each update's norm times its weight over the round's median weight: what it moves the merge by."""
    if not norms:
        return {}
    middle = median(weights.values())
    return {site: norm * (weights[site] / middle) for site, norm in norms.items()}


def median(values: Iterable[float]) -> float:
    """The median, computed so that it stays finite for any finite values (no ``a + b`` overflow)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("the median of no values")
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return ordered[middle - 1] / 2 + ordered[middle] / 2


def _others(values: Mapping[str, float], site: str) -> list[float]:
    return [value for other, value in values.items() if other != site]


def update_norm(delta: Delta) -> float:
    """L2 norm of a resolved delta (positions within an entry are distinct)."""
    total = 0.0
    for entry in delta.entries.values():
        total += float(entry.flat_values().to(torch.float64).square().sum())
    return math.sqrt(total)


def norm_outliers(norms: Sequence[float], max_ratio: float, earlier: float | None = None) -> dict[int, str]:
    """Which (weighted) norms exceed ``max_ratio`` times their reference; the reason by index.

    The reference is the median of the round's other norms when there are at
    least :data:`MIN_OTHERS` of them, else ``earlier`` (the median of earlier
    rounds' merged norms) when known, else the median of the others. An update
    with nothing to compare with is never an outlier; ``max_ratio == 0`` turns
    the check off.
    """
    if not max_ratio:
        return {}
    reasons = {}
    for index, norm in enumerate(norms):
        others = [*norms[:index], *norms[index + 1 :]]
        if len(others) >= MIN_OTHERS or (others and earlier is None):
            reference, what = median(others), "the median of the round's other updates"
        elif earlier is not None:
            reference, what = earlier, "the median of earlier rounds' merged updates"
        else:
            continue
        if norm > max_ratio * reference:
            reasons[index] = (
                f"weighted update norm {norm:.4g} exceeds validate.max-norm-ratio={max_ratio:g} times "
                f"{what}, {reference:.4g}"
            )
    return reasons
