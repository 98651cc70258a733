"""The SQLite index: names, versions, aliases, manifests and the audit log.

WAL mode lets readers run while a writer commits; every write is one ``BEGIN IMMEDIATE``
transaction, so version numbers are assigned and made visible atomically (the commit point of a
push). Connections are cached per thread and per process: sqlite3 connections must not cross a
fork, and resolve must not pay for opening one per call.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loramux.registry.errors import Conflict, RegistryError
from loramux.registry.manifest import AliasPointer, AuditEntry, Manifest, VersionInfo
from loramux.registry.refs import AdapterRef

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions(
    name TEXT NOT NULL, version INTEGER NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,
    created_at INTEGER NOT NULL, created_by TEXT NOT NULL, base_fingerprint TEXT,
    manifest TEXT NOT NULL, deleted_at INTEGER, deleted_by TEXT,
    PRIMARY KEY (name, version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS versions_by_digest ON versions(name, digest);
CREATE INDEX IF NOT EXISTS versions_by_base ON versions(base_fingerprint);
CREATE TABLE IF NOT EXISTS version_files(
    name TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (name, version, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS version_files_by_blob ON version_files(sha256);
CREATE TABLE IF NOT EXISTS aliases(
    name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL, updated_by TEXT NOT NULL,
    PRIMARY KEY (name, alias)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS aliases_by_version ON aliases(name, version);
CREATE TABLE IF NOT EXISTS audit(
    id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, name TEXT NOT NULL, version INTEGER, digest TEXT, alias TEXT,
    old_version INTEGER, old_digest TEXT, detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_by_name ON audit(name, at);
CREATE INDEX IF NOT EXISTS audit_by_alias ON audit(name, alias, at);
CREATE INDEX IF NOT EXISTS audit_by_at ON audit(at);
"""
SCHEMA_VERSION = "1"
LIVE = "deleted_at IS NULL"

_SELECT = "SELECT v.manifest, v.digest FROM versions v"
_BY_VERSION = f"{_SELECT} WHERE v.name=? AND v.version=? AND v.{LIVE}"
_LATEST = f"{_SELECT} WHERE v.name=? AND v.{LIVE} ORDER BY v.version DESC LIMIT 1"
_BY_ALIAS = (
    f"{_SELECT} JOIN aliases a ON a.name=v.name AND a.version=v.version "
    f"WHERE a.name=? AND a.alias=? AND v.{LIVE}"
)
_BY_DIGEST = f"{_SELECT} WHERE v.name=? AND v.digest GLOB ? AND v.{LIVE} ORDER BY v.version DESC"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_dt(us: int) -> datetime:
    """Times are stored as integer microseconds so that they round-trip exactly."""
    return _EPOCH + us * _US


