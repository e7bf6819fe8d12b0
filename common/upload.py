"""Forming a site's upload: delta plus residual, pruned, quantized, encoded; new residual."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from common.codec import Limits, decode, encode
from common.config import Settings
from common.delta import Delta, Entry
from common.methods.registry import Resolver
from common.pruning import PruneRequest, prune_delta


@dataclass(frozen=True)
class Upload:
    """The bytes a site sends, what they decode to (before resolution), and the residual it keeps."""

    payload: bytes
    sent: Delta
    residual: dict[str, torch.Tensor]


def upload_seed(run_seed: int, server_round: int, site: str) -> int:
    """A 63-bit seed for one site's pruning mask in one round."""
    digest = hashlib.sha256(f"{run_seed}|{server_round}|{site}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_upload(
    delta: Mapping[str, torch.Tensor],
    residual: Mapping[str, torch.Tensor],
    settings: Settings,
    *,
    base: str,
    seed: int,
    limits: Limits,
    formed: Mapping[str, Entry] | None = None,
    resolver: Resolver | None = None,
) -> Upload:
    """Prune and encode ``delta + residual``, plus the method's ``formed`` entries as they are.

    ``sent`` is the decoded upload (mask and singular entries unresolved). The
    residual is computed against the decoded bytes, resolved, so
    ``delta + residual_old == sent + residual_new`` holds for exactly what the
    server will apply.
    """
    with torch.no_grad():
        target = {name: value + residual[name] if name in residual else value for name, value in delta.items()}
    pruned = prune_delta(
        target, settings.prune.name, PruneRequest(keep=settings.prune.keep, seed=seed), settings.prune.min_size
    )
    entries = {**pruned.entries, **(formed or {})}
    meta = {"method": settings.method.name, "prune": f"{settings.prune.name}:{settings.prune.keep:g}"}
    payload = encode(Delta(entries), base=base, values=settings.quant.values, meta=meta)
    sent = decode(payload, limits).delta
    new_residual: dict[str, torch.Tensor] = {}
    if settings.feedback.enabled:
        resolved = (resolver or Resolver()).resolve(sent)
        with torch.no_grad():
            for name, value in target.items():
                new_residual[name] = value - resolved.entries[name].to_dense()
    return Upload(payload=payload, sent=sent, residual=new_residual)


def residual_norm(residual: Mapping[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((r.double() ** 2).sum() for r in residual.values()))) if residual else 0.0
