"""The ways a hostile site mutates an honest upload: one function per kind of damage, chosen by weight.

Each mutator in :data:`MUTATORS` turns a payload into hostile bytes: bit flips
and truncation of the frame or of the container, header edits (kinds, shapes,
counts, dtypes, offsets, names, metadata) with values of the wrong type,
huge integers, deep nesting, duplicate keys, thousands of (zero-sized)
entries, poisoned values, compression bombs and other methods' uploads.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedelta.simulations.hostile_uploads import MARK, VALUE_NAMES, Opened, Target, container_bytes, frame, open_payload

DTYPES = ("F32", "F16", "BF16", "I8", "U8", "F64", "I64", "BOOL", "F8_E4M3", "x")
KIND_NAMES = ("dense", "sparse", "seeded", "base-mask", "low-rank", "singular")
HOSTILE_VALUES: tuple[Any, ...] = (
    [], {}, [1, 2], {"kind": "dense"}, "", "x", "dense", 0, -1, 1, 3, 2**31, 2**53 + 1, 2**63, 2**64, -(2**63),
    0.5, 1.0, -0.0, 1e-300, 1e308, True, False, None, [0, 2**63], [2**62, 4], [[1]], [0.5], ["1"], [True],
)
HOSTILE_TEXTS = (
    "1" + "0" * 4999, "9" * 21, "-" + "9" * 30, "NaN", "Infinity", "-Infinity", "1e999", "1.0e-400",
    "[" * 5 + "]" * 5, "[" * 100_000 + "]" * 100_000, '{"a":' * 1000 + "1" + "}" * 1000, '"\\ud800"',
)
Mutator = Callable[[bytes, np.random.Generator, Target], bytes]
Edit = Callable[[Opened, np.random.Generator, Target], "bytes | None"]
EntryEdit = Callable[[Opened, dict[str, Any], str, np.random.Generator, Target], str]


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _hostile(rng: np.random.Generator) -> tuple[Any, str]:
    """A hostile JSON value: ``(value, "")``, or ``(MARK, text)`` for JSON that Python would not write."""
    if rng.random() < 0.6:
        return _pick(rng, HOSTILE_VALUES), ""
    return MARK, _pick(rng, HOSTILE_TEXTS)


def _records(opened: Opened) -> list[str]:
    return sorted(key for key in opened.header if key != "__metadata__")


def _storage(opened: Opened) -> str:
    values = opened.header["__metadata__"].get("values")
    return {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}.get(values, "I8") if isinstance(values, str) else "I8"


def flip_bits(payload: bytes, rng: np.random.Generator, target: Target) -> bytes:
    if not payload:
        return payload
    data = bytearray(payload)
    for _ in range(int(rng.integers(1, 9))):
        bit = int(rng.integers(len(data) * 8))
        data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


def truncate(payload: bytes, rng: np.random.Generator, target: Target) -> bytes:
    return payload[: int(rng.integers(len(payload)))] if payload else payload


def append_bytes(payload: bytes, rng: np.random.Generator, target: Target) -> bytes:
    skippable = (0x184D2A50).to_bytes(4, "little") + (8).to_bytes(4, "little") + bytes(8)
    extra = _pick(rng, [rng.bytes(int(rng.integers(1, 64))), frame(b"x" * 10), skippable])
    return extra + payload if rng.random() < 0.3 else payload + extra


def bomb(payload: bytes, rng: np.random.Generator, target: Target) -> bytes:
    return _pick(rng, target.bombs) if target.bombs else payload


def foreign(payload: bytes, rng: np.random.Generator, target: Target) -> bytes:
    """Another method's honest upload (factors, mask values or offsets where the method expects none)."""
    return _pick(rng, target.others) if target.others else payload


def unchanged(payload: bytes, rng: np.random.Generator, target: Target) -> bytes:
    return payload


def on_container(edit: Edit) -> Mutator:
    """A mutator editing the opened container; bit flips where it does not open or ``edit`` has nothing to edit."""

    @functools.wraps(edit)
    def mutator(payload: bytes, rng: np.random.Generator, target: Target) -> bytes:
        opened = open_payload(payload)
        edited = None if opened is None else edit(opened, rng, target)
        return flip_bits(payload, rng, target) if edited is None else edited

    return mutator


