"""``fedelta simulate`` joins a running Ray cluster (a local head started here) instead of starting its own Ray."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Stop a process started in its own session and every process of its group: SIGTERM, then SIGKILL."""
    pgid = process.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + timeout
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _group_alive(pgid):
            return


def _start_head(port: int, temp_dir: Path) -> subprocess.Popen:
    """``ray start --head --block`` in its own session, its output in ``temp_dir/head.log``."""
    command = [str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
               "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
               f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}"]
    with open(temp_dir / "head.log", "wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)


def _wait_until_started(head: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while "Ray runtime started." not in log.read_text(errors="replace"):
        if head.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the Ray head did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.3)


@pytest.mark.slow
def test_simulation_joins_a_running_ray_cluster(tmp_path):
    out, port = tmp_path / "run", _free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    head = _start_head(port, temp_dir)
    simulation = None
    try:
        _wait_until_started(head, temp_dir / "head.log")
        command = [sys.executable, "-m", "fedelta", "simulate", "--preset", "smoke",
                   "--set", f"federation.ray-address=127.0.0.1:{port}", "--out", str(out)]
        with open(tmp_path / "simulate.log", "w") as log:
            simulation = subprocess.Popen(command, cwd=PROJECT, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
            code = simulation.wait(timeout=300)
        assert code == 0, (tmp_path / "simulate.log").read_text()[-3000:]
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [row["round"] for row in rows] == [0, 1, 2]
        assert (out / "summary.json").is_file()
        drivers = list(temp_dir.glob("session_*/logs/python-core-driver-*.log"))
        assert drivers, "the simulation did not connect to the head started here"
    finally:
        if simulation is not None:
            _stop_group(simulation)
        _stop_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
    with pytest.raises(ProcessLookupError):
        os.killpg(head.pid, 0)
