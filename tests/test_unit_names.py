"""Units carry their traits: no module branches on a registered unit's name outside that unit's own file.

The check reads the source (``ast``) for comparisons of a registry setting
(``prune.name``, ``method.name``, ``optimizer.name``, ``aggregate.name``, a
variable named after a registry such as ``method``) or of any ``.name`` with a
literal unit name, or of darex-q's ``q_mode`` outside darex-q's own file.
"""

from __future__ import annotations

import ast
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
SCANNED = ("common", "client", "server", "simulations", "fedelta")
# What holds a registered unit's name: ``<section>.name`` and variables named after a registry.
SECTIONS = {"method", "prune", "optimizer", "opt", "aggregate"}
UNIT_VARIABLES = {"method", "method_name", "pruner", "optimizer", "aggregator"}
# Settings that only one unit reads, by the file allowed to compare them.
OWN_SETTINGS = {"q_mode": "common/pruning/darex_q.py"}


def _literal_names(node: ast.expr) -> bool:
    """A string literal, or a tuple, list or set of them."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    return isinstance(node, ast.Tuple | ast.List | ast.Set) and bool(node.elts) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts
    )


def _holds_unit_name(node: ast.expr, op: ast.cmpop, path: str) -> bool:
    if isinstance(node, ast.Name):
        return node.id in UNIT_VARIABLES
    if not isinstance(node, ast.Attribute):
        return False
    if node.attr in OWN_SETTINGS:
        return OWN_SETTINGS[node.attr] != path
    if node.attr != "name":
        return False
    base = node.value
    owner = base.attr if isinstance(base, ast.Attribute) else base.id if isinstance(base, ast.Name) else ""
    return owner in SECTIONS or isinstance(op, ast.In | ast.NotIn)


def unit_name_comparisons(root: Path) -> list[str]:
    """``path:line: source`` of every comparison of a unit-name holder with a literal name under ``root``."""
    found = []
    for folder in SCANNED:
        for file in sorted((root / folder).rglob("*.py")):
            path = file.relative_to(root).as_posix()
            if "/results/" in f"/{path}":
                continue
            source = file.read_text()
            for node in ast.walk(ast.parse(source, filename=path)):
                if not isinstance(node, ast.Compare):
                    continue
                operands = [node.left, *node.comparators]
                for (left, right), op in zip(zip(operands, operands[1:]), node.ops):
                    pairs = ((left, right), (right, left))
                    if any(_holds_unit_name(a, op, path) and _literal_names(b) for a, b in pairs):
                        found.append(f"{path}:{node.lineno}: {ast.get_source_segment(source, node)}")
    return found


def test_no_module_compares_a_registry_setting_with_a_unit_name():
    found = unit_name_comparisons(PROJECT)
    assert not found, "branch on a trait the unit declares instead:\n" + "\n".join(found)


def test_the_check_notices_such_a_comparison(tmp_path):
    module = tmp_path / "client" / "example.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        'if settings.prune.name == "darex-q" and settings.prune.q_mode == "labelled":\n    pass\n'
        'if opt.name == "sgd" or method in ("lora", "hiwi"):\n    pass\n'
        'if item.name in ("summary.json",) or data.name == "bbc-news":\n    pass\n'
    )
    found = unit_name_comparisons(tmp_path)
    assert sorted(int(line.split(":")[1]) for line in found) == [1, 1, 3, 3, 5]
