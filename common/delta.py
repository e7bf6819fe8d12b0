"""The Delta type: per-tensor update entries, and extract / apply / revert / state hash.

A :class:`Delta` maps parameter names to entries. Every entry knows its target
shape, how many values it carries, how to add itself (scaled) into a dense
fp32 tensor, and how to expand to a dense tensor. Entry kinds:

- :class:`Dense`: values for every position.
- :class:`Sparse`: values at explicit, strictly increasing flat indices.
- :class:`SeededMask`: values at the positions of a mask that every party
  derives from ``(seed, name, keep)``, so no indices travel.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from math import prod

import numpy as np
import torch

Shape = tuple[int, ...]

_MASK64 = (1 << 64) - 1


def seeded_mask(seed: int, name: str, numel: int, keep: float) -> torch.Tensor:
    """Bernoulli(keep) mask over ``numel`` positions, identical on every machine.

    Each position ``i`` draws ``splitmix64(key + i * golden)`` from a key mixing
    ``seed`` and ``name``; it is kept when the draw falls below ``keep * 2**64``.
    Only integer arithmetic is involved, so the mask does not depend on the
    platform or on the version of numpy or torch.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    key = ((seed & _MASK64) * 0x9E3779B97F4A7C15 + (zlib.crc32(name.encode()) << 32)) & _MASK64
    with np.errstate(over="ignore"):
        x = np.arange(numel, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(key)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    if keep >= 1.0:
        return torch.ones(numel, dtype=torch.bool)
    threshold = np.uint64(min(int(keep * 2.0**64), _MASK64))
    return torch.from_numpy(x < threshold)


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


Entry = Dense | Sparse | SeededMask


def add_entry(target: torch.Tensor, entry: Entry, weight: float = 1.0) -> None:
    """``target += weight * entry`` in place, in fp32 arithmetic, touching only carried positions."""
    if tuple(target.shape) != entry.shape:
        raise ValueError(f"shape mismatch: target {tuple(target.shape)} vs entry {entry.shape}")
    values = entry.flat_values().to(torch.float32)
    if weight != 1.0:
        values = values * weight
    positions = entry.positions()
    flat = target.view(-1)
    if positions is None:
        flat.add_(values.to(target.dtype))
    else:
        flat[positions] += values.to(target.dtype)


@dataclass(frozen=True)
class Delta:
    """An update to some of a model's parameters, by parameter name."""

    entries: Mapping[str, Entry]

    def names(self) -> list[str]:
        return sorted(self.entries)

    def count(self) -> int:
        """Number of values carried, over all entries."""
        return sum(entry.count for entry in self.entries.values())

    def to_dense(self) -> dict[str, torch.Tensor]:
        return {name: entry.to_dense() for name, entry in self.entries.items()}


@dataclass(frozen=True)
class Undo:
    """What :func:`apply_delta` overwrote, so :func:`revert_delta` restores it bit for bit."""

    saved: Mapping[str, tuple[torch.Tensor | None, torch.Tensor]]


def check_delta_fits(params: Mapping[str, torch.Tensor], delta: Delta) -> None:
    """Raise ``ValueError`` unless every entry names a known parameter of the right shape
    and carries only finite values."""
    for name, entry in delta.entries.items():
        if name not in params:
            raise ValueError(f"delta names unknown parameter {name!r}")
        if tuple(params[name].shape) != entry.shape:
            raise ValueError(
                f"delta entry {name!r} has shape {entry.shape}, parameter has {tuple(params[name].shape)}"
            )
        if not torch.isfinite(entry.flat_values().to(torch.float32)).all():
            raise ValueError(f"delta entry {name!r} carries non-finite values")


def apply_delta(params: Mapping[str, torch.Tensor], delta: Delta) -> Undo:
    """Add ``delta`` into ``params`` in place and return how to undo it.

    The whole delta is checked first, so a bad delta leaves ``params`` untouched.
    """
    check_delta_fits(params, delta)
    saved: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
    with torch.no_grad():
        for name in delta.names():
            entry, target = delta.entries[name], params[name]
            positions = entry.positions()
            flat = target.view(-1)
            saved[name] = (positions, flat.clone() if positions is None else flat[positions].clone())
            add_entry(target, entry)
    return Undo(saved)


def revert_delta(params: Mapping[str, torch.Tensor], undo: Undo) -> None:
    """Restore exactly the values :func:`apply_delta` overwrote."""
    with torch.no_grad():
        for name, (positions, values) in undo.saved.items():
            flat = params[name].view(-1)
            if positions is None:
                flat.copy_(values)
            else:
                flat[positions] = values


def extract_delta(
    after: Mapping[str, torch.Tensor], before: Mapping[str, torch.Tensor], names: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Dense fp32 differences ``after - before`` for the given parameter names."""
    with torch.no_grad():
        return {
            name: after[name].detach().to(torch.float32) - before[name].detach().to(torch.float32)
            for name in names
        }


def state_hash(params: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of every tensor, in name order."""
    digest = hashlib.sha256()
    for name in sorted(params):
        tensor = params[name].detach().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def model_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters by name, as plain tensors sharing storage with the model."""
    return {name: param.data for name, param in model.named_parameters()}


def compact(dense: torch.Tensor) -> Entry:
    """The smaller of a dense or an explicit-index entry for an fp32 tensor with zeros."""
    flat = dense.reshape(-1)
    nonzero = flat.nonzero().reshape(-1)
    if nonzero.numel() * 2 < flat.numel():
        return Sparse(tuple(dense.shape), nonzero, flat[nonzero].clone())
    return Dense(dense)
