"""The package's import layering and the absence of import cycles, read from its source with ``ast``.

Module names come from ``[tool.setuptools.package-dir]`` in ``pyproject.toml``
(the folder ``common/`` is ``fedelta.common``, and so on). The cycle check
follows the imports that run when a module is imported: statements at module
level, in top-level ``if``/``try`` blocks and class bodies, not in functions
and not under ``if TYPE_CHECKING:``. The layering rules read every import,
those in functions included.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
OLD_TOP_LEVEL_NAMES = ("common", "client", "server", "simulations")


@dataclass(frozen=True)
class SourceModule:
    """One ``.py`` file of the package under its module name."""

    name: str
    is_package: bool
    path: str
    source: str


@dataclass(frozen=True)
class Target:
    """A module an import statement runs; ``reads_names`` when the statement takes non-module names from it."""

    module: str
    reads_names: bool = False


@dataclass(frozen=True)
class Import:
    """One import statement of a module, with the modules it names and whether it runs at import time."""

    importer: str
    where: str
    statement: str
    targets: tuple[Target, ...]
    at_import_time: bool


@dataclass(frozen=True)
class Rule:
    """Modules under ``importers`` (every module when empty) import nothing under any of ``forbidden``."""

    importers: str
    forbidden: tuple[str, ...]


RULES = (
    Rule("fedelta.common", ("fedelta.client", "fedelta.server", "fedelta.simulations", "fedelta.cli", "flwr")),
    Rule("fedelta.client", ("fedelta.server",)),
    Rule("fedelta.server", ("fedelta.client",)),
    Rule("", OLD_TOP_LEVEL_NAMES),
)


def is_under(module: str, prefix: str) -> bool:
    return not prefix or module == prefix or module.startswith(prefix + ".")


def ancestors(module: str) -> list[str]:
    """The packages above ``module``, outermost first: ``a.b.c`` -> ``a``, ``a.b``."""
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def package_sources(project: Path = PROJECT) -> dict[str, SourceModule]:
    """Every ``.py`` file of the distribution by module name, mapped as ``[tool.setuptools.package-dir]`` says."""
    package_dir = tomllib.loads((project / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules = {}
    for package, folder in package_dir.items():
        for file in sorted((project / folder).rglob("*.py")):
            parts = list(file.relative_to(project / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            name = ".".join([package, *(parts[:-1] if is_package else parts)])
            modules[name] = SourceModule(name, is_package, str(file.relative_to(project)), file.read_text())
    return modules


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_statements(
    nodes: Iterable[ast.AST], at_import_time: bool = True,
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement in ``nodes``, and whether it runs when the module is imported."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, at_import_time
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from import_statements(ast.iter_child_nodes(node), False)
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            yield from import_statements(node.body, False)
            yield from import_statements(node.orelse, at_import_time)
        else:
            yield from import_statements(ast.iter_child_nodes(node), at_import_time)


def absolute_base(node: ast.ImportFrom, module: SourceModule) -> str:
    """The package a ``from`` import reads from, with relative imports resolved against ``module``."""
    if not node.level:
        return node.module or ""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def targets_of(node: ast.Import | ast.ImportFrom, module: SourceModule, known: set[str]) -> tuple[Target, ...]:
    """The modules one statement names: ``from pkg import name`` is ``pkg.name`` when that is a module, else ``pkg``."""
    if isinstance(node, ast.Import):
        return tuple(Target(alias.name) for alias in node.names)
    base = absolute_base(node, module)
    found = []
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        target = Target(submodule) if submodule in known else Target(base, reads_names=True)
        if target not in found:
            found.append(target)
    return tuple(found)


def imports_of(modules: Mapping[str, SourceModule]) -> list[Import]:
    """Every import statement of ``modules``, in file and line order."""
    known = set(modules)
    found = []
    for module in modules.values():
        tree = ast.parse(module.source, filename=module.path)
        for node, at_import_time in import_statements(tree.body):
            found.append(Import(module.name, f"{module.path}:{node.lineno}", ast.unparse(node),
                                targets_of(node, module, known), at_import_time))
    return sorted(found, key=lambda found_import: found_import.where)


def import_time_graph(imports: Iterable[Import], known: set[str]) -> dict[str, set[str]]:
    """Which of ``known`` each module runs while it is imported.

    Importing ``a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``. A module's own
    parent packages are already imported (or being imported) before it runs,
    so they count only when it takes names from them.
    """
    graph: dict[str, set[str]] = {name: set() for name in known}
    for found in imports:
        if not found.at_import_time:
            continue
        own_parents = set(ancestors(found.importer))
        for target in found.targets:
            for module in (*ancestors(target.module), target.module):
                reads_names = module == target.module and target.reads_names
                if module in known and module != found.importer and (module not in own_parents or reads_names):
                    graph[found.importer].add(module)
    return graph


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph``."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                lowlink[node] = min(lowlink[node], lowlink[successor])
            elif successor in on_stack:
                lowlink[node] = min(lowlink[node], index[successor])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def shortest_cycle(graph: Mapping[str, Iterable[str]], start: str, members: set[str]) -> list[str]:
    """The shortest chain through ``members`` from ``start`` back to ``start`` (breadth first, names in order)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph.get(node, ())):
                if successor == start:
                    return [*paths[node], start]
                if successor in members and successor not in paths:
                    paths[successor] = [*paths[node], successor]
                    following.append(successor)
        frontier = following
    raise ValueError(f"{start} is on no cycle")


