"""Golomb-Rice coding of strictly increasing indices: the codec's index layer (numpy, vectorised).

Each gap g = index - previous - 1 (the first gap is the index itself) is split
into a quotient g >> b, written in unary (that many 0 bits, then a 1), and the
b low bits. The Rice parameter b is chosen per tensor to minimise the total,
which for the geometric gaps of a random mask of density d <= 1/2 comes within
about 1.5 % of log2 C(n, k) bits (denser sets cost at least 1 bit per index). Layout (bytes): ``b``, then the k low-bit fields
packed MSB first, then the unary quotients packed MSB first, zero-padded.
Decoding checks every length and the padding, so a payload decodes to exactly
one index set or raises.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_RICE_BITS = 48


class IndexCodingError(ValueError):
    """Bytes that are not a valid Rice coding of the declared index count."""


FEW_FIELDS = 256  # below this many low-bit fields, reading them through single bits is cheaper
CHUNK = 1 << 16  # indices coded per step: bounds the coder's temporaries to a few MB at any count
GROUP = 1 << 13  # indices of small sets decoded together: their temporaries stay in cache


def _gaps(indices: np.ndarray, previous: int = -1) -> np.ndarray:
    """Each index minus the one before it (``previous`` before the first) minus one, as uint64."""
    gaps = np.diff(indices.astype(np.int64, copy=False), prepend=previous)
    gaps -= 1
    if gaps.min() < 0:
        raise ValueError("indices must be strictly increasing and non-negative")
    return gaps.view(np.uint64)


class RiceCost:
    """The coded size of an index set for every Rice parameter, summed over chunks of it given in order."""

    def __init__(self) -> None:
        self.count = 0
        self.previous = -1
        self._shifted_sums = [0] * (MAX_RICE_BITS + 1)  # sum of gaps >> b for each b, as Python ints

    def add(self, indices: np.ndarray) -> None:
        """The next indices of the set, all above the ones added before."""
        if indices.size == 0:
            return
        gaps = _gaps(indices, self.previous)
        self.previous = int(indices[-1])
        self.count += gaps.size
        top = min(MAX_RICE_BITS, int(gaps.max()).bit_length())
        scratch = np.empty_like(gaps)
        for b in range(top + 1):
            self._shifted_sums[b] += int(np.right_shift(gaps, np.uint64(b), out=scratch).sum())

    def parameter(self) -> int:
        """The b that minimises count * (b + 1) + sum(gaps >> b) (the smallest such b)."""
        costs = [self.count * (b + 1) + shifted for b, shifted in enumerate(self._shifted_sums)]
        return int(np.argmin(costs))

    def size(self) -> int:
        """Bytes :class:`RiceWriter` writes for the set with :meth:`parameter`."""
        if self.count == 0:
            return 0
        b = self.parameter()
        unary_bits = self.count + self._shifted_sums[b]
        return 1 + _low_bits_length(self.count, b) + (unary_bits + 7) // 8


class _BitWriter:
    """Bits (one uint8 0/1 each) appended in pieces, packed MSB first, zero-padded at the end."""

    def __init__(self) -> None:
        self._packed: list[np.ndarray] = []
        self._tail = np.zeros(0, dtype=np.uint8)

    def add(self, bits: np.ndarray) -> None:
        bits = np.concatenate([self._tail, bits]) if self._tail.size else bits
        whole = bits.size - bits.size % 8
        self._packed.append(np.packbits(bits[:whole]))
        self._tail = bits[whole:]

    def bytes(self) -> np.ndarray:
        return np.concatenate([*self._packed, np.packbits(self._tail)])


class RiceWriter:
    """Rice-codes an index set given in chunks, in order, with parameter ``b`` (see :class:`RiceCost`)."""

    def __init__(self, b: int) -> None:
        self.b = b
        self.previous = -1
        self._low = _BitWriter()
        self._unary = _BitWriter()
        self._shifts = np.arange(b - 1, -1, -1, dtype=np.uint64)

    def add(self, indices: np.ndarray) -> None:
        """The next indices of the set, all above the ones added before."""
        for start in range(0, indices.size, CHUNK):
            part = indices[start : start + CHUNK]
            gaps = _gaps(part, self.previous)
            self.previous = int(part[-1])
            if self.b:
                self._low.add(((gaps[:, None] >> self._shifts) & np.uint64(1)).astype(np.uint8).reshape(-1))
            quotients = (gaps >> np.uint64(self.b)).astype(np.int64)
            ones = np.cumsum(quotients + 1) - 1
            unary = np.zeros(int(ones[-1]) + 1, dtype=np.uint8)
            unary[ones] = 1
            self._unary.add(unary)

    def finish(self) -> np.ndarray:
        """The coding: ``b``, the packed low bits, the packed unary quotients (empty for an empty set)."""
        if self.previous < 0:
            return np.zeros(0, dtype=np.uint8)
        low = self._low.bytes() if self.b else np.zeros(0, dtype=np.uint8)
        return np.concatenate([np.array([self.b], dtype=np.uint8), low, self._unary.bytes()])


def _chunks(indices: np.ndarray):
    return (indices[start : start + CHUNK] for start in range(0, indices.size, CHUNK))


def coded_size(indices: np.ndarray) -> int:
    """The bytes :func:`encode_indices` would write for ``indices``, without writing them."""
    cost = RiceCost()
    for part in _chunks(indices):
        cost.add(part)
    return cost.size()


def _low_bits_length(count: int, b: int) -> int:
    return (count * b + 7) // 8


def encode_indices(indices: np.ndarray) -> np.ndarray:
    """Rice-code strictly increasing non-negative int64 ``indices`` into uint8 bytes."""
    cost = RiceCost()
    for part in _chunks(indices):
        cost.add(part)
    writer = RiceWriter(cost.parameter())
    writer.add(indices)
    return writer.finish()


def _read_low_bits(data: np.ndarray, count: int, b: int) -> np.ndarray:
    """The ``count`` b-bit fields packed MSB first in ``data``.

    Fewer than :data:`FEW_FIELDS` fields are expanded to bits and packed
    again as 64-bit words (a few numpy calls, where the fixed cost of calls
    is what counts). Otherwise nothing is expanded: every 8 fields fill
    exactly b bytes, so fields r, r + 8, r + 16, ... start b bytes apart at
    the same bit offset: each of the 8 residues is one strided view of
    big-endian 8-byte words, shifted by one constant.
    """
    if b == 0:
        return np.zeros(count, dtype=np.uint64)
    if count < FEW_FIELDS:
        wide = np.zeros((count, 64), dtype=np.uint8)
        wide[:, 64 - b :] = np.unpackbits(data, count=count * b).reshape(count, b)
        return np.packbits(wide, axis=1).view(">u8").reshape(count).astype(np.uint64)
    padded = np.concatenate([data, np.zeros(8, dtype=np.uint8)])
    fields = np.empty(count, dtype=np.uint64)
    mask = np.uint64((1 << b) - 1)
    for r in range(min(8, count)):
        start = r * b
        words = np.ndarray(((count - r + 7) // 8,), dtype=">u8", buffer=padded, offset=start >> 3, strides=(b,))
        fields[r::8] = (words.astype(np.uint64) >> np.uint64(64 - b - (start & 7))) & mask
    return fields


def _layout(data: np.ndarray, count: int, numel: int) -> tuple[int, int]:
    """The Rice parameter of a non-empty coding and where its low bits end, once the lengths and the
    parameter's range check out."""
    if data.size < 2:
        raise IndexCodingError("index coding too short")
    b = int(data[0])
    if b > MAX_RICE_BITS or (1 << b) > 2 * max(numel, 1):
        raise IndexCodingError(f"Rice parameter {b} out of range")
    low_end = 1 + _low_bits_length(count, b)
    # every quotient is at most numel >> b and they sum to at most numel >> b, so the unary part is bounded
    most_unary = (count + (numel >> b) + 7) // 8
    unary_bytes = data.size - low_end
    if unary_bytes < 1 or unary_bytes > most_unary:
        raise IndexCodingError(f"index coding of {data.size} bytes does not fit {count} indices")
    return b, low_end


