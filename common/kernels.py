"""Compiled loops (numba) for per-entry work whose numpy form pays more in fixed cost per call, or in passes
over temporaries, than in arithmetic: decoding Rice-coded indices, adding scaled values at given positions,
checking values finite, walking a seeded mask's permutation and putting its positions in order.

Each kernel is one plain loop with IEEE arithmetic (no fast-math, so no fused
multiply-add): the results equal numpy's to the bit. numba is imported and a
kernel compiled on its first call, so a process that never calls one pays
neither; compiled code is cached beside this file (``__pycache__``), so only
the first process on a machine compiles, and later ones load it (about 0.5 s
for numba and the first kernel, a few milliseconds for each further one).
numba checks no index: the callers check what a kernel relies on (its
docstring says what), and a kernel that writes at positions it is given
checks each before the first write.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np


def compiled(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` compiled by numba (no Python objects, no GIL, cached on disk) when first called."""
    kernel: Callable[..., Any] | None = None

    @functools.wraps(function)
    def call(*args: Any) -> Any:
        nonlocal kernel
        if kernel is None:
            import numba

            kernel = numba.njit(cache=True, nogil=True)(function)
        return kernel(*args)

    return call


LEADING_ZEROS = np.array([8 - value.bit_length() for value in range(256)], dtype=np.int64)  # of a byte; 8 for 0
LEADING_ZEROS.setflags(write=False)  # compiled in as a constant
LOW_BITS_KEPT = (1 << 56) - 1  # the low-bit buffer holds at most 55 unread bits (b <= 48, refilled by bytes)


@compiled
def rice_decode(data: np.ndarray, count: int, b: int, low_end: int, out: np.ndarray) -> tuple[int, int]:
    """Decode Rice-coded gaps (layout of :mod:`fedelta.common.rice`, parameter ``b`` <= 48, low bits ending at
    byte ``low_end``) into ``out`` as indices, at most ``count`` of them.

    Returns the number of 1 bits the unary part holds and the bit just after
    the last of them, counted from the unary part's start: ``out`` holds the
    set exactly when the first is ``count``. The caller checks the lengths
    first (:func:`fedelta.common.rice.decode_indices`), so every low field lies
    inside ``data``, and gives ``out`` room for ``count`` indices.
    """
    end = data.size * 8
    unary_start = low_end * 8
    at = unary_start  # the next unary bit
    low_next = 1  # the next byte of low bits to load: the fields start after the byte that holds b
    low_buffer = 0  # loaded low bits not read yet, in its bottom ``low_loaded`` bits
    low_loaded = 0
    low_mask = (1 << b) - 1
    previous = -1
    found = 0
    last = unary_start
    zeros = 0  # unary zeros since the last 1: the quotient of the gap being read
    while at < end:
        byte = (data[at >> 3] << (at & 7)) & 0xFF  # this byte's unread bits, moved to the top
        if byte == 0:
            zeros += 8 - (at & 7)
            at += 8 - (at & 7)
            continue
        skipped = LEADING_ZEROS[byte]
        zeros += skipped
        at += skipped + 1
        last = at
        if found < count:
            while low_loaded < b:
                low_buffer = ((low_buffer << 8) | data[low_next]) & LOW_BITS_KEPT
                low_next += 1
                low_loaded += 8
            low_loaded -= b
            previous += 1 + ((zeros << b) | ((low_buffer >> low_loaded) & low_mask))
            out[found] = previous
        zeros = 0
        found += 1
    return found, last - unary_start


@compiled
def scatter_add_scaled(flat: np.ndarray, positions: np.ndarray, values: np.ndarray, scale: float) -> int:
    """``flat[positions[i]] += scale * values[i]`` for each i in order, the product in the values' dtype.

    Returns -1, or the first i whose position lies outside ``flat``: then
    nothing was written, since every position is checked before the first
    addition.
    """
    size = flat.size
    for i in range(positions.size):
        if positions[i] < 0 or positions[i] >= size:
            return i
    for i in range(positions.size):
        flat[positions[i]] += scale * values[i]
    return -1


