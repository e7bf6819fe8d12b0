"""The console's request limits on a small hand-built store: Host names, body size, JSON depth, ids, exports."""

from __future__ import annotations

import io
import socket
import threading
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.test import EnvironBuilder, run_wsgi_app

from fedelta.server.cmd_console import server_options
from fedelta.server.console.app import create_app
from fedelta.server.console.limits import (
    MAX_JSON_DEPTH, MAX_REQUEST_BYTES, RateLimit, allowed_hosts, bearer_token, host_name, json_object,
)
from fedelta.server.store import VersionStore

TOKEN = "limits-test-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HUGE = 50_000_000


class UnreadStream(io.RawIOBase):
    """A request body that fails the test if anyone reads it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:
        self.read_bytes += len(buffer)
        raise AssertionError("the console read a request body it should have refused unread")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    store = VersionStore(tmp_path / "state")
    store.commit_version(parent=None, round=0, sha="s0", kind="snapshot", blob=b"zero")
    store.commit_version(parent=0, round=1, sha="s1", kind="merged", blob=b"one")
    store.close()
    return tmp_path / "state"


def _unread_post(app: Flask, path: str, length: int, headers: dict[str, str]) -> tuple[int, UnreadStream]:
    """POST to ``app`` declaring ``length`` body bytes that fail the test if read; the status and the stream."""
    stream = UnreadStream()
    environ = EnvironBuilder(path=path, method="POST", content_type="application/json", headers=headers).get_environ()
    environ.update({"wsgi.input": stream, "CONTENT_LENGTH": str(length)})
    _, status, _ = run_wsgi_app(app, environ, buffered=True)
    return int(status.split()[0]), stream


@pytest.mark.parametrize("path", ["/api/actions/pause", "/actions/pause", "/versions/1/export.zip"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, BEARER])
def test_a_body_over_the_limit_is_refused_unread(state, path, headers):
    status, stream = _unread_post(create_app(state, TOKEN), path, HUGE, headers)
    assert status == 413 and stream.read_bytes == 0


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}])
def test_an_action_without_the_token_is_refused_before_its_body_is_read(state, headers):
    app = create_app(state, TOKEN)
    status, stream = _unread_post(app, "/api/actions/rollback", 100, headers)
    assert status == 401 and stream.read_bytes == 0
    assert app.test_client().get("/api/actions").get_json() == []


def test_the_server_answers_413_before_a_large_body_arrives(state):
    from waitress.server import create_server

    server = create_server(create_app(state, TOKEN), **server_options("127.0.0.1", 0, 1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", server.effective_port), timeout=30) as client:
            client.sendall(f"POST /api/actions/pause HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                           f"\r\nContent-Length: {HUGE}\r\n\r\n".encode())
            head = _reply_head(client)  # not one byte of the 50 MB body was sent
    finally:
        server.close()
    assert head.startswith(b"HTTP/1.1 413"), head


def _reply_head(client: socket.socket) -> bytes:
    """The status line and headers of the reply."""
    received = b""
    while b"\r\n\r\n" not in received and (chunk := client.recv(4096)):
        received += chunk
    return received.split(b"\r\n\r\n", 1)[0]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.nip.io", "[::2]:80", ""])
def test_a_foreign_host_header_is_refused(state, host):
    client = create_app(state, TOKEN).test_client()
    reply = client.get("/", headers={"Host": host})
    assert reply.status_code == 403 and reply.mimetype == "text/plain"
    assert b"--allowed-host" in reply.data
    assert client.get("/api/overview", headers={"Host": host}).status_code == 403


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1:8080", "[::1]:8080", "LOCALHOST.", "console.lan:443"])
def test_loopback_and_allowed_hosts_are_answered(state, host):
    client = create_app(state, TOKEN, hosts=allowed_hosts("127.0.0.1", ["console.lan"])).test_client()
    assert client.get("/healthz", headers={"Host": host}).status_code == 200


def test_allowed_hosts_add_the_bound_address_unless_a_wildcard():
    assert allowed_hosts("0.0.0.0") == allowed_hosts("::") == {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts("10.1.2.3", ["Console.LAN:8080", "[fd00::1]"]) == {
        "localhost", "127.0.0.1", "::1", "10.1.2.3", "console.lan", "fd00::1"}
    assert [host_name(h) for h in ("a.b:1", "[::1]:80", "::1", "X.")] == ["a.b", "::1", "::1", "x"]


@pytest.mark.parametrize("version", [2, 2**63 - 1, 2**63, 2**64, 10**30])
def test_ids_beyond_the_head_or_sqlite_are_404(state, version):
    client = create_app(state, TOKEN).test_client()
    assert client.get(f"/versions/{version}/delta").status_code == 404
    assert client.get(f"/versions/{version}/export.zip", headers=BEARER).status_code == 404
    assert client.post("/actions/rollback", data={"token": TOKEN, "version": str(version)}).status_code == 404
    if version < 10**20:  # a JSON integer of more digits is refused as such (400)
        reply = client.post("/api/actions/rollback", json={"version": version}, headers=BEARER)
        assert reply.status_code == 404 and "no committed version" in reply.get_json()["error"]
    assert client.post("/api/actions/rollback", json={"version": -1}, headers=BEARER).status_code == 404
    assert client.get("/api/actions").get_json() == []


def test_deep_json_is_400_and_a_body_over_the_limit_413(state):
    client = create_app(state, TOKEN).test_client()
    deep = b"[" * 5000 + b"]" * 5000
    reply = client.post("/api/actions/pause", data=deep, content_type="application/json", headers=BEARER)
    assert reply.status_code == 400 and "nested deeper" in reply.get_json()["error"]
    deepest = b"[" * 100_000 + b"]" * 100_000
    assert client.post("/api/actions/pause", data=deepest, content_type="application/json",
                       headers=BEARER).status_code == 413
    for body in (b"[1]", b'{"version": 1, "version": 0}', b"not json"):
        assert client.post("/api/actions/rollback", data=body, headers=BEARER).status_code == 400
    assert client.get("/api/actions").get_json() == []


def test_exports_need_the_token_when_one_is_set(state):
    client = create_app(state, TOKEN).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        reply = client.get("/versions/1/export.zip", headers=headers)
        assert reply.status_code == 401 and b"a valid token is required for exports" in reply.data
    assert client.post("/versions/1/export.zip", data={"token": "wrong"}).status_code == 401
    # With the token the export is built; this hand-built store records no settings to build it from (503).
    assert client.get("/versions/1/export.zip", headers=BEARER).status_code == 503
    assert client.post("/versions/1/export.zip", data={"token": TOKEN}).status_code == 503
    page = client.get("/versions").data
    assert b'id="export-form"' in page and b'formaction="/versions/1/export.zip"' in page


def test_without_a_token_file_exports_stay_open_but_rate_limited(state):
    client = create_app(state, None, exports_per_minute=2).test_client()
    assert [client.get("/versions/1/export.zip").status_code for _ in range(2)] == [503, 503]
    refused = client.get("/versions/1/export.zip")
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
    assert b"at most 2 exports a minute" in refused.data
    other = client.get("/versions/1/export.zip", environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert other.status_code == 503
    assert b'href="/versions/1/export.zip"' in client.get("/versions").data


def test_a_rate_limit_forgets_events_older_than_its_window():
    now = [100.0]
    limit = RateLimit(2, window=60, clock=lambda: now[0])
    assert [limit.admit("a"), limit.admit("a"), limit.admit("b")] == [0, 0, 0]
    assert limit.admit("a") == pytest.approx(60)
    now[0] += 59.5
    assert limit.admit("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert limit.admit("a") == 0


def test_bearer_tokens_and_action_bodies_are_read_strictly():
    assert bearer_token({"Authorization": "Bearer  abc "}) == "abc"
    assert bearer_token({"Authorization": "bearer abc"}) == "abc"
    assert [bearer_token(h) for h in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "})] == [None] * 3
    assert json_object(b"") == {} and json_object(b'{"version": 3}') == {"version": 3}
    with pytest.raises(ValueError, match="nested deeper"):
        json_object(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    with pytest.raises(ValueError, match="more than"):
        json_object(b" " * MAX_REQUEST_BYTES + b"{}")

