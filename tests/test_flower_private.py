"""Flower's private API that fedelta relies on is still where simulations/engine.py expects it."""

import ast
from pathlib import Path

from fedelta.simulations import engine


def test_every_private_name_the_engine_uses_is_still_there():
    problems = engine.missing_private_api()
    assert not problems, (
        "a Flower upgrade moved private API that `fedelta simulate` calls (simulations/engine.py): "
        + "; ".join(problems)
    )


def test_the_check_names_a_moved_function_and_a_changed_call(monkeypatch):
    monkeypatch.setattr(engine, "PRIVATE_API", (
        ("flwr.simulation.run_simulation", "_no_such_function", ()),
        ("flwr.common.config", "get_fused_config_from_dir", ("project_dir", "no_such_parameter")),
    ))
    assert engine.missing_private_api() == [
        "flwr.simulation.run_simulation._no_such_function is gone",
        "flwr.common.config.get_fused_config_from_dir no longer takes no_such_parameter",
    ]


def test_the_declared_parameters_are_exactly_those_the_engine_passes():
    tree = ast.parse(Path(engine.__file__).read_text(encoding="utf-8"))
    calls = [node for node in ast.walk(tree)
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_run_simulation"]
    declared = dict((attribute, parameters) for _, attribute, parameters in engine.PRIVATE_API)
    assert len(calls) == 1
    assert sorted(keyword.arg for keyword in calls[0].keywords) == sorted(declared["_run_simulation"])
