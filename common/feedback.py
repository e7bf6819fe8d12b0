"""Error feedback, one compressor for both directions: what compression left out is added to the next update.

A stream of updates (a site's uploads, the server's merged deltas down) keeps
a residual. Each time, the target is the update plus the residual; it is
pruned, quantized and encoded; and the new residual is the target minus
exactly what the bytes decode to, so ``update + old residual == sent + new
residual`` holds for what the receiver applies. A rescaling pruner must not
feed a residual (it would carry the rescale's noise and grow); the settings
refuse that combination.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedelta.common.delta import Delta

Residual = dict[str, torch.Tensor]


def with_residual(update: Mapping[str, torch.Tensor], residual: Mapping[str, torch.Tensor]) -> Residual:
    """The compression target: every tensor of the update or the residual, their sum where both have it.

    Neither input is written to; a tensor only one of them has is shared, not copied.
    """
    with torch.no_grad():
        target = {name: value + residual[name] if name in residual else value for name, value in update.items()}
    return {**{name: rest for name, rest in residual.items() if name not in target}, **target}


def left_over(target: Mapping[str, torch.Tensor], sent: Delta) -> Residual:
    """The new residual: the target minus what the encoded bytes decode to (resolved), tensor by tensor;
    a tensor the bytes leave out is carried whole."""
    with torch.no_grad():
        return {
            name: value - sent.entries[name].to_dense() if name in sent.entries else value
            for name, value in target.items()
        }


def residual_norm(residual: Mapping[str, torch.Tensor]) -> float:
    """The residual's L2 norm over all its tensors (0 when there is none)."""
    return float(torch.sqrt(sum((r.double() ** 2).sum() for r in residual.values()))) if residual else 0.0
