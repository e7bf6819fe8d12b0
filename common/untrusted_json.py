"""JSON from untrusted bytes: size and nesting checked before parsing; no duplicate keys, huge numbers or NaN."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Any

MAX_INT_DIGITS = 20  # also the longest run of digits a number may have (a float's repr has at most 17)
_STRING = re.compile(rb'"[^"]*"')
_LONG_NUMBER = re.compile(rb"[0-9]{%d,}" % (MAX_INT_DIGITS + 1))
_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")


class UntrustedJSONError(ValueError):
    """Text that is not JSON within the given bounds."""


def loads(text: bytes, *, max_bytes: int, max_depth: int) -> Any:
    """Parse UTF-8 JSON ``text`` of at most ``max_bytes`` nested at most ``max_depth`` deep.

    No number has a run of more than :data:`MAX_INT_DIGITS` digits, floats are
    finite, and an object may not name a key twice; anything else raises
    :class:`UntrustedJSONError`. Digits and brackets are counted outside
    strings before parsing, so the parser reads integers at its own speed.
    """
    if len(text) > max_bytes:
        raise UntrustedJSONError(f"{len(text)} bytes of JSON, more than {max_bytes}")
    bare = _outside_strings(text)
    if not _brackets_within(bare, max_depth):
        raise UntrustedJSONError(f"JSON nested deeper than {max_depth} (or unbalanced)")
    long_number = _LONG_NUMBER.search(bare)
    if long_number:
        raise UntrustedJSONError(f"a number of {len(long_number.group())} digits in a row, more than {MAX_INT_DIGITS}")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UntrustedJSONError(f"not UTF-8 at byte {error.start}") from error
    try:
        return json.loads(
            decoded, object_pairs_hook=_unique_keys, parse_float=_finite_float, parse_constant=_no_constant,
        )
    except UntrustedJSONError:
        raise
    except ValueError as error:  # not JSON, or (past a syntax error the counts above missed) a number too long
        raise UntrustedJSONError(f"not JSON: {error}") from error


def nested_within(text: bytes, depth: int) -> bool:
    """Whether the brackets of ``text`` outside strings balance and nest at most ``depth`` deep.

    Linear and without recursion: escaped backslashes and quotes are dropped,
    then strings, then every other byte but brackets; each of ``depth`` passes
    removes the innermost pairs, so exactly the sequences within ``depth`` end
    up empty. Up to the first syntax error this sees the brackets a JSON parser
    sees, so a parser never nests deeper on text that passes.
    """
    return _brackets_within(_outside_strings(text), depth)


def _outside_strings(text: bytes) -> bytes:
    """``text`` without its strings (escaped backslashes and quotes dropped first)."""
    return _STRING.sub(b"", text.replace(b"\\\\", b"").replace(b'\\"', b""))


def _brackets_within(bare: bytes, depth: int) -> bool:
    brackets = bare.translate(_SQUARE, _NOT_BRACKETS)
    for _ in range(depth):
        brackets = brackets.replace(b"[]", b"")
    return not brackets


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        twice = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise UntrustedJSONError(f"key {twice!r} appears twice")
    return out


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UntrustedJSONError(f"number {text[:40]!r} is out of range")
    return value


def _no_constant(text: str) -> float:
    raise UntrustedJSONError(f"{text} is not a JSON number")
