"""Calibration for activation-aware pruners: capture layer inputs, and choose DAREx-q's global q on labels."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from fedelta.common.delta import Delta
from fedelta.common.pruning.registry import Calibration, PruneRequest, prune_delta

Q_GRID_POINTS = 7


@torch.no_grad()
def capture_inputs(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], max_rows: int = 1024
) -> dict[str, torch.Tensor]:
    """Inputs of every ``nn.Linear`` on one forward pass of ``batch``, by the name of its weight.

    Token rows that are padding (``attention_mask`` = 0) are dropped; at most
    ``max_rows`` evenly spaced rows are kept per layer. Layers that read the
    same tensor (query, key, value) share one copy.
    """
    mask = batch.get("attention_mask")
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (the input, kept alive; its rows)
    captured: dict[str, torch.Tensor] = {}

    def rows(x: torch.Tensor) -> torch.Tensor:
        hit = seen.get(id(x))
        if hit is not None and hit[0] is x:
            return hit[1]
        flat = x
        if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
            flat = x[mask.bool()]
        flat = flat.reshape(-1, x.shape[-1]).to(torch.float32)
        if flat.shape[0] > max_rows:
            flat = flat[torch.linspace(0, flat.shape[0] - 1, max_rows).long()]
        seen[id(x)] = (x, flat.clone())
        return seen[id(x)][1]

    hooks = []
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            key = f"{module_name}.weight"
            hooks.append(module.register_forward_hook(lambda _m, args, _o, key=key: captured.__setitem__(key, rows(args[0]))))
    was_training = model.training
    model.eval()
    try:
        model(**batch)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return captured


def calibrate(model: torch.nn.Module, tokenizer: object, texts: list[str], *, max_length: int) -> Calibration:
    """Captured layer inputs on one unlabelled batch of ``texts``."""
    if not texts:
        raise ValueError("calibration needs at least one text")
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return Calibration(inputs=capture_inputs(model, batch))


def q_grid(keep: float, points: int = Q_GRID_POINTS) -> list[float]:
    """Candidate global q, geometric from ``keep`` (DARE's 1/(1-p)) to 1 (no rescaling)."""
    if points < 2:
        raise ValueError(f"a q grid needs at least 2 points, got {points}")
    return [keep ** (1 - i / (points - 1)) for i in range(points)]


def choose_global_q(
    target: Mapping[str, torch.Tensor],
    request: PruneRequest,
    score: Callable[[Delta], tuple[float, float]],
    *,
    min_size: int,
    keep_dense: frozenset[str] = frozenset(),
) -> float:
    """The grid q whose darex-q pruned delta scores highest (score: (accuracy, -loss), higher is better)."""
    best: tuple[tuple[float, float], float] | None = None
    for q in q_grid(request.keep):
        trial = PruneRequest(request.keep, request.seed, Calibration(q=q))
        result = score(prune_delta(target, "darex-q", trial, min_size, keep_dense))
        if best is None or result > best[0]:
            best = (result, q)
    return best[1] if best is not None else request.keep


@torch.no_grad()
def with_delta_applied(
    params: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor], delta: Delta, run: Callable[[], tuple[float, float]]
) -> tuple[float, float]:
    """Run ``run`` with ``params[name] = base[name] + delta[name]`` for every entry, then restore ``params``."""
    saved = {name: params[name].clone() for name in delta.entries}
    try:
        for name, entry in delta.entries.items():
            params[name].copy_(base[name] + entry.to_dense())
        return run()
    finally:
        for name, value in saved.items():
            params[name].copy_(value)
