"""Golomb-Rice coding of strictly increasing indices: the codec's index layer (numpy, vectorised; decoding, and
coding the kept positions of a dense tensor, are compiled loops in :mod:`fedelta.common.kernels`).

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

import numpy as np

from fedelta.common.kernels import nonzero_gap_sums, rice_decode, rice_encode_nonzero

MAX_RICE_BITS = 48


class IndexCodingError(ValueError):
    """Bytes that are not a valid Rice coding of the declared index count."""


CHUNK = 1 << 16  # indices coded per step: bounds the coder's temporaries to a few MB at any count


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

    @classmethod
    def of_nonzero(cls, bits: np.ndarray) -> tuple[RiceCost, np.ndarray]:
        """The cost of the positions where ``bits`` is not 0 (the kept entries of a dense tensor seen as
        integers), in one compiled pass without listing them; with those positions as a bitmap of 64-bit
        words (one bit per element) for :func:`encode_nonzero`."""
        flat = bits.reshape(-1)
        sums = np.zeros(MAX_RICE_BITS + 1, dtype=np.int64)
        words = np.empty(-(-flat.size // 64), dtype=np.uint64)
        cost = cls()
        cost.count = int(nonzero_gap_sums(flat, words, sums))
        cost._shifted_sums = [int(total) for total in sums]
        return cost, words

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


def encode_nonzero(words: np.ndarray, cost: RiceCost, values: np.ndarray | None = None,
                   target: np.ndarray | None = None) -> np.ndarray:
    """The bytes :func:`encode_indices` writes for the positions of the bitmap ``words``, whose cost is ``cost``
    (both from :meth:`RiceCost.of_nonzero`), coded in one compiled pass without listing them.

    With ``values`` and ``target`` (flat, of the bitmap's elements), the
    same pass adds each value at a position into ``target`` and moves it to
    the front of ``values``.
    """
    if cost.count == 0:
        return np.zeros(0, dtype=np.uint8)
    if values is None or target is None:
        values = target = np.zeros(0, dtype=np.float32)
    elif not 64 * (words.size - 1) < values.size == target.size <= 64 * words.size or values.dtype != target.dtype:
        raise ValueError("values and target must be flat arrays of one dtype and the bitmap's size")
    b = cost.parameter()
    out = np.zeros(cost.size(), dtype=np.uint8)
    out[0] = b
    rice_encode_nonzero(words, b, out, 1, 1 + _low_bits_length(cost.count, b), values, target)
    return out


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


def _layout(data: np.ndarray, count: int, numel: int) -> tuple[int, int]:
    """The Rice parameter of a non-empty coding and where its low bits end, once the lengths, the
    parameter's range and the count check out (so sums of ``count`` fields stay far inside int64)."""
    if data.size < 2:
        raise IndexCodingError("index coding too short")
    b = int(data[0])
    if b > MAX_RICE_BITS or (1 << b) > 2 * max(numel, 1):
        raise IndexCodingError(f"Rice parameter {b} out of range")
    low_end = 1 + _low_bits_length(count, b)
    # every quotient is at most numel >> b and they sum to at most numel >> b, so the unary part is bounded;
    # it holds a 1 bit for each index
    most_unary = (count + (numel >> b) + 7) // 8
    unary_bytes = data.size - low_end
    if unary_bytes < 1 or unary_bytes > most_unary or count > 8 * unary_bytes:
        raise IndexCodingError(f"index coding of {data.size} bytes does not fit {count} indices")
    if count > numel or count << b >= 1 << 62 or numel >= 1 << 62:
        raise IndexCodingError(f"{count} indices with Rice parameter {b} do not fit {numel} elements")
    return b, low_end


def _check_padding(data: np.ndarray, count: int, b: int, low_end: int) -> None:
    """Zero bits after the last low-bit field."""
    if low_end > 1 and count * b % 8 and data[low_end - 1] & ((1 << (8 - count * b % 8)) - 1):
        raise IndexCodingError("index coding has non-zero padding")


def decode_indices(data: np.ndarray, count: int, numel: int) -> np.ndarray:
    """Inverse of :func:`encode_indices`; checks lengths, padding, and that every index is < ``numel``."""
    if count == 0:
        if data.size:
            raise IndexCodingError("index bytes present for an empty entry")
        return np.zeros(0, dtype=np.int64)
    b, low_end = _layout(data, count, numel)
    indices = np.empty(count, dtype=np.int64)
    found, after_last = rice_decode(data, count, b, low_end, indices)
    # the unary part ends with the byte that holds its last 1
    if found != count or 8 * (data.size - low_end) - after_last >= 8:
        raise IndexCodingError(f"index coding holds {found} values, expected {count}")
    _check_padding(data, count, b, low_end)
    if indices[-1] >= numel:  # gaps are at least 0, so the indices increase strictly and the last bounds them
        raise IndexCodingError(f"index {indices[-1]} out of range for {numel} elements")
    return indices