def import_cycles(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """One chain ``a -> b -> a`` per group of modules importing each other, the shortest from its first name."""
    chains = []
    for component in strongly_connected(graph):
        start = component[0]
        if len(component) > 1 or start in graph.get(start, ()):
            chains.append(" -> ".join(shortest_cycle(graph, start, set(component))))
    return sorted(chains)


def violations(imports: Iterable[Import], rules: Iterable[Rule]) -> list[str]:
    """``file:line: statement (what the rule forbids)`` for each import a rule forbids."""
    found = []
    for rule in rules:
        for each in imports:
            if not is_under(each.importer, rule.importers):
                continue
            hits = sorted({forbidden for target in each.targets for forbidden in rule.forbidden
                           if is_under(target.module, forbidden)})
            if hits:
                found.append(f"{each.where}: {each.statement} ({rule.importers or 'the package'} must not import "
                             f"{', '.join(hits)})")
    return found


@pytest.fixture(scope="module")
def sources() -> dict[str, SourceModule]:
    return package_sources()


@pytest.fixture(scope="module")
def imports(sources) -> list[Import]:
    return imports_of(sources)


def test_every_python_file_of_the_package_is_read_under_its_module_name(sources):
    files = [path for folder in ("fedelta", "common", "client", "server", "simulations")
             for path in (PROJECT / folder).rglob("*.py")]

    assert len(sources) == len(files)
    assert {"fedelta", "fedelta.cli", "fedelta.common", "fedelta.common.config", "fedelta.common.pruning.dare",
            "fedelta.server.console.app", "fedelta.simulations.experiments.harness"} <= set(sources)
    assert sources["fedelta.common.pruning"].path == "common/pruning/__init__.py"


def test_module_level_imports_have_no_cycles(sources, imports):
    cycles = import_cycles(import_time_graph(imports, set(sources)))

    assert cycles == [], "import cycles among module-level imports:\n" + "\n".join(cycles)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.importers or "everything")
def test_imports_respect_the_layering(imports, rule):
    found = violations(imports, [rule])

    assert found == [], "\n".join(found)


