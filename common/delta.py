"""The Delta type: entries by parameter name, and extract / apply / revert / state hash."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fedelta.common.entries import (  # noqa: F401  (the entry kinds are part of this module's interface)
    BaseMask,
    Dense,
    Entry,
    LowRank,
    SeededMask,
    SingularOffsets,
    Sparse,
    UNRESOLVED_KINDS,
    Unresolved,
    kept_count,
    seeded_mask,
    seeded_positions,
)
from fedelta.common.kernels import exponent_never_full, scatter_add_scaled


def add_entry(target: torch.Tensor, entry: Entry, weight: float = 1.0) -> None:
    """``target += weight * entry`` in place, in fp32 arithmetic, touching only carried positions."""
    if tuple(target.shape) != entry.shape:
        raise ValueError(f"shape mismatch: target {tuple(target.shape)} vs entry {entry.shape}")
    carried = entry.flat_values()
    values = carried.to(torch.float32)
    positions = entry.positions()
    flat = target.view(-1)
    if positions is not None:
        scatter_add(flat, positions, values, weight)
        return
    if weight != 1.0:
        values = values * weight if values is carried else values.mul_(weight)  # never scales the entry's own
    flat.add_(values.to(target.dtype))


COMPILED_SCATTER_DTYPES = (torch.float32, torch.float64)


def scatter_add(flat: torch.Tensor, positions: torch.Tensor, values: torch.Tensor, weight: float = 1.0) -> None:
    """``flat[positions] += (values * weight).to(flat.dtype)`` in place: one addition per position, in order.

    The product is formed as torch forms it (the weight rounded to the values'
    dtype); the sums are ``index_add_``'s. On the CPU, fp32 and fp64 targets
    with fp32 or same-dtype values take one compiled loop
    (:func:`fedelta.common.kernels.scatter_add_scaled`), which needs no
    temporaries and costs about a microsecond a call; other devices and
    dtypes, and a tensor autograd records (grad enabled and requiring it), use
    ``index_add_``.
    """
    recorded = flat.requires_grad and torch.is_grad_enabled()
    on_cpu = flat.device.type == values.device.type == positions.device.type == "cpu"
    if (on_cpu and not recorded
            and flat.dtype in COMPILED_SCATTER_DTYPES and values.dtype in (torch.float32, flat.dtype)):
        target, scaled = flat.detach().numpy(), values.detach().numpy()
        indices = positions.numpy() if positions.dtype == torch.int64 else positions.numpy().astype(np.int64)
        if indices.size != scaled.size:
            raise ValueError(f"{indices.size} positions for {scaled.size} values")
        outside = scatter_add_scaled(target, indices, scaled, scaled.dtype.type(weight))
        if outside >= 0:
            raise IndexError(f"position {int(indices[outside])} is outside a tensor of {target.size} elements")
        return
    flat.index_add_(0, positions, (values if weight == 1.0 else values * weight).to(flat.dtype))


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


def check_delta_fits(params: Mapping[str, torch.Tensor], delta: Delta) -> None:
    """Raise ``ValueError`` unless every entry names a known parameter of the right shape
    and carries only finite values."""
    for name, entry in delta.entries.items():
        if name not in params:
            raise ValueError(f"delta names unknown parameter {name!r}")
        if isinstance(entry, UNRESOLVED_KINDS):
            raise Unresolved(f"delta entry {name!r} ({type(entry).__name__}) must be resolved against the base first")
        if tuple(params[name].shape) != entry.shape:
            raise ValueError(
                f"delta entry {name!r} has shape {entry.shape}, parameter has {tuple(params[name].shape)}"
            )
        if not all_finite(entry.flat_values()):
            raise ValueError(f"delta entry {name!r} carries non-finite values")


FINITE_CHUNK = 1 << 16  # elements widened per step: the check's temporaries stay a few MB for any tensor
# A float is not finite exactly when its exponent bits are all ones: each dtype's integer of the same width
# and exponent mask (testing the bits directly skips widening 16-bit values; numpy has no bf16).
EXPONENT_BITS = {torch.float16: (torch.int16, 0x7C00), torch.bfloat16: (torch.int16, 0x7F80),
                 torch.float32: (torch.int32, 0x7F800000), torch.float64: (torch.int64, 0x7FF0000000000000)}


def all_finite(values: torch.Tensor) -> bool:
    """Whether every value is finite, with no full-size temporary.

    On the CPU one compiled loop reads fp16, bf16, fp32 and fp64 values by
    their exponent bits (:mod:`fedelta.common.kernels`); other dtypes, and
    other devices, are widened to fp32 in chunks.
    """
    flat = values.reshape(-1)
    if flat.device.type != "cpu":
        return all(bool(torch.isfinite(flat[start : start + FINITE_CHUNK]).all())
                   for start in range(0, flat.numel(), FINITE_CHUNK))
    if flat.dtype in EXPONENT_BITS:
        integer, exponent = EXPONENT_BITS[flat.dtype]
        return exponent_never_full(flat.detach().view(integer).numpy(), exponent)
    return all(np.isfinite(flat[start : start + FINITE_CHUNK].to(torch.float32).numpy()).all()
               for start in range(0, flat.numel(), FINITE_CHUNK))


def apply_delta(params: Mapping[str, torch.Tensor], delta: Delta) -> None:
    """Add ``delta`` into ``params`` in place.

    The whole delta is checked first, so a bad delta leaves ``params`` untouched.
    """
    check_delta_fits(params, delta)
    with torch.no_grad():
        for name in delta.names():
            add_entry(params[name], delta.entries[name])


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
