"""``fedelta site``: check a site's data, then run its Flower SuperNode with TLS and its key."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fedelta.common.processes import Child, flower_command, flower_env, free_port, split_address, stop_all, stop_on_signals

RETRY_MAX_SECONDS = 30


def diagnose(lines: list[str], ca: Path, name: str) -> str:
    """Why the SuperNode stopped, read from its output."""
    text = "\n".join(lines)
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSL/TLS handshake" in text:
        return (f"the SuperLink's TLS certificate is not signed by {ca} "
                "(wrong ca.crt, or a SuperLink of another deployment)")
    if "Giving up reconnection" in text:
        return "the SuperLink is not reachable (not started yet, wrong --superlink, or a firewall)"
    if "Failed to activate SuperNode" in text:
        return (f"the SuperLink refused this site's key: ask its operator to add {name}'s public key "
                "to sites.csv and restart `fedelta server`")
    return "the SuperNode stopped; its output is above"


def check_data(path: Path, labels: tuple[str, ...], task_name: str = "classification") -> str:
    """Read the site's data as the ClientApp will for task ``task_name``; a one-line summary, or a
    ValueError saying what is wrong."""
    from fedelta.common.config import Settings
    from fedelta.common.tasks import task_for

    task = task_for(Settings().with_overrides({"task.name": task_name}))
    try:
        data = task.load_file(path, labels)
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"data file {str(path)!r} cannot be read: {error}") from error
    if len(data) < 2:
        raise ValueError(f"data file {str(path)!r} needs at least 2 rows (a train and a test example)")
    return task.describe(data)


def _label_set(text: str | None) -> tuple[str, ...]:
    if text is None:
        from fedelta.common.config import Settings
        from fedelta.common.data import label_names

        return label_names(Settings().data)
    names = tuple(name.strip() for name in text.split(","))
    if len(names) < 2 or any(not name for name in names) or len(set(names)) != len(names):
        raise ValueError(f"--labels {text!r} must name at least two distinct labels, comma-separated")
    return names


def _node_value(text: str, what: str) -> str:
    if '"' in text or "\n" in text:
        raise ValueError(f"{what} {text!r} must not contain double quotes or newlines")
    return json.dumps(text)


def supernode_command(args: argparse.Namespace, name: str, labels: tuple[str, ...], cache: Path) -> list[str]:
    from fedelta.common.keys import CA_CERT

    node_config = {"data-path": str(Path(args.data).resolve()), "site-name": name, "cache-dir": str(cache),
                   "labels": ",".join(labels)}
    command = [
        flower_command("flower-supernode"), "--superlink", args.superlink,
        "--root-certificates", str((Path(args.certs) / CA_CERT).resolve()),
        "--auth-supernode-private-key", str(Path(args.key).resolve()),
        "--port", str(args.runtime_port or free_port()),
        "--node-config", " ".join(f"{key}={_node_value(value, key)}" for key, value in node_config.items()),
    ]
    return command


def _site(args: argparse.Namespace) -> int:
    from fedelta.common.keys import CA_CERT, check_ca, check_site_key

    split_address(args.superlink)
    check_ca(Path(args.certs) / CA_CERT)
    public_key = check_site_key(Path(args.key))
    name = args.name or Path(args.key).name
    labels = _label_set(args.labels)
    if any("," in label for label in labels):
        raise ValueError(f"label names {list(labels)} must not contain commas")
    summary = check_data(Path(args.data), labels, args.task)
    cache = Path(args.cache_dir).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    print(f"fedelta site {name}: data {args.data}: {summary}; task {args.task}, labels {list(labels)}", flush=True)
    print(f"fedelta site {name}: public key {public_key}", flush=True)
    print(f"fedelta site {name}: connecting to {args.superlink} over TLS; cache {cache}", flush=True)
    stop_on_signals()
    failures, node = 0, None
    try:
        while True:
            node = Child(name, supernode_command(args, name, labels, cache), flower_env(cache / "flwr"), cwd=cache,
                         log=cache / "supernode.log")
            code = node.wait()
            node.stop()
            if code == 0:
                return 0
            connected = any("SuperNode ID" in line for line in node.lines)
            failures = 1 if connected else failures + 1
            hint = f"exit code {code}: " + diagnose(node.lines, Path(args.certs) / CA_CERT, name)
            if args.max_retries is not None and failures > args.max_retries:
                print(f"fedelta site {name}: {hint}", file=sys.stderr, flush=True)
                return code
            delay = min(RETRY_MAX_SECONDS, 2 ** min(failures, 5))
            print(f"fedelta site {name}: {hint}; starting it again in {delay} s", file=sys.stderr, flush=True)
            time.sleep(delay)
    finally:
        stop_all([node] if node is not None else [])


def add_parser(commands: argparse._SubParsersAction) -> None:
    site = commands.add_parser(
        "site",
        help="run one edge site: check its data, then start its SuperNode (TLS + key)",
        description="Check the site's data file as the federation's task reads it (classification: text and "
        "label columns, every label in the model's label set; causal-lm: prompt+response, messages or text, "
        "every row well formed), then start flower-supernode against the SuperLink over TLS, authenticated "
        "with the site's key. The ClientApp reads the data from that file and keeps the site's version "
        "cache and error-feedback residual in --cache-dir. Ctrl-C stops the SuperNode and its children.",
    )
    site.add_argument("--superlink", required=True, metavar="HOST:PORT",
                      help="the SuperLink's address (IPv6 in brackets, e.g. [2001:db8::7]:9092)")
    site.add_argument("--certs", required=True, metavar="DIR", help="folder holding ca.crt (from `fedelta keys`)")
    site.add_argument("--key", required=True, metavar="SITE_KEY", help="this site's private key (keys/sites/NAME)")
    site.add_argument("--data", required=True, metavar="FILE",
                      help="CSV or JSONL: text,label columns (classification); prompt,response or messages or "
                      "text (causal-lm); an optional group column")
    site.add_argument("--task", default="classification",
                      help="the federation's task.name (classification or causal-lm, see `fedelta methods`), "
                      "to check the data file against before connecting (default: classification)")
    site.add_argument("--cache-dir", required=True, metavar="DIR", help="version cache, residual and logs")
    site.add_argument("--name", help="the site name its replies carry (default: the key file's name); the server "
                      "records a site under the name its key was registered with and rejects uploads "
                      "that claim another")
    site.add_argument("--labels", help="the model's label names, comma-separated, in order "
                      "(default: those of the default data set, rotten,fresh)")
    site.add_argument("--runtime-port", type=int,
                      help="local port of the SuperNode's runtime API (default: a free one)")
    site.add_argument("--max-retries", type=int, help="give up after the SuperNode failed this many times in a "
                      "row (refused, unreachable); default: start it again, waiting up to 30 s, until Ctrl-C")
    site.set_defaults(handler=_site)
