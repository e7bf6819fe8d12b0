"""``fedelta methods``: every registered unit a setting can name, with its reference."""

from __future__ import annotations

import argparse


def _methods(args: argparse.Namespace) -> int:
    from fedelta.common.aggregation import AGGREGATORS
    from fedelta.common.methods import METHODS
    from fedelta.common.optimizers import OPTIMIZERS
    from fedelta.common.pruning import PRUNERS
    from fedelta.common.pruning.recover import RECOVERY
    from fedelta.common.quantization import VALUE_TYPES
    from fedelta.common.tasks import TASKS

    registries = (
        ("tasks (task.name)", TASKS),
        ("fine-tuning methods (method.name)", METHODS),
        ("optimizers (optimizer.name)", OPTIMIZERS),
        ("pruners (prune.name)", PRUNERS),
        ("recovery after pruning (prune.recover-steps)", RECOVERY),
        ("value types (quant.values)", VALUE_TYPES),
        ("aggregators (aggregate.name)", AGGREGATORS),
    )
    for title, registry in registries:
        print(f"{title}:")
        for entry in registry:
            print(f"  {entry.name:<12} {entry.summary}\n  {'':<12} ref: {entry.reference}")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``methods`` on the ``fedelta`` command line."""
    methods = commands.add_parser(
        "methods", help="list tasks, fine-tuning methods, optimizers, pruners, recovery, value types and aggregators",
    )
    methods.set_defaults(handler=_methods)