def _check_fits(data: np.ndarray, count: int, numel: int, b: int, low_end: int) -> None:
    """Zero padding after the low bits, and sums of ``count`` fields that stay far inside int64."""
    if low_end > 1 and count * b % 8 and data[low_end - 1] & ((1 << (8 - count * b % 8)) - 1):
        raise IndexCodingError("index coding has non-zero padding")
    if count > numel or count << b >= 1 << 62:
        raise IndexCodingError(f"{count} indices with Rice parameter {b} do not fit {numel} elements")


def decode_indices(data: np.ndarray, count: int, numel: int) -> np.ndarray:
    """Inverse of :func:`encode_indices`; checks lengths, padding, and that every index is < ``numel``."""
    if count == 0:
        if data.size:
            raise IndexCodingError("index bytes present for an empty entry")
        return np.zeros(0, dtype=np.int64)
    b, low_end = _layout(data, count, numel)
    unary = np.unpackbits(data[low_end:])
    ones = np.flatnonzero(unary.view(bool))  # 0 and 1 only; a bool view is searched several times faster
    if ones.size != count or unary.size - ones[-1] > 8:
        raise IndexCodingError(f"index coding holds {ones.size} values, expected {count}")
    _check_fits(data, count, numel, b, low_end)
    # Index i is the sum of gaps 0..i plus i. The quotients 0..i sum to ones[i] - i, so index i is
    # (ones[i] - i) << b, plus the low bits 0..i summed, plus i: every term is at least 0, so the
    # indices increase strictly, and the last one bounds them all. Computed in place, in three buffers.
    steps = np.arange(count, dtype=np.int64)
    indices = ones
    indices -= steps
    indices <<= b
    low = _read_low_bits(data[1:low_end], count, b).view(np.int64)
    indices += np.cumsum(low, out=low)
    indices += steps
    if indices[-1] >= numel:
        raise IndexCodingError(f"index {indices[-1]} out of range for {numel} elements")
    return indices


