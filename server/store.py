"""The version store: SQLite metadata plus hash-named blob files, owned by one server at a time.

Every committed version has a parent, a hash of its weights, the round that
made it, and a blob: a full snapshot (version 0) or the encoded merged delta
exactly as sites receive it. Every ``store.snapshot-every`` versions a full
snapshot is kept as well, and the head may carry the server's downlink
residual. Blobs are written atomically and fsynced before the row that names
them is committed, so a committed row always has its blobs; files no row
names (left by a crash between the two) are deleted when the store is opened.
A lock file keeps a second server off the same folder.

This is the only module that speaks SQL: the server, its control loop and the
console ask the store by named methods, which return records (``Version``,
``Control``, ``SiteRound``, ``SiteNode``, ``Rejection``) or plain values. A
store of the previous schema (2) is migrated when a server opens it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import sqlite3
import tempfile
import time
import unicodedata
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from fedelta.common.atomic import fsync_dir, write_bytes_atomic

SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY, parent INTEGER REFERENCES versions(id), sha256 TEXT NOT NULL,
    round INTEGER NOT NULL, kind TEXT NOT NULL, blob TEXT NOT NULL, blob_bytes INTEGER NOT NULL,
    snapshot TEXT, snapshot_bytes INTEGER, residual TEXT, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, version INTEGER, record TEXT NOT NULL, complete INTEGER NOT NULL,
    finished REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS site_rounds (
    site TEXT NOT NULL, round INTEGER NOT NULL, node TEXT NOT NULL, upload_bytes INTEGER NOT NULL,
    metrics TEXT NOT NULL, weight REAL, contribution REAL, note TEXT, PRIMARY KEY (site, round)
);
CREATE TABLE IF NOT EXISTS sites (
    node TEXT PRIMARY KEY, site TEXT, version INTEGER, last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY, site TEXT NOT NULL, round INTEGER NOT NULL, reason TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS controls (
    id INTEGER PRIMARY KEY, action TEXT NOT NULL, version INTEGER, requested REAL NOT NULL,
    settled REAL, ok INTEGER, outcome TEXT, result INTEGER, site TEXT
);
"""
# What turns a store of an older schema into this one, by the schema it starts from.
MIGRATIONS = {
    2: (
        "ALTER TABLE site_rounds ADD COLUMN weight REAL",
        "ALTER TABLE site_rounds ADD COLUMN contribution REAL",
        "ALTER TABLE site_rounds ADD COLUMN note TEXT",
        "ALTER TABLE controls ADD COLUMN site TEXT",
    ),
}
VERSION_COLUMNS = "id, parent, sha256, round, kind, blob, blob_bytes, snapshot, snapshot_bytes, residual, created"
CONTROL_COLUMNS = "id, action, version, requested, settled, ok, outcome, result, site"
SITE_ROUND_COLUMNS = "site, round, node, upload_bytes, metrics, weight, contribution, note"
BLOCKING = ("block", "unblock")
# Terminal escape sequences (CSI, OSC, and two-byte ones) that a stored reason must not carry.
ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
log = logging.getLogger("fedelta.store")


@dataclass(frozen=True)
class Version:
    id: int
    parent: int | None
    sha: str
    round: int
    kind: str
    blob: str
    blob_bytes: int
    snapshot: str | None = None
    snapshot_bytes: int | None = None
    residual: str | None = None
    created: float | None = None


@dataclass(frozen=True)
class Control:
    """An operator's request and, once the server has acted on it, the outcome."""

    id: int
    action: str
    version: int | None
    requested: float
    settled: float | None = None
    ok: bool | None = None
    outcome: str | None = None
    result: int | None = None
    site: str | None = None


@dataclass(frozen=True)
class SiteRound:
    """What one site sent in one round: its node, the bytes it uploaded and its training metrics.

    Once the round is committed, an upload that went into the merged delta also
    has the weight it was given, its weighted norm (``contribution``) and a
    note saying why the weight differs from the reported ``num-examples``.
    """

    site: str
    round: int
    node: str
    upload_bytes: int
    metrics: dict[str, Any]
    weight: float | None = None
    contribution: float | None = None
    note: str | None = None