def on_entry(edit: EntryEdit) -> Mutator:
    """A mutator editing the declared entries in place around one chosen entry's name; ``edit`` returns the JSON
    text for a :data:`MARK` value (or ``""``). Bit flips where there is no entry to edit."""

    @on_container
    @functools.wraps(edit)
    def container_edit(opened: Opened, rng: np.random.Generator, target: Target) -> bytes | None:
        entries = opened.entries()
        if not entries:
            return None
        raw = edit(opened, entries, _pick(rng, sorted(entries)), rng, target)
        opened.set_entries(entries, raw)
        return opened.seal()

    return container_edit


def _record(opened: Opened, rng: np.random.Generator) -> dict[str, Any] | None:
    """One tensor record of the container, or ``None`` when it has none."""
    keys = _records(opened)
    return opened.header[_pick(rng, keys)] if keys else None


@on_container
def container_flips(opened: Opened, rng: np.random.Generator, target: Target) -> bytes:
    raw = bytearray(container_bytes(json.dumps(opened.header), opened.data))
    for _ in range(int(rng.integers(1, 9))):
        raw[int(rng.integers(len(raw)))] = int(rng.integers(256))
    return frame(bytes(raw))


@on_container
def container_cut(opened: Opened, rng: np.random.Generator, target: Target) -> bytes:
    raw = container_bytes(json.dumps(opened.header), opened.data)
    return frame(raw[: int(rng.integers(len(raw)))])


@on_container
def header_size(opened: Opened, rng: np.random.Generator, target: Target) -> bytes:
    raw = container_bytes(json.dumps(opened.header), opened.data)
    size = int.from_bytes(raw[:8], "little")
    new = _pick(rng, [0, 1, 2, 7, size - 1, size + 1, len(raw), 2 * size, 2**63, 2**64 - 1])
    return frame(new.to_bytes(8, "little") + raw[8:])


@on_entry
def entry_field(opened: Opened, entries: dict[str, Any], name: str, rng: np.random.Generator, target: Target) -> str:
    """One field of one entry (or a new one) set to a value of a hostile type or range."""
    key = _pick(rng, sorted(entries[name]) + ["kind", "shape", "count", "seed", "keep", "rank", "spec", "extra"])
    entries[name][key], raw = _hostile(rng)
    return raw


@on_entry
def entry_numbers(opened: Opened, entries: dict[str, Any], name: str, rng: np.random.Generator, target: Target) -> str:
    """Plausible numbers a little off: counts, seeds, keeps and ranks nudged, keep made tiny or 1."""
    declared = entries[name]
    for key, value in declared.items():
        if type(value) is int:
            declared[key] = value + _pick(rng, [-1, 1, 2**32, -value])
        elif type(value) is float:
            declared[key] = _pick(rng, [value * (1 + 1e-9), value / 2, 1e-300, 1.0, 5e-324, 0.9999999])
    return ""


@on_entry
def shape_edit(opened: Opened, entries: dict[str, Any], name: str, rng: np.random.Generator, target: Target) -> str:
    """An entry's shape (and sometimes its tensor records' too) changed: zero dims, 2**63, dims +1, too many."""
    shape = entries[name].get("shape")
    shape = shape if isinstance(shape, list) and all(type(d) is int for d in shape) else [1]
    n = target.max_elements
    new = _pick(rng, [[0, 2**63], [2**63, 0], [0, *shape], [d + 1 for d in shape], shape[::-1], [], [1] * 9,
                      [n + 1], [-1, *shape], [int(np.prod(shape))], [0], [True] * len(shape), [n, n], [0, n + 1],
                      [2**31, 2**31], list(_pick(rng, list(target.shapes.values())))])
    entries[name]["shape"] = new
    if rng.random() < 0.3:
        for key in _records(opened):
            if key.startswith(f"{name}/"):
                opened.header[key]["shape"] = new
    return ""


@on_entry
def kind_swap(opened: Opened, entries: dict[str, Any], name: str, rng: np.random.Generator, target: Target) -> str:
    entries[name]["kind"] = _pick(rng, [*KIND_NAMES, ["dense"], {"dense": 1}, 1, None, "DENSE", ""])
    return ""


@on_container
def record_edit(opened: Opened, rng: np.random.Generator, target: Target) -> bytes | None:
    """A tensor record's dtype, shape or data offsets changed (or an extra field added)."""
    record = _record(opened, rng)
    if record is None:
        return None
    field = _pick(rng, ["dtype", "shape", "data_offsets", "extra"])
    value, raw = _hostile(rng)
    if rng.random() < 0.6 and field == "dtype":
        value, raw = _pick(rng, DTYPES), ""
    elif rng.random() < 0.6 and field in ("shape", "data_offsets"):
        begin, end = record["data_offsets"]
        value, raw = _pick(rng, [[end, begin], [begin, end + 1], [begin - 1, end], [0, end], [begin, 2**63],
                                 [begin, begin], [0.0, 4.0], [0, 2**63], [2**63, 0], [end - begin], []]), ""
    record[field] = value
    return opened.seal(raw)


