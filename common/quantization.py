"""Value types on the wire (``quant.values``), registered with what they cost and keep."""

from __future__ import annotations

import torch

from common.registry import Registry

VALUE_TYPES: Registry[torch.dtype] = Registry("value type")
VALUE_TYPES.register("fp32", summary="4 bytes per value, exact", reference="IEEE 754 binary32")(torch.float32)
VALUE_TYPES.register("fp16", summary="2 bytes per value, 11-bit mantissa", reference="IEEE 754 binary16")(torch.float16)
VALUE_TYPES.register(
    "bf16", summary="2 bytes per value, fp32's range with an 8-bit mantissa", reference="Kalamkar et al. 2019, bfloat16"
)(torch.bfloat16)
