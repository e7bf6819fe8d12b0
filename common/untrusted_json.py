"""JSON from untrusted bytes: size and nesting checked before parsing; no duplicate keys, huge numbers or NaN."""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_INT_DIGITS = 20
_STRING = re.compile(rb'"[^"]*"')
_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")


class UntrustedJSONError(ValueError):
    """Text that is not JSON within the given bounds."""


def loads(text: bytes, *, max_bytes: int, max_depth: int) -> Any:
    """Parse UTF-8 JSON ``text`` of at most ``max_bytes`` nested at most ``max_depth`` deep.

    Integers have at most :data:`MAX_INT_DIGITS` digits, floats are finite, and
    an object may not name a key twice; anything else raises :class:`UntrustedJSONError`.
    """
    if len(text) > max_bytes:
        raise UntrustedJSONError(f"{len(text)} bytes of JSON, more than {max_bytes}")
    if not nested_within(text, max_depth):
        raise UntrustedJSONError(f"JSON nested deeper than {max_depth} (or unbalanced)")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UntrustedJSONError(f"not UTF-8 at byte {error.start}") from error
    try:
        return json.loads(
            decoded, object_pairs_hook=_unique_keys, parse_int=_bounded_int, parse_float=_finite_float,
            parse_constant=_no_constant,
        )
    except json.JSONDecodeError as error:
        raise UntrustedJSONError(f"not JSON: {error}") from error


def nested_within(text: bytes, depth: int) -> bool:
    """Whether the brackets of ``text`` outside strings balance and nest at most ``depth`` deep.

    Linear and without recursion: escaped backslashes and quotes are dropped,
    then strings, then every other byte but brackets; each of ``depth`` passes
    removes the innermost pairs, so exactly the sequences within ``depth`` end
    up empty. Up to the first syntax error this sees the brackets a JSON parser
    sees, so a parser never nests deeper on text that passes.
    """
    bare = _STRING.sub(b"", text.replace(b"\\\\", b"").replace(b'\\"', b""))
    brackets = bare.translate(_SQUARE, _NOT_BRACKETS)
    for _ in range(depth):
        brackets = brackets.replace(b"[]", b"")
    return not brackets


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise UntrustedJSONError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise UntrustedJSONError(f"integer of {len(text.lstrip('-'))} digits, more than {MAX_INT_DIGITS}")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UntrustedJSONError(f"number {text[:40]!r} is out of range")
    return value


def _no_constant(text: str) -> float:
    raise UntrustedJSONError(f"{text} is not a JSON number")
