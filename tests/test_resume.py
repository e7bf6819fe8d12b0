"""A server killed with SIGKILL anywhere in a round resumes from its last committed version."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedelta.client.state import SiteState
from fedelta.common.report import read_rows
from fedelta.server.coordinator import Coordinator
from fedelta.server.store import StoreError, VersionStore

PROJECT = Path(__file__).resolve().parent.parent
DRIVER = PROJECT / "tests" / "server_driver.py"


def _drive(state: Path, work: Path, rounds: int, kill: tuple[str, int] | None = None) -> tuple[int, list[dict]]:
    command = [sys.executable, str(DRIVER), str(state), str(work), "--rounds", str(rounds)]
    if kill:
        command += ["--kill", kill[0], str(kill[1])]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=240)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode in (0, -signal.SIGKILL), done.stderr[-3000:]
    return done.returncode, events


def test_sigkill_at_each_point_of_a_round_resumes_at_the_committed_version(tmp_path):
    state, work = tmp_path / "state", tmp_path / "work"
    runs = [("mid-round", 2), ("blob-write", 2), ("mid-commit", 2), ("after-commit", 3), None]
    history: list[dict] = []
    for kill in runs:
        code, events = _drive(state, work, rounds=5, kill=kill)
        assert code == (0 if kill is None else -signal.SIGKILL)
        start = events[0]
        committed = [e for e in history if e["event"] == "commit"]
        last = committed[-1] if committed else {"version": 0, "residual": 0.0}
        assert start["head"] == last["version"], (kill, start, last)
        if committed:
            assert start["sha"] == last["sha"] and start["residual"] == last["residual"]
        if kill and kill[0] == "blob-write":
            assert any(p.name.endswith(".crash.tmp") for p in (state / "blobs").iterdir())
        history += events
    commits = [e for e in history if e["event"] == "commit"]
    assert [(e["round"], e["version"]) for e in commits] == [(r, r) for r in range(1, 6)]
    assert commits[-2]["residual"] > 0

    store = VersionStore(state)
    try:
        versions = [store.version(i) for i in range(store.head().id + 1)]
        assert [v.round for v in versions] == [0, 1, 2, 3, 4, 5]
        assert [v.parent for v in versions] == [None, 0, 1, 2, 3, 4]
        assert [v.id for v in versions if v.snapshot] == [0, 2, 4]
        assert store.head().sha == commits[-1]["sha"]
        assert [row["round"] for row in store.round_records()] == [0, 1, 2, 3, 4, 5]
        assert store.round_records(complete=False) == [] and store.rejections() == []
        named = {name for v in versions for name in (v.blob, v.snapshot, v.residual) if name}
        assert {p.name for p in (state / "blobs").iterdir()} == named
    finally:
        store.close()
    rows = read_rows(work / "out")
    assert [(row["round"], row["version"]) for row in rows] == [(r, r) for r in range(6)]
    assert rows[3]["sites"] == 2 and rows[3]["version_sha256"] == commits[2]["sha"]
    for index in range(2):
        assert SiteState(work / "sites" / str(index)).load_version().sha == commits[-1]["sha"]


def test_a_second_server_on_the_same_folder_is_refused(tmp_path):
    store = VersionStore(tmp_path)
    try:
        with pytest.raises(StoreError, match=f"in use by another server \\(pid {os.getpid()}\\)"):
            VersionStore(tmp_path)
    finally:
        store.close()
    VersionStore(tmp_path).close()


def test_a_store_of_another_schema_is_refused(tmp_path):
    with sqlite3.connect(tmp_path / "store.sqlite") as db:
        db.execute("CREATE TABLE versions (id INTEGER)")
    with pytest.raises(StoreError, match="schema 0"):
        VersionStore(tmp_path)


def test_a_store_of_another_model_is_refused(tiny_settings, tmp_path):
    Coordinator(tiny_settings, VersionStore(tmp_path / "state"), tmp_path / "out").store.close()
    other = tiny_settings.with_overrides({"seed": 1})
    store = VersionStore(tmp_path / "state")
    try:
        with pytest.raises(ValueError, match="output.state-dir"):
            Coordinator(other, store, tmp_path / "out")
    finally:
        store.close()


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _kill_tree(root: int) -> set[int]:
    """Freeze the process and everything it started (so nothing new is spawned), then SIGKILL them all."""
    pids = {root}
    for _ in range(3):
        _signal_all(pids, signal.SIGSTOP)
        pids |= _descendants(root)
    _signal_all(pids, signal.SIGKILL)
    return pids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_flower_simulation_killed_mid_round_resumes_on_the_same_state_dir(tmp_path):
    out, state = tmp_path / "run", tmp_path / "state"
    command = [sys.executable, "-m", "fedelta", "simulate", "--preset", "smoke", "--set", "rounds=3",
               "--out", str(out), "--state-dir", str(state)]
    first = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    killed: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while not any(row["round"] == 1 for row in read_rows(out)) and time.monotonic() < deadline:
            assert first.poll() is None, "the simulation ended before it could be killed"
            time.sleep(0.2)
    finally:
        killed = _kill_tree(first.pid)
        first.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in killed)
    before = read_rows(out)
    assert before[-1]["round"] in (1, 2)

    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"resuming after round {before[-1]['round']}" in done.stdout
    rows = read_rows(out)
    assert [row["round"] for row in rows] == [0, 1, 2, 3] and [row["version"] for row in rows] == [0, 1, 2, 3]
    assert rows[: len(before)] == before
    for site_dir in sorted((out / "sites").iterdir()):
        assert SiteState(site_dir).load_version().sha == rows[-1]["version_sha256"]
