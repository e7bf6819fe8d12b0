"""Child processes of the deployment commands: start, stream with a prefix, and stop the whole tree by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port), with a clear error."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {address!r} must be HOST:PORT, e.g. 0.0.0.0:9092")
    return host, int(port)


def join_address(host: str, port: int) -> str:
    """``HOST:PORT``, an IPv6 host in brackets; the inverse of :func:`split_address`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reachable_host(host: str) -> str:
    """The host this machine dials to reach a listener bound to ``host`` (a wildcard becomes loopback)."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "localhost": "127.0.0.1", "::": "::1"}.get(host, host)


def wait_for_port(host: str, port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Return once ``host:port`` accepts TCP connections; raise if ``alive()`` turns false or time runs out."""
    target = reachable_host(host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the process meant to listen on {join_address(host, port)} exited")
        try:
            with socket.create_connection((target, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {join_address(host, port)} after {timeout:.0f} s")


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid`` (children first found, deepest last), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_tree(pid: int, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Send ``sig`` to ``pid`` and all its descendants (listed before any dies), then SIGKILL what is left."""
    tree = [pid, *descendants(pid)]
    for target in tree:
        try:
            os.kill(target, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in tree):
        time.sleep(0.1)
    for target in tree:
        if alive(target):
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Child:
    """A started command in its own session; its output lines are kept, echoed with a prefix, and logged."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str], cwd: Path | None = None,
                 echo: bool = True, log: Path | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.process = subprocess.Popen(
            self.command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1, start_new_session=True,
        )
        self.lines: list[str] = []
        self._echo = echo
        self._log = open(log, "a", encoding="utf-8") if log else None
        self._reader = threading.Thread(target=self._copy, name=f"{name}-output", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _copy(self) -> None:
        stream = self.process.stdout
        if stream is None:
            return
        for line in stream:
            line = line.rstrip("\n")
            self.lines.append(line)
            if self._log:
                self._log.write(line + "\n")
                self._log.flush()
            if self._echo:
                print(f"[{self.name}] {line}", flush=True)

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout=5)
        return code

    def stop(self, grace: float = 10.0) -> None:
        """Stop the command and everything it started, by PID."""
        if self.running():
            kill_tree(self.pid, signal.SIGTERM, grace)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            kill_tree(self.pid, signal.SIGKILL, 1.0)
            self.process.wait()
        self._reader.join(timeout=5)
        if self._log:
            self._log.close()
            self._log = None


def stop_all(children: Sequence[Child]) -> None:
    """Stop ``children`` in reverse order of starting; a second Ctrl-C cannot cut this short."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for child in reversed(children):
            child.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_on_signals() -> None:
    """Turn SIGINT/SIGTERM into ``SystemExit(128 + signal)``, so that ``finally`` blocks stop the children.

    The handler only raises: stopping children inside it could deadlock with a
    ``Popen.wait`` it interrupted.
    """

    def handler(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"\nfedelta: {signal.Signals(signum).name} received; stopping everything this command started",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment Flower's commands run in: their own home, no telemetry, no dependency reinstall."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }


def flower_command(name: str) -> str:
    """The path of a Flower console script installed next to this Python."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; is flwr installed in this environment?")
    return str(path)
