"""What the server sends: the merged delta on the wire (optionally pruned and quantized,
with a server-side residual) and the shortest hash-checked path from a site's version to the head.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import BinaryIO

import torch

from fedelta.common.budget import BudgetTooSmall, fit_budget
from fedelta.common.codec import Limits, decode, encode, encode_and_apply
from fedelta.common.config import DownlinkSettings
from fedelta.common.delta import Delta, Dense, apply_delta
from fedelta.common.feedback import Residual, left_over, with_residual
from fedelta.common.pruning import PruneRequest, prune_delta
from fedelta.common.versions import FROM_SNAPSHOT, MERGED_META, Downlink, encode_merged
from fedelta.server.store import Version, VersionStore

RESIDUAL = "residual"
log = logging.getLogger("fedelta.server")


class MergedEncoder:
    """Encodes each round's merged delta as sites will receive it, keeping what was not sent.

    With ``downlink.prune`` / ``downlink.values`` set, the target is the merged
    delta plus the residual; it is pruned and quantized, and the new residual
    is the target minus exactly what the encoded bytes decode to. The server
    applies those decoded bytes too, so it and the sites stay bit-identical.
    """

    def __init__(self, settings: DownlinkSettings, min_size: int, limits: Limits, residual: Residual | None = None) -> None:
        self.settings = settings
        self.min_size = min_size
        self.limits = limits
        self.residual: Residual = dict(residual or {})

    def encode(self, merged: Delta, *, base: str, seed: int) -> tuple[bytes, Residual]:
        """The blob to send and the residual it leaves (adopt it once the version is committed)."""
        if not self.settings.compressed:
            return encode_merged(merged, base=base), {}
        target = with_residual({name: entry.to_dense() for name, entry in merged.entries.items()}, self.residual)

        def pruned_at(keep: float) -> Delta:
            return prune_delta(target, self.settings.prune, PruneRequest(keep=keep, seed=seed), self.min_size)

        def encoded(pruned: Delta) -> bytes:
            return encode_merged(pruned, base=base, values=self.settings.values)

        if self.settings.budget_bytes:
            blob = self._within_budget(pruned_at, encoded)
        else:
            blob = encoded(pruned_at(self.settings.density))
        return blob, left_over(target, decode(blob, self.limits).delta)

    def encode_into(self, params: Mapping[str, torch.Tensor], merged: Delta, sink: BinaryIO, *, base: str,
                    seed: int) -> Residual:
        """:meth:`encode`, writing the blob to ``sink`` and adding what it decodes to into ``params``; takes the
        entries out of ``merged``.

        Sent whole (the default), the merged delta is encoded, written and added
        tensor by tensor in chunks (:func:`~fedelta.common.codec.encode_and_apply`),
        so the commit needs about no memory beyond the merged delta at any number of sites.
        """
        if not self.settings.compressed:
            encode_and_apply(merged, params, base=base, values="fp32", meta=MERGED_META, sink=sink)
            return {}
        blob, residual = self.encode(merged, base=base, seed=seed)
        sink.write(blob)
        apply_delta(params, decode(blob, self.limits).delta)
        return residual

    def _within_budget(self, pruned_at: Callable[[float], Delta], encoded: Callable[[Delta], bytes]) -> bytes:
        """The merged delta as pruned to fit ``downlink.budget-bytes``; if nothing fits, its smallest form, with a
        warning naming the budget that would do (the federation goes on; the residual keeps the rest)."""
        try:
            return fit_budget(pruned_at, encoded, self.settings.budget_bytes, "downlink.budget-bytes").payload
        except BudgetTooSmall as small:
            log.warning("%s; sending the smallest form (%d bytes)", small, len(small.least.payload))
            return small.least.payload

    def residual_blob(self, residual: Residual, base: str) -> bytes | None:
        """The residual as stored next to the version it belongs to (``None`` when there is none)."""
        if not residual:
            return None
        return encode(Delta({name: Dense(value) for name, value in residual.items()}), base=base, meta={"kind": RESIDUAL})


def load_residual(blob: bytes | None, limits: Limits) -> Residual:
    if blob is None:
        return {}
    return {name: entry.to_dense() for name, entry in decode(blob, limits).delta.entries.items()}


def shortest_downlink(
    store: VersionStore, head: Version, known: int | None, *, max_chain: int, snapshot: Callable[[], bytes],
    snapshot_only: bool = False,
) -> Downlink:
    """From the version a site holds (``None``: unknown, i.e. version 0) to ``head``, checked by hash.

    A chain of merged deltas when it is at most ``max_chain`` steps and no
    more bytes than a snapshot; else (or with ``snapshot_only``, for a site
    whose cache failed) the head's full snapshot. Version 0 is never sent:
    every site builds it from the settings.
    """
    start = store.genesis().id if known is None else known
    if start == head.id and not snapshot_only:
        return Downlink(head.id, head.sha)
    chain = [] if snapshot_only else store.chain(start, head.id)
    chain_bytes = sum(v.blob_bytes for v in chain)
    snapshot_bytes = store.latest_snapshot(head.id).snapshot_bytes or 0
    if not snapshot_only and len(chain) <= max_chain and chain_bytes <= snapshot_bytes:
        blobs = [store.read_blob(v) for v in chain]
        return Downlink(start, store.version(start).sha, blobs, [v.id for v in chain], [v.sha for v in chain])
    return Downlink(FROM_SNAPSHOT, "", [snapshot()], [head.id], [head.sha])


def check_residual_names(residual: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]) -> None:
    """A stored residual must fit the model it is restored into."""
    for name, value in residual.items():
        if name not in params or tuple(params[name].shape) != tuple(value.shape):
            raise ValueError(f"stored downlink residual has tensor {name!r} that the model lacks or shapes differently")
