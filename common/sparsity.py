"""A sparse base's pattern (its pruned body weights) and keeping it through every delta and version.

With ``model.sparse-base`` set, version 0 is a base pruned once
(``fedelta prepare-sparse-base``). Its pattern is the exact zeros of the body's
weight matrices in version 0; every party derives it from version 0, so it is
never sent. Sites train with those gradients masked and re-zero the merged
weights there, so their deltas are zero there, and the server rejects an update
that writes into a pruned position.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import torch

from fedelta.common.delta import Delta, Entry, LowRank, SingularOffsets
from fedelta.common.methods.registry import MethodContext, weight_matrices

Pattern = Mapping[str, torch.Tensor]  # name -> bool tensor of the parameter's shape, True where pruned
DENSE_FORMING = (LowRank, SingularOffsets)  # entries whose resolved update is dense over the matrix


def pattern_of(params: Mapping[str, torch.Tensor], head: Collection[str]) -> dict[str, torch.Tensor]:
    """Pruned positions (exact zeros) of the body's weight matrices that have any."""
    pattern = {}
    for name in weight_matrices(params, head):
        zeros = params[name].detach() == 0
        if bool(zeros.any()):
            pattern[name] = zeros
    return pattern


def base_pattern(sparse_base: str, context: MethodContext) -> dict[str, torch.Tensor] | None:
    """The pattern of version 0 when ``model.sparse-base`` is set (memoised per version 0), else ``None``."""
    if not sparse_base:
        return None
    return context.memo(
        f"sparse-pattern-{context.genesis_sha}", lambda: pattern_of(context.genesis_params(), context.head)
    )


def zero_pattern(params: Mapping[str, torch.Tensor], pattern: Pattern | None) -> None:
    """Set every pruned position of ``params`` to exactly zero, in place (a delta from the base is then zero there)."""
    if not pattern:
        return
    with torch.no_grad():
        for name, pruned in pattern.items():
            if name in params:
                params[name].masked_fill_(pruned, 0.0)


def lock_pattern(model: torch.nn.Module, pattern: Pattern | None) -> list[Callable[[], None]]:
    """Mask the gradients of pruned positions of trainable parameters; returns the hooks' removers."""
    removers = []
    for name, param in model.named_parameters():
        if pattern and name in pattern and param.requires_grad:
            keep = ~pattern[name]
            handle = param.register_hook(lambda grad, keep=keep: grad * keep.to(grad.device))
            removers.append(handle.remove)
    return removers


def formed_off_pattern(formed: Mapping[str, Entry], pattern: Pattern | None) -> dict[str, Entry]:
    """The formed entries that may travel as they are; the rest travel as masked dense deltas.

    A low-rank product or a singular-vector expansion is dense over its matrix,
    so on a patterned matrix it is replaced by the (masked) difference of the
    merged weights.
    """
    return {
        name: entry
        for name, entry in formed.items()
        if not (pattern and name in pattern and isinstance(entry, DENSE_FORMING))
    }


def violations(delta: Delta, pattern: Pattern | None) -> list[str]:
    """Names of resolved entries that put a nonzero value into a pruned position."""
    if not pattern:
        return []
    bad = []
    for name, entry in delta.entries.items():
        if name in pattern and bool((entry.to_dense().ne(0) & pattern[name]).any()):
            bad.append(name)
    return sorted(bad)


def sparsity_report(params: Mapping[str, torch.Tensor], head: Collection[str]) -> dict[str, object]:
    """Zeros per body weight matrix, over those matrices, and over the whole model."""
    names = weight_matrices(params, head)
    per_matrix = {name: float((params[name] == 0).sum()) / params[name].numel() for name in names}
    targeted = sum(params[n].numel() for n in names)
    zeros = sum(int((params[n] == 0).sum()) for n in names)
    total = sum(p.numel() for p in params.values())
    all_zeros = sum(int((p == 0).sum()) for p in params.values())
    return {
        "matrices": per_matrix,
        "targeted_params": targeted,
        "targeted_sparsity": zeros / targeted if targeted else 0.0,
        "model_params": total,
        "model_sparsity": all_zeros / total if total else 0.0,
    }
