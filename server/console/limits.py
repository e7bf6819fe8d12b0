"""What the console accepts before it does any work: Host names, request size, JSON depth, export rate."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fedelta.common.untrusted_json import UntrustedJSONError, loads

MAX_REQUEST_BYTES = 16 * 1024  # an action carries a token and a version or a site name: a few hundred bytes
MAX_JSON_DEPTH = 8
MAX_VERSION_ID = 2**63 - 1  # SQLite's largest integer: a larger id names no version
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "*")
EXPORTS_PER_MINUTE = 6
WINDOW_SECONDS = 60.0


def host_name(header: str) -> str:
    """A Host header's name, lowercased, without its port, brackets or a trailing dot."""
    name = header.strip().lower()
    if name.startswith("["):
        name = name[1:name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    return name.rstrip(".")


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The Host names the console answers: loopback, the address it binds (unless a wildcard), and ``extra``."""
    names = {*LOOPBACK_HOSTS, *(host_name(name) for name in extra)}
    if host_name(bound) not in WILDCARD_HOSTS:
        names.add(host_name(bound))
    return frozenset(names)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, or None."""
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def json_object(body: bytes) -> dict[str, Any]:
    """An action's body: empty, or a JSON object within :data:`MAX_REQUEST_BYTES` and :data:`MAX_JSON_DEPTH`."""
    if not body.strip():
        return {}
    try:
        value = loads(body, max_bytes=MAX_REQUEST_BYTES, max_depth=MAX_JSON_DEPTH)
    except UntrustedJSONError as error:
        raise ValueError(f"the body must be a JSON object: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"the body must be a JSON object, not {type(value).__name__}")
    return value


class RateLimit:
    """At most ``per_window`` events per client in any ``window`` seconds; thread-safe."""

    def __init__(self, per_window: int, window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_window, self.window, self.clock = per_window, window, clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, client: str) -> float:
        """Record an event for ``client`` and return 0, or the seconds until it may have another."""
        with self._lock:
            now = self.clock()
            self._forget_before(now - self.window)
            events = self._events.setdefault(client, deque())
            if len(events) >= self.per_window:
                return max(events[0] + self.window - now, 0.001)
            events.append(now)
            return 0.0

    def _forget_before(self, cutoff: float) -> None:
        for client in list(self._events):
            events = self._events[client]
            while events and events[0] <= cutoff:
                events.popleft()
            if not events:
                del self._events[client]
