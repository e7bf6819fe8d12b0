"""The wire format's container header, read from untrusted bytes and checked before anything is built.

A container is safetensors: an 8-byte little-endian header size, the header
(JSON: ``__metadata__`` plus one record per tensor: dtype, shape, data
offsets) and the tensors' bytes. The metadata's ``entries`` (JSON) declares
each entry's kind, shape and its kind's parameters. Both JSON texts are
bounded in size (by the number of entries allowed) and nesting before they
are parsed; every value is type-checked and every integer range-checked
against :class:`Limits` (and, when given, the model's tensor shapes) here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np
import torch

from fedelta.common.entries import Shape
from fedelta.common.untrusted_json import UntrustedJSONError, loads

FORMAT = "fedelta-delta/4"
# Earlier formats: the same container, but their seeded masks drew other positions (/3: a Feistel network
# over the smallest power of four that holds the tensor; /2: position by position over the whole tensor).
# Their other entry kinds read the same (stores written by them stay readable); their seeded entries are
# refused.
EARLIER_FORMATS = ("fedelta-delta/3", "fedelta-delta/2")
READABLE_FORMATS = (FORMAT, *EARLIER_FORMATS)
MAX_ENTRIES = 4096
HEADER_BYTES = 64 << 10
HEADER_BYTES_PER_ENTRY = 2 << 10
MAX_JSON_DEPTH = 3
MAX_DIMS = 8
MAX_SPEC_CHARS = 256
MAX_NAME_CHARS = 512
DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1}
# How each codec dtype is read: numpy's dtype of the same width, then the torch dtype to view it as where
# numpy has none (bf16).
READ_AS = {"F32": (np.float32, None), "F16": (np.float16, None), "BF16": (np.int16, torch.bfloat16),
           "I8": (np.int8, None), "U8": (np.uint8, None)}
TORCH_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int8: "I8",
                torch.uint8: "U8"}
RECORD_FIELDS = {"dtype", "shape", "data_offsets"}
UPLOAD_EXPANSION = 1024  # honest uploads measured up to 208 (ternary, no pruning, untouched embedding rows)


class CodecError(ValueError):
    """Bytes that are not a valid fedelta delta."""


@dataclass(frozen=True)
class Limits:
    """Hard bounds for decoding untrusted bytes.

    ``max_expansion`` (0: no bound) refuses a zstd frame that declares more
    than that many times its own size, plus a dense fp32 copy of
    ``max_elements`` values, once decompressed: :meth:`expansion_bound`.
    """

    max_bytes: int
    max_elements: int
    max_expansion: int = 0

    @classmethod
    def for_model(cls, num_params: int) -> Limits:
        """Room for a full fp32 snapshot plus explicit indices, and no more."""
        return cls(max_bytes=9 * num_params + (16 << 20), max_elements=num_params)

    def expansion_bound(self, sent: int) -> int | None:
        """The most bytes ``sent`` compressed bytes may declare, or ``None`` when expansion is not bounded."""
        return self.max_expansion * sent + 4 * self.max_elements if self.max_expansion else None


@dataclass(frozen=True)
class Kind:
    """An entry kind: its container tensors, its parameters (name -> JSON type) and their range check.

    ``check(declared, shape)`` returns what is wrong with the parameters, or ``""``;
    ``formats`` are the container formats whose entries of this kind mean what this reader makes of them.
    """

    parts: tuple[str, ...]
    fields: Mapping[str, type] = field(default_factory=dict)
    check: Callable[[Mapping[str, Any], list[int]], str] = lambda declared, shape: ""
    formats: tuple[str, ...] = READABLE_FORMATS


def _seeded(declared: Mapping[str, Any], shape: list[int]) -> str:
    seed, keep = declared["seed"], declared["keep"]
    if not 0 <= seed < 2**64:
        return f"seed {seed} out of range"
    return "" if 0.0 < keep <= 1.0 else f"keep {keep} not in (0, 1]"


def _sparse(declared: Mapping[str, Any], shape: list[int]) -> str:
    count = declared["count"]
    return "" if 0 <= count <= prod(shape) else f"count {count} out of range for shape {shape}"


def _ranked(declared: Mapping[str, Any], shape: list[int]) -> str:
    rank = declared["rank"]
    return "" if len(shape) == 2 and 0 < rank <= min(shape) else f"bad rank {rank} for shape {shape}"


def _masked(declared: Mapping[str, Any], shape: list[int]) -> str:
    spec = declared["spec"]
    return "" if 0 < len(spec) <= MAX_SPEC_CHARS and spec.isprintable() else f"bad mask spec {_shown(spec)}"


KINDS = {
    "dense": Kind(("values",)),
    "sparse": Kind(("values", "indices"), {"count": int}, _sparse),
    "seeded": Kind(("values",), {"seed": int, "keep": float}, _seeded, formats=(FORMAT,)),
    "base-mask": Kind(("values",), {"spec": str}, _masked),
    "low-rank": Kind(("a", "b"), {"rank": int}, _ranked),
    "singular": Kind(("values",), {"rank": int}, _ranked),
}


def header_limit(max_entries: int) -> int:
    """The most bytes a header (or its entries JSON) may take for ``max_entries`` entries."""
    return HEADER_BYTES + HEADER_BYTES_PER_ENTRY * max_entries


def header_size(prefix: bytes, container_bytes: int, max_entries: int) -> int:
    """The header size a container's first 8 bytes declare, checked against its size and the entries allowed."""
    if len(prefix) < 8 or container_bytes < 8:
        raise CodecError("container too short")
    size, limit = int.from_bytes(prefix[:8], "little"), header_limit(max_entries)
    if size > container_bytes - 8:
        raise CodecError(f"container header of {size} bytes does not fit in {container_bytes - 8}")
    if size > limit:
        raise CodecError(f"container header of {size} bytes exceeds the {limit} allowed "
                         f"for at most {max_entries} entries")
    return size


