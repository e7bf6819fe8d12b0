"""Bytes on the wire per site and round of a real deployment, next to the payload sizes metrics.jsonl claims.

``python -m fedelta.simulations.bench_wire --sites 2 --rounds 2 --out runs/wire`` runs
`fedelta keys`, `fedelta server` and one `fedelta site` per site on loopback,
with the default settings (MiniLM, DARE p = 0.9, fp16 uploads) unless ``--set``
says otherwise. Each site reaches the SuperLink through its own TCP relay in
this process, which counts every byte the SuperNode's sockets send and receive
(TLS records, HTTP framing, Flower's messages, heartbeats, the app bundle):
the bytes its process puts on the wire, short of TCP/IP headers. The counters
are read each time the server writes a round to metrics.jsonl, so each round's
bytes are the difference between two readings. Each site's data is its share
of Rotten Tomatoes (split by movie after the server's hold-out), written as CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fedelta.common.processes import free_port, kill_tree, wait_for_port

PROJECT = Path(__file__).resolve().parent.parent


class Relay:
    """Forwards TCP connections from a local port to the SuperLink and counts bytes each way."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = self.down = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.up, self.down

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, upward: bool) -> None:
        try:
            while chunk := source.recv(1 << 16):
                with self._lock:
                    if upward:
                        self.up += len(chunk)
                    else:
                        self.down += len(chunk)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def write_site_files(out: Path, sites: int, seed: int) -> list[Path]:
    """Each site's share of Rotten Tomatoes as a text,label CSV (label names as the model knows them)."""
    from fedelta.common.data import hold_out, load_rotten_tomatoes, partition

    corpus = load_rotten_tomatoes()
    pool, _ = hold_out(corpus, 1000, seed)
    paths = []
    for index, share in enumerate(partition(corpus, pool, sites, "movie", 0.5, seed), start=1):
        path = out / f"site-{index}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows((corpus.texts[i], corpus.label_names[corpus.labels[i]]) for i in share)
        paths.append(path)
    return paths


def run(out: Path, sites: int, rounds: int, overrides: list[str]) -> dict[str, Any]:
    from fedelta.common.keys import make_keys

    out.mkdir(parents=True, exist_ok=True)
    names = [f"site-{i}" for i in range(1, sites + 1)]
    make_keys(out / "keys", names, [])
    data = write_site_files(out, sites, 0)
    port = free_port()
    fedelta = [sys.executable, "-m", "fedelta"]
    settings = [f"rounds={rounds}", f"federation.min-sites={sites}", *overrides]
    relays = [Relay(("127.0.0.1", port)) for _ in names]
    started: list[subprocess.Popen] = []
    metrics = out / "state" / "results" / "metrics.jsonl"
    readings: list[list[tuple[int, int]]] = []
    try:
        with open(out / "server.log", "w") as log:
            started.append(subprocess.Popen(
                [*fedelta, "server", "--state-dir", str(out / "state"), "--certs", str(out / "keys"),
                 "--address", f"127.0.0.1:{port}", *(a for s in settings for a in ("--set", s))],
                stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT, start_new_session=True))
        wait_for_port("127.0.0.1", port, 120)
        for name, path, relay in zip(names, data, relays):
            with open(out / f"{name}.log", "w") as log:
                started.append(subprocess.Popen(
                    [*fedelta, "site", "--superlink", f"127.0.0.1:{relay.port}", "--certs", str(out / "keys"),
                     "--key", str(out / "keys" / "sites" / name), "--data", str(path),
                     "--cache-dir", str(out / "cache" / name)],
                    stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT, start_new_session=True))
        readings.append([relay.counts() for relay in relays])
        seen = 0
        while started[0].poll() is None:
            rows = metrics.read_text().splitlines() if metrics.exists() else []
            if len(rows) > seen:
                readings.extend([[relay.counts() for relay in relays]] * (len(rows) - seen))
                seen = len(rows)
                print(f"bench_wire: {seen - 1} of {rounds} rounds done", flush=True)
            time.sleep(0.5)
        if started[0].returncode:
            raise RuntimeError(f"fedelta server failed (exit {started[0].returncode}); see {out / 'server.log'}")
    finally:
        for process in reversed(started):
            kill_tree(process.pid)
            process.wait()
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return {"sites": sites, "rounds": rounds, "overrides": overrides, "table": table(rows, readings, names)}


def table(rows: list[dict], readings: list[list[tuple[int, int]]], names: list[str]) -> list[dict[str, Any]]:
    """One row per (round, site): wire bytes up/down against the payloads metrics.jsonl reports per site."""
    result = []
    for index, row in enumerate(rows[1:], start=1):
        for site, name in enumerate(names):
            up = readings[index + 1][site][0] - readings[index][site][0]
            down = readings[index + 1][site][1] - readings[index][site][1]
            result.append({
                "round": row["round"], "site": name, "wire_up": up, "wire_down": down,
                "payload_up": row["upload_bytes"] / max(1, row["sites"]),
                "payload_down": row["downlink_bytes"] / len(names),
            })
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = ["| round | site | wire up | payload up (metrics) | up overhead "
             "| wire down | payload down (metrics) | down overhead |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in result["table"]:
        lines.append(
            f"| {row['round']} | {row['site']} | {row['wire_up']:,} | {row['payload_up']:,.0f} | "
            f"{row['wire_up'] / max(1.0, row['payload_up']):.2f}x | {row['wire_down']:,} | "
            f"{row['payload_down']:,.0f} | "
            f"{row['wire_down'] / max(1.0, row['payload_down']):.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=2, help="edge sites (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    parser.add_argument("--out", type=Path, default=Path("runs/wire"), help="working folder (default runs/wire)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.sites < 1 or args.rounds < 1:
        raise SystemExit("--sites and --rounds must be at least 1")
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty; choose a new --out")
    result = run(args.out.resolve(), args.sites, args.rounds, args.set)
    (args.out / "wire.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
