"""One live federation for the console tests: a smoke simulation, the console on a free port, and an operator.

The session fixture starts ``fedelta simulate --preset smoke`` (3 rounds) and
``fedelta console`` as subprocesses, then acts through the console's HTTP API
the way an operator would: an action without the token, a pause once round 1
is finished, a rollback while paused, a resume. What it saw along the way is
kept for the tests to check; afterwards the finished store stays served for
the API and browser tests. Every process it started is stopped by PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parent.parent
TOKEN = "console-test-token"
ROUNDS = 3


@dataclass
class LiveConsole:
    """The console over a finished smoke run, and what the operator saw while it ran."""

    url: str
    state: Path
    out: Path
    seen: dict[str, Any] = field(default_factory=dict)

    def get(self, path: str) -> Any:
        return call(self.url + path)[1]

    def post(self, path: str, body: dict | None = None, token: str | None = TOKEN) -> tuple[int, Any]:
        return call(self.url + path, body=body or {}, token=token)


def call(url: str, *, body: dict | None = None, token: str | None = None, raw: bool = False) -> tuple[int, Any]:
    """GET (or POST ``body`` as JSON); the status and the decoded JSON (or bytes with ``raw``)."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=60) as reply:
            status, payload = reply.status, reply.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    return status, payload if raw else json.loads(payload)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], process: subprocess.Popen, timeout: float = 240) -> Any:
    """Poll ``check`` until it returns something truthy; fail if ``process`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if process.poll() is not None:
            raise AssertionError(f"the process ended (rc {process.returncode}) while waiting for {what}")
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            found |= {child} | _children(child)
    return found


def stop(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, and everything it started."""
    if process.poll() is None:
        tree = {process.pid} | _children(process.pid)
        for pid in tree:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            for pid in tree:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait(timeout=15)


def start(command: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "FLWR_TELEMETRY_ENABLED": "0"}
    with log.open("wb") as handle:
        return subprocess.Popen([sys.executable, "-m", "fedelta", *command], cwd=PROJECT, env=env,
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def operate(console: LiveConsole, simulation: subprocess.Popen) -> None:
    """Drive the running federation through the console's API, recording what it shows."""
    seen = console.seen
    finished = lambda: [r for r in console.get("/api/rounds") if r["state"] == "finished" and r["round"] >= 1]  # noqa: E731
    wait_for("round 1 to finish", finished, simulation)
    seen["refused"] = [console.post("/api/actions/pause", token=None), console.post("/api/actions/pause", token="wrong")]
    seen["controls_after_refused"] = console.get("/api/actions")
    seen["pause"] = console.post("/api/actions/pause")
    seen["paused"] = wait_for("the pause", lambda: (o := console.get("/api/overview"))["server"]["state"] == "paused"
                              and o, simulation)
    seen["rounds_while_paused"] = console.get("/api/rounds")
    target = seen["paused"]["head"]["version"] - 1
    seen["rollback"] = console.post("/api/actions/rollback", {"version": target})
    control_id = seen["rollback"][1]["control"]["id"]
    seen["rolled_back"] = wait_for("the rollback", lambda: [c for c in console.get("/api/actions")
                                                             if c["id"] == control_id and c["state"] != "pending"], simulation)[0]
    seen["overview_after_rollback"] = console.get("/api/overview")
    seen["resume"] = console.post("/api/actions/resume")
    simulation.wait(timeout=240)
    seen["simulation_rc"] = simulation.returncode


@pytest.fixture(scope="session")
def live_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveConsole]:
    root = tmp_path_factory.mktemp("console")
    out, state = root / "run", root / "run" / "state"
    (root / "token").write_text(TOKEN + "\n")
    port = free_port()
    console = LiveConsole(f"http://127.0.0.1:{port}", state, out)
    simulation = start(["simulate", "--preset", "smoke", "--set", f"rounds={ROUNDS}", "--out", str(out)],
                       root / "simulation.log")
    server = None
    try:
        wait_for("the store", lambda: (state / "store.sqlite").is_file(), simulation)
        server = start(["console", "--state-dir", str(state), "--port", str(port), "--token-file", str(root / "token")],
                       root / "console.log")

        def healthy() -> bool:
            try:
                return call(console.url + "/healthz")[0] == 200
            except OSError:
                return False

        wait_for("the console", healthy, server, timeout=60)
        operate(console, simulation)
        yield console
    finally:
        stop(simulation)
        if server is not None:
            stop(server)
