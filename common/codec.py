"""The wire format: a Delta as a safetensors container compressed with zstd.

Layout of the container, before compression:
- tensor ``<name>/values``: the entry's values as the declared value type
  stores them (``<name>/a`` and ``<name>/b`` instead for low-rank factors);
  with a scaled value type (int8, ternary), tensor ``scales`` holds one fp32
  scale per value tensor, in the order of their names;
- tensor ``<name>/indices`` (explicit-index entries only): the gaps between
  successive flat indices, minus one, Golomb-Rice coded (uint8; :mod:`fedelta.common.rice`);
- metadata (``dict[str, str]``): ``format``, ``base`` (sha256 of the weights
  the delta applies to), ``values`` (value type), ``entries`` (JSON: per name
  its kind, shape and its kind's parameters: seed and keep, mask spec, rank),
  plus caller metadata such as ``method`` and ``prune``.

The zstd frame carries its content size and a checksum. :func:`decode` reads
untrusted bytes: it bounds the decompressed size (and, for uploads, its ratio
to the bytes sent), the header, the number of entries and the element count
before allocating anything large, checks every declared structure
(:mod:`fedelta.common.container`), and raises :class:`CodecError` with what was
wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from math import prod
from typing import Any, BinaryIO

import numpy as np
import torch
import zstandard

from fedelta.common.container import (  # noqa: F401  (errors, limits, formats: this module's interface)
    EARLIER_FORMATS,
    FORMAT,
    KINDS,
    MAX_ENTRIES,
    UPLOAD_EXPANSION,
    CodecError,
    Limits,
    container_layout,
    header_size,
    parse_entries,
    read_header,
    read_tensors,
    tensor_bytes,
)
from fedelta.common.delta import (
    BaseMask, Delta, Dense, Entry, LowRank, SeededMask, SingularOffsets, Sparse, check_delta_fits, kept_count,
    scatter_add,
)
from fedelta.common.entries import Shape
from fedelta.common.quantization import VALUE_TYPES, Encoded, Quantizer
from fedelta.common.kernels import RESERVED_BLOCK, zstd_frame_end
from fedelta.common.rice import IndexCodingError, RiceCost, coded_size, decode_indices, encode_indices, encode_nonzero

RESERVED_KEYS = frozenset({"format", "base", "values", "entries"})
SCALES = "scales"
SAME_WIDTH_INTEGER = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
                      torch.float64: torch.int64}


@dataclass(frozen=True)
class Decoded:
    delta: Delta
    meta: dict[str, str]

    @property
    def base(self) -> str:
        return self.meta["base"]


def encode(
    delta: Delta,
    *,
    base: str,
    values: str = "fp32",
    meta: Mapping[str, str] | None = None,
    level: int | None = None,
) -> bytes:
    """Serialize ``delta`` (values cast to ``values``) for weights with hash ``base``.

    ``level`` is the zstd level; by default small containers get a slower,
    tighter level (:func:`auto_level`), which costs little at their size.
    """
    quantizer = VALUE_TYPES.get(values)
    header = _header(base, values, meta)
    tensors: dict[str, torch.Tensor | Encoded] = {}
    described: dict[str, dict[str, Any]] = {}
    for name in delta.names():
        entry = wire_form(delta.entries[name], quantizer)
        if isinstance(entry, SeededMask) and entry.name != name:
            raise ValueError(f"entry {name!r} carries a seeded mask drawn for {entry.name!r}: the receiver draws "
                             f"its positions from the name it is sent under")
        described[name] = _describe(entry)
        tensors.update(_entry_tensors(name, entry, quantizer))
    out = bytearray()
    _compress(_container_tensors(tensors), {**header, "entries": _entries_text(described)}, level, out.extend)
    return bytes(out)


def encode_and_apply(
    delta: Delta,
    params: Mapping[str, torch.Tensor],
    *,
    base: str,
    values: str = "fp32",
    meta: Mapping[str, str] | None = None,
    sink: BinaryIO | None = None,
) -> bytearray | None:
    """:func:`encode` a delta of dense entries and add into ``params`` exactly what the bytes decode to.

    Made for the server's merged delta at any number of sites: it takes the
    entries out of ``delta`` and works through each tensor (smallest first) in
    chunks of :data:`CHUNK` elements, packing the kept values into the front of
    the entry's own buffer, which this overwrites; each buffer is released once
    compressed. So beyond ``delta`` and ``params`` it holds the coded indices
    and about one chunk. The bytes are written to ``sink`` as they are
    compressed (then nothing is returned), or come as a bytearray grown in
    place. They equal :func:`encode`'s; ``params`` end as
    ``apply_delta(params, decode(bytes).delta)`` leaves them, bit for bit. The
    value type must cast each value on its own (fp32, fp16, bf16).
    """
    quantizer = VALUE_TYPES.get(values)
    if quantizer.scaled:
        raise ValueError(f"encode_and_apply needs a value type without a scale, not {values!r}")
    header = _header(base, values, meta)
    check_delta_fits(params, delta)
    entries = dict(delta.entries)
    if not all(isinstance(entry, Dense) for entry in entries.values()):
        raise TypeError("encode_and_apply takes dense entries only")
    if isinstance(delta.entries, dict):
        delta.entries.clear()
    tensors: dict[str, torch.Tensor] = {}
    described: dict[str, dict[str, Any]] = {}
    for name in sorted(entries, key=lambda n: (entries[n].values.numel(), n)):
        entry = entries.pop(name)
        described[name], parts = _encode_dense_in_chunks(name, entry.values, quantizer, params[name])
        tensors.update(parts)
        del entry, parts
    out = bytearray()
    write = out.extend if sink is None else sink.write
    _compress(tensors, {**header, "entries": _entries_text(described)}, None, write)
    return out if sink is None else None


CHUNK = 1 << 16  # elements a chunked encoding handles per step
STREAM_PIECE = 1 << 20  # bytes handed to the compressor per call


def _encode_dense_in_chunks(
    name: str, values: torch.Tensor, quantizer: Quantizer, target: torch.Tensor
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """One dense entry as :func:`wire_form` and :func:`encode` would store it, added into ``target`` as decoded."""
    flat = values.reshape(-1)
    bits = flat.view(SAME_WIDTH_INTEGER[flat.dtype])
    numel = flat.numel()
    spans = [(start, min(start + CHUNK, numel)) for start in range(0, numel, CHUNK)]
    cost, words = RiceCost.of_nonzero(bits.numpy())
    count = cost.count
    sparse = count < numel and cost.size() * 8 + count * quantizer.bits < numel * quantizer.bits
    described = _describe(Dense(values))
    target_flat = target.view(-1)
    with torch.no_grad():
        if not sparse:
            stored = quantizer.encode(flat).stored
            for start, stop in spans:
                target_flat[start:stop].add_(stored[start:stop].to(torch.float32).to(target.dtype))
            return described, {f"{name}/values": stored}
        # The kept values are packed into the front of the entry's own buffer (never past what was read, as
        # long as a stored value is no wider than the entry's), so ``stored`` is a view of that buffer.
        if quantizer.storage == flat.dtype == target.dtype == torch.float32 and target.device.type == "cpu":
            # stored as they are: one pass
            indices = encode_nonzero(words, cost, flat.numpy(), target_flat.detach().numpy())
            stored = flat[:count]
        else:
            indices = encode_nonzero(words, cost)
            width = torch.empty(0, dtype=quantizer.storage).element_size()
            fits = width <= flat.element_size()
            packed = flat.view(torch.uint8) if fits else torch.empty(count * width, dtype=torch.uint8)
            done = 0
            for start, stop in spans:
                positions = torch.from_numpy(np.flatnonzero(bits[start:stop].numpy() != 0)).add_(start)
                part = quantizer.encode(flat[positions]).stored
                scatter_add(target_flat, positions, part.to(torch.float32).to(target.dtype))
                packed[done * width : (done + part.numel()) * width] = part.view(torch.uint8)
                done += part.numel()
            stored = packed[: count * width].view(quantizer.storage)
    described = {"kind": "sparse", "shape": list(values.shape), "count": count}
    return described, {f"{name}/values": stored, f"{name}/indices": torch.from_numpy(indices)}


def _header(base: str, values: str, meta: Mapping[str, str] | None) -> dict[str, str]:
    extra = dict(meta or {})
    clash = RESERVED_KEYS & extra.keys()
    if clash:
        raise ValueError(f"metadata keys {sorted(clash)} are reserved")
    return {"format": FORMAT, "base": base, "values": values, **extra}


def _entries_text(described: Mapping[str, dict[str, Any]]) -> str:
    return json.dumps(dict(sorted(described.items())), separators=(",", ":"))


def _entry_tensors(name: str, entry: Entry, quantizer: Quantizer) -> dict[str, torch.Tensor | Encoded]:
    """The container tensors of one entry in its wire form."""
    if isinstance(entry, LowRank):
        return {f"{name}/a": quantizer.encode(entry.a), f"{name}/b": quantizer.encode(entry.b)}
    tensors: dict[str, torch.Tensor | Encoded] = {f"{name}/values": quantizer.encode(entry.flat_values().reshape(-1))}
    if isinstance(entry, Sparse):
        tensors[f"{name}/indices"] = torch.from_numpy(encode_index_gaps(entry.indices.numpy()))
    return tensors


def _compress(tensors: dict[str, torch.Tensor], header: Mapping[str, str], level: int | None,
              write: Callable[[bytes], object]) -> None:
    """The container of ``tensors`` with ``header``, zstd-compressed as one stream, handed piece by piece to
    ``write``; takes the tensors out of ``tensors`` as it writes them, so each is released once compressed."""
    prefix, order = container_layout(tensors, header)
    size = len(prefix) + sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    chosen = auto_level(size) if level is None else level
    compressor = zstandard.ZstdCompressor(level=chosen, write_checksum=True, write_content_size=True)
    stream = compressor.compressobj(size=size)
    write(stream.compress(prefix))
    for key in order:
        data = tensor_bytes(tensors.pop(key))
        for start in range(0, len(data), STREAM_PIECE):  # the output per call stays about one piece
            write(stream.compress(data[start : start + STREAM_PIECE]))
        del data
    write(stream.flush())


def wire_form(entry: Entry, quantizer: Quantizer) -> Entry:
    """How an entry travels: a dense one with zeros goes as explicit indices when that is fewer bytes.

    This is the one dense-or-sparse rule: coded index gaps plus the kept values
    against every value. Only for value types that encode each value on its
    own (a scaled type's scale depends on all of them). A zero with its sign
    bit set (-0.0) is kept, so the receiver's weights match to the bit.
    """
    if not isinstance(entry, Dense) or quantizer.scaled:
        return entry
    flat = entry.values.reshape(-1)
    bits = flat.view(SAME_WIDTH_INTEGER[flat.dtype])  # +0.0 is the only all-zero bit pattern
    count = int(torch.count_nonzero(bits))
    if count == flat.numel():
        return entry
    positions = torch.from_numpy(np.flatnonzero(bits.numpy() != 0))
    if coded_size(positions.numpy()) * 8 + count * quantizer.bits >= flat.numel() * quantizer.bits:
        return entry
    return Sparse(entry.shape, positions, flat[positions].clone())


def auto_level(size: int) -> int:
    """zstd level by container size: 15 under 128 KiB, 9 under 4 MiB, else 3.

    Level 15 pays where the header and index bytes weigh (0.5-4 % smaller
    at density 0.001 on MiniLM) and costs 5-10 ms; a container of 128 KiB or
    more is mostly values, which level 9 packs as tightly in a fraction of that.
    """
    return 15 if size < 128 << 10 else 9 if size < 4 << 20 else 3


def decode(data: bytes, limits: Limits, *, shapes: Mapping[str, Shape] | None = None,
           known: Mapping[str, Entry] | None = None) -> Decoded:
    """Parse bytes from :func:`encode`, within ``limits``; raise :class:`CodecError` otherwise.

    ``shapes`` (the model's tensors by name) bounds the entries to one per
    tensor and makes an entry for a tensor declare that tensor's shape;
    without it, at most :data:`MAX_ENTRIES` entries. Names outside ``shapes``
    count against both bounds and are left to the caller's validation.
    ``known`` holds entries the caller already has, such as what it encoded:
    a seeded entry with the same shape, seed and keep takes its positions
    from there instead of drawing them again.
    """
    max_entries = MAX_ENTRIES if shapes is None else len(shapes)
    raw = _decompress(data, limits, max_entries)
    meta, records = read_header(raw, max_entries)
    value_name = meta.get("values", "")
    if value_name not in VALUE_TYPES or not isinstance(meta.get("base"), str):
        raise CodecError(f"bad metadata: values={value_name[:20]!r}, base={str(meta.get('base'))[:70]!r}")
    described = parse_entries(meta.get("entries", ""), limits, max_entries, shapes, meta["format"])
    quantizer = VALUE_TYPES.get(value_name)
    expected = set()
    for n, d in described.items():
        expected |= {f"{n}/{part}" for part in KINDS[d["kind"]].parts}
    if quantizer.scaled and described:  # an empty delta has no value tensors, so no scales
        expected.add(SCALES)
    if set(records) != expected:
        raise CodecError("tensors in the container do not match the declared entries")
    tensors = read_tensors(raw, records)
    values_of = _Values(tensors, quantizer, _scales_by_key(tensors, quantizer))
    positions = _sparse_positions(described, tensors)
    positions.update(_known_masks(described, known or {}))
    entries = {name: _build(name, d, values_of, positions.get(name)) for name, d in described.items()}
    return Decoded(Delta(entries), dict(meta))


def _describe(entry: Entry) -> dict[str, Any]:
    if isinstance(entry, Dense):
        return {"kind": "dense", "shape": list(entry.shape)}
    if isinstance(entry, Sparse):
        return {"kind": "sparse", "shape": list(entry.shape), "count": entry.count}
    if isinstance(entry, SeededMask):
        return {"kind": "seeded", "shape": list(entry.shape), "seed": entry.seed, "keep": entry.keep}
    if isinstance(entry, BaseMask):
        return {"kind": "base-mask", "shape": list(entry.shape), "spec": entry.spec}
    if isinstance(entry, LowRank):
        return {"kind": "low-rank", "shape": list(entry.shape), "rank": entry.a.shape[0]}
    if isinstance(entry, SingularOffsets):
        return {"kind": "singular", "shape": list(entry.shape), "rank": entry.count}
    raise TypeError(f"cannot encode entry of type {type(entry).__name__}")


def _decompress(data: bytes, limits: Limits, max_entries: int) -> bytearray:
    """The frame's content, once its declared size, checksum and container header size pass."""
    if len(data) > limits.max_bytes:
        raise CodecError(f"payload of {len(data)} bytes exceeds the limit of {limits.max_bytes}")
    try:
        frame = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as error:
        raise CodecError(f"not a zstd frame: {error}") from error
    if frame.content_size == zstandard.CONTENTSIZE_UNKNOWN:
        raise CodecError("zstd frame does not declare its content size")
    if frame.content_size > limits.max_bytes:
        raise CodecError(f"declared size {frame.content_size} exceeds the limit of {limits.max_bytes}")
    bound = limits.expansion_bound(len(data))
    if bound is not None and frame.content_size > bound:
        raise CodecError(f"declared size {frame.content_size} is over {bound}: a dense fp32 model plus "
                         f"{limits.max_expansion} times the {len(data)} bytes sent")
    if not frame.has_checksum:
        raise CodecError("zstd frame carries no checksum")
    length = _frame_length(data, frame.has_checksum)
    if length != len(data):
        raise CodecError("zstd frame is cut short" if length > len(data) else "bytes follow the zstd frame")
    raw = bytearray(frame.content_size)  # writable, so the decoded tensors can be views of it
    view = memoryview(raw)
    try:
        with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False) as reader:
            got = _read_into(reader, view[:8])
            header_size(bytes(view[:got]), frame.content_size, max_entries)  # before decompressing it all
            got += _read_into(reader, view[got:])
            beyond = reader.read(1)  # the frame's end, where its checksum is checked
    except zstandard.ZstdError as error:
        raise CodecError(f"corrupt zstd frame: {error}") from error
    if got != frame.content_size or beyond:
        raise CodecError("decompressed size differs from the declared size")
    return raw


def _read_into(reader: Any, view: memoryview) -> int:
    """Decompressed bytes read into ``view`` until it is full or the frame ends; how many."""
    got = 0
    while got < len(view):
        count = reader.readinto(view[got:])
        if not count:
            break
        got += count
    return got


def _frame_length(data: bytes, has_checksum: bool) -> int:
    """How many bytes the zstd frame that starts ``data`` spans, from its block headers
    (:func:`fedelta.common.kernels.zstd_frame_end`), so that bytes after it are refused without decompressing
    into a copy; more than ``len(data)`` when its blocks run past the end."""
    try:
        start = zstandard.frame_header_size(data)
    except zstandard.ZstdError as error:
        raise CodecError(f"corrupt zstd frame: {error}") from error
    end = zstd_frame_end(np.frombuffer(data, dtype=np.uint8), start, 4 if has_checksum else 0)
    if end == RESERVED_BLOCK:
        raise CodecError("zstd frame holds a block of the reserved type")
    return len(data) + 1 if end < 0 else end


def _container_tensors(tensors: dict[str, torch.Tensor | Encoded]) -> dict[str, torch.Tensor]:
    """Stored tensors by key, plus one ``scales`` tensor when the value type is scaled."""
    out: dict[str, torch.Tensor] = {}
    scales = []
    for key in sorted(tensors):
        item = tensors[key]
        if isinstance(item, Encoded):
            out[key] = item.stored
            if item.scale is not None:
                scales.append(item.scale.reshape(1))
        else:
            out[key] = item
    if scales:
        out[SCALES] = torch.cat(scales)
    return out


def _value_keys(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted(key for key in tensors if "/" in key and not key.endswith("/indices"))


def _scales_by_key(tensors: Mapping[str, torch.Tensor], quantizer: Quantizer) -> dict[str, torch.Tensor]:
    if not quantizer.scaled or SCALES not in tensors:
        return {}
    scales, keys = tensors[SCALES], _value_keys(tensors)
    if scales.dtype != torch.float32 or scales.dim() != 1 or scales.numel() != len(keys):
        raise CodecError(f"{SCALES} must be a 1-D fp32 tensor with one scale per value tensor ({len(keys)})")
    if not torch.isfinite(scales).all():
        raise CodecError(f"{SCALES} holds non-finite values")
    return {key: scales[i : i + 1] for i, key in enumerate(keys)}


@dataclass(frozen=True)
class _Values:
    """The container's tensors, read back through the declared value type."""

    tensors: Mapping[str, torch.Tensor]
    quantizer: Quantizer
    scales: Mapping[str, torch.Tensor]

    def read(self, name: str, key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        stored = self.tensors[key]
        if stored.dtype != self.quantizer.storage or (shape is None and stored.dim() != 1):
            raise CodecError(f"entry {name!r}: {key} must be a 1-D {self.quantizer.storage} tensor")
        if shape is not None and tuple(stored.shape) != shape:
            raise CodecError(f"entry {name!r}: {key} has shape {tuple(stored.shape)}, expected {shape}")
        try:
            return self.quantizer.decode(stored, self.scales.get(key))
        except ValueError as error:
            raise CodecError(f"entry {name!r}: {error}") from error


def _sparse_positions(described: Mapping[str, dict[str, Any]], tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The decoded indices of every sparse entry, by name."""
    positions = {}
    for name, d in described.items():
        if d["kind"] != "sparse":
            continue
        gaps = tensors[f"{name}/indices"]
        if gaps.dtype != torch.uint8 or gaps.dim() != 1:
            raise CodecError(f"entry {name!r}: indices must be a 1-D uint8 tensor")
        positions[name] = decode_index_gaps(gaps.numpy(), d["count"], prod(d["shape"]))
    return positions


def _known_masks(described: Mapping[str, dict[str, Any]], known: Mapping[str, Entry]) -> dict[str, torch.Tensor]:
    """The positions of each described seeded entry that ``known`` holds with the same shape, seed and keep."""
    found = {}
    for name, d in described.items():
        entry = known.get(name)
        if (d["kind"] == "seeded" and isinstance(entry, SeededMask)
                and (entry.shape, entry.seed, entry.keep) == (tuple(d["shape"]), d["seed"], d["keep"])):
            found[name] = entry.positions()
    return found


def _build(name: str, d: dict[str, Any], values_of: _Values,
           positions: np.ndarray | torch.Tensor | None = None) -> Entry:
    shape = tuple(d["shape"])
    if d["kind"] == "low-rank":
        rank = d["rank"]
        a = values_of.read(name, f"{name}/a", (rank, shape[1]))
        b = values_of.read(name, f"{name}/b", (shape[0], rank))
        return LowRank(a, b)
    values = values_of.read(name, f"{name}/values")
    if d["kind"] == "base-mask":
        if values.numel() > prod(shape):
            raise CodecError(f"entry {name!r}: more values than positions")
        return BaseMask(shape, d["spec"], values)
    if d["kind"] == "singular":
        if values.numel() != d["rank"]:
            raise CodecError(f"entry {name!r}: {values.numel()} offsets for rank {d['rank']}")
        return SingularOffsets(shape, values)
    if d["kind"] == "dense":
        if values.numel() != prod(shape):
            raise CodecError(f"entry {name!r}: {values.numel()} values for shape {shape}")
        return Dense(values.reshape(shape))
    if d["kind"] == "sparse":
        if positions is None or values.numel() != d["count"]:
            raise CodecError(f"entry {name!r}: indices and values disagree")
        return Sparse(shape, torch.from_numpy(positions), values)
    numel = prod(shape)
    count = kept_count(numel, d["keep"])
    if values.numel() != count:
        raise CodecError(f"entry {name!r}: {values.numel()} values for a mask of {count}")
    return SeededMask(shape, name, d["seed"], d["keep"], values, positions)  # unknown positions are drawn on use


def encode_index_gaps(indices: np.ndarray) -> np.ndarray:
    """Strictly increasing int64 indices as Golomb-Rice coded gaps (see :mod:`fedelta.common.rice`)."""
    return encode_indices(indices)


def decode_index_gaps(data: np.ndarray, count: int, numel: int) -> np.ndarray:
    """Inverse of :func:`encode_index_gaps`; checks the count, lengths and that every index is < numel."""
    try:
        return decode_indices(data, count, numel)
    except IndexCodingError as error:
        raise CodecError(str(error)) from error
