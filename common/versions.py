"""Moving weights between versions: snapshots, merged-delta chains, hash checks.

A downlink brings weights from ``base_version`` (whose hash is ``base_sha``) to
the last of ``versions`` by applying each encoded blob in order and checking the
hash after each. A blob whose metadata says ``kind=snapshot`` replaces the
weights instead of adding to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from fedelta.common.codec import Limits, decode, encode
from fedelta.common.delta import Delta, Dense, apply_delta, state_hash

SNAPSHOT = "snapshot"
MERGED = "merged"
MERGED_META = {"kind": MERGED}  # the metadata a merged delta carries
FROM_SNAPSHOT = -1


@dataclass(frozen=True)
class Downlink:
    """What the server sends a site so it reaches the current version."""

    base_version: int
    base_sha: str
    blobs: list[bytes] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    shas: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not len(self.blobs) == len(self.versions) == len(self.shas):
            raise ValueError("downlink blobs, versions and hashes differ in length")
        if self.base_version == FROM_SNAPSHOT and not self.blobs:
            raise ValueError("a downlink from a snapshot needs the snapshot blob")

    @property
    def target_version(self) -> int:
        return self.versions[-1] if self.versions else self.base_version

    @property
    def target_sha(self) -> str:
        return self.shas[-1] if self.shas else self.base_sha

    def size(self) -> int:
        return sum(len(blob) for blob in self.blobs)

    def to_fields(self) -> dict[str, object]:
        """Plain values for a message record."""
        return {
            "base-version": self.base_version,
            "base-sha": self.base_sha,
            "blobs": list(self.blobs),
            "versions": list(self.versions),
            "shas": list(self.shas),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, object]) -> Downlink:
        try:
            return cls(
                base_version=int(fields["base-version"]),  # type: ignore[arg-type]
                base_sha=str(fields["base-sha"]),
                blobs=[bytes(b) for b in fields["blobs"]],  # type: ignore[union-attr]
                versions=[int(v) for v in fields["versions"]],  # type: ignore[union-attr]
                shas=[str(s) for s in fields["shas"]],  # type: ignore[union-attr]
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed downlink record: {error}") from error


class VersionMismatch(ValueError):
    """Weights whose hash is not the one expected: never trained on, never saved."""


def encode_snapshot(params: Mapping[str, torch.Tensor]) -> bytes:
    """The full weights as one fp32 blob."""
    delta = Delta({name: Dense(value.detach()) for name, value in params.items()})
    return encode(delta, base="", values="fp32", meta={"kind": SNAPSHOT})


def encode_merged(delta: Delta, base: str, values: str = "fp32") -> bytes:
    """A merged update for weights with hash ``base``, values as ``values`` (fp32 keeps them exactly)."""
    return encode(delta, base=base, values=values, meta=MERGED_META)


def load_snapshot(params: Mapping[str, torch.Tensor], snapshot: Delta) -> None:
    """Overwrite ``params`` with a snapshot that covers exactly the same tensors."""
    if set(snapshot.entries) != set(params):
        raise VersionMismatch("snapshot does not cover exactly the model's parameters")
    for name, entry in snapshot.entries.items():
        if tuple(params[name].shape) != entry.shape:
            raise VersionMismatch(f"snapshot tensor {name!r} has shape {entry.shape}")
    with torch.no_grad():
        for name, entry in snapshot.entries.items():
            params[name].copy_(entry.to_dense())


def apply_downlink(params: Mapping[str, torch.Tensor], downlink: Downlink, limits: Limits, *,
                   params_sha: str | None = None, check_each: bool = True) -> str:
    """Bring ``params`` to the downlink's target version and return its hash.

    ``params`` must be at ``downlink.base_sha``, unless ``base_version`` is
    :data:`FROM_SNAPSHOT` (the first blob then replaces them). A snapshot later in
    the chain (a rolled-back version) replaces them as well. ``params_sha`` is the
    hash of ``params`` where the caller has just checked it (it is computed
    otherwise). Raises :class:`VersionMismatch` on any hash mismatch.

    Without ``check_each``, only the target's hash is computed: each blob must
    still name the hash the one before it leads to as its base, and
    ``params_sha`` is taken as the claim the whole chain is checked against at
    its end (for replaying a chain kept on disk, where one pass over the
    weights checks them all).
    """
    from_snapshot = downlink.base_version == FROM_SNAPSHOT
    current = None if from_snapshot else params_sha or state_hash(params)
    if current is not None and current != downlink.base_sha:
        raise VersionMismatch(f"local weights {current[:12]} are not the downlink's base {downlink.base_sha[:12]}")
    last = len(downlink.blobs) - 1
    for step, (blob, version, expected) in enumerate(zip(downlink.blobs, downlink.versions, downlink.shas)):
        decoded = decode(blob, limits)
        if decoded.meta.get("kind") == SNAPSHOT:
            load_snapshot(params, decoded.delta)
        elif current is None:
            raise VersionMismatch("a downlink from a snapshot must start with a snapshot")
        elif decoded.base != current:
            raise VersionMismatch(f"blob for version {version} applies to {decoded.base[:12]}, not {str(current)[:12]}")
        else:
            apply_delta(params, decoded.delta)
        if not check_each and step < last:
            current = expected
            continue
        current = state_hash(params)
        if current != expected:
            raise VersionMismatch(f"version {version}: hash {current[:12]} differs from {expected[:12]}")
    return str(current)

