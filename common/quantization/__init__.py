"""Value types on the wire (``quant.values``): one registered quantizer per type.

A quantizer turns fp32 values into what travels (a stored tensor and, for
scaled types, one fp32 scale per tensor) and back. Float types are plain casts
that decode to their own dtype; scaled types (``int8``, ``ternary``) decode to
fp32 ``stored * scale``. Importing this package registers them all.
"""

from fedelta.common.quantization.registry import VALUE_TYPES, Encoded, FloatCast, Quantizer, round_trip
from fedelta.common.quantization import int8, ternary  # noqa: F401  (registration)

__all__ = ["VALUE_TYPES", "Encoded", "FloatCast", "Quantizer", "round_trip"]