@dataclass(frozen=True)
class SiteNode:
    """One node the server has served: the site it named, the version it holds, when it was last seen."""

    node: str
    site: str | None
    version: int | None
    last_seen: float


@dataclass(frozen=True)
class Rejection:
    """An update the server refused, or a site's reported error, and when."""

    id: int
    site: str
    round: int
    reason: str
    created: float


class StoreError(RuntimeError):
    """The store on disk is inconsistent, of another schema, or in use by another server."""


@dataclass(frozen=True)
class StoredBlob:
    """A blob already in the store's folder: its file name (the sha256 of its bytes) and size."""

    name: str
    size: int


class BlobWriter:
    """Bytes written in pieces to a temp file in the blob folder, hashed as they go (see :meth:`VersionStore.blob_writer`)."""

    def __init__(self, folder: Path) -> None:
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=".blob.", suffix=".tmp")
        self._file = os.fdopen(handle, "wb")
        self._tmp = Path(tmp)
        self._digest = hashlib.sha256()
        self.size = 0
        self.stored: StoredBlob | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._digest.update(data)
        self._file.write(data)
        self.size += len(data)
        return len(data)

    def finish(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = self._digest.hexdigest()
        os.replace(self._tmp, self._tmp.parent / name)
        fsync_dir(self._tmp.parent)
        self.stored = StoredBlob(name, self.size)

    def discard(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class VersionStore:
    """Versions, rounds, sites, rejections and operator controls of one federation, under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self._lock = _lock_folder(self.root)
        self._db = sqlite3.connect(self.root / "store.sqlite", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        schema = self._db.execute("PRAGMA user_version").fetchone()[0]
        empty = self._db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
        if schema != SCHEMA_VERSION and not empty:
            self._migrate(schema)
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._collect_garbage()

    def _migrate(self, schema: int) -> None:
        """Bring a store of an older schema to this one in one transaction, or refuse it."""
        if schema not in MIGRATIONS:
            self.close()
            raise StoreError(f"{self.root} holds a store of schema {schema}, not {SCHEMA_VERSION}; use a new state folder")
        with self._transaction():
            for statement in MIGRATIONS[schema]:
                self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        log.info("migrated the store in %s from schema %d to %d", self.root, schema, SCHEMA_VERSION)

    @classmethod
    def attach(cls, root: Path, *, writable: bool = False) -> VersionStore:
        """A second connection to a store that a server owns (the console's): no lock, no schema change.

        Read-only unless ``writable``; a writable one only ever adds operator controls.
        """
        path = Path(root) / "store.sqlite"
        if not path.is_file():
            raise StoreError(f"{root} holds no version store (no store.sqlite); give the server's state folder")
        store = cls.__new__(cls)
        store.root, store._lock = Path(root), None
        store._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode={'rw' if writable else 'ro'}", uri=True,
                                    isolation_level=None, timeout=10.0, check_same_thread=False)
        schema = store._db.execute("PRAGMA user_version").fetchone()[0]
        if schema != SCHEMA_VERSION:
            store.close()
            raise StoreError(f"{root} holds a store of schema {schema}, not {SCHEMA_VERSION}")
        return store

    def close(self) -> None:
        if self._lock is None:
            self._db.close()
            return
        if self._lock.closed:
            return
        self._db.close()
        self._lock.close()

    def write_meta(self, key: str, value: Any) -> None:
        """Remember one JSON value about the federation (its resolved settings, the server's status)."""
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def read_meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    @contextmanager
    def blob_writer(self) -> Iterator[BlobWriter]:
        """A blob written in pieces (a merged delta as it is encoded), so it is never held in memory whole.

        On leaving the block it is fsynced and named by its hash; pass
        ``writer.stored`` to :meth:`commit_version`. On an error it is removed.
        """
        writer = BlobWriter(self.root / "blobs")
        try:
            yield writer
            writer.finish()
        except BaseException:
            writer.discard()
            raise

    def commit_version(
        self, *, parent: int | None, round: int, sha: str, kind: str, blob: bytes | StoredBlob,
        snapshot: bytes | None = None, residual: bytes | None = None, record: dict[str, Any] | None = None,
    ) -> Version:
        """Write the blobs (``blob`` may be one :meth:`blob_writer` wrote), then in one transaction the row
        (and the round's partial ``record``).

        Versions are numbered 0 (the genesis), 1, 2, ... in commit order. Only
        the newest version keeps its residual; older residual files are removed.
        """
        name, size = (blob.name, blob.size) if isinstance(blob, StoredBlob) else (self._write_blob(blob), len(blob))
        snap = None if snapshot is None else self._write_blob(snapshot)
        kept = None if residual is None else self._write_blob(residual)
        head = self.head()
        version_id = 0 if head is None else head.id + 1
        with self._transaction():
            self._db.execute(
                f"INSERT INTO versions ({VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (version_id, parent, sha, round, kind, name, size, snap,
                 None if snapshot is None else len(snapshot), kept, time.time()),
            )
            self._db.execute("UPDATE versions SET residual = NULL WHERE id < ?", (version_id,))
            if record is not None:
                self._write_round(round, version_id, record, complete=False)
        if head is not None and head.residual and head.residual not in self._referenced():
            (self.root / "blobs" / head.residual).unlink(missing_ok=True)
        return self.version(version_id)

    def version(self, version_id: int) -> Version:
        row = self._db.execute(f"SELECT {VERSION_COLUMNS} FROM versions WHERE id = ?", (version_id,)).fetchone()
        if row is None:
            raise KeyError(f"no version {version_id}")
        return Version(*row)

    def versions(self) -> list[Version]:
        """Every committed version, oldest first."""
        return [Version(*row) for row in self._db.execute(f"SELECT {VERSION_COLUMNS} FROM versions ORDER BY id")]

    def head(self) -> Version | None:
        row = self._db.execute("SELECT MAX(id) FROM versions").fetchone()
        return None if row[0] is None else self.version(row[0])

    def genesis(self) -> Version | None:
        row = self._db.execute("SELECT MIN(id) FROM versions").fetchone()
        return None if row[0] is None else self.version(row[0])

    def latest_snapshot(self, upto: int) -> Version:
        """The newest version at or before ``upto`` that has a full snapshot."""
        row = self._db.execute(
            "SELECT MAX(id) FROM versions WHERE id <= ? AND snapshot IS NOT NULL", (upto,)
        ).fetchone()
        if row[0] is None:
            raise StoreError(f"no snapshot at or before version {upto}")
        return self.version(row[0])

    def read_blob(self, version: Version) -> bytes:
        return self.read_named(version.blob, f"blob of version {version.id}")

    def read_snapshot(self, version: Version) -> bytes:
        if version.snapshot is None:
            raise StoreError(f"version {version.id} has no snapshot")
        return self.read_named(version.snapshot, f"snapshot of version {version.id}")

    def read_residual(self, version: Version) -> bytes | None:
        return None if version.residual is None else self.read_named(version.residual, f"residual of version {version.id}")

    def read_named(self, name: str, what: str) -> bytes:
        try:
            data = (self.root / "blobs" / name).read_bytes()
        except FileNotFoundError as error:
            raise StoreError(f"{what} is missing from {self.root / 'blobs'}") from error
        if hashlib.sha256(data).hexdigest() != name:
            raise StoreError(f"{what} does not match its hash")
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
        """The finished round's record (replacing the partial one its commit wrote)."""
        with self._transaction():
            self._write_round(round, version, record, complete=True)

    def round_records(self, *, complete: bool = True) -> list[dict[str, Any]]:
        """Round records in round order: finished ones, or (``complete=False``) committed but not finished."""
        rows = self._db.execute("SELECT record FROM rounds WHERE complete = ? ORDER BY round", (int(complete),))
        return [json.loads(record) for (record,) in rows]

    def last_round(self) -> int | None:
        """The newest round with a record (finished, or committed and awaiting its evaluation)."""
        return self._db.execute("SELECT MAX(round) FROM rounds").fetchone()[0]

    def discard_after(self, round: int) -> None:
        """Forget per-site records and rejections of rounds after ``round`` (a round cut short by a crash)."""
        with self._transaction():
            self._db.execute("DELETE FROM site_rounds WHERE round > ?", (round,))
            self._db.execute("DELETE FROM rejections WHERE round > ?", (round,))

    def record_site_round(self, *, site: str, node: str, round: int, upload_bytes: int, metrics: dict) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO site_rounds (site, round, node, upload_bytes, metrics) VALUES (?, ?, ?, ?, ?)",
                (site, round, node, upload_bytes, json.dumps(metrics)),
            )

    def record_rejection(self, *, site: str, round: int, reason: str) -> None:
        """A refused update or a site's error; the reason is stored as :func:`plain_text`."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO rejections (site, round, reason, created) VALUES (?, ?, ?, ?)",
                (site, round, plain_text(reason), time.time()),
            )

    def record_merged(self, *, site: str, round: int, weight: float, contribution: float, note: str = "") -> None:
        """The weight and weighted norm an upload went into the merged delta with, and why the weight was clipped."""
        with self._transaction():
            self._db.execute(
                "UPDATE site_rounds SET weight = ?, contribution = ?, note = ? WHERE site = ? AND round = ?",
                (weight, contribution, note or None, site, round),
            )

    def merged_weights(self, before: int) -> dict[str, float]:
        """Each site's largest weight in a merged delta of a round before ``before``."""
        rows = self._db.execute(
            "SELECT site, MAX(weight) FROM site_rounds WHERE round < ? AND weight IS NOT NULL GROUP BY site", (before,)
        )
        return dict(rows.fetchall())

    def merged_contributions(self, before: int) -> list[float]:
        """The weighted norms of every upload merged in a round before ``before``."""
        rows = self._db.execute(
            "SELECT contribution FROM site_rounds WHERE round < ? AND contribution IS NOT NULL", (before,)
        )
        return [value for (value,) in rows]

    def rejections(self) -> list[tuple[str, int, str]]:
        """(site, round, reason) of every rejection, oldest first."""
        return self._db.execute("SELECT site, round, reason FROM rejections ORDER BY id").fetchall()

    def rejection_records(self) -> list[Rejection]:
        """Every rejection with its id and time, oldest first."""
        rows = self._db.execute("SELECT id, site, round, reason, created FROM rejections ORDER BY id")
        return [Rejection(*row) for row in rows]

    def site_rounds(self) -> list[SiteRound]:
        """What each site sent in each round, in round order."""
        rows = self._db.execute(f"SELECT {SITE_ROUND_COLUMNS} FROM site_rounds ORDER BY round")
        return [SiteRound(site, round, node, sent, json.loads(metrics), *merged)
                for site, round, node, sent, metrics, *merged in rows]

    def sites_uploaded_after(self, round: int) -> list[str]:
        """Names of the sites that sent an update in a round after ``round``, sorted."""
        rows = self._db.execute("SELECT DISTINCT site FROM site_rounds WHERE round > ? ORDER BY site", (round,))
        return [site for (site,) in rows]

    def site_nodes(self) -> list[SiteNode]:
        """Every node the server has served, least recently seen first."""
        rows = self._db.execute("SELECT node, site, version, last_seen FROM sites ORDER BY last_seen")
        return [SiteNode(*row) for row in rows]

    def set_site_version(self, node: str, site: str | None, version: int | None) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO sites (node, site, version, last_seen) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(node) DO UPDATE SET site = COALESCE(excluded.site, site),"
                " version = excluded.version, last_seen = excluded.last_seen",
                (node, site, version, time.time()),
            )

    def site_version(self, node: str) -> int | None:
        row = self._db.execute("SELECT version FROM sites WHERE node = ?", (node,)).fetchone()
        return None if row is None else row[0]

    def add_control(self, action: str, version: int | None = None, site: str | None = None) -> Control:
        """The operator's request as recorded, pending until the server settles it."""
        with self._transaction():
            control_id = self._db.execute(
                "INSERT INTO controls (action, version, requested, site) VALUES (?, ?, ?, ?)",
                (action, version, time.time(), site),
            ).lastrowid
        return self.control(control_id)

    def control(self, control_id: int) -> Control:
        """The request with this id."""
        row = self._db.execute(f"SELECT {CONTROL_COLUMNS} FROM controls WHERE id = ?", (control_id,)).fetchone()
        if row is None:
            raise KeyError(f"no control {control_id}")
        return _control(row)

    def controls(self, *, pending: bool = False) -> list[Control]:
        """Requests oldest first: every one, or (``pending``) those the server has not settled yet."""
        only = "WHERE settled IS NULL" if pending else ""
        return [_control(row) for row in self._db.execute(f"SELECT {CONTROL_COLUMNS} FROM controls {only} ORDER BY id")]

    def done_controls(self, actions: Collection[str]) -> list[Control]:
        """Requests of these actions that the server carried out, oldest first."""
        rows = self._db.execute(
            f"SELECT {CONTROL_COLUMNS} FROM controls WHERE ok = 1 AND action IN ({', '.join('?' * len(actions))})"
            " ORDER BY id", tuple(actions),
        )
        return [_control(row) for row in rows]

    def blocked_sites(self) -> list[str]:
        """Sites whose newest carried-out block or unblock request is a block, sorted."""
        rows = self._db.execute(
            "SELECT site, action FROM controls WHERE ok = 1 AND site IS NOT NULL AND action IN (?, ?) ORDER BY id",
            BLOCKING,
        )
        newest = dict(rows.fetchall())
        return sorted(site for site, action in newest.items() if action == BLOCKING[0])

    def settle_control(self, control_id: int, *, ok: bool, outcome: str, result: int | None = None) -> None:
        """Record what the server made of a request: done or refused, why, and the version it made."""
        with self._transaction():
            self._db.execute(
                "UPDATE controls SET settled = ?, ok = ?, outcome = ?, result = ? WHERE id = ?",
                (time.time(), int(ok), outcome, result, control_id),
            )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One SQLite transaction: every statement in it is durable together, or none is."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _write_blob(self, data: bytes) -> str:
        name = hashlib.sha256(data).hexdigest()
        path = self.root / "blobs" / name
        if not path.is_file():
            write_bytes_atomic(path, data)
        return name

    def _write_round(self, round: int, version: int | None, record: dict[str, Any], *, complete: bool) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO rounds (round, version, record, complete, finished) VALUES (?, ?, ?, ?, ?)",
            (round, version, json.dumps(record), int(complete), time.time()),
        )

    def _referenced(self) -> set[str]:
        rows = self._db.execute("SELECT blob, snapshot, residual FROM versions").fetchall()
        return {name for row in rows for name in row if name}

    def _collect_garbage(self) -> None:
        """Delete blob files no committed row names: temp files and blobs of an interrupted commit."""
        referenced = self._referenced()
        stray = [path for path in (self.root / "blobs").iterdir() if path.name not in referenced]
        for path in stray:
            path.unlink(missing_ok=True)
        if stray:
            log.info("removed %d blob file(s) of an interrupted commit from %s", len(stray), self.root)


def _control(row: tuple[Any, ...]) -> Control:
    """A row of the ``controls`` table as its record (SQLite keeps ``ok`` as 0 or 1)."""
    control_id, action, version, requested, settled, ok, outcome, result, site = row
    return Control(control_id, action, version, requested, settled, None if ok is None else bool(ok), outcome, result,
                   site)


def plain_text(text: str) -> str:
    """``text`` without terminal escape sequences or control and format characters; its lines (a
    traceback's, say) are kept, each without trailing space."""
    lines = ESCAPES.sub("", text).replace("\r\n", "\n").split("\n")
    return "\n".join(_plain_line(line) for line in lines).strip("\n")


def _plain_line(line: str) -> str:
    return "".join(" " if char.isspace() else char for char in line
                   if char.isspace() or unicodedata.category(char)[0] != "C").rstrip()


def _lock_folder(root: Path) -> TextIO:
    """Hold an exclusive lock on ``root/lock`` for as long as the returned file stays open."""
    handle = open(root / "lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StoreError(f"{root} is in use by another server (pid {holder}); stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
