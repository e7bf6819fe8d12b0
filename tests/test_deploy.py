"""Deployment end to end on loopback: `fedelta server` (SuperLink, TLS, site keys) and `fedelta site` processes.

One federation (3 sites, 2 rounds, tiny BERT) is run once for the module, with
its faults on a fixed schedule, and the tests check what it recorded:

- as round 1 starts, an unregistered key, a foreign CA and a plain-text
  SuperNode try to join and are turned away;
- site-3 is SIGKILLed while it trains in round 1; the round commits with the
  other two (``federation.min-sites = 2``); site-3 is started again on its cache
  with its own key but ``--name site-1``, so its replies claim site-1's name;
- the whole server (SuperLink, ServerApp) is SIGKILLed during round 2 and
  started again on the same state folder; it resumes at version 1 and finishes,
  with site-3 caught up from the version it holds.

A separate test sends SIGINT to a running server and site. Every process is
started in its own session and stopped by PID, with all its descendants, in a
``finally``.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedelta.client.state import SiteState
from fedelta.common.keys import make_keys
from fedelta.common.processes import alive, descendants, free_port, kill_tree, wait_for_port

PROJECT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SITES = ("site-1", "site-2", "site-3")
TINY = ("model.path=tiny-bert", "rounds=2", "federation.min-sites=2", "local.steps=1", "local.batch-size=4",
        "data.test-size=16", "model.max-length=16")

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(PROJECT), "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


@dataclass
class Started:
    name: str
    process: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Launcher:
    """Starts commands in their own sessions with output in files, and stops them all by PID."""

    root: Path
    started: list[Started] = field(default_factory=list)

    def start(self, name: str, command: list[str]) -> Started:
        log = self.root / f"{name}.log"
        with open(log, "w") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=_env(), cwd=self.root,
                                       start_new_session=True)
        entry = Started(name, process, log)
        self.started.append(entry)
        return entry

    def run(self, name: str, command: list[str], timeout: float) -> tuple[int, str]:
        entry = self.start(name, command)
        try:
            code = entry.process.wait(timeout)
        finally:
            kill_tree(entry.process.pid, signal.SIGKILL, 1.0)
        return code, entry.text()

    def stop_all(self) -> None:
        for entry in reversed(self.started):
            kill_tree(entry.process.pid, signal.SIGTERM, 10.0)
            try:
                entry.process.wait(5)
            except subprocess.TimeoutExpired:
                kill_tree(entry.process.pid, signal.SIGKILL, 1.0)
                entry.process.wait()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.2)


def running_clientapp(pid: int) -> bool:
    """Whether a live ``flwr-clientapp`` runs under ``pid`` (a site training or evaluating)."""
    for child in descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"flwr-clientapp" in cmdline and alive(child):
            return True
    return False


def write_site_data(path: Path, index: int) -> None:
    """40 short reviews; site-1 labels by name (rotten/fresh), the others by index."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(40):
            good = (i + index) % 2
            text = f"{'a fine, moving film' if good else 'a dull, tiresome film'} number {i}"
            writer.writerow([text, ("fresh" if good else "rotten") if index == 1 else good])


@dataclass(frozen=True)
class Federation:
    root: Path
    state: Path
    rows: list[dict]
    rows_when_server_killed: int
    site_rounds: dict[int, set[str]]
    refused: dict[str, tuple[int, str]]
    server_logs: tuple[str, str]
    second_server_code: int
    restarted_site_log: str


