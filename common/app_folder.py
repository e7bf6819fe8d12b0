"""The Flower app folder that ``flwr run`` and the Simulation Engine read, written from the settings.

Flower takes an app's components and its run config from the ``pyproject.toml``
of a folder. An installed fedelta has no source checkout, so the commands that
start a run write such a folder themselves: the components are loaded from the
installed package, and the config holds every setting with its default
(:class:`~fedelta.common.config.Settings`). ``flwr run .`` in a checkout reads
the repository's own ``pyproject.toml`` instead, whose catalogue holds the same
defaults.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedelta.common.atomic import write_bytes_atomic
from fedelta.common.config import Settings

SERVER_APP = "fedelta.server.app:app"
CLIENT_APP = "fedelta.client.app:app"
PUBLISHER = "fedelta"


def toml_value(value: Any) -> str:
    """One setting's value as TOML (settings are booleans, numbers or text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def config_toml(config: Mapping[str, Any]) -> str:
    """Flat dotted settings as TOML lines, the form of ``flwr run --run-config FILE``."""
    return "".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in config.items())


def app_pyproject(version: str) -> str:
    """A ``pyproject.toml`` describing the fedelta app: components and every setting's default."""
    return (
        "[project]\n"
        'name = "fedelta-app"\n'
        f"version = {json.dumps(version)}\n"
        'description = "The fedelta Flower app; its code is the installed fedelta package"\n'
        'license = "Apache-2.0"\n'
        "dependencies = []\n\n"
        "[tool.flwr.app]\n"
        f"publisher = {json.dumps(PUBLISHER)}\n\n"
        "[tool.flwr.app.components]\n"
        f"serverapp = {json.dumps(SERVER_APP)}\n"
        f"clientapp = {json.dumps(CLIENT_APP)}\n\n"
        "[tool.flwr.app.config]\n"
        + config_toml(Settings().to_run_config())
    )


def write_app_folder(folder: Path) -> Path:
    """Write the app's ``pyproject.toml`` into ``folder`` (created if needed) and return the folder."""
    from fedelta import __version__

    folder.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(folder / "pyproject.toml", app_pyproject(_pep440(__version__)).encode("utf-8"))
    return folder


def _pep440(version: str) -> str:
    """The package version without a local part, which Flower's app versions do not take."""
    return version.split("+", 1)[0] or "0"
