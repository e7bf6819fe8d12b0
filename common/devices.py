"""Where a site or the server computes (``local.device``), and the precision of its forward passes.

Weights, optimizer states and deltas stay fp32 on every device. On CUDA, only the
operations inside :func:`autocast_for` run in bf16 (autocast keeps fp32 master
weights and casts per operation; the backward pass, called after the block, runs
each gradient in the dtype its forward used); on the CPU nothing changes. Weights
are loaded, versions applied and hashed, and a site's delta formed on the CPU in
fp32, so the sha256 of a version is a function of its fp32 values alone: a site
that trains on a GPU verifies the same hashes as the server and as a site that
trains on the CPU. The values a GPU site trains differ from a CPU site's (bf16 and
GPU kernels round differently), so a run's hashes are reproducible on the same
kind of device, not across devices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from fedelta.common.config import DEVICES, require


def resolve_device(setting: str) -> torch.device:
    """The device for ``local.device``: ``auto`` is CUDA when this process sees a GPU, else the CPU."""
    require(setting in DEVICES, "local.device", f"must be one of {DEVICES}, got {setting!r}")
    available = torch.cuda.is_available()
    if setting == "cuda":
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        require(
            available,
            "local.device",
            f"is 'cuda' but this process sees no CUDA device (torch {torch.__version__}, a {build}); "
            "install a CUDA build of torch, or on Flower's Simulation Engine give each site a GPU with "
            "federation.gpus-per-site > 0, or use auto or cpu",
        )
    return torch.device("cuda" if setting == "cuda" or (setting == "auto" and available) else "cpu")


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Around a forward pass and its loss: bf16 autocast with fp32 master weights on CUDA, nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A tokenized batch with every tensor moved to ``device`` (other values, such as ``logits_to_keep``,
    as they are)."""
    return {name: value.to(device) if isinstance(value, torch.Tensor) else value for name, value in batch.items()}


def device_of(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s parameters are."""
    return next(model.parameters()).device


@contextlib.contextmanager
def placed(model: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """``model`` on ``device`` inside the block and back on the CPU after it (its parameters stay the same
    objects, so optimizers and references to them stay valid)."""
    model.to(device)
    try:
        yield model
    finally:
        model.to("cpu")
