"""Fine-tuning methods: what a site trains, and which base tensors its delta may touch.

A method is a function ``(model, head) -> Attachment`` registered in
:data:`METHODS` with its reference; importing this package registers them all.
"""

from common.methods.registry import METHODS, Attachment
from common.methods import full, lnbias  # noqa: F401  (registration)

__all__ = ["METHODS", "Attachment"]