def test_cycle_finder_names_each_cycle_as_a_chain():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"a"}}

    assert import_cycles(graph) == ["a -> b -> c -> a", "e -> e"]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_old_aggregation_and_merging_imports_are_a_cycle():
    aggregation = "import torch\n\ndef merge():\n    pass\n\nfrom fedelta.server import merging  # noqa: E402\n"
    merging = "from fedelta.server.aggregation import merge\n"
    modules = {
        "fedelta": SourceModule("fedelta", True, "fedelta/__init__.py", ""),
        "fedelta.server": SourceModule("fedelta.server", True, "server/__init__.py", ""),
        "fedelta.server.aggregation": SourceModule("fedelta.server.aggregation", False, "server/aggregation.py",
                                                   aggregation),
        "fedelta.server.merging": SourceModule("fedelta.server.merging", False, "server/merging.py", merging),
    }

    graph = import_time_graph(imports_of(modules), set(modules))

    assert import_cycles(graph) == [
        "fedelta.server.aggregation -> fedelta.server.merging -> fedelta.server.aggregation"]


def test_only_imports_that_run_at_import_time_make_edges():
    source = (
        "from typing import TYPE_CHECKING\n"
        "import fedelta.common.a\n"
        "try:\n    from fedelta.common import b\nexcept ImportError:\n    pass\n"
        "if TYPE_CHECKING:\n    from fedelta.common import c\nelse:\n    from fedelta.common import d\n"
        "class Holder:\n    from fedelta.common import e\n"
        "def later():\n    from fedelta.common import f\n"
        "from . import g\n"
        "from fedelta.common.h import NAME\n"
    )
    names = [f"fedelta.common.{letter}" for letter in "abcdefgh"]
    modules = {name: SourceModule(name, False, f"common/{name[-1]}.py", "") for name in names}
    modules["fedelta.common.x"] = SourceModule("fedelta.common.x", False, "common/x.py", source)

    graph = import_time_graph(imports_of(modules), set(modules))

    assert graph["fedelta.common.x"] == {f"fedelta.common.{letter}" for letter in "abdegh"}


def test_own_parent_packages_count_only_when_names_are_taken_from_them():
    modules = {
        "fedelta.common.pruning": SourceModule("fedelta.common.pruning", True, "common/pruning/__init__.py",
                                               "from fedelta.common.pruning import dare\n"),
        "fedelta.common.pruning.dare": SourceModule("fedelta.common.pruning.dare", False, "common/pruning/dare.py",
                                                    "import fedelta.common.pruning.registry\n"),
        "fedelta.common.pruning.registry": SourceModule("fedelta.common.pruning.registry", False,
                                                        "common/pruning/registry.py", ""),
        "fedelta.common.pruning.magnitude": SourceModule("fedelta.common.pruning.magnitude", False,
                                                         "common/pruning/magnitude.py",
                                                         "from fedelta.common.pruning import PRUNERS\n"),
    }

    graph = import_time_graph(imports_of(modules), set(modules))

    assert graph["fedelta.common.pruning.dare"] == {"fedelta.common.pruning.registry"}
    assert graph["fedelta.common.pruning.magnitude"] == {"fedelta.common.pruning"}


VIOLATION_CASES = [
    ("fedelta.common.x", "common/x.py",
     "import json\n\ndef load():\n    from fedelta.server.store import VersionStore\n    import flwr.app\n",
     ["common/x.py:4: from fedelta.server.store import VersionStore (fedelta.common must not import fedelta.server)",
      "common/x.py:5: import flwr.app (fedelta.common must not import flwr)"]),
    ("fedelta.client.x", "client/x.py", "from fedelta.common import config\nfrom fedelta.server import store\n",
     ["client/x.py:2: from fedelta.server import store (fedelta.client must not import fedelta.server)"]),
    ("fedelta.simulations.x", "simulations/x.py",
     "from common.config import Settings\nimport server.store\nimport commonmark\n",
     ["simulations/x.py:1: from common.config import Settings (the package must not import common)",
      "simulations/x.py:2: import server.store (the package must not import server)"]),
]


@pytest.mark.parametrize(("module", "path", "source", "expected"), VIOLATION_CASES,
                         ids=["common", "client", "old-names"])
def test_layering_violations_name_file_line_and_import(module, path, source, expected):
    modules = {module: SourceModule(module, False, path, source)}

    found = violations(imports_of(modules), RULES)

    assert found == expected
