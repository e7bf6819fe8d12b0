"""Forming a site's upload: delta plus residual, pruned, quantized, encoded; new residual."""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from fedelta.common.codec import Limits, decode, encode
from fedelta.common.config import Settings
from fedelta.common.delta import Delta, Dense, Entry
from fedelta.common.feedback import left_over, residual_norm, with_residual
from fedelta.common.methods.registry import Resolver
from fedelta.common.pruning import Calibration, PruneRequest, prune_delta


@dataclass(frozen=True)
class Upload:
    """The bytes a site sends, what they decode to (before resolution), and the residual it keeps."""

    payload: bytes
    sent: Delta
    residual: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Pruned:
    """``target`` (delta + residual), its pruned form, and what the pruner recorded per tensor."""

    target: dict[str, torch.Tensor]
    delta: Delta
    stats: dict[str, float]

    def with_dense(self, replaced: Mapping[str, torch.Tensor]) -> Pruned:
        """The same, with some tensors replaced by new values sent dense (e.g. after recovery)."""
        entries = {**self.delta.entries, **{name: Dense(value) for name, value in replaced.items()}}
        return Pruned({**self.target, **replaced}, Delta(entries), self.stats)


def upload_binding(server_round: int, site: str) -> dict[str, str]:
    """The header metadata that binds an upload to the round it answers and the site that sends it."""
    return {"round": str(server_round), "site": site}


def upload_seed(run_seed: int, server_round: int, site: str) -> int:
    """A 63-bit seed for one site's pruning mask in one round."""
    digest = hashlib.sha256(f"{run_seed}|{server_round}|{site}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def prune_target(
    delta: Mapping[str, torch.Tensor],
    residual: Mapping[str, torch.Tensor],
    settings: Settings,
    *,
    seed: int,
    calibration: Calibration | None = None,
    keep_dense: frozenset[str] = frozenset(),
    keep: float | None = None,
) -> Pruned:
    """``delta + residual``, pruned with the configured pruner (keeping ``keep``, by default ``prune.keep``
    of each tensor); ``keep_dense`` tensors stay whole."""
    target = with_residual(delta, residual)
    request = PruneRequest(keep=settings.prune.keep if keep is None else keep, seed=seed, calibration=calibration)
    pruned = prune_delta(target, settings.prune.name, request, settings.prune.min_size, keep_dense)
    return Pruned(target, pruned, dict(request.stats))


def finish_upload(
    pruned: Pruned,
    settings: Settings,
    *,
    base: str,
    limits: Limits,
    formed: Mapping[str, Entry] | None = None,
    resolver: Resolver | None = None,
    binding: Mapping[str, str] | None = None,
    payload: bytes | None = None,
) -> Upload:
    """Encode the pruned delta plus the method's ``formed`` entries, and form the new residual.

    ``binding`` (:func:`upload_binding`) goes into the header, so the server can
    refuse the bytes when they arrive in another round or from another site.
    ``payload``, when given, is those bytes already encoded (by :func:`encode_upload`, as a byte budget
    measured them).
    ``sent`` is the decoded upload (mask and singular entries unresolved). The
    residual is computed against the decoded bytes, resolved, so
    ``delta + residual_old == sent + residual_new`` holds for exactly what the
    server will apply.
    """
    if payload is None:
        payload = encode_upload(pruned, settings, base=base, formed=formed, binding=binding)
    sent = decode(payload, limits, known=pruned.delta.entries).delta
    new_residual: dict[str, torch.Tensor] = {}
    if settings.feedback.enabled:
        new_residual = left_over(pruned.target, (resolver or Resolver()).resolve(sent))
    metrics = {"residual-norm": residual_norm(new_residual), **prune_metrics(pruned.stats)}
    return Upload(payload=payload, sent=sent, residual=new_residual, metrics=metrics)


def encode_upload(
    pruned: Pruned,
    settings: Settings,
    *,
    base: str,
    formed: Mapping[str, Entry] | None = None,
    binding: Mapping[str, str] | None = None,
) -> bytes:
    """The bytes of an upload: the pruned delta and the method's ``formed`` entries, with the header metadata."""
    entries = {**pruned.delta.entries, **(formed or {})}
    meta = {"method": settings.method.name, "prune": settings.prune.name, **(binding or {})}
    return encode(Delta(entries), base=base, values=settings.quant.values, meta=meta)


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
    calibration: Calibration | None = None,
) -> Upload:
    """:func:`prune_target` then :func:`finish_upload`."""
    pruned = prune_target(delta, residual, settings, seed=seed, calibration=calibration)
    return finish_upload(pruned, settings, base=base, limits=limits, formed=formed, resolver=resolver)


def prune_metrics(stats: Mapping[str, float]) -> dict[str, float]:
    """Site metrics from per-tensor pruner records: DAREx-q's q (mean, min, max over tensors)."""
    if not stats:
        return {}
    values = list(stats.values())
    return {"prune-q": statistics.fmean(values), "prune-q-min": min(values), "prune-q-max": max(values)}
