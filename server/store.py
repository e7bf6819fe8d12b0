"""The version store: SQLite metadata plus hash-named blob files.

Every committed version has a parent, a hash of its weights, the round that
made it, and a blob: a full snapshot (version 0) or the encoded merged delta
exactly as sites receive it. Blobs are written atomically and fsynced before
the row that names them is committed, so a committed row always has its blob.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.atomic import write_bytes_atomic

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY, parent INTEGER REFERENCES versions(id), sha256 TEXT NOT NULL,
    round INTEGER NOT NULL, kind TEXT NOT NULL, blob TEXT NOT NULL, blob_bytes INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, version INTEGER, record TEXT NOT NULL, finished REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS site_rounds (
    site TEXT NOT NULL, round INTEGER NOT NULL, node TEXT NOT NULL, upload_bytes INTEGER NOT NULL,
    metrics TEXT NOT NULL, PRIMARY KEY (site, round)
);
CREATE TABLE IF NOT EXISTS sites (
    node TEXT PRIMARY KEY, site TEXT, version INTEGER, last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY, site TEXT NOT NULL, round INTEGER NOT NULL, reason TEXT NOT NULL,
    created REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Version:
    id: int
    parent: int | None
    sha: str
    round: int
    kind: str
    blob: str
    blob_bytes: int


class StoreError(RuntimeError):
    """The store on disk is inconsistent (a missing or altered blob)."""


class VersionStore:
    """Versions, rounds, sites and rejections of one federation, under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.root / "store.sqlite", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def commit_version(self, *, parent: int | None, round: int, sha: str, kind: str, blob: bytes) -> Version:
        """Write the blob, then the row; the version exists only once both are durable.

        Versions are numbered 0 (the genesis), 1, 2, ... in commit order.
        """
        name = hashlib.sha256(blob).hexdigest()
        path = self.root / "blobs" / name
        if not path.is_file():
            write_bytes_atomic(path, blob)
        head = self.head()
        version_id = 0 if head is None else head.id + 1
        with self._db:
            self._db.execute(
                "INSERT INTO versions (id, parent, sha256, round, kind, blob, blob_bytes, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (version_id, parent, sha, round, kind, name, len(blob), time.time()),
            )
        return self.version(version_id)

    def version(self, version_id: int) -> Version:
        row = self._db.execute(
            "SELECT id, parent, sha256, round, kind, blob, blob_bytes FROM versions WHERE id = ?", (version_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no version {version_id}")
        return Version(*row)

    def head(self) -> Version | None:
        row = self._db.execute("SELECT MAX(id) FROM versions").fetchone()
        return None if row[0] is None else self.version(row[0])

    def genesis(self) -> Version | None:
        row = self._db.execute("SELECT MIN(id) FROM versions").fetchone()
        return None if row[0] is None else self.version(row[0])

    def read_blob(self, version: Version) -> bytes:
        data = (self.root / "blobs" / version.blob).read_bytes()
        if hashlib.sha256(data).hexdigest() != version.blob:
            raise StoreError(f"blob of version {version.id} does not match its hash")
        return data

    def chain(self, after: int, upto: int) -> list[Version]:
        """Versions that lead from ``after`` (excluded) to ``upto`` (included), oldest first."""
        path: list[Version] = []
        current = self.version(upto)
        while current.id != after:
            path.append(current)
            if current.parent is None:
                raise KeyError(f"version {after} is not an ancestor of {upto}")
            current = self.version(current.parent)
        return path[::-1]

    def record_round(self, round: int, version: int | None, record: dict[str, Any]) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO rounds (round, version, record, finished) VALUES (?, ?, ?, ?)",
                (round, version, json.dumps(record), time.time()),
            )

    def record_site_round(self, *, site: str, node: str, round: int, upload_bytes: int, metrics: dict) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO site_rounds (site, round, node, upload_bytes, metrics) VALUES (?, ?, ?, ?, ?)",
                (site, round, node, upload_bytes, json.dumps(metrics)),
            )

    def record_rejection(self, *, site: str, round: int, reason: str) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO rejections (site, round, reason, created) VALUES (?, ?, ?, ?)",
                (site, round, reason, time.time()),
            )

    def rejections(self) -> list[tuple[str, int, str]]:
        return self._db.execute("SELECT site, round, reason FROM rejections ORDER BY id").fetchall()

    def set_site_version(self, node: str, site: str | None, version: int | None) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO sites (node, site, version, last_seen) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(node) DO UPDATE SET site = COALESCE(excluded.site, site),"
                " version = excluded.version, last_seen = excluded.last_seen",
                (node, site, version, time.time()),
            )

    def site_version(self, node: str) -> int | None:
        row = self._db.execute("SELECT version FROM sites WHERE node = ?", (node,)).fetchone()
        return None if row is None else row[0]