def to_us(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.astimezone()  # a naive time is the user's local time
    return (dt - _EPOCH) // _US


class Index:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._conns: dict[tuple[int, int], sqlite3.Connection] = {}  # (pid, thread) -> conn
        self._conns_lock = threading.Lock()
        conn = self.conn()
        if self._schema_version(conn) != SCHEMA_VERSION:
            conn.execute("PRAGMA journal_mode=WAL")
            with self.write() as tx:
                tx.create_schema()
            found = self._schema_version(conn)
            if found != SCHEMA_VERSION:
                raise RegistryError(
                    f"{self.path} has index schema {found}; this loramux reads {SCHEMA_VERSION}"
                )

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> str | None:
        """Read-only check, so opening an existing store takes no write lock."""
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.OperationalError:  # no meta table yet: a new store
            return None
        return row[0] if row else None

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (a fresh one after fork: connections must not cross it)."""
        cached = getattr(self._local, "conn", None)
        if cached is not None and cached[0] == os.getpid():
            return cached[1]
        conn = sqlite3.connect(
            self.path, timeout=60, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout=60000")
        conn.execute("PRAGMA synchronous=FULL")
        self._local.conn = (os.getpid(), conn)
        with self._conns_lock:
            self._prune_dead_threads()
            self._conns[(os.getpid(), threading.get_ident())] = conn
        return conn

    def _prune_dead_threads(self) -> None:
        """Server thread pools retire idle threads; close what they leave behind."""
        alive = {t.ident for t in threading.enumerate()}
        pid = os.getpid()
        for key in [k for k in self._conns if k[0] == pid and k[1] not in alive]:
            with contextlib.suppress(sqlite3.Error):
                self._conns.pop(key).close()

    @contextlib.contextmanager
    def write(self) -> Iterator[Transaction]:
        """One write transaction; the lock is taken up front so no upgrade can deadlock."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield Transaction(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this process's connections (never a parent's, inherited through fork)."""
        pid = os.getpid()
        with self._conns_lock:
            mine = [k for k in self._conns if k[0] == pid]
            conns = [self._conns.pop(k) for k in mine]
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def ping(self) -> None:
        """Fails (sqlite3.Error) unless the index can be read: the health check."""
        self.conn().execute("SELECT 1").fetchone()

    def checkpoint(self) -> None:
        """Fold the WAL back into the database file (after gc freed space)."""
        self.conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- reads -------------------------------------------------------------------------------

    def find(self, ref: AdapterRef) -> Manifest | None:
        """The live version ``ref`` names now, or None; a digest prefix must be unambiguous."""
        if ref.version is not None:
            row = self.conn().execute(_BY_VERSION, (ref.name, ref.version)).fetchone()
        elif ref.alias is not None:
            row = self.conn().execute(_BY_ALIAS, (ref.name, ref.alias)).fetchone()
        elif ref.digest is not None:
            rows = self.conn().execute(_BY_DIGEST, (ref.name, ref.digest + "*")).fetchall()
            if len({digest for _, digest in rows}) > 1:
                raise Conflict(f"{ref} is ambiguous: give more digits of the digest")
            row = rows[0] if rows else None
        else:
            row = self.conn().execute(_LATEST, (ref.name,)).fetchone()
        return Manifest.model_validate_json(row[0]) if row else None

    def live_versions(self, name: str) -> tuple[int, int | None]:
        """(how many live versions ``name`` has, the highest of them)."""
        return self.conn().execute(
            f"SELECT count(*), max(version) FROM versions WHERE name=? AND {LIVE}", (name,)
        ).fetchone()

    def version_state(self, name: str, version: int) -> tuple[int | None, str | None] | None:
        """(deleted_at, deleted_by) of a version (both None if live); None if it never was."""
        row = self.conn().execute(
            "SELECT deleted_at, deleted_by FROM versions WHERE name=? AND version=?",
            (name, version),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def list_versions(
        self, *, name: str | None, base_fingerprint: str | None, include_deleted: bool
    ) -> list[VersionInfo]:
        where, args = [], []
        if name is not None:
            where.append("v.name=?")
            args.append(name)
        if base_fingerprint is not None:
            where.append("v.base_fingerprint=?")
            args.append(base_fingerprint)
        if not include_deleted:
            where.append(f"v.{LIVE}")
        sql = (
            "SELECT v.manifest, v.deleted_at, "
            "(SELECT group_concat(alias, ',') FROM aliases a "
            " WHERE a.name=v.name AND a.version=v.version) "
            "FROM versions v"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY v.name, v.version DESC"
        )
        out = []
        for manifest_json, deleted_at, aliases in self.conn().execute(sql, args):
            m = Manifest.model_validate_json(manifest_json)
            out.append(VersionInfo(
                **m.model_dump(include=set(VersionInfo.model_fields) - {"aliases", "deleted"}),
                aliases=sorted(aliases.split(",")) if aliases else [],
                deleted=deleted_at is not None,
            ))
        return out

    def blob_users(self) -> dict[str, list[str]]:
        """Blob hex -> the live versions (``name@N``) that use it: what gc keeps."""
        users: dict[str, list[str]] = {}
        rows = self.conn().execute(
            "SELECT f.sha256, f.name, f.version FROM version_files f JOIN versions v "
            f"ON v.name=f.name AND v.version=f.version WHERE v.{LIVE}"
        )
        for sha, name, version in rows:
            users.setdefault(sha, []).append(f"{name}@{version}")
        return users

    def log(
        self,
        *,
        name: str | None,
        alias: str | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
    ) -> list[AuditEntry]:
        where, args = [], []
        for cond, value in (
            ("name=?", name),
            ("alias=?", alias),
            ("at>=?", to_us(since) if since else None),
            ("at<=?", to_us(until) if until else None),
        ):
            if value is not None:
                where.append(cond)
                args.append(value)
        sql = (
            "SELECT id, at, actor, action, name, version, digest, alias, old_version, "
            "old_digest, detail FROM audit"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY id DESC LIMIT ?"
        )
        rows = self.conn().execute(sql, (*args, max(0, limit)))
        return [
            AuditEntry(
                id=r[0], at=to_dt(r[1]), actor=r[2], action=r[3], name=r[4], version=r[5],
                digest=r[6], alias=r[7], old_version=r[8], old_digest=r[9],
                detail=json.loads(r[10]),
            )
            for r in rows
        ]

    def alias_at(self, name: str, alias: str, when: datetime) -> AliasPointer | None:
        """Replay the audit log: where ``name:alias`` pointed at ``when``."""
        row = self.conn().execute(
            "SELECT action, version, digest, at, actor FROM audit WHERE name=? AND alias=? "
            "AND action IN ('alias_set', 'alias_rm') AND at<=? ORDER BY at DESC, id DESC "
            "LIMIT 1",
            (name, alias, to_us(when)),
        ).fetchone()
        if row is None or row[0] == "alias_rm":
            return None
        return AliasPointer(
            name=name, alias=alias, version=row[1], digest=row[2], since=to_dt(row[3]),
            set_by=row[4],
        )


class Transaction:
    """The statements a write runs inside one ``Index.write()`` transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def create_schema(self) -> None:
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                self._conn.execute(stmt)
        self._conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
            (SCHEMA_VERSION,),
        )

    def latest(self, name: str) -> tuple[int, str] | None:
        """(version, digest) of the newest live version."""
        return self._conn.execute(
            f"SELECT version, digest FROM versions WHERE name=? AND {LIVE} "
            "ORDER BY version DESC LIMIT 1",
            (name,),
        ).fetchone()

    def manifest(self, name: str, version: int) -> Manifest:
        (text,) = self._conn.execute(
            "SELECT manifest FROM versions WHERE name=? AND version=?", (name, version)
        ).fetchone()
        return Manifest.model_validate_json(text)

    def next_version(self, name: str) -> int:
        """Deleted versions count too: a number is never handed out twice."""
        return self._conn.execute(
            "SELECT coalesce(max(version), 0) + 1 FROM versions WHERE name=?", (name,)
        ).fetchone()[0]

    def live_digest(self, name: str, version: int) -> str | None:
        row = self._conn.execute(
            f"SELECT digest FROM versions WHERE name=? AND version=? AND {LIVE}", (name, version)
        ).fetchone()
        return row[0] if row else None

    def insert_version(self, m: Manifest) -> None:
        self._conn.execute(
            "INSERT INTO versions(name, version, digest, size, created_at, created_by, "
            "base_fingerprint, manifest) VALUES (?,?,?,?,?,?,?,?)",
            (m.name, m.version, m.digest, m.size, to_us(m.created_at), m.created_by,
             m.base_fingerprint, m.model_dump_json()),
        )
        self._conn.executemany(
            "INSERT INTO version_files(name, version, path, sha256, size) VALUES (?,?,?,?,?)",
            [(m.name, m.version, f.path, f.sha256, f.size) for f in m.files],
        )

    def mark_deleted(self, name: str, version: int, at: int, actor: str) -> bool:
        """False if the version was no longer live (deleted concurrently)."""
        cur = self._conn.execute(
            f"UPDATE versions SET deleted_at=?, deleted_by=? WHERE name=? AND version=? AND {LIVE}",
            (at, actor, name, version),
        )
        return cur.rowcount == 1

    def alias_target(self, name: str, alias: str) -> tuple[int, str] | None:
        """(version, digest) the alias points at now."""
        return self._conn.execute(
            "SELECT a.version, v.digest FROM aliases a JOIN versions v "
            "ON v.name=a.name AND v.version=a.version WHERE a.name=? AND a.alias=?",
            (name, alias),
        ).fetchone()

    def aliases_of(self, name: str, version: int) -> list[str]:
        rows = self._conn.execute(
            "SELECT alias FROM aliases WHERE name=? AND version=? ORDER BY alias", (name, version)
        )
        return [r[0] for r in rows]

    def put_alias(self, name: str, alias: str, version: int, at: int, actor: str) -> None:
        self._conn.execute(
            "INSERT INTO aliases(name, alias, version, updated_at, updated_by) "
            "VALUES (?,?,?,?,?) ON CONFLICT(name, alias) DO UPDATE SET "
            "version=excluded.version, updated_at=excluded.updated_at, "
            "updated_by=excluded.updated_by",
            (name, alias, version, at, actor),
        )

    def drop_alias(self, name: str, alias: str) -> None:
        self._conn.execute("DELETE FROM aliases WHERE name=? AND alias=?", (name, alias))

    def audit(
        self,
        *,
        at: int,
        actor: str,
        action: str,
        name: str,
        version: int | None = None,
        digest: str | None = None,
        alias: str | None = None,
        old_version: int | None = None,
        old_digest: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self._conn.execute(
            "INSERT INTO audit(at, actor, action, name, version, digest, alias, old_version, "
            "old_digest, detail) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (at, actor, action, name, version, digest, alias, old_version, old_digest,
             json.dumps(detail or {}, sort_keys=True)),
        )


def now() -> int:
    return time.time_ns() // 1000
