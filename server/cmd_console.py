"""``fedelta console``: serve the operations console over a server's state folder with waitress."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedelta.server.console.limits import EXPORTS_PER_MINUTE, MAX_REQUEST_BYTES, allowed_hosts


def read_token(path: str) -> str:
    """The action token: the file's text without surrounding whitespace; it must not be empty."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ValueError(f"--token-file {path!r} cannot be read: {error.strerror}") from None
    if not token:
        raise ValueError(f"--token-file {path!r} is empty; put a secret token in it")
    return token


def server_options(host: str, port: int, threads: int) -> dict[str, Any]:
    """waitress's settings: a body larger than the console accepts is refused (413) before it is read."""
    return {"host": host, "port": port, "threads": threads, "ident": "fedelta-console",
            "max_request_body_size": MAX_REQUEST_BYTES + 1}


def serve(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).expanduser().resolve()
    if not state_dir.is_dir():
        raise ValueError(f"--state-dir {args.state_dir!r} is not a folder (give the server's output.state-dir)")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, not {args.port}")
    if args.exports_per_minute < 1:
        raise ValueError(f"--exports-per-minute must be at least 1, not {args.exports_per_minute}")
    token = read_token(args.token_file) if args.token_file else None
    hosts = allowed_hosts(args.host, args.allowed_host)
    from waitress import serve as waitress_serve

    from fedelta.server.console.app import create_app

    app = create_app(state_dir, token, hosts=hosts, exports_per_minute=args.exports_per_minute)
    guarded = f"actions and exports need the token in {args.token_file}" if token else \
        "actions are off and exports open (no --token-file)"
    print(f"fedelta console: http://{args.host}:{args.port}/ over {state_dir}; {guarded}; "
          f"answers for {', '.join(sorted(hosts))}", flush=True)
    waitress_serve(app, **server_options(args.host, args.port, args.threads))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``console`` on the ``fedelta`` command line."""
    console = commands.add_parser(
        "console",
        help="serve the operations console (web pages and a JSON API) over a server's state folder",
        description="Serve a web console over the version store that a running (or finished) server "
        "writes: overview, rounds with charts, sites, versions (delta download, Hugging Face export), "
        "rejections, a JSON API under /api/ and /healthz. Pause, resume, rollback, blocking or unblocking a "
        "site, and exports need the token from --token-file; the server acts on actions between rounds (a "
        "blocked site is not sampled and its uploads are rejected until it is unblocked). Requests for a Host name "
        "not allowed (--allowed-host) get 403, bodies over 16 KiB 413.",
    )
    console.add_argument("--state-dir", required=True, help="the server's state folder (output.state-dir, or OUT/state)")
    console.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    console.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    console.add_argument("--token-file", help="file holding the secret that actions and model exports require; "
                         "without it actions are off and exports open")
    console.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                         help="a Host name the console answers besides localhost, 127.0.0.1, ::1 and a "
                         "non-wildcard --host (repeatable; the port is ignored)")
    console.add_argument("--exports-per-minute", type=int, default=EXPORTS_PER_MINUTE, metavar="N",
                         help=f"model exports one client address may start per minute (default: {EXPORTS_PER_MINUTE})")
    console.add_argument("--threads", type=int, default=4, help="worker threads of the web server (default: 4)")
    console.set_defaults(handler=serve)
