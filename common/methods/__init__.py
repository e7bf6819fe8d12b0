"""Fine-tuning methods: what a site trains, and which base tensors its delta may touch.

Each method is a :class:`FineTuningMethod` registered in :data:`METHODS` with its
reference; importing this package registers them all.
"""

from fedelta.common.methods.registry import METHODS, Attachment, FineTuningMethod, MethodContext, Resolver
from fedelta.common.methods import full, hiwi, lnbias, lora, pafi, svfit  # noqa: F401  (registration)

__all__ = ["METHODS", "Attachment", "FineTuningMethod", "MethodContext", "Resolver"]
