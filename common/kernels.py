"""Compiled loops (numba) for per-entry work whose numpy form pays more in fixed cost per call, or in passes
over temporaries, than in arithmetic: coding and decoding Rice-coded indices, finding where a zstd frame ends,
adding scaled values at given positions, checking values finite, walking a seeded mask's permutation and putting
its positions in order.

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


FINITE_BLOCK = 4096  # elements checked between looks at the result: a loop without a branch, which vectorises


@compiled
def exponent_never_full(bits: np.ndarray, exponent: int) -> bool:
    """Whether no float, given by its bits as integers of its width, has every ``exponent`` bit set (the
    infinite and NaN ones)."""
    for start in range(0, bits.size, FINITE_BLOCK):
        full = False
        for i in range(start, min(start + FINITE_BLOCK, bits.size)):
            full |= (bits[i] & exponent) == exponent
        if full:
            return False
    return True


@compiled
def seeded_walk(numel: int, rows: int, cols: int, round_keys: np.ndarray, shifts: np.ndarray,
                multipliers: np.ndarray, last_shift: int, out: np.ndarray) -> None:
    """``out[i]`` = the image of ``i`` under the seeded masks' keyed permutation of the grid ``rows x cols``,
    applied again until it lands below ``numel`` (see :func:`fedelta.common.entries.seeded_positions`).

    All arithmetic is on uint64, wrapping as the integer definition does:
    each of the 4 Feistel rounds (``round_keys``) adds splitmix64 (2 steps of
    ``shifts`` and ``multipliers``, then ``last_shift``) of one half plus the
    round key, scaled to the other half's range by a 32-bit multiply-shift,
    to the other half. Every point is permuted once in a loop over the grid's
    rows and columns, with no division and the rounds unrolled, so that it
    vectorises; the few points whose image lies at or past ``numel`` are
    walked on one by one afterwards (``out`` is signed: -1 marks them).
    """
    if round_keys.size != 4 or shifts.size != 2 or multipliers.size != 2:
        raise ValueError("the seeded walk takes 4 round keys and 2 splitmix steps")
    bound = np.uint64(numel)
    row_count = np.uint64(rows)
    col_count = np.uint64(cols)
    high = np.uint64(32)
    last = np.uint64(last_shift)
    key_0, key_1, key_2, key_3 = round_keys[0], round_keys[1], round_keys[2], round_keys[3]
    shift_0, shift_1 = shifts[0], shifts[1]
    multiplier_0, multiplier_1 = multipliers[0], multipliers[1]

    def permuted(left, right):  # noqa: ANN001, ANN202 - inlined by numba
        modulus, other = row_count, col_count
        for r in range(4):
            mixed = right + (key_0 if r == 0 else key_1 if r == 1 else key_2 if r == 2 else key_3)
            mixed = (mixed ^ (mixed >> shift_0)) * multiplier_0
            mixed = (mixed ^ (mixed >> shift_1)) * multiplier_1
            mixed ^= mixed >> last
            mixed = (((mixed >> high) * modulus) >> high) + left  # both below modulus: less than twice it
            left, right = right, mixed - modulus if mixed >= modulus else mixed
            modulus, other = other, modulus
        return left * col_count + right

    count = out.size
    for row in range((count + cols - 1) // cols):
        start = row * cols
        for i in range(start, min(start + cols, count)):
            image = permuted(np.uint64(row), np.uint64(i - start))
            out[i] = np.int64(image) if image < bound else np.int64(-1)
    for i in range(count):
        if out[i] < 0:
            image = permuted(np.uint64(i) // col_count, np.uint64(i) % col_count)
            while image >= bound:
                image = permuted(image // col_count, image % col_count)
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


SMALL_GAPS = 256  # gaps below this are counted by value and shifted once per value instead of once per gap


@compiled
def nonzero_gap_sums(bits: np.ndarray, words: np.ndarray, sums: np.ndarray) -> int:
    """Rice-code statistics of the positions i where ``bits[i]`` is not 0: each gap (i minus the position before
    it minus 1; the first gap is i) adds ``gap >> b`` into ``sums[b]`` for every b below ``sums.size``.

    Returns how many positions there are, and leaves them in ``words`` (room
    for one bit per element) as a bitmap: bit j of ``words[w]`` is set when
    ``bits[64 w + j]`` is not 0. The bitmap is built 64 elements at a time
    without a branch per element, and the positions are read off its set bits.
    """
    one = np.uint64(1)
    full = bits.size // 64
    for w in range(full):
        base = w * 64
        word = np.uint64(0)
        for j in range(64):
            word |= np.uint64(bits[base + j] != 0) << np.uint64(j)
        words[w] = word
    if full < words.size:
        word = np.uint64(0)
        for j in range(bits.size - full * 64):
            word |= np.uint64(bits[full * 64 + j] != 0) << np.uint64(j)
        words[full] = word
    de_bruijn = np.uint64(DE_BRUIJN)
    top = np.uint64(58)
    small = np.zeros(SMALL_GAPS, dtype=np.int64)
    previous = -1
    count = 0
    for w in range(words.size):
        word = words[w]
        while word:
            lowest = word & (~word + one)
            word ^= lowest
            position = w * 64 + BIT_AT[(lowest * de_bruijn) >> top]
            gap = position - previous - 1
            previous = position
            count += 1
            if gap < SMALL_GAPS:
                small[gap] += 1
            else:
                b = 0
                while gap and b < sums.size:
                    sums[b] += gap
                    gap >>= 1
                    b += 1
    for gap in range(1, SMALL_GAPS):
        b = 0
        shifted = gap
        while shifted and b < sums.size:
            sums[b] += small[gap] * shifted
            shifted >>= 1
            b += 1
    return count


@compiled
def rice_encode_nonzero(words: np.ndarray, b: int, out: np.ndarray, low_start: int, unary_start: int,
                        values: np.ndarray, target: np.ndarray) -> None:
    """Rice-code the positions of the bitmap ``words`` (see :func:`nonzero_gap_sums`) into ``out`` (zeroed;
    layout of :mod:`fedelta.common.rice`): each gap's ``b`` low bits, most significant first, from byte
    ``low_start``; its quotient in unary (that many 0 bits, then a 1) from byte ``unary_start``.

    Where ``values`` is not empty, each value at a position is also added
    into ``target`` there (a plain IEEE addition in the values' dtype) and
    moved to the front of ``values``, in order. The caller sizes ``out`` from
    the gaps' statistics and gives ``values`` and ``target`` the bitmap's
    elements, so every read and write lies inside them.
    """
    one = np.uint64(1)
    de_bruijn = np.uint64(DE_BRUIJN)
    top = np.uint64(58)
    packing = values.size > 0
    low_mask = (1 << b) - 1
    low_at = low_start  # the next byte of low bits to write
    pending = 0  # low bits not written yet, in the bottom ``held`` bits (at most 7 + 48)
    held = 0
    unary_at = unary_start * 8
    previous = -1
    kept = 0
    for w in range(words.size):
        word = words[w]
        while word:
            lowest = word & (~word + one)
            word ^= lowest
            position = w * 64 + BIT_AT[(lowest * de_bruijn) >> top]
            gap = position - previous - 1
            previous = position
            if b:
                pending = (pending << b) | (gap & low_mask)
                held += b
                while held >= 8:
                    held -= 8
                    out[low_at] = (pending >> held) & 0xFF
                    low_at += 1
                pending &= (1 << held) - 1
            unary_at += gap >> b
            out[unary_at >> 3] |= np.uint8(0x80 >> (unary_at & 7))
            unary_at += 1
            if packing:
                value = values[position]
                target[position] += value
                values[kept] = value
                kept += 1
    if held:
        out[low_at] = (pending << (8 - held)) & 0xFF


RESERVED_BLOCK = -2  # what :func:`zstd_frame_end` returns for a block of the reserved type


@compiled
def zstd_frame_end(data: np.ndarray, at: int, checksum_bytes: int) -> int:
    """Where the zstd frame whose first block header is at byte ``at`` of ``data`` ends: past its last block
    (each block a 3-byte little-endian header, bit 0 the last-block flag, bits 1-2 its type, the rest its
    size; a run-length block holds one byte, the others their size) and ``checksum_bytes``.

    Returns -1 when the blocks run past the end of ``data`` and
    :data:`RESERVED_BLOCK` for a block of type 3; nothing is decompressed.
    """
    while at + 3 <= data.size:
        header = np.int64(data[at]) | (np.int64(data[at + 1]) << 8) | (np.int64(data[at + 2]) << 16)
        kind = (header >> 1) & 3
        if kind == 3:
            return RESERVED_BLOCK
        at += 3 + (1 if kind == 1 else header >> 3)
        if header & 1:
            return at + checksum_bytes
    return -1