def decode_index_sets(codes: Sequence[np.ndarray], counts: Sequence[int], numels: Sequence[int]) -> list[np.ndarray]:
    """:func:`decode_indices` of each coding, with the same checks.

    A set of a few thousand indices costs numpy's fixed cost per call more
    than its work, so sets under :data:`GROUP` are decoded together, about
    :data:`GROUP` indices at a time, in one pass over their concatenated bits;
    larger sets are decoded alone.
    """
    decoded: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(codes)
    group: list[int] = []
    pending = 0
    for k, count in enumerate(counts):
        if count >= GROUP:
            decoded[k] = decode_indices(codes[k], count, numels[k])
            continue
        group.append(k)
        pending += count
        if pending >= GROUP:
            _decode_group(group, codes, counts, numels, decoded)
            group, pending = [], 0
    _decode_group(group, codes, counts, numels, decoded)
    return decoded


def _decode_group(group: list[int], codes: Sequence[np.ndarray], counts: Sequence[int], numels: Sequence[int],
                  decoded: list[np.ndarray]) -> None:
    """Decode the sets ``group`` names together into ``decoded``: the arithmetic of :func:`decode_indices`
    over their concatenated unary parts and low-bit fields."""
    parts, params, low_ends = [], [], []
    for k in group:
        if counts[k] == 0:
            if codes[k].size:
                raise IndexCodingError("index bytes present for an empty entry")
            continue
        b, low_end = _layout(codes[k], counts[k], numels[k])
        parts.append(k)
        params.append(b)
        low_ends.append(low_end)
    if not parts:
        return
    count = np.array([counts[k] for k in parts], dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    total = int(count.sum())
    unary = np.unpackbits(np.concatenate([codes[k][end:] for k, end in zip(parts, low_ends)]))
    unary_start = 8 * np.concatenate([[0], np.cumsum([codes[k].size - end for k, end in zip(parts, low_ends)])])
    ones = np.flatnonzero(unary.view(bool))
    found = np.diff(np.searchsorted(ones, unary_start))
    # each set's last 1 lies in its last byte: its distance from the set's end is at most 8 bits
    tail = unary_start[1:] - ones[np.maximum(np.cumsum(found) - 1, 0)] if ones.size else 0
    wrong = np.flatnonzero((found != count) | (tail > 8))
    if wrong.size:
        raise IndexCodingError(f"index coding holds {found[wrong[0]]} values, expected {count[wrong[0]]}")
    for k, b, low_end in zip(parts, params, low_ends):
        _check_fits(codes[k], counts[k], numels[k], b, low_end)
    steps = np.arange(total, dtype=np.int64) - np.repeat(first, count)
    bits = np.repeat(np.array(params, dtype=np.int64), count)
    fields = np.zeros(total, dtype=np.uint64)
    for b in set(params) - {0}:
        # Each set's low bits padded to whole groups of 8 fields (b bytes): the sets of one b form one
        # stream of b-bit fields that _read_low_bits reads in a single call.
        members = [m for m, own in enumerate(params) if own == b]
        padded = [-(-int(count[m]) // 8) * 8 for m in members]
        stream = np.concatenate([part for m, fields_in in zip(members, padded)
                                 for part in (codes[parts[m]][1:low_ends[m]],
                                              np.zeros(fields_in * b // 8 - (low_ends[m] - 1), dtype=np.uint8))])
        read = _read_low_bits(stream, sum(padded), b)
        at = 0
        for m, fields_in in zip(members, padded):
            fields[first[m]:first[m] + count[m]] = read[at:at + count[m]]
            at += fields_in
    summed = np.cumsum(fields.view(np.int64))
    summed -= np.repeat(summed[first - 1] * (first > 0), count)  # each set's own running sum
    indices = ones - np.repeat(unary_start[:-1], count)
    indices -= steps
    indices <<= bits
    indices += summed
    indices += steps
    last = indices[first + count - 1]
    numel = np.array([numels[k] for k in parts], dtype=np.int64)
    over = np.flatnonzero(last >= numel)
    if over.size:
        raise IndexCodingError(f"index {last[over[0]]} out of range for {numel[over[0]]} elements")
    for k, start, size in zip(parts, first.tolist(), count.tolist()):
        decoded[k] = indices[start:start + size]
