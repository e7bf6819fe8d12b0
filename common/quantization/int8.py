"""int8 values with one symmetric fp32 scale per tensor."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedelta.common.quantization.registry import VALUE_TYPES, Encoded, apply_scale, scale_tensor


@dataclass(frozen=True)
class Int8:
    """scale = max|v| / 127, stored = round(v / scale) in [-127, 127].

    Error bound: |v - stored * scale| <= scale / 2 for every value.
    """

    storage: torch.dtype = torch.int8
    bits: float = 8
    scaled: bool = True

    def encode(self, values: torch.Tensor) -> Encoded:
        values = values.detach().to(torch.float32)
        peak = float(values.abs().max()) if values.numel() else 0.0
        scale = scale_tensor(peak / 127 if peak > 0 else 1.0)
        stored = torch.round(values / scale).clamp_(-127, 127).to(torch.int8)
        return Encoded(stored.contiguous(), scale)

    def decode(self, stored: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        return apply_scale(stored, scale, "int8")


VALUE_TYPES.register(
    "int8", summary="1 byte per value and one fp32 scale per tensor (max|v|/127); error <= scale/2",
    reference="Jacob et al. 2018, Quantization and Training of Neural Networks for Integer-Arithmetic-Only Inference",
)(Int8())
