"""A site's durable local state: the weights of a recent version, the merged deltas applied since, and its
residual.

The weights file carries its own version and hash in its metadata, so a version
and its weights are always written together (atomically) and checked on load.
A site that moves on by a downlink may instead keep the downlink's blobs as
they came, each in a journal file named by the version it leads to and that
version's hash, after the version on disk: a round then writes the merged
delta's bytes, not the whole model's. Once the journal would hold more bytes
than the weights, the weights are written whole again and the journal
cleared. The cached version is the weights file's followed by the journal's
consecutive entries after it; loading it replays them and checks the last
hash, so one pass over the weights checks the whole chain.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from fedelta.common.atomic import write_bytes_atomic, write_file_atomic
from fedelta.common.codec import Limits
from fedelta.common.delta import state_hash
from fedelta.common.versions import Downlink, apply_downlink

WEIGHTS_FILE = "weights.safetensors"
RESIDUAL_FILE = "residual.safetensors"
JOURNAL_FILE = re.compile(r"merged-(\d{12})-([0-9a-f]{64})\.fdz")  # one blob: the version it leads to, its hash


@dataclass(frozen=True)
class CachedVersion:
    version: int
    sha: str
    params: dict[str, torch.Tensor]


@dataclass(frozen=True)
class JournalEntry:
    """One blob of the journal: the version it leads to, that version's hash, its file."""

    version: int
    sha: str
    path: Path


class SiteState:
    """Files under one site's cache folder; with ``journal``, a downlink's blobs are journalled where they can be
    (for a site that holds its weights in memory and so seldom reads the folder: replaying costs each read)."""

    def __init__(self, root: Path, *, journal: bool = False) -> None:
        self.root = Path(root)
        self.journal = journal

    def load_version(self) -> CachedVersion | None:
        """The cached version, or ``None`` when absent, unreadable, or failing its hash."""
        path = self.root / WEIGHTS_FILE
        if not path.is_file():
            return None
        try:
            with safetensors.safe_open(str(path), framework="pt") as handle:
                version, sha = _named_version(handle)
                params = {name: handle.get_tensor(name) for name in handle.keys()}
            journal = self._journal(version)
            if journal:
                numel = sum(value.numel() for value in params.values())
                replay = Downlink(version, sha, [entry.path.read_bytes() for entry in journal],
                                  [entry.version for entry in journal], [entry.sha for entry in journal])
                apply_downlink(params, replay, Limits.for_model(numel), params_sha=sha, check_each=False)
                version, sha = journal[-1].version, journal[-1].sha
            elif state_hash(params) != sha:
                return None
        except Exception:  # a corrupt cache is a missing cache; the server sends what is needed
            return None
        return CachedVersion(version, sha, params)

    def version_on_disk(self) -> tuple[int, str] | None:
        """The version and hash the cache names: the weights file's header, or the last journal entry after it
        (nothing read or checked beyond the header and the file names)."""
        chain = self._chain()
        return None if chain is None else _chain_end(*chain)

    def _chain(self) -> tuple[tuple[int, str], list[JournalEntry]] | None:
        """The version and hash the weights file's header names, and the journal entries after it."""
        try:
            with safetensors.safe_open(str(self.root / WEIGHTS_FILE), framework="pt") as handle:
                named = _named_version(handle)
        except Exception:  # absent or unreadable: no version to trust
            return None
        return named, self._journal(named[0])

    def save_version(self, version: int, sha: str, params: dict[str, torch.Tensor]) -> None:
        """The weights of ``version`` written whole; the journal is cleared after them."""
        _save_tensors(self.root / WEIGHTS_FILE, params, {"version": str(version), "sha": sha})
        for entry in self._entries():
            entry.path.unlink(missing_ok=True)

    def advance(self, downlink: Downlink, params: dict[str, torch.Tensor]) -> None:
        """Record that ``downlink`` brought the cached version to ``params`` (checked at its target hash).

        With :attr:`journal`, its blobs go into the journal when the cache holds
        the downlink's base and the journal stays within the size of the
        weights file; otherwise the weights are written whole.
        """
        chain = self._chain() if self.journal and downlink.blobs else None
        fits = False
        if chain is not None:
            journal = chain[1]
            kept = sum(entry.path.stat().st_size for entry in journal)
            fits = (_chain_end(*chain) == (downlink.base_version, downlink.base_sha)
                    and kept + downlink.size() <= (self.root / WEIGHTS_FILE).stat().st_size)
        if not fits:
            self.save_version(downlink.target_version, downlink.target_sha, params)
            return
        for entry in self._entries():
            if entry.version > downlink.base_version:  # left by a chain that did not go on
                entry.path.unlink(missing_ok=True)
        for blob, version, sha in zip(downlink.blobs, downlink.versions, downlink.shas):
            write_bytes_atomic(self.root / f"merged-{version:012d}-{sha}.fdz", blob)

    def _entries(self) -> list[JournalEntry]:
        """Every journal file in the folder, by version."""
        if not self.root.is_dir():
            return []
        found = (JOURNAL_FILE.fullmatch(path.name) for path in self.root.iterdir())
        return sorted((JournalEntry(int(match[1]), match[2], self.root / match[0]) for match in found if match),
                      key=lambda entry: entry.version)

    def _journal(self, version: int) -> list[JournalEntry]:
        """The journal entries that follow ``version`` one by one."""
        chain: list[JournalEntry] = []
        for entry in self._entries():
            if entry.version == version + len(chain) + 1:
                chain.append(entry)
            elif entry.version > version + len(chain):
                break
        return chain

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


def _chain_end(named: tuple[int, str], journal: list[JournalEntry]) -> tuple[int, str]:
    """The version and hash a weights file naming ``named`` and the ``journal`` after it come to."""
    return (journal[-1].version, journal[-1].sha) if journal else named


def _named_version(handle) -> tuple[int, str]:
    """The version and hash an open weights file's header names (raises when it names none)."""
    meta = handle.metadata() or {}
    return int(meta["version"]), meta["sha"]
