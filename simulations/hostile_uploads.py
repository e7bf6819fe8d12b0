"""What a hostile site starts from: honest uploads of every entry kind and value type, their containers, bombs.

:func:`honest_uploads` encodes deltas as sites would (dense, Rice-coded
indices, seeded DARE masks, PaFi's mask values, LoRA factors, SVFit offsets;
every value type); :class:`Opened` is a payload's container opened for
editing and sealed again; :func:`bombs` are frames that expand far beyond
their size. The mutators live in :mod:`fedelta.simulations.upload_mutators`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import zstandard

from fedelta.common.codec import encode
from fedelta.common.delta import BaseMask, Delta, Entry, LowRank, SingularOffsets
from fedelta.common.methods.registry import Resolver, weight_matrices
from fedelta.common.pruning import PruneRequest, prune_delta
from fedelta.common.upload import upload_binding

VALUE_NAMES = ("fp32", "fp16", "bf16", "int8", "ternary")
PRUNERS = ("none", "dare", "magnitude")
MARK = "@@hostile@@"


@dataclass(frozen=True)
class Honest:
    """One honest upload: what it is (``method/pruner/values``) and its bytes."""

    label: str
    payload: bytes


@dataclass(frozen=True)
class Target:
    """What mutators may know: the model's tensor shapes and element bound, other methods' honest payloads, bombs."""

    shapes: Mapping[str, tuple[int, ...]]
    max_elements: int
    others: Sequence[bytes] = ()
    bombs: Sequence[bytes] = ()


def honest_uploads(
    method: str, params: Mapping[str, torch.Tensor], allowed: Sequence[str], head: Sequence[str],
    resolver: Resolver, base: str, seed: int = 0, server_round: int = 1,
) -> list[Honest]:
    """Uploads of ``method`` for every value type (and every pruner for plain deltas), on weights with hash ``base``,
    each bound to ``server_round`` and to its label as the site that sends it."""
    gen = torch.Generator().manual_seed(seed)
    formed = FORMERS.get(method, _nothing)(params, allowed, head, resolver, gen)
    rest = {name: _delta_like(name, params[name], gen) for name in sorted(set(allowed) - set(formed))}
    uploads = []
    for pruner in PRUNERS if not formed else ("dare",):
        pruned = prune_delta(rest, pruner, PruneRequest(keep=0.1, seed=seed + 1), min_size=100)
        for values in VALUE_NAMES:
            label = f"{method}/{pruner}/{values}"
            meta = {"method": method, **upload_binding(server_round, label)}
            uploads.append(Honest(label, encode(Delta({**pruned.entries, **formed}), base=base, values=values, meta=meta)))
    return uploads


def _delta_like(name: str, param: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A fine-tuning delta's look: small Gaussian values, embedding rows of unseen tokens exactly zero."""
    delta = torch.randn(param.shape, generator=gen) * 1e-3
    if "embeddings" in name and delta.dim() == 2:
        delta[torch.rand(delta.shape[0], generator=gen) > 0.05] = 0.0
    return delta


def _nothing(*_: Any) -> dict[str, Entry]:
    return {}


def _low_rank(params, allowed, head, resolver, gen) -> dict[str, Entry]:  # noqa: ANN001
    matrices = sorted(set(weight_matrices(params, head)) & set(allowed))
    out: dict[str, Entry] = {}
    for name in matrices:
        rows, cols = params[name].shape
        rank = min(4, rows, cols)
        a, b = torch.randn(rank, cols, generator=gen), torch.randn(rows, rank, generator=gen)
        out[name] = LowRank(a * 1e-2, b * 1e-2)
    return out


def _mask_values(params, allowed, head, resolver, gen) -> dict[str, Entry]:  # noqa: ANN001
    return {
        name: BaseMask(tuple(params[name].shape), spec, torch.randn(positions.numel(), generator=gen) * 1e-3)
        for spec, masks in resolver.masks.items() for name, positions in masks.items()
    }


def _singular_offsets(params, allowed, head, resolver, gen) -> dict[str, Entry]:  # noqa: ANN001
    return {
        name: SingularOffsets(tuple(params[name].shape), torch.randn(u.shape[1], generator=gen) * 1e-3)
        for name, (u, _) in resolver.bases.items()
    }


FORMERS: dict[str, Callable[..., dict[str, Entry]]] = {
    "lora": _low_rank, "pafi": _mask_values, "svfit": _singular_offsets,
}


# The container, opened and sealed again.

@dataclass
class Opened:
    """A payload's container: header (``__metadata__`` and tensor records) and data bytes."""

    header: dict[str, Any]
    data: bytes

    def entries(self) -> dict[str, Any]:
        return json.loads(self.header["__metadata__"]["entries"])

    def set_entries(self, entries: Mapping[str, Any], raw: str = "") -> None:
        """Store ``entries``; a value equal to :data:`MARK` becomes the JSON text ``raw``."""
        self.header["__metadata__"]["entries"] = json.dumps(entries).replace(json.dumps(MARK), raw)

    def seal(self, raw: str = "") -> bytes:
        """The container compressed again (content size and checksum); a :data:`MARK` value becomes ``raw``."""
        return frame(container_bytes(json.dumps(self.header).replace(json.dumps(MARK), raw), self.data))


def open_payload(payload: bytes) -> Opened | None:
    """The container of a payload, or ``None`` unless it opens into the structure mutators edit."""
    try:
        raw = zstandard.ZstdDecompressor().decompress(payload)
        size = int.from_bytes(raw[:8], "little")
        opened = Opened(json.loads(raw[8 : 8 + size]), raw[8 + size :])
        entries = opened.entries()
    except (zstandard.ZstdError, ValueError, TypeError, KeyError, RecursionError):
        return None
    records = [opened.header[key] for key in opened.header if key != "__metadata__"]
    if not (isinstance(entries, dict) and all(isinstance(d, dict) for d in entries.values())
            and all(isinstance(r, dict) and _is_span(r.get("data_offsets")) for r in records)):
        return None
    return opened


def _is_span(offsets: Any) -> bool:
    return isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and 0 <= o < 2**62 for o in offsets)


def container_bytes(header: str, data: bytes) -> bytes:
    text = header.encode("utf-8", "surrogatepass")
    return len(text).to_bytes(8, "little") + text + data


def frame(raw: bytes, *, content_size: bool = True, checksum: bool = True) -> bytes:
    """``raw`` as one zstd frame (level 1), with or without its content size and checksum."""
    return zstandard.ZstdCompressor(level=1, write_checksum=checksum, write_content_size=content_size).compress(raw)


def bombs(max_bytes: int, payload: bytes) -> list[bytes]:
    """Frames that expand far beyond their size: zeros up to and past ``max_bytes``, a container with a zero tail,
    and ``payload``'s container without a content size or a checksum (built once: they are large to build)."""
    out = [frame(bytes(size)) for size in (1 << 20, max_bytes // 2, max_bytes, max_bytes + 1)]
    opened = open_payload(payload)
    if opened is not None:
        raw = container_bytes(json.dumps(opened.header), opened.data)
        out += [frame(raw + bytes(max_bytes // 2)), frame(raw, content_size=False), frame(raw, checksum=False)]
    return out
