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
from math import prod

import numpy as np
import torch

Shape = tuple[int, ...]

_MASK64 = (1 << 64) - 1
MASK_CHUNK = 1 << 20


def seeded_mask(seed: int, name: str, numel: int, keep: float) -> torch.Tensor:
    """Bernoulli(keep) mask over ``numel`` positions, identical on every machine.

    Each position ``i`` draws ``splitmix64(key + i * golden)`` from a key mixing
    ``seed`` and ``name``; it is kept when the draw falls below ``keep * 2**64``.
    Only integer arithmetic is involved, so the mask does not depend on the
    platform or on the version of numpy or torch. Draws are made
    :data:`MASK_CHUNK` positions at a time, so the scratch memory does not grow
    with the tensor.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if keep >= 1.0:
        return torch.ones(numel, dtype=torch.bool)
    key = ((seed & _MASK64) * 0x9E3779B97F4A7C15 + (zlib.crc32(name.encode()) << 32)) & _MASK64
    threshold = np.uint64(min(int(keep * 2.0**64), _MASK64))
    mask = np.empty(numel, dtype=np.bool_)
    for start in range(0, numel, MASK_CHUNK):
        stop = min(start + MASK_CHUNK, numel)
        np.less(_splitmix64(start, stop, key), threshold, out=mask[start:stop])
    return torch.from_numpy(mask)


def _splitmix64(start: int, stop: int, key: int) -> np.ndarray:
    """``splitmix64(key + i * golden)`` for positions ``start <= i < stop``."""
    with np.errstate(over="ignore"):
        x = np.arange(start, stop, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(key)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


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
    """Values at the positions of :func:`seeded_mask` ``(seed, name, keep)``."""

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
        mask = seeded_mask(self.seed, self.name, prod(self.shape), self.keep)
        return mask.nonzero().reshape(-1)

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
