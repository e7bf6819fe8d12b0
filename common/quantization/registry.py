"""The value-type registry and the float casts; scaled types live in their own modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from fedelta.common.registry import Registry


@dataclass(frozen=True)
class Encoded:
    """What one value tensor becomes on the wire: the stored tensor and its scale (scaled types)."""

    stored: torch.Tensor
    scale: torch.Tensor | None = None


class Quantizer(Protocol):
    """Turns fp32 values into what travels and back.

    ``storage`` is the stored dtype, ``bits`` the information per value that the
    codec's bound counts, ``scaled`` whether a per-tensor fp32 scale travels too.
    """

    storage: torch.dtype
    bits: float
    scaled: bool

    def encode(self, values: torch.Tensor) -> Encoded: ...

    def decode(self, stored: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor: ...


VALUE_TYPES: Registry[Quantizer] = Registry("value type")


def round_trip(quantizer: Quantizer, values: torch.Tensor) -> torch.Tensor:
    """What a receiver decodes for ``values``, as fp32 (bit-identical to the codec's decoding)."""
    encoded = quantizer.encode(values)
    return quantizer.decode(encoded.stored, encoded.scale).to(torch.float32)


def scale_tensor(value: torch.Tensor | float) -> torch.Tensor:
    """A per-tensor scale as it travels: one fp32 element."""
    return torch.as_tensor(value, dtype=torch.float32).detach().reshape(1).clone()


def apply_scale(stored: torch.Tensor, scale: torch.Tensor | None, kind: str) -> torch.Tensor:
    """fp32 ``stored * scale``; a scaled type without its scale is an error."""
    if scale is None:
        raise ValueError(f"{kind} values need their per-tensor scale")
    return stored.to(torch.float32) * scale.to(torch.float32).reshape(())


@dataclass(frozen=True)
class FloatCast:
    """Values cast to a float dtype; decoding keeps that dtype."""

    storage: torch.dtype
    bits: float
    scaled: bool = False

    def encode(self, values: torch.Tensor) -> Encoded:
        return Encoded(values.detach().to(self.storage).contiguous())

    def decode(self, stored: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        return stored


VALUE_TYPES.register("fp32", summary="4 bytes per value, exact", reference="IEEE 754 binary32")(
    FloatCast(torch.float32, 32)
)
VALUE_TYPES.register("fp16", summary="2 bytes per value, 11-bit mantissa", reference="IEEE 754 binary16")(
    FloatCast(torch.float16, 16)
)
VALUE_TYPES.register(
    "bf16", summary="2 bytes per value, fp32's range with an 8-bit mantissa", reference="Kalamkar et al. 2019, bfloat16"
)(FloatCast(torch.bfloat16, 16))
