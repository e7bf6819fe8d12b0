"""Checks every decoded update must pass before it may touch the accumulator."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from common.codec import Decoded
from common.delta import check_delta_fits


class Rejected(ValueError):
    """An update that fails validation; the reason is recorded and shown to operators."""


def validate_update(
    decoded: Decoded, *, base_sha: str, params: Mapping[str, torch.Tensor], allowed: Collection[str]
) -> None:
    """Base hash, tensor names (within the method's), shapes, finite values."""
    if decoded.base != base_sha:
        raise Rejected(f"update was made on base {decoded.base[:12]}, not the current {base_sha[:12]}")
    outside = set(decoded.delta.entries) - set(allowed)
    if outside:
        raise Rejected(f"update touches tensors outside the method: {sorted(outside)[:3]}")
    try:
        check_delta_fits(params, decoded.delta)
    except ValueError as error:
        raise Rejected(str(error)) from error
