"""What sites send back each round, as Flower-free values: the fields both apps put in their messages.

A site answers a train message with a :class:`TrainReply` (its encoded upload,
the version it trained on, its metrics) and an evaluate message with an
:class:`EvaluateReply` (the version it now holds, its local test metrics).
A site that could not run its part is a :class:`SiteFailure`. The apps turn
these into Flower records with :meth:`fields` and back with ``from_fields``,
which refuses a malformed reply with ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SiteFailure:
    """A site's part of a round ended in an error (Flower's error message, or an exception in process)."""

    reason: str


@dataclass(frozen=True)
class EvaluateReply:
    """The version a site holds after syncing, checked by hash, and its local test metrics."""

    site: str
    version: int
    sha: str
    metrics: dict[str, float] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """The reply's identity as plain values for a config record (metrics travel separately)."""
        return {"site": self.site, "version": self.version, "sha": self.sha}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], metrics: Mapping[str, Any]) -> EvaluateReply:
        site, version, sha = _held(fields)
        return cls(site, version, sha, _metrics(metrics))


@dataclass(frozen=True)
class TrainReply:
    """A site's encoded upload, the version and hash it trained on, and its training metrics."""

    site: str
    version: int
    sha: str
    payload: bytes
    metrics: dict[str, float] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        return {"site": self.site, "version": self.version, "sha": self.sha, "payload": self.payload}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], metrics: Mapping[str, Any]) -> TrainReply:
        site, version, sha = _held(fields)
        payload = fields.get("payload")
        if not isinstance(payload, bytes):
            raise ValueError(f"malformed reply: payload must be bytes, not {type(payload).__name__}")
        return cls(site, version, sha, payload, _metrics(metrics))


def _held(fields: Mapping[str, Any]) -> tuple[str, int, str]:
    """The site name, version and weights hash a reply says its site holds."""
    try:
        site, version, sha = fields["site"], fields["version"], fields["sha"]
    except KeyError as error:
        raise ValueError(f"malformed reply: no {error.args[0]!r} field") from None
    if not isinstance(site, str) or not isinstance(sha, str) or type(version) is not int:
        raise ValueError("malformed reply: site and sha must be text and version an integer")
    return site, version, sha


def _metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Numeric metrics as floats; anything else is a malformed reply."""
    found = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"malformed reply: metric {key!r} is not a number")
        found[key] = float(value)
    return found
