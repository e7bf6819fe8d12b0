"""The ``fedelta`` command: one subcommand per module, each next to what it serves."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

from fedelta import __version__

# Modules that register one subcommand each through ``add_parser(commands)``.
COMMANDS = (
    "fedelta.simulations.cmd_simulate",
    "fedelta.simulations.cmd_methods",
    "fedelta.simulations.cmd_sparse_base",
    "fedelta.server.cmd_keys",
    "fedelta.server.cmd_server",
    "fedelta.server.cmd_console",
    "fedelta.client.cmd_site",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedelta",
        description="Federated delta distribution: sites fine-tune a shared model and upload pruned, "
        "compressed deltas; the server merges them into versioned updates.",
    )
    parser.add_argument("--version", action="version", version=f"fedelta {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError, RuntimeError, subprocess.SubprocessError) as error:
        print(f"fedelta: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
