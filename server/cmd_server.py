"""``fedelta server``: a SuperLink with TLS and site authentication, and the fedelta run submitted to it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedelta.common.processes import (
    Child, flower_command, flower_env, join_address, reachable_host, split_address, stop_all, stop_on_signals,
    wait_for_port,
)

if TYPE_CHECKING:
    from fedelta.common.keys import SiteKey

CONNECTION = "fedelta"


def connection_toml(address: str, ca: Path) -> str:
    """FLWR_HOME/config.toml: one named SuperLink connection over TLS, the default."""
    return (f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f"address = {json.dumps(address)}\nroot-certificates = {json.dumps(str(ca))}\n")


def _overrides(args: argparse.Namespace, state: Path) -> dict[str, Any]:
    from fedelta.common.config import Settings, parse_assignment

    overrides: dict[str, Any] = {"output.dir": str(state / "results"), "output.state-dir": str(state)}
    for item in args.set:
        key, value = parse_assignment(item)
        overrides[key] = value
    Settings().with_overrides(overrides)
    return overrides


def _register(sites: list[SiteKey], home: Path, env: dict[str, str]) -> list[Child]:
    """`flwr supernode register` for every listed site, in parallel; a key already known is fine."""
    keys = home / "site-keys"
    keys.mkdir(parents=True, exist_ok=True)
    children = []
    for site in sites:
        (keys / f"{site.name}.pub").write_text(site.public_key + "\n")
        command = [flower_command("flwr"), "supernode", "register", str(keys / f"{site.name}.pub"), CONNECTION,
                   "--name", site.name, "--format", "json"]
        children.append(Child(f"register {site.name}", command, env, echo=False))
    return children


def _check_registrations(children: list[Child]) -> None:
    for child in children:
        code = child.wait(timeout=120)
        text = "\n".join(child.lines)
        if "already in use" in text:
            state = "already registered"
        elif code == 0 and ("registered successfully" in text or "\"success\": true" in text):
            state = "registered"
        else:
            raise RuntimeError(f"{child.name} failed (exit {code}):\n{text}")
        print(f"fedelta server: site {child.name.split(' ', 1)[1]} {state}", flush=True)


def _server(args: argparse.Namespace) -> int:
    from fedelta.common.app_folder import config_toml, write_app_folder
    from fedelta.common.keys import CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, check_ca, read_sites
    from fedelta.server.outcome import rounds_before

    certs, state = Path(args.certs).resolve(), Path(args.state_dir).resolve()
    host, port = split_address(args.address)
    check_ca(certs / CA_CERT)
    for needed in (SERVER_CERT, SERVER_KEY):
        if not (certs / needed).is_file():
            raise FileNotFoundError(f"{certs / needed} is missing; create the folder with `fedelta keys`")
    sites = read_sites(certs)
    overrides = _overrides(args, state)
    before = rounds_before(state)
    home = state / "flwr"
    home.mkdir(parents=True, exist_ok=True)
    local = join_address(reachable_host(host), port)
    (home / "config.toml").write_text(connection_toml(local, certs / CA_CERT))
    (home / "run-config.toml").write_text(config_toml(overrides))
    app = write_app_folder(state / "app")
    env = flower_env(home)
    children: list[Child] = []
    stop_on_signals()
    try:
        superlink = Child("superlink", [
            flower_command("flower-superlink"), "--ssl-certfile", str(certs / SERVER_CERT),
            "--ssl-keyfile", str(certs / SERVER_KEY), "--ssl-ca-certfile", str(certs / CA_CERT),
            "--enable-supernode-auth", "--host", host, "--port", str(port),
            "--database", str(state / "superlink.sqlite"), "--disable-runtime-dependency-installation",
        ], env, log=state / "superlink.log", echo=args.verbose)
        children.append(superlink)
        wait_for_port(host, port, timeout=60, alive=superlink.running)
        print(f"fedelta server: SuperLink on {join_address(host, port)} (TLS, site authentication on); "
              f"log {state / 'superlink.log'}",
              flush=True)
        if (certs / CA_KEY).exists():
            print(f"fedelta server: note: {certs / CA_KEY} can mint certificates; keep it off this machine",
                  flush=True)
        registrations = _register(sites, home, env)
        children.extend(registrations)
        _check_registrations(registrations)
        print(f"fedelta server: submitting the fedelta run; store {state}, results {overrides['output.dir']}",
              flush=True)
        run = Child("run", [flower_command("flwr"), "run", str(app), CONNECTION,
                            "--run-config", str(home / "run-config.toml"), "--stream"], env, cwd=app,
                    log=state / "run.log")
        children.append(run)
        code = run.wait()
        return outcome_code(code, Path(overrides["output.dir"]) / "summary.json", state, before)
    finally:
        stop_all(children)


def outcome_code(code: int, summary: Path, state: Path, before: int) -> int:
    """0 when the run wrote its summary and one of its rounds committed a version; else 1 and why."""
    from fedelta.server.outcome import run_failure

    if code != 0 or not summary.is_file():
        print(f"fedelta server: the run ended with exit code {code} and no summary; see {state / 'run.log'}",
              file=sys.stderr, flush=True)
        return 1
    failure = run_failure(state, before)
    if failure is not None:
        print(f"fedelta server: {failure}; results in {summary.parent}, see {state / 'run.log'}",
              file=sys.stderr, flush=True)
        return 1
    print(f"fedelta server: run finished; results in {summary.parent}", flush=True)
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    server = commands.add_parser(
        "server",
        help="run the server: a SuperLink (TLS, site authentication) and the fedelta run on it",
        description="Start flower-superlink with TLS and SuperNode authentication, register every site "
        "listed in CERTS/sites.csv under its name (the name the server records the site under, whatever its "
        "replies claim), and submit the fedelta app to it (flwr run). The version store lives "
        "in --state-dir; run the same command again after a crash and the run continues from the last "
        "committed version. It exits 1 with a one-line reason when the run wrote no summary or none of "
        "its rounds committed a version. Ctrl-C stops everything this command started.",
    )
    server.add_argument("--state-dir", required=True, metavar="DIR",
                        help="version store, SuperLink database, Flower home, logs and results (DIR/results)")
    server.add_argument("--certs", required=True, metavar="DIR", help="folder written by `fedelta keys`")
    server.add_argument("--address", default="0.0.0.0:9092", metavar="HOST:PORT",
                        help="where the SuperLink listens for sites (default: 0.0.0.0:9092; IPv6 in brackets, "
                        "e.g. [::]:9092)")
    server.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of [tool.flwr.app.config], e.g. --set rounds=10")
    server.add_argument("--verbose", action="store_true", help="also echo the SuperLink's own log")
    server.set_defaults(handler=_server)