def container_layout(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[bytes, list[str]]:
    """The safetensors prefix (length and header) of ``tensors`` with ``metadata``, and the order their bytes follow.

    The same input gives the same bytes: the header is JSON with sorted keys
    and no spaces, padded with spaces to a multiple of 8 bytes; the tensors
    follow largest element first, so each starts at a multiple of its element
    size, then by dtype, then by name. Tensors of one dtype lie together, so
    zstd meets each kind of data in one run (int8 values interleaved with the
    uint8 index codes of their entries compress 2-4 % worse). (The safetensors
    library writes the metadata in a different order on every call.)
    """
    order = sorted(tensors, key=lambda key: (-tensors[key].element_size(), str(tensors[key].dtype), key))
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for key in order:
        tensor = tensors[key]
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": TORCH_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, order


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A tensor's raw bytes, as the container stores them (no copy when it is contiguous)."""
    return memoryview(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())


def write_container(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """The safetensors bytes of ``tensors`` with ``metadata`` (see :func:`container_layout`)."""
    prefix, order = container_layout(tensors, metadata)
    return b"".join([prefix, *(tensor_bytes(tensors[key]) for key in order)])


def read_header(raw: bytes, max_entries: int) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """The container's metadata and its checked tensor records (key -> dtype, shape, data offsets)."""
    size = header_size(raw[:8], len(raw), max_entries)
    try:
        header = loads(raw[8 : 8 + size], max_bytes=header_limit(max_entries), max_depth=MAX_JSON_DEPTH)
    except UntrustedJSONError as error:
        raise CodecError(f"container header: {error}") from error
    if not isinstance(header, dict):
        raise CodecError("container header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
        raise CodecError(f"not a {FORMAT} container")
    if not all(isinstance(value, str) for value in meta.values()):
        raise CodecError("metadata values must be strings")
    _check_records(header, len(raw) - 8 - size)
    return meta, header


def read_tensors(raw: bytearray, records: Mapping[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The tensors of a container whose records :func:`read_header` checked, as views of ``raw`` (no copy;
    a tensor whose data does not start at a multiple of its element size is copied out)."""
    start = len(raw) - sum(record["data_offsets"][1] - record["data_offsets"][0] for record in records.values())
    data = np.frombuffer(raw, dtype=np.uint8, offset=start)
    tensors = {}
    for key, record in records.items():
        numpy_type, torch_type = READ_AS[record["dtype"]]
        begin, end = record["data_offsets"]
        piece = data[begin:end]
        if (start + begin) % DTYPE_BYTES[record["dtype"]]:
            piece = piece.copy()
        tensor = torch.from_numpy(piece.view(numpy_type).reshape(record["shape"]))
        tensors[key] = tensor if torch_type is None else tensor.view(torch_type)
    return tensors


def _check_records(records: Mapping[str, Any], data_bytes: int) -> None:
    """Every record a codec dtype, a shape and offsets that agree; the data laid out back to back."""
    spans = []
    for key, record in records.items():
        if not isinstance(record, dict) or set(record) != RECORD_FIELDS:
            raise CodecError(f"tensor {_shown(key)}: not a tensor record")
        dtype, shape, offsets = record["dtype"], record["shape"], record["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
            raise CodecError(f"tensor {_shown(key)}: dtype {_shown(dtype)} is not one the codec writes")
        if not _is_shape(shape, data_bytes):  # a dimension larger than the data is impossible, zeros beside it or not
            raise CodecError(f"tensor {_shown(key)}: bad shape {_shown(shape)}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise CodecError(f"tensor {_shown(key)}: bad data offsets {_shown(offsets)}")
        if offsets[1] - offsets[0] != prod(shape) * DTYPE_BYTES[dtype]:
            raise CodecError(f"tensor {_shown(key)}: {offsets[1] - offsets[0]} bytes for shape {shape} of {dtype}")
        spans.append((offsets[0], offsets[1]))
    end = 0
    for begin, stop in sorted(spans):
        if begin != end:
            raise CodecError(f"tensor data is not laid out back to back (a gap or overlap at byte {begin})")
        end = stop
    if end != data_bytes:
        raise CodecError(f"tensor records cover {end} of {data_bytes} data bytes")


def parse_entries(
    text: str, limits: Limits, max_entries: int, shapes: Mapping[str, Shape] | None = None, form: str = FORMAT
) -> dict[str, dict[str, Any]]:
    """The declared entries by name, each checked: kind, exactly its fields, their types and ranges.

    At most ``max_entries`` entries and ``limits.max_elements`` elements over
    all of them; no dimension above ``limits.max_elements``; an entry for a
    tensor in ``shapes`` declares exactly that tensor's shape; no kind that
    the container's format ``form`` wrote differently.
    """
    try:
        described = loads(text.encode("utf-8", "surrogatepass"), max_bytes=header_limit(max_entries),
                          max_depth=MAX_JSON_DEPTH)
    except UntrustedJSONError as error:
        raise CodecError(f"entries metadata: {error}") from error
    if not isinstance(described, dict):
        raise CodecError("entries metadata is not an object")
    if len(described) > max_entries:
        raise CodecError(f"{len(described)} entries, more than the limit of {max_entries}")
    total = 0
    for name, declared in described.items():
        total += prod(_check_entry(name, declared, limits, shapes, form))
        if total > limits.max_elements:
            raise CodecError(f"entries declare more than {limits.max_elements} elements")
    return described


def _check_entry(
    name: str, declared: Any, limits: Limits, shapes: Mapping[str, Shape] | None, form: str
) -> list[int]:
    if not _is_text(name):
        raise CodecError(f"entry {_shown(name)}: the name is not text")
    if len(name) > MAX_NAME_CHARS:
        raise CodecError(f"entry {_shown(name)}: a name of {len(name)} characters, more than {MAX_NAME_CHARS}")
    if not isinstance(declared, dict):
        raise CodecError(f"entry {_shown(name)}: not an object")
    kind = KINDS.get(declared["kind"]) if isinstance(declared.get("kind"), str) else None
    if kind is None:
        raise CodecError(f"entry {_shown(name)}: unknown kind {_shown(declared.get('kind'))}")
    if form not in kind.formats:
        raise CodecError(f"entry {_shown(name)}: a {declared['kind']} entry of {form}, which this version of "
                         f"fedelta ({FORMAT}) no longer reads; the sender must update fedelta")
    wanted = {"kind", "shape", *kind.fields}
    if set(declared) != wanted:
        raise CodecError(f"entry {_shown(name)}: fields {_shown(sorted(declared))}, expected {sorted(wanted)}")
    shape = declared["shape"]
    if not _is_shape(shape, limits.max_elements):
        raise CodecError(f"entry {_shown(name)}: bad shape {_shown(shape)}")
    if shapes is not None and name in shapes and tuple(shape) != tuple(shapes[name]):
        raise CodecError(f"entry {_shown(name)}: shape {tuple(shape)} is not the model's {tuple(shapes[name])}")
    for key, expected in kind.fields.items():
        if type(declared[key]) is not expected:
            raise CodecError(f"entry {_shown(name)}: {key} {_shown(declared[key])} is not of type {expected.__name__}")
    problem = kind.check(declared, shape)
    if problem:
        raise CodecError(f"entry {_shown(name)}: {problem}")
    return shape


def _is_shape(shape: Any, max_dim: int) -> bool:
    """A list of at most :data:`MAX_DIMS` integers (not booleans) in ``[0, max_dim]``."""
    return (isinstance(shape, list) and len(shape) <= MAX_DIMS
            and all(type(dim) is int and 0 <= dim <= max_dim for dim in shape))


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(value: object, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters, for one-line error messages."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
