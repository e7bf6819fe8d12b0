"""Byte budgets: the largest fraction of each tensor a pruner may keep so that the encoded update fits.

Used by sites for their upload (``upload.budget-bytes``) and by the server for
the merged delta it sends down (``downlink.budget-bytes``). Sizes are the
codec's: each candidate is encoded, and the bytes that fit are the bytes sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

LEAST_KEEP = 1e-7  # the smallest fraction a byte budget tries: one value of each pruned tensor up to 10M values
KEEP_TOLERANCE = 0.02  # the budget's search stops when the fraction kept is known to within 2 %
Form = TypeVar("Form")


class BudgetTooSmall(ValueError):
    """An update that does not fit its byte budget at any fraction kept; ``least`` is its smallest form."""

    def __init__(self, message: str, least: Fitted) -> None:
        super().__init__(message)
        self.least = least


@dataclass(frozen=True)
class Fitted(Generic[Form]):
    """The pruned form that fits the byte budget and its encoded bytes, the fraction of each tensor it keeps,
    the smallest fraction tried that did not fit (``None`` when everything fitted), and the number of tries."""

    pruned: Form
    payload: bytes
    keep: float
    over: float | None
    tries: int


def fit_budget(
    prune: Callable[[float], Form], encode: Callable[[Form], bytes], budget: int, setting: str = "upload.budget-bytes"
) -> Fitted[Form]:
    """The pruned form with about the largest fraction kept whose encoded bytes are at most ``budget``.

    Tries everything kept first, then the smallest fraction (:data:`LEAST_KEEP`:
    one value per pruned tensor at most sizes), then bisects between the two on
    a log scale until they are within :data:`KEEP_TOLERANCE` of each other,
    always holding a form that fits, with the very bytes that were measured.
    Raises :class:`BudgetTooSmall`, naming the smallest budget that would do
    and carrying the smallest form (``least``), when even that does not fit.
    """
    tries = 1
    whole = prune(1.0)
    payload = encode(whole)
    if len(payload) <= budget:
        return Fitted(whole, payload, 1.0, None, tries)
    low, high = LEAST_KEEP, 1.0
    fitting = prune(low)
    payload = encode(fitting)
    tries += 1
    least = len(payload)
    if least > budget:
        raise BudgetTooSmall(
            f"{setting} = {budget} cannot hold this update: kept as sparsely as the pruner can (fraction {low:g}; "
            f"tensors under the minimum size and a method's own entries whole) it takes {least} bytes; "
            f"set {setting} to at least {least}",
            Fitted(fitting, payload, low, None, tries),
        )
    while high / low > 1 + KEEP_TOLERANCE:
        middle = math.sqrt(low * high)
        tried = prune(middle)
        encoded = encode(tried)
        tries += 1
        if len(encoded) <= budget:
            low, fitting, payload = middle, tried, encoded
        else:
            high = middle
    return Fitted(fitting, payload, low, high, tries)
