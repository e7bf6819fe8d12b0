"""A site's durable local state: the weights of its current version, and its residual.

The weights file carries its own version and hash in its metadata, so a version
and its weights are always written together (atomically) and checked on load.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from fedelta.common.atomic import write_file_atomic
from fedelta.common.delta import state_hash

WEIGHTS_FILE = "weights.safetensors"
RESIDUAL_FILE = "residual.safetensors"


@dataclass(frozen=True)
class CachedVersion:
    version: int
    sha: str
    params: dict[str, torch.Tensor]


class SiteState:
    """Files under one site's cache folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def load_version(self) -> CachedVersion | None:
        """The cached version, or ``None`` when absent, unreadable, or failing its hash."""
        path = self.root / WEIGHTS_FILE
        if not path.is_file():
            return None
        try:
            with safetensors.safe_open(str(path), framework="pt") as handle:
                version, sha = _named_version(handle)
                params = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception:  # a corrupt cache is a missing cache; the server sends what is needed
            return None
        if state_hash(params) != sha:
            return None
        return CachedVersion(version, sha, params)

    def version_on_disk(self) -> tuple[int, str] | None:
        """The version and hash the weights file names in its header (nothing read or checked beyond it)."""
        try:
            with safetensors.safe_open(str(self.root / WEIGHTS_FILE), framework="pt") as handle:
                return _named_version(handle)
        except Exception:  # absent or unreadable: no version to trust
            return None

    def save_version(self, version: int, sha: str, params: dict[str, torch.Tensor]) -> None:
        _save_tensors(self.root / WEIGHTS_FILE, params, {"version": str(version), "sha": sha})

    def memo(self, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Tensors cached under ``key`` (e.g. a PaFi mask for one version 0), computed on first use."""
        path = self.root / f"memo-{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}.safetensors"
        if path.is_file():
            try:
                return safetensors.torch.load_file(str(path))
            except Exception:  # an unreadable cache entry is recomputed
                path.unlink(missing_ok=True)
        tensors = compute()
        _save_tensors(path, tensors)
        return tensors

    def load_residual(self) -> dict[str, torch.Tensor]:
        path = self.root / RESIDUAL_FILE
        if not path.is_file():
            return {}
        try:
            return safetensors.torch.load_file(str(path))
        except Exception:  # a lost residual only delays nothing further; start from zero
            return {}

    def save_residual(self, residual: dict[str, torch.Tensor]) -> None:
        _save_tensors(self.root / RESIDUAL_FILE, residual)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """``tensors`` as a safetensors file at ``path``, written atomically and straight to disk."""
    contiguous = {name: value.detach().contiguous() for name, value in tensors.items()}
    write_file_atomic(path, lambda tmp: safetensors.torch.save_file(contiguous, tmp, metadata))


def _named_version(handle) -> tuple[int, str]:
    """The version and hash an open weights file's header names (raises when it names none)."""
    meta = handle.metadata() or {}
    return int(meta["version"]), meta["sha"]
