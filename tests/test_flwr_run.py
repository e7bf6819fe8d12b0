"""`flwr run .` runs the same app through a local simulation SuperLink, which the test stops."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
FLWR = Path(sys.executable).parent / "flwr"


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


def _stop(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_flwr_run_executes_the_app_and_the_test_stops_its_superlink(tmp_path):
    home, out = tmp_path / "flwr-home", tmp_path / "run"
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    overrides = (f'model.path="tiny-bert" rounds=1 federation.num-sites=2 local.steps=2 local.batch-size=4 '
                 f'data.test-size=32 data.max-site-examples=32 model.max-length=16 output.dir="{out}"')
    command = [str(FLWR), "run", ".", "local", "--run-config", overrides,
               "--federation-config", "num-supernodes=2", "--stream"]
    try:
        done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        deadline = time.monotonic() + 120
        while not (out / "summary.json").exists() and time.monotonic() < deadline:
            time.sleep(1)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["rounds"] == 1 and summary["config"]["model.path"] == "tiny-bert"
    finally:
        _stop(_processes_mentioning(str(home)))
    assert _processes_mentioning(str(home)) == []
