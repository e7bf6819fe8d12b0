"""Entries of a Delta: how an update to one parameter tensor is carried.

Every entry knows its target shape, how many values it carries, the flat
positions it touches (``None`` for all of them) and its values at those
positions. Kinds:

- :class:`Dense`: values for every position.
- :class:`Sparse`: values at explicit, strictly increasing flat indices.
- :class:`SeededMask`: values at the positions of a mask that every party
  derives from ``(seed, name, keep)``, so no indices travel.
- :class:`BaseMask`: values at the positions of a mask every party derives
  from the base weights (PaFi); positions are supplied when resolved.
- :class:`LowRank`: factors ``b @ a`` of a dense update (LoRA).
- :class:`SingularOffsets`: offsets to the top singular values of the base
  weight (SVFit); expanded with the base's singular vectors when resolved.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from math import isqrt, prod

import numpy as np
import torch

from fedelta.common.kernels import seeded_walk, sorted_through_bitmap

Shape = tuple[int, ...]

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
# splitmix64's finalizer: x ^= x >> shift, x *= multiplier for each step, then x ^= x >> 31
_SPLITMIX_STEPS = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB))
_SPLITMIX_LAST_SHIFT = 31
_SPLITMIX_SHIFTS = np.array([shift for shift, _ in _SPLITMIX_STEPS], dtype=np.uint64)
_SPLITMIX_MULTIPLIERS = np.array([multiplier for _, multiplier in _SPLITMIX_STEPS], dtype=np.uint64)
_SPLITMIX_SHIFTS.setflags(write=False)
_SPLITMIX_MULTIPLIERS.setflags(write=False)
FEISTEL_ROUNDS = 4  # even: after the last round the pair is a row and a column again
PYTHON_WALK_MAX = 16  # masks of at most this many positions are drawn in Python integers, without the compiled loop
# Masks that keep at least one position in this many are sorted through a bitmap of the tensor's positions (at
# most 4 bytes of it per kept position, in one pass), from this many positions up; the rest by numpy in place
BITMAP_DENSITY = 32
BITMAP_FROM = 1 << 12


def kept_count(numel: int, keep: float) -> int:
    """k = round(keep * numel), at least 1 for a non-empty tensor."""
    return min(numel, max(1, round(keep * numel))) if numel else 0


def seeded_positions(seed: int, name: str, numel: int, keep: float) -> torch.Tensor:
    """The :func:`kept_count` ``(numel, keep)`` flat positions a seeded mask keeps, increasing (int64).

    The positions are the images of ``0 .. k-1`` under a pseudo-random
    permutation of ``0 .. numel-1`` keyed by ``seed`` and ``name``: a
    Feistel network over the grid ``rows x cols`` (:func:`feistel_grid`, the
    nearly square grid that holds ``numel`` with fewer than ``rows`` cells to
    spare), whose round function is ``splitmix64`` reduced to a row or
    column count by a 32-bit multiply-shift, walked along its cycle until it
    lands below ``numel``. Each position is kept with probability
    ``k / numel``, every party derives the same ``k`` positions, and only
    integer arithmetic is involved, so they do not depend on the platform or
    on the version of numpy or torch. Time and memory grow with ``k``, not
    ``numel``: one compiled loop (:func:`fedelta.common.kernels.seeded_walk`)
    walks every point into a result of 4-byte integers where they suffice,
    with no other scratch, and :func:`_increasing` sorts it; masks of at most
    :data:`PYTHON_WALK_MAX` positions are walked in Python integers.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    count = kept_count(numel, keep)
    if count == numel:
        return torch.arange(numel, dtype=torch.int64)
    grid = feistel_grid(numel)
    key = ((seed & _MASK64) * _GOLDEN + (zlib.crc32(name.encode()) << 32)) & _MASK64
    round_keys = [_splitmix64_int(key + r * _GOLDEN) for r in range(FEISTEL_ROUNDS)]
    if count <= PYTHON_WALK_MAX:
        return torch.tensor(sorted(_walk_int(point, numel, grid, round_keys) for point in range(count)), dtype=torch.int64)
    out = np.empty(count, dtype=np.int32 if numel <= np.iinfo(np.int32).max else np.int64)
    seeded_walk(numel, *grid, np.array(round_keys, dtype=np.uint64), _SPLITMIX_SHIFTS, _SPLITMIX_MULTIPLIERS,
                _SPLITMIX_LAST_SHIFT, out)
    return _increasing(out, numel)