def _site_rounds(store: Path) -> dict[int, set[str]]:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT round, site FROM site_rounds").fetchall()
    found: dict[int, set[str]] = {}
    for round_, site in rows:
        found.setdefault(round_, set()).add(site)
    return found


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Federation:
    root = tmp_path_factory.mktemp("deploy")
    keys, foreign = root / "keys", root / "foreign"
    make_keys(keys, [*SITES, "site-4"], [])
    make_keys(foreign, ["intruder"], [])
    for index, name in enumerate(SITES, start=1):
        write_site_data(root / f"{name}.csv", index)
    port = free_port()
    address, state = f"127.0.0.1:{port}", root / "state"
    fedelta = [PYTHON, "-m", "fedelta"]
    server_command = [*fedelta, "server", "--state-dir", str(state), "--certs", str(keys), "--address", address,
                      *(arg for item in TINY for arg in ("--set", item))]

    def site_command(name: str, key: Path, certs: Path, *extra: str) -> list[str]:
        return [*fedelta, "site", "--superlink", address, "--certs", str(certs), "--key", str(key),
                "--data", str(root / f"{name if name in SITES else 'site-1'}.csv"),
                "--cache-dir", str(root / "cache" / name), *extra]

    metrics = state / "results" / "metrics.jsonl"

    def rows() -> list[dict]:
        return [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []

    launcher = Launcher(root)
    try:
        server = launcher.start("server", server_command)
        wait_for_port("127.0.0.1", port, 120, alive=lambda: server.process.poll() is None)
        wait_until(lambda: "submitting the fedelta run" in server.text(), 120, "site registration")
        sites = {name: launcher.start(name, site_command(name, keys / "sites" / name, keys)) for name in SITES}
        plaintext = [str(Path(PYTHON).parent / "flower-supernode"), "--insecure", "--superlink", address,
                     "--auth-supernode-private-key", str(keys / "sites" / "site-4"), "--max-retries", "1",
                     "--port", str(free_port())]
        outsiders = {
            "unregistered": launcher.start("intruder", site_command("intruder", foreign / "sites" / "intruder", keys,
                                                                    "--max-retries", "0")),
            "foreign-ca": launcher.start("foreign-ca", site_command("site-4", keys / "sites" / "site-4", foreign,
                                                                    "--max-retries", "0")),
            "plaintext": launcher.start("plaintext", plaintext),
        }
        refused = {case: (entry.process.wait(180), entry.text()) for case, entry in outsiders.items()}
        wait_until(lambda: running_clientapp(sites["site-3"].process.pid), 180, "site-3 training in round 1")
        kill_tree(sites["site-3"].process.pid, signal.SIGKILL, 1.0)
        wait_until(lambda: len(rows()) >= 2, 240, "round 1 without site-3")
        restarted = launcher.start("site-3-again", site_command("site-3", keys / "sites" / "site-3", keys,
                                                                "--name", "site-1"))
        wait_until(lambda: "SuperNode ID" in restarted.text(), 120, "site-3 back online")
        wait_until(lambda: any(running_clientapp(site.process.pid) for site in (*sites.values(), restarted)), 120,
                   "round 2 under way")
        rows_when_killed = len(rows())
        kill_tree(server.process.pid, signal.SIGKILL, 1.0)
        second = launcher.start("server-again", server_command)
        second_code = second.process.wait(400)
        return Federation(root, state, rows(), rows_when_killed, _site_rounds(state / "store.sqlite"), refused,
                          (server.text(), second.text()), second_code, restarted.text())
    finally:
        launcher.stop_all()


def test_the_run_completes_and_every_site_ends_on_the_final_hash(federation):
    final = federation.rows[-1]
    assert federation.second_server_code == 0, federation.server_logs[1][-3000:]
    assert [row["round"] for row in federation.rows] == [0, 1, 2]
    assert [row["version"] for row in federation.rows] == [0, 1, 2]
    for name in SITES:
        cached = SiteState(federation.root / "cache" / name).load_version()
        assert cached is not None and (cached.version, cached.sha) == (2, final["version_sha256"]), name


def test_an_unregistered_key_is_refused(federation):
    code, text = federation.refused["unregistered"]
    assert code != 0
    assert "Failed to activate SuperNode" in text and "refused this site's key" in text
    assert all("intruder" not in names for names in federation.site_rounds.values())


def test_a_supernode_without_the_ca_or_in_plain_text_cannot_connect(federation):
    code, text = federation.refused["foreign-ca"]
    assert code != 0 and "CERTIFICATE_VERIFY_FAILED" in text and "not signed by" in text
    code, text = federation.refused["plaintext"]
    assert code != 0 and "TLS is not enabled" in text
    for code, text in federation.refused.values():
        assert "SuperNode ID" not in text
    assert all("site-4" not in names for names in federation.site_rounds.values())


def test_a_killed_site_is_left_out_and_catches_up_by_hash(federation):
    assert federation.site_rounds[1] == {"site-1", "site-2"}
    assert federation.rows[1]["sites"] == 2
    with sqlite3.connect(f"file:{federation.state / 'store.sqlite'}?mode=ro", uri=True) as db:
        reasons = db.execute("SELECT round, reason FROM rejections WHERE round = 1").fetchall()
    assert len(reasons) == 1 and "Node Unavailable" in reasons[0][1]
    assert federation.site_rounds[2] == set(SITES)
    version_1 = federation.rows[1]["version_sha256"][:12]
    assert f"site-1: trained on version 1 ({version_1})" in federation.restarted_site_log  # it claims site-1's name


def test_a_registered_site_claiming_another_sites_name_is_recorded_under_its_own(federation):
    with sqlite3.connect(f"file:{federation.state / 'store.sqlite'}?mode=ro", uri=True) as db:
        nodes = {site: node for node, site in db.execute("SELECT node, site FROM sites")}
        uploads = {site: (node, weight) for site, node, weight in
                   db.execute("SELECT site, node, weight FROM site_rounds WHERE round = 2")}
        reasons = set(db.execute("SELECT site, reason FROM rejections WHERE round = 2").fetchall())
    forger = nodes["site-3"]
    assert uploads["site-3"] == (forger, None) and uploads["site-1"][0] == nodes["site-1"] != forger
    assert reasons == {("site-3", f"node {forger} claims to be site 'site-1', but it is 'site-3'")}
    assert {site for site, (_, weight) in uploads.items() if weight is not None} == {"site-1", "site-2"}
    assert federation.rows[2]["version"] == 2 and federation.rows[2]["rejected"] == 1


def test_a_killed_server_resumes_from_its_last_committed_version(federation):
    first, second = federation.server_logs
    assert federation.rows_when_server_killed == 2
    assert "resuming after round 1 at version 1" in second
    assert "run finished" not in first and "already registered" in second
    with sqlite3.connect(f"file:{federation.state / 'store.sqlite'}?mode=ro", uri=True) as db:
        parents = db.execute("SELECT id, parent FROM versions ORDER BY id").fetchall()
    assert parents == [(0, None), (1, 0), (2, 1)]


def test_ctrl_c_stops_the_server_and_a_site_with_everything_they_started(tmp_path):
    make_keys(tmp_path / "keys", ["site-1"], [])
    write_site_data(tmp_path / "site-1.csv", 1)
    port = free_port()
    fedelta = [PYTHON, "-m", "fedelta"]
    launcher = Launcher(tmp_path)
    try:
        server = launcher.start("server", [*fedelta, "server", "--state-dir", str(tmp_path / "state"), "--certs",
                                           str(tmp_path / "keys"), "--address", f"127.0.0.1:{port}",
                                           *(arg for item in TINY for arg in ("--set", item))])
        wait_until(lambda: "Waiting for nodes to connect" in server.text(), 180, "the ServerApp to run")
        site = launcher.start("site", [*fedelta, "site", "--superlink", f"127.0.0.1:{port}", "--certs",
                                       str(tmp_path / "keys"), "--key", str(tmp_path / "keys" / "sites" / "site-1"),
                                       "--data", str(tmp_path / "site-1.csv"), "--cache-dir", str(tmp_path / "cache")])
        wait_until(lambda: "SuperNode ID" in site.text(), 120, "the site to connect")
        for entry, names in ((site, (b"flower-supernode", b"flower-superexec")),
                             (server, (b"flower-superlink", b"flower-superexec", b"flwr-serverapp"))):
            tree = descendants(entry.process.pid)
            commands = b" ".join(Path(f"/proc/{pid}/cmdline").read_bytes() for pid in tree if alive(pid))
            assert all(name in commands for name in names), commands
            entry.process.send_signal(signal.SIGINT)
            assert entry.process.wait(60) == 128 + signal.SIGINT
            wait_until(lambda: not any(alive(pid) for pid in tree), 30, f"{entry.name}'s children to exit")
            assert "SIGINT received; stopping everything this command started" in entry.text()
    finally:
        launcher.stop_all()
