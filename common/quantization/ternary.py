"""Ternary values: sign(v) times one fp32 scale per tensor, the mean |v| over its nonzero values."""

from __future__ import annotations

from dataclasses import dataclass
from math import log2

import torch

from fedelta.common.quantization.registry import VALUE_TYPES, Encoded, apply_scale, scale_tensor


@dataclass(frozen=True)
class Ternary:
    """stored = sign(v) in {-1, 0, 1}, scale alpha = mean |v| over the nonzero v.

    Zeros decode to exactly zero, and alpha is the least-squares scale for the
    nonzero signs, so the squared error of a tensor is exactly
    sum(v**2) - nnz * alpha**2, and each nonzero value is off by | |v| - alpha |.
    Signs travel as int8 bytes, which zstd codes in about one bit each.
    """

    storage: torch.dtype = torch.int8
    bits: float = log2(3)
    scaled: bool = True

    def encode(self, values: torch.Tensor) -> Encoded:
        values = values.detach().to(torch.float32)
        nonzero = int(values.count_nonzero())
        alpha = float(values.abs().sum()) / nonzero if nonzero else 0.0
        return Encoded(torch.sign(values).to(torch.int8).contiguous(), scale_tensor(alpha))

    def decode(self, stored: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        if ((stored < -1) | (stored > 1)).any():
            raise ValueError("ternary values must be -1, 0 or 1")
        return apply_scale(stored, scale, "ternary")


VALUE_TYPES.register(
    "ternary", summary="sign(v) x one fp32 scale per tensor (mean |v| over nonzero v); about 1 bit per value after zstd",
    reference="Yadav et al. 2023, ComPEFT: Compression for Communicating Parameter Efficient Updates",
)(Ternary())