def _increasing(positions: np.ndarray, numel: int) -> torch.Tensor:
    """``positions`` (distinct, below ``numel``) sorted, as int64.

    Dense positions (at least one in :data:`BITMAP_DENSITY` of ``numel``)
    go through a bitmap (:func:`fedelta.common.kernels.sorted_through_bitmap`),
    in time linear in their count and ``numel / 64`` and with at most 4 bytes
    of scratch per position; sparse or few ones are sorted in place by numpy.
    """
    if positions.size >= BITMAP_FROM and positions.size * BITMAP_DENSITY >= numel:
        out = np.empty(positions.size, dtype=np.int64)
        if sorted_through_bitmap(positions, numel, out) != positions.size:
            raise ValueError(f"{positions.size} positions are not distinct positions below {numel}")
        return torch.from_numpy(out)
    positions.sort()
    return torch.from_numpy(positions.astype(np.int64, copy=False))


def feistel_grid(numel: int) -> tuple[int, int]:
    """``(rows, cols)``: ``rows = ceil(sqrt(numel))`` and the fewest columns that make ``rows x cols >= numel``."""
    rows = isqrt(numel - 1) + 1 if numel > 1 else 1
    return rows, -(-numel // rows)


def _walk_int(point: int, numel: int, grid: tuple[int, int], round_keys: list[int]) -> int:
    """``point`` through the permutation, again and again until it lands below ``numel``."""
    image = _feistel_int(point, grid, round_keys)
    while image >= numel:
        image = _feistel_int(image, grid, round_keys)
    return image


def _feistel_int(x: int, grid: tuple[int, int], round_keys: list[int]) -> int:
    """A keyed permutation of ``0 .. rows * cols - 1``, applied to ``x``.

    ``x`` is split into a row and a column; each round replaces the row by
    the column and the column by ``(row + F(column)) mod rows``, where ``F``
    is ``splitmix64`` of the column plus the round key, scaled to
    ``0 .. rows - 1``; the next round swaps the roles of rows and columns.
    After an even number of rounds the pair is a row and a column again.
    """
    rows, cols = grid
    left, right = divmod(x, cols)
    modulus, other = rows, cols
    for round_key in round_keys:
        mixed = ((_splitmix64_int(right + round_key) >> 32) * modulus) >> 32
        left, right = right, (left + mixed) % modulus
        modulus, other = other, modulus
    return left * cols + right


def seeded_mask(seed: int, name: str, numel: int, keep: float) -> torch.Tensor:
    """The boolean mask over ``numel`` positions that is true at :func:`seeded_positions`."""
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[seeded_positions(seed, name, numel, keep)] = True
    return mask


def _splitmix64_int(x: int) -> int:
    """The splitmix64 finalizer of one 64-bit integer."""
    x &= _MASK64
    for shift, multiplier in _SPLITMIX_STEPS:
        x = ((x ^ (x >> shift)) * multiplier) & _MASK64
    return x ^ (x >> _SPLITMIX_LAST_SHIFT)


@dataclass(frozen=True)
class Dense:
    """Values for every position of the target tensor."""

    values: torch.Tensor

    @property
    def shape(self) -> Shape:
        return tuple(self.values.shape)

    @property
    def count(self) -> int:
        return self.values.numel()

    def positions(self) -> torch.Tensor | None:
        return None

    def flat_values(self) -> torch.Tensor:
        return self.values.reshape(-1)

    def to_dense(self) -> torch.Tensor:
        return self.values.to(torch.float32).reshape(self.shape)


@dataclass(frozen=True)
class Sparse:
    """Values at explicit flat indices (int64, strictly increasing)."""

    shape: Shape
    indices: torch.Tensor
    values: torch.Tensor

    @property
    def count(self) -> int:
        return self.values.numel()

    def positions(self) -> torch.Tensor:
        return self.indices

    def flat_values(self) -> torch.Tensor:
        return self.values

    def to_dense(self) -> torch.Tensor:
        out = torch.zeros(prod(self.shape), dtype=torch.float32)
        out[self.indices] = self.values.to(torch.float32)
        return out.reshape(self.shape)


@dataclass(frozen=True)
class SeededMask:
    """Values at :func:`seeded_positions` ``(seed, name, numel, keep)``."""

    shape: Shape
    name: str
    seed: int
    keep: float
    values: torch.Tensor
    _positions: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @property
    def count(self) -> int:
        return self.values.numel()

    def positions(self) -> torch.Tensor:
        if self._positions is not None:
            return self._positions
        return seeded_positions(self.seed, self.name, prod(self.shape), self.keep)

    def flat_values(self) -> torch.Tensor:
        return self.values

    def to_dense(self) -> torch.Tensor:
        out = torch.zeros(prod(self.shape), dtype=torch.float32)
        out[self.positions()] = self.values.to(torch.float32)
        return out.reshape(self.shape)


class Unresolved(ValueError):
    """An entry whose positions or basis come from the base weights and were not supplied."""


@dataclass(frozen=True)
class BaseMask:
    """Values on a mask derived from the base weights; ``spec`` names the rule (e.g. ``pafi:0.005``)."""

    shape: Shape
    spec: str
    values: torch.Tensor

    @property
    def count(self) -> int:
        return self.values.numel()

    def positions(self) -> torch.Tensor:
        raise Unresolved(f"mask {self.spec!r} positions come from the base weights; resolve the delta first")

    def flat_values(self) -> torch.Tensor:
        return self.values

    def to_dense(self) -> torch.Tensor:
        raise Unresolved(f"mask {self.spec!r} positions come from the base weights; resolve the delta first")


@dataclass(frozen=True)
class LowRank:
    """A dense update ``b @ a`` sent as its factors (b: out x r, a: r x in)."""

    a: torch.Tensor
    b: torch.Tensor

    def __post_init__(self) -> None:
        if self.a.dim() != 2 or self.b.dim() != 2 or self.a.shape[0] != self.b.shape[1]:
            raise ValueError(f"low-rank factors do not chain: b {tuple(self.b.shape)}, a {tuple(self.a.shape)}")

    @property
    def shape(self) -> Shape:
        return (self.b.shape[0], self.a.shape[1])

    @property
    def count(self) -> int:
        return self.a.numel() + self.b.numel()

    def positions(self) -> None:
        return None

    def flat_values(self) -> torch.Tensor:
        return (self.b.to(torch.float32) @ self.a.to(torch.float32)).reshape(-1)

    def to_dense(self) -> torch.Tensor:
        return self.flat_values().reshape(self.shape)


@dataclass(frozen=True)
class SingularOffsets:
    """Offsets to the top-r singular values of a base weight matrix."""

    shape: Shape
    values: torch.Tensor

    @property
    def count(self) -> int:
        return self.values.numel()

    def positions(self) -> torch.Tensor:
        raise Unresolved("singular-value offsets need the base's singular vectors; resolve the delta first")

    def flat_values(self) -> torch.Tensor:
        return self.values

    def to_dense(self) -> torch.Tensor:
        raise Unresolved("singular-value offsets need the base's singular vectors; resolve the delta first")


Entry = Dense | Sparse | SeededMask | BaseMask | LowRank | SingularOffsets
UNRESOLVED_KINDS = (BaseMask, SingularOffsets)