@compiled
def floats_finite(values: np.ndarray) -> bool:
    """Whether no value of an fp32 or fp64 array is infinite or NaN."""
    for i in range(values.size):
        if not np.isfinite(values[i]):
            return False
    return True


@compiled
def exponent_never_full(bits: np.ndarray, exponent: int) -> bool:
    """Whether no 16-bit float, given by its bits, has every ``exponent`` bit set (the non-finite ones)."""
    for i in range(bits.size):
        if bits[i] & exponent == exponent:
            return False
    return True


@compiled
def seeded_walk(numel: int, rows: int, cols: int, round_keys: np.ndarray, shifts: np.ndarray,
                multipliers: np.ndarray, last_shift: int, out: np.ndarray) -> None:
    """``out[i]`` = the image of ``i`` under the seeded masks' keyed permutation of the grid ``rows x cols``,
    applied again until it lands below ``numel`` (see :func:`fedelta.common.entries.seeded_positions`).

    All arithmetic is on uint64, wrapping as the integer definition does:
    each Feistel round adds splitmix64 (``shifts``, ``multipliers``, then
    ``last_shift``) of one half plus the round key, scaled to the other
    half's range by a 32-bit multiply-shift, to the other half.
    """
    bound = np.uint64(numel)
    row_count = np.uint64(rows)
    col_count = np.uint64(cols)
    high = np.uint64(32)
    last = np.uint64(last_shift)
    for i in range(out.size):
        image = np.uint64(i)
        while True:
            left = image // col_count
            right = image % col_count
            modulus = row_count
            other = col_count
            for r in range(round_keys.size):
                mixed = right + round_keys[r]
                for step in range(shifts.size):
                    mixed = (mixed ^ (mixed >> shifts[step])) * multipliers[step]
                mixed ^= mixed >> last
                mixed = (((mixed >> high) * modulus) >> high) + left  # both below modulus: less than twice it
                left, right = right, mixed - modulus if mixed >= modulus else mixed
                modulus, other = other, modulus
            image = left * col_count + right
            if image < bound:
                break
        out[i] = image


DE_BRUIJN = 0x03F79D71B4CB0A89  # (lowest set bit * this) >> 58 is distinct for each of the 64 bits
BIT_AT = np.zeros(64, dtype=np.int64)  # which bit, by that product
BIT_AT[[((1 << bit) * DE_BRUIJN & ((1 << 64) - 1)) >> 58 for bit in range(64)]] = np.arange(64)
BIT_AT.setflags(write=False)  # compiled in as a constant


@compiled
def sorted_through_bitmap(positions: np.ndarray, numel: int, out: np.ndarray) -> int:
    """``out`` = the distinct values of ``positions`` in increasing order, by setting their bits in a bitmap of
    ``numel`` bits and reading the set bits back word by word; ``out`` holds ``positions.size`` values.

    Returns how many were written: ``positions.size`` when they are
    distinct, fewer when some repeat, and -1 (nothing written) when one lies
    outside ``0 .. numel - 1``.
    """
    for i in range(positions.size):
        if positions[i] < 0 or positions[i] >= numel:
            return -1
    bitmap = np.zeros((numel + 63) // 64, dtype=np.uint64)
    one = np.uint64(1)
    de_bruijn = np.uint64(DE_BRUIJN)
    top = np.uint64(58)
    for i in range(positions.size):
        position = np.int64(positions[i])
        bitmap[position >> 6] |= one << np.uint64(position & 63)
    written = 0
    for index in range(bitmap.size):
        word = bitmap[index]
        while word:
            lowest = word & (~word + one)
            out[written] = index * 64 + BIT_AT[(lowest * de_bruijn) >> top]
            written += 1
            word ^= lowest
    return written