@on_container
def metadata_edit(opened: Opened, rng: np.random.Generator, target: Target) -> bytes:
    meta = opened.header["__metadata__"]
    key = _pick(rng, ["format", "base", "values", "entries", "method", "extra"])
    value, raw = _hostile(rng)
    if rng.random() < 0.6:
        value, raw = _pick(rng, {
            "format": ["fedelta-delta/1", "", "FEDELTA-DELTA/2"],
            "base": ["0" * 64, "", str(meta.get("base", ""))[::-1]],
            "values": [*VALUE_NAMES, "fp64", "int4", ""],
            "entries": ["", "[]", "null", "{}", '{"a": 1}', "{" * 10, '{"x": {"kind": "dense", "shape": [0]}}'],
            "method": ["lora", "", "x" * 1000],
            "extra": ["1", "x" * 100_000],
        }[key]), ""
    if rng.random() < 0.1:
        meta.pop(key, None)
    else:
        meta[key] = value
    return opened.seal(raw)


@on_entry
def rename(opened: Opened, entries: dict[str, Any], name: str, rng: np.random.Generator, target: Target) -> str:
    """An entry moved to another model tensor, an unknown or odd name; its tensor records mostly follow."""
    new = _pick(rng, [_pick(rng, sorted(target.shapes)), "not.a.tensor", "", f"{name}/values", f"{name}\u00e9",
                      "\ud800", "x" * 10_000, "scales", name.upper()])
    entries[new] = entries.pop(name)
    if rng.random() < 0.8:
        for key in _records(opened):
            if key.startswith(f"{name}/") and key.count("/") == name.count("/") + 1:
                opened.header[f"{new}/{key.rsplit('/', 1)[1]}"] = opened.header.pop(key)
    return ""


@on_container
def duplicate_key(opened: Opened, rng: np.random.Generator, target: Target) -> bytes:
    """A name twice in the entries JSON, or a tensor record twice in the header."""
    entries = opened.entries()
    if entries and rng.random() < 0.5:
        name = _pick(rng, sorted(entries))
        first = json.dumps({name: entries[name]})[1:-1]
        opened.header["__metadata__"]["entries"] = "{" + first + ", " + json.dumps(entries)[1:]
        return opened.seal()
    key = _pick(rng, _records(opened) or ["__metadata__"])
    first = json.dumps({key: opened.header[key]})[1:-1]
    return frame(container_bytes("{" + first + ", " + json.dumps(opened.header)[1:], opened.data))


@on_container
def deep_nesting(opened: Opened, rng: np.random.Generator, target: Target) -> bytes:
    depth = int(_pick(rng, [4, 5, 8, 64, 1000, 100_000]))
    nested = "[" * depth + "1" + "]" * depth if rng.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth
    entries = opened.entries()
    if entries and rng.random() < 0.5:
        entries[_pick(rng, sorted(entries))][_pick(rng, ["shape", "kind", "extra"])] = MARK
        opened.set_entries(entries, nested)
        return opened.seal()
    place = _pick(rng, [*_records(opened), "__metadata__", "extra"])
    if place in opened.header:
        opened.header[place]["extra"] = MARK
    else:
        opened.header[place] = MARK
    return opened.seal(nested)


@on_container
def huge_integer(opened: Opened, rng: np.random.Generator, target: Target) -> bytes | None:
    """An integer of 20 to 50,000 digits in a shape, count, seed, rank or data offset."""
    digits = int(_pick(rng, [20, 21, 25, 400, 4300, 4301, 5000, 50_000]))
    number = ("-" if rng.random() < 0.2 else "") + "1" + "0" * (digits - 1)
    entries = opened.entries()
    if entries and rng.random() < 0.6:
        declared = entries[_pick(rng, sorted(entries))]
        key = _pick(rng, [k for k in declared if k != "kind"] or ["shape"])
        declared[key] = [MARK] if key == "shape" else MARK
        opened.set_entries(entries, number)
        return opened.seal()
    if not _records(opened):
        return None
    field = _pick(rng, ["shape", "data_offsets"])
    opened.header[_pick(rng, _records(opened))][field] = [MARK] if field == "shape" else [0, MARK]
    return opened.seal(number)


