"""Run the fedelta Flower app on Flower's Simulation Engine, in this process.

This does what ``flwr run .`` does against a local simulation SuperLink (fuse
pyproject defaults with overrides, start the Simulation Engine with one
virtual SuperNode per site) without a SuperLink process left to stop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent


def run_flower_simulation(overrides: dict[str, Any], num_sites: int, verbose: bool = False) -> None:
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

    run = Run.create_empty(run_id=int.from_bytes(os.urandom(7), "little"))
    run.override_config = dict(overrides)
    run.primary_task_id = int.from_bytes(os.urandom(7), "little")
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
    fused = get_fused_config_from_dir(PROJECT_DIR, run.override_config)
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=fused)
    _run_simulation(
        num_supernodes=num_sites,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app_attr="client.app:app",
        server_app_attr="server.app:app",
        server_app_context=context,
        app_dir=str(PROJECT_DIR),
        run=run,
        is_app=True,
        backend_config={"client_resources": {"num_cpus": 2, "num_gpus": 0.0},
                        "init_args": {"num_cpus": 2, "include_dashboard": False}},
        verbose_logging=verbose,
    )
