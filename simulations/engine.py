"""The fedelta app on Flower's Simulation Engine, in this process: the one module that uses Flower's private API.

``flwr run`` against a local simulation SuperLink leaves that SuperLink running,
and Flower's public ``run_simulation`` is deprecated and takes no run config.
Both are built on ``flwr.simulation.run_simulation._run_simulation``, which this
module calls with the app folder of :mod:`fedelta.common.app_folder`: every
virtual site and the ServerApp get the same fused settings, read from that
folder and the overrides, as ``flwr run`` would give them. :data:`PRIVATE_API`
names every private name used here; :func:`missing_private_api` reports the
ones a Flower upgrade moved (``tests/test_flower_private.py`` runs it).

Where the virtual sites run comes from the ``federation`` settings: each site's
Ray resources, and a local Ray or the running cluster at ``federation.ray-address``
(:func:`backend_config`); :func:`refuse_unplaceable_sites` refuses, before Ray
starts, sites that it could not place.
"""

from __future__ import annotations

import importlib
import inspect
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedelta.common.config import require

if TYPE_CHECKING:
    from fedelta.common.config import FederationSettings, Settings

# (module, attribute, parameters the call here passes): Flower's private API that fedelta relies on.
PRIVATE_API: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("flwr.simulation.run_simulation", "_run_simulation",
     ("num_supernodes", "exit_event", "client_app_attr", "server_app_attr", "server_app_context", "app_dir",
      "run", "is_app", "backend_config", "verbose_logging")),
    ("flwr.common.config", "get_fused_config_from_dir", ("project_dir", "override_config")),
    ("flwr.common.constant", "SUPERLINK_NODE_ID", ()),
    ("flwr.supercore.constant", "NOOP_FEDERATION_ID", ()),
    ("flwr.supercore.run", "Run", ()),
    ("flwr.supercore.task_identity", "TaskIdentity", ()),
    ("flwr.supercore.telemetry", "EventType", ()),
)


def missing_private_api() -> list[str]:
    """Each private name of :data:`PRIVATE_API` that this Flower lacks, or whose call no longer fits."""
    problems = []
    for module_name, attribute, parameters in PRIVATE_API:
        try:
            found = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError):
            problems.append(f"{module_name}.{attribute} is gone")
            continue
        if parameters:
            accepted = set(inspect.signature(found).parameters)
            lacking = [name for name in parameters if name not in accepted]
            if lacking:
                problems.append(f"{module_name}.{attribute} no longer takes {', '.join(lacking)}")
    return problems


def backend_config(federation: FederationSettings) -> dict[str, Any]:
    """Flower's backend config: each virtual site's Ray resources, and the address of a Ray cluster to join.

    Joining passes Ray nothing but the address: Ray refuses ``num_cpus``, ``num_gpus`` and
    ``resources`` from a driver that connects to a running cluster, whose nodes declared theirs
    at ``ray start``.
    """
    init_args: dict[str, Any] = {"include_dashboard": False}
    if federation.ray_address:
        init_args["address"] = federation.ray_address
    return {
        "client_resources": {"num_cpus": federation.cpus_per_site, "num_gpus": federation.gpus_per_site},
        "init_args": init_args,
    }


def refuse_unplaceable_sites(settings: Settings, *, cpus: int, gpus: int) -> None:
    """Refuse virtual sites that Ray could not give what they ask for, before starting it.

    ``cpus`` and ``gpus`` are this machine's; they bound a local Ray, not a joined cluster.
    Whatever Ray runs on, a site that reserves no GPU sees none (Ray hides them from it).
    """
    federation = settings.federation
    require(
        settings.local.device != "cuda" or federation.gpus_per_site > 0,
        "local.device",
        "is 'cuda' but federation.gpus-per-site is 0, and Ray hides the GPUs from a site that reserves none; "
        "set federation.gpus-per-site (0.5 puts two sites on each GPU)",
    )
    if federation.ray_address:
        return
    require(
        federation.cpus_per_site <= cpus,
        "federation.cpus-per-site",
        f"is {federation.cpus_per_site:g} but this machine has {cpus} CPUs, so the local Ray could run no site; "
        "lower it, or join a larger Ray cluster with federation.ray-address",
    )
    require(
        federation.gpus_per_site <= gpus,
        "federation.gpus-per-site",
        f"is {federation.gpus_per_site:g} but this process sees {gpus} CUDA devices, so the local Ray could run "
        "no site; lower it, or join a Ray cluster with GPUs with federation.ray-address",
    )


def run_flower_simulation(overrides: dict[str, Any], federation: FederationSettings, *, verbose: bool = False) -> None:
    """Run the fedelta ServerApp and ``federation.num_sites`` virtual sites (Ray actors) with these settings."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    from fedelta.common.app_folder import CLIENT_APP, SERVER_APP, write_app_folder

    run = Run.create_empty(run_id=int.from_bytes(os.urandom(7), "little"))
    run.override_config = dict(overrides)
    run.primary_task_id = int.from_bytes(os.urandom(7), "little")
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
    with tempfile.TemporaryDirectory(prefix="fedelta-app-") as folder:
        app_dir = write_app_folder(Path(folder))
        fused = get_fused_config_from_dir(app_dir, run.override_config)
        context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=fused)
        _run_simulation(
            num_supernodes=federation.num_sites,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app_attr=CLIENT_APP,
            server_app_attr=SERVER_APP,
            server_app_context=context,
            app_dir=str(app_dir),
            run=run,
            is_app=True,
            backend_config=backend_config(federation),
            verbose_logging=verbose,
        )