@on_container
def zero_sized_entries(opened: Opened, rng: np.random.Generator, target: Target) -> bytes:
    """Up to 200,000 extra entries of no elements, each with its empty tensor record."""
    count = int(rng.choice([1, 10, 1000, 5000, 200_000], p=[0.3, 0.3, 0.25, 0.13, 0.02]))
    shape = _pick(rng, [[0], [0, 2**63], [2**63, 0], [0, target.max_elements], [0, 0]])
    record = {"dtype": _storage(opened), "shape": _pick(rng, [[0], shape]), "data_offsets": [len(opened.data)] * 2}
    entries, real = opened.entries(), sorted(target.shapes)
    for i in range(count):
        name = real[i] if rng.random() < 0.5 and i < len(real) else f"zero.{i}"
        entries[name] = {"kind": "dense", "shape": shape}
        opened.header[f"{name}/values"] = record
    opened.set_entries(entries)
    return opened.seal()


@on_container
def many_entries(opened: Opened, rng: np.random.Generator, target: Target) -> bytes:
    """Empty sparse entries for every model tensor (a valid, empty update), or for thousands of unknown names."""
    names = sorted(target.shapes) if rng.random() < 0.5 else [f"extra.{i}" for i in range(int(rng.integers(1, 5000)))]
    end, entries = len(opened.data), opened.entries()
    for name in names:
        entries[name] = {"kind": "sparse", "shape": list(target.shapes.get(name, (7,))), "count": 0}
        for part, dtype in (("values", _storage(opened)), ("indices", "U8")):
            opened.header[f"{name}/{part}"] = {"dtype": dtype, "shape": [0], "data_offsets": [end, end]}
    opened.set_entries(entries)
    return opened.seal()


@on_container
def poison_values(opened: Opened, rng: np.random.Generator, target: Target) -> bytes | None:
    """NaN, infinity, extremes or out-of-range codes written into value, scale or index bytes."""
    record = _record(opened, rng)
    if record is None:
        return None
    begin, end = record["data_offsets"]
    dtype = record.get("dtype")
    width = {"F32": 4, "F16": 2, "BF16": 2}.get(dtype, 1) if isinstance(dtype, str) else 1
    patterns = {
        4: [0x7FC00000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x00000001, 0x80000000, 0x3F800000],
        2: [0x7E00, 0x7C00, 0xFC00, 0x7FC0, 0x7F80, 0x7BFF, 0x0001],
        1: [127, 128, 2, 0xFE, 0xFF, 0, 1],
    }[width]
    data, slots = bytearray(opened.data), max(0, min(end, len(opened.data)) - begin) // width
    for _ in range(int(rng.integers(1, min(slots, 50) + 1)) if slots else 0):
        at = begin + width * int(rng.integers(slots))
        data[at : at + width] = int(_pick(rng, patterns)).to_bytes(width, "little")
    opened.data = bytes(data)
    return opened.seal()


MUTATORS: dict[str, tuple[Mutator, float]] = {
    "flip-bits": (flip_bits, 1.0),
    "truncate": (truncate, 0.5),
    "append-bytes": (append_bytes, 0.5),
    "container-flips": (container_flips, 1.5),
    "container-cut": (container_cut, 0.5),
    "header-size": (header_size, 0.5),
    "entry-field": (entry_field, 2.0),
    "entry-numbers": (entry_numbers, 1.0),
    "shape-edit": (shape_edit, 1.5),
    "kind-swap": (kind_swap, 1.0),
    "record-edit": (record_edit, 1.5),
    "metadata-edit": (metadata_edit, 1.0),
    "rename": (rename, 1.0),
    "duplicate-key": (duplicate_key, 0.5),
    "deep-nesting": (deep_nesting, 0.5),
    "huge-integer": (huge_integer, 0.5),
    "zero-sized-entries": (zero_sized_entries, 0.3),
    "many-entries": (many_entries, 0.3),
    "poison-values": (poison_values, 1.5),
    "bomb": (bomb, 0.3),
    "foreign": (foreign, 0.3),
    "unchanged": (unchanged, 0.2),
}


def mutate(payload: bytes, rng: np.random.Generator, target: Target) -> tuple[str, bytes]:
    """One or two mutators, chosen by weight, applied to ``payload``: their names and the result."""
    names = list(MUTATORS)
    weights = np.array([MUTATORS[name][1] for name in names])
    chosen = list(rng.choice(names, size=1 + int(rng.random() < 0.2), p=weights / weights.sum()))
    for name in chosen:
        payload = MUTATORS[name][0](payload, rng, target)
    return "+".join(chosen), payload
