"""Checks every decoded update must pass before it may touch the accumulator, and the norm bound."""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence

import torch

from fedelta.common.codec import Decoded
from fedelta.common.delta import Delta, check_delta_fits
from fedelta.common.sparsity import Pattern, violations


MAX_REASON_CHARS = 500


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


def example_weight(metrics: Mapping[str, object]) -> float:
    """A site's aggregation weight, its ``num-examples``: a finite number > 0."""
    value = metrics.get("num-examples")
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise Rejected(f"num-examples must be a finite number > 0, got {value!r}")
    return float(value)


def update_norm(delta: Delta) -> float:
    """L2 norm of a resolved delta (positions within an entry are distinct)."""
    total = 0.0
    for entry in delta.entries.values():
        total += float(entry.flat_values().to(torch.float64).square().sum())
    return math.sqrt(total)


def norm_outliers(norms: Sequence[float], max_ratio: float) -> dict[int, str]:
    """Which updates have a norm above ``max_ratio`` times the median norm of the round's *other* updates.

    Returns the reason by index. An update with no others to compare with is
    never an outlier; ``max_ratio == 0`` turns the check off.
    """
    if not max_ratio or len(norms) < 2:
        return {}
    reasons = {}
    for index, norm in enumerate(norms):
        others = statistics.median([*norms[:index], *norms[index + 1 :]])
        if norm > max_ratio * others:
            reasons[index] = (
                f"update norm {norm:.4g} exceeds validate.max-norm-ratio={max_ratio:g} times the median "
                f"{others:.4g} of the round's other updates"
            )
    return reasons
