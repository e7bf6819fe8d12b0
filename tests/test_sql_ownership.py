"""The version store is the only module that holds SQL: every other module asks it by name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from fedelta.server.store import VersionStore

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("common", "client", "server", "simulations", "fedelta")
SQL_OWNERS = {Path("server/store.py")}
SQL_KEYWORD = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|PRAGMA)\s")
SQL_STATEMENT = re.compile(
    r"\s*(SELECT\s.*\sFROM\s|INSERT\s+(OR\s+\w+\s+)?INTO\s|UPDATE\s+\S+\s+SET\s|DELETE\s+FROM\s"
    r"|CREATE\s+(UNIQUE\s+)?(TABLE|INDEX|VIEW|TRIGGER)\s|PRAGMA\s+\w+)",
    re.IGNORECASE | re.DOTALL,
)


def looks_like_sql(text: str) -> bool:
    """Whether a string starts as SQL does: an upper-case keyword, or a statement's shape in any case."""
    return bool(SQL_KEYWORD.match(text) or SQL_STATEMENT.match(text))


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string constant and f-string in ``tree``, an f-string's fields written ``{}``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            text = "".join(part.value if isinstance(part, ast.Constant) else "{}" for part in node.values)
            found.append((node.lineno, text))
    return found


def sql_strings(path: Path) -> list[str]:
    """``file:line: text`` of each string in a Python file that looks like SQL."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    hits: dict[int, str] = {}
    for line, text in _strings(tree):
        if looks_like_sql(text) and len(text) > len(hits.get(line, "")):
            hits[line] = text
    return [f"{path.relative_to(ROOT)}:{line}: {text.strip()[:60]!r}" for line, text in sorted(hits.items())]


def _package_files() -> list[Path]:
    return sorted(path for folder in PACKAGE_FOLDERS for path in (ROOT / folder).rglob("*.py"))


def test_no_module_but_the_store_holds_sql():
    files = _package_files()
    assert len(files) > 20
    found = [hit for path in files if path.relative_to(ROOT) not in SQL_OWNERS for hit in sql_strings(path)]
    assert found == [], "SQL outside the version store; give the store a named method instead:\n" + "\n".join(found)


def test_the_check_finds_the_stores_own_sql():
    for owner in SQL_OWNERS:
        assert len(sql_strings(ROOT / owner)) > 10


def test_the_store_takes_no_sql_from_callers():
    assert not hasattr(VersionStore, "select") and not hasattr(VersionStore, "write")


@pytest.mark.parametrize("text, sql", [
    ("SELECT id FROM versions", True),
    ("select site, round from site_rounds where round > ?", True),
    ("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", True),
    ("update controls set ok = 1", True),
    ("delete from rejections", True),
    ("  CREATE TABLE IF NOT EXISTS t (id INTEGER)", True),
    ("UPDATE ", True),
    ("Create site name's EC P-384 key pair", False),
    ("update was made on base {}, not the current {}", False),
    ("selected 3 sites from the pool", False),
])
def test_what_looks_like_sql(text, sql):
    assert looks_like_sql(text) == sql
