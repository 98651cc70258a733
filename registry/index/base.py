"""The index's reads and writes, written once for every SQL backend.

Statements use ``?`` placeholders and only SQL that SQLite and PostgreSQL read alike; what
differs (placeholders, string aggregation, identity columns, locks) sits in :class:`Dialect`,
which each backend fills in. A backend supplies connections and its transaction boundaries.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from loramux.registry.errors import Conflict
from loramux.registry.index.times import to_dt, to_us
from loramux.registry.manifest import AliasPointer, AuditEntry, Manifest, VersionInfo
from loramux.registry.refs import AdapterRef

LIVE = "deleted_at IS NULL"
_SELECT = "SELECT v.manifest, v.digest FROM versions v"
_BY_VERSION = f"{_SELECT} WHERE v.name=? AND v.version=? AND v.{LIVE}"
_LATEST = f"{_SELECT} WHERE v.name=? AND v.{LIVE} ORDER BY v.version DESC LIMIT 1"
_BY_ALIAS = (
    f"{_SELECT} JOIN aliases a ON a.name=v.name AND a.version=v.version "
    f"WHERE a.name=? AND a.alias=? AND v.{LIVE}"
)
_BY_DIGEST = (f"{_SELECT} WHERE v.name=? AND substr(v.digest, 1, ?)=? AND v.{LIVE} "
              "ORDER BY v.version DESC")

@dataclass(frozen=True)
class Dialect:
    """What one SQL backend spells differently; the index's statements are written for SQLite."""

    name: str
    placeholder: str  # what ``?`` becomes
    group_concat: str  # a format string: aggregate ``{expr}`` into a comma-separated text
    identity: str  # an auto-numbered integer primary key column type
    table_suffix: str  # after a table whose rows need no rowid (SQLite) / nothing
    table_exists: str  # a query with one row if the table named by its parameter exists
    schema_lock: str | None  # taken before migrating, where transactions do not exclude

    def sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The part of a DB-API connection the index uses (sqlite3 and psycopg 3 both have it)."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Cursor: ...


class StoreLockLike(Protocol):
    """Shared for pushes (first blob to commit), exclusive for gc: see blobs.lock.StoreLock."""

    def shared(self) -> contextlib.AbstractContextManager[None]: ...

    def exclusive(self) -> contextlib.AbstractContextManager[None]: ...


class Index:
    """Names, versions, aliases, manifests and the audit log; subclasses bring connections.

    Every write is one :meth:`write` transaction, the commit point of a push: version numbers
    are assigned and made visible atomically, and alias moves land with their audit entry.
    """

    dialect: Dialect

    # -- what a backend provides -------------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for one read (no transaction needed)."""
        raise NotImplementedError
        yield

    def write(self) -> contextlib.AbstractContextManager[Transaction]:
        """One write transaction; rolled back if the block raises."""
        raise NotImplementedError

    def close(self) -> None:
        """Release this process's connections."""

    def checkpoint(self) -> None:
        """Give space back after gc, where the backend needs telling."""

    def store_lock(self) -> StoreLockLike | None:
        """A push-vs-gc lock every process sharing this index sees, or None where the store's
        own file lock already covers them all (an index on one machine)."""
        return None

    def describe(self) -> str:
        """Where the index lives, without secrets (for logs and errors)."""
        return self.dialect.name

    # -- reads -------------------------------------------------------------------------------

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self.read() as conn:
            return conn.execute(self.dialect.sql(sql), args).fetchall()

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        with self.read() as conn:
            return conn.execute(self.dialect.sql(sql), args).fetchone()

    def ping(self) -> None:
        """Fails unless the index can be read: the health check."""
        self._one("SELECT 1")

    def find(self, ref: AdapterRef) -> Manifest | None:
        """The live version ``ref`` names now, or None; a digest prefix must be unambiguous."""
        if ref.version is not None:
            row = self._one(_BY_VERSION, (ref.name, ref.version))
        elif ref.alias is not None:
            row = self._one(_BY_ALIAS, (ref.name, ref.alias))
        elif ref.digest is not None:
            rows = self._all(_BY_DIGEST, (ref.name, len(ref.digest), ref.digest))
            if len({digest for _, digest in rows}) > 1:
                raise Conflict(f"{ref} is ambiguous: give more digits of the digest")
            row = rows[0] if rows else None
        else:
            row = self._one(_LATEST, (ref.name,))
        return Manifest.model_validate_json(row[0]) if row else None

    def live_versions(self, name: str) -> tuple[int, int | None]:
        """(how many live versions ``name`` has, the highest of them)."""
        count, top = self._one(
            f"SELECT count(*), max(version) FROM versions WHERE name=? AND {LIVE}", (name,)
        )
        return int(count), top

    def version_state(self, name: str, version: int) -> tuple[int | None, str | None] | None:
        """(deleted_at, deleted_by) of a version (both None if live); None if it never was."""
        row = self._one(
            "SELECT deleted_at, deleted_by FROM versions WHERE name=? AND version=?",
            (name, version),
        )
        return (row[0], row[1]) if row else None

    def oci_digest(self, name: str, version: int) -> str | None:
        """The digest of the OCI artifact manifest recorded for ``name@version``, if any."""
        row = self._one("SELECT oci_digest FROM versions WHERE name=? AND version=?",
                        (name, version))
        return row[0] if row else None

    def deleted_artifacts(self) -> list[tuple[str, int, str]]:
        """(name, version, OCI manifest digest) of deleted versions whose artifact is still
        recorded: gc deletes those manifests before the blobs they point at."""
        return [(n, v, d) for n, v, d in self._all(
            f"SELECT name, version, oci_digest FROM versions WHERE NOT ({LIVE}) "
            "AND oci_digest IS NOT NULL ORDER BY name, version")]

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
        aliases = self.dialect.group_concat.format(expr="a.alias")
        sql = (
            f"SELECT v.manifest, v.deleted_at, (SELECT {aliases} FROM aliases a "
            " WHERE a.name=v.name AND a.version=v.version) "
            "FROM versions v"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY v.name, v.version DESC"
        )
        out = []
        for manifest_json, deleted_at, alias_list in self._all(sql, args):
            m = Manifest.model_validate_json(manifest_json)
            out.append(VersionInfo(
                **m.model_dump(include=set(VersionInfo.model_fields) - {"aliases", "deleted"}),
                aliases=sorted(alias_list.split(",")) if alias_list else [],
                deleted=deleted_at is not None,
            ))
        return out

    def blob_users(self) -> dict[str, list[str]]:
        """Blob hex -> the live versions (``name@N``) that use it: what gc keeps."""
        users: dict[str, list[str]] = {}
        rows = self._all(
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
        return [
            AuditEntry(
                id=r[0], at=to_dt(r[1]), actor=r[2], action=r[3], name=r[4], version=r[5],
                digest=r[6], alias=r[7], old_version=r[8], old_digest=r[9],
                detail=json.loads(r[10]),
            )
            for r in self._all(sql, (*args, max(0, limit)))
        ]

    def alias_at(self, name: str, alias: str, when: datetime) -> AliasPointer | None:
        """Replay the audit log: where ``name:alias`` pointed at ``when``."""
        row = self._one(
            "SELECT action, version, digest, at, actor FROM audit WHERE name=? AND alias=? "
            "AND action IN ('alias_set', 'alias_rm') AND at<=? ORDER BY at DESC, id DESC "
            "LIMIT 1",
            (name, alias, to_us(when)),
        )
        if row is None or row[0] == "alias_rm":
            return None
        return AliasPointer(
            name=name, alias=alias, version=row[1], digest=row[2], since=to_dt(row[3]),
            set_by=row[4],
        )


class Transaction:
    """The statements a write runs inside one ``Index.write()`` transaction.

    Every method that touches a name first calls :meth:`claim`: a backend whose transactions
    do not already exclude each other (PostgreSQL) serializes writers of that name there, so
    that "read the highest version, insert the next" and "read the alias, move it, log the old
    target" cannot interleave between processes.
    """

    def __init__(self, conn: Connection, dialect: Dialect) -> None:
        self.connection = conn
        self.dialect = dialect

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        return self.connection.execute(self.dialect.sql(sql), args)

    def claim(self, name: str) -> None:
        """Hold ``name`` against other writers until the transaction ends (backend-specific)."""

    def latest(self, name: str) -> tuple[int, str] | None:
        """(version, digest) of the newest live version."""
        self.claim(name)
        row = self.execute(
            f"SELECT version, digest FROM versions WHERE name=? AND {LIVE} "
            "ORDER BY version DESC LIMIT 1",
            (name,),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def manifest(self, name: str, version: int) -> Manifest:
        self.claim(name)
        (text,) = self.execute(
            "SELECT manifest FROM versions WHERE name=? AND version=?", (name, version)
        ).fetchone()
        return Manifest.model_validate_json(text)

    def next_version(self, name: str) -> int:
        """Deleted versions count too: a number is never handed out twice."""
        self.claim(name)
        return int(self.execute(
            "SELECT coalesce(max(version), 0) + 1 FROM versions WHERE name=?", (name,)
        ).fetchone()[0])

    def live_digest(self, name: str, version: int) -> str | None:
        self.claim(name)
        row = self.execute(
            f"SELECT digest FROM versions WHERE name=? AND version=? AND {LIVE}", (name, version)
        ).fetchone()
        return row[0] if row else None

    def insert_version(self, m: Manifest) -> None:
        self.claim(m.name)
        self.execute(
            "INSERT INTO versions(name, version, digest, size, created_at, created_by, "
            "base_fingerprint, manifest) VALUES (?,?,?,?,?,?,?,?)",
            (m.name, m.version, m.digest, m.size, to_us(m.created_at), m.created_by,
             m.base_fingerprint, m.model_dump_json()),
        )
        for f in m.files:
            self.execute(
                "INSERT INTO version_files(name, version, path, sha256, size) VALUES (?,?,?,?,?)",
                (m.name, m.version, f.path, f.sha256, f.size),
            )

    def set_oci_digest(self, name: str, version: int, digest: str | None) -> bool:
        """Record the OCI artifact manifest digest of ``name@version``; False if no such row."""
        self.claim(name)
        cur = self.execute("UPDATE versions SET oci_digest=? WHERE name=? AND version=?",
                           (digest, name, version))
        return cur.rowcount == 1

    def mark_deleted(self, name: str, version: int, at: int, actor: str) -> bool:
        """False if the version was no longer live (deleted concurrently)."""
        self.claim(name)
        cur = self.execute(
            f"UPDATE versions SET deleted_at=?, deleted_by=? WHERE name=? AND version=? AND {LIVE}",
            (at, actor, name, version),
        )
        return cur.rowcount == 1

    def alias_target(self, name: str, alias: str) -> tuple[int, str] | None:
        """(version, digest) the alias points at now."""
        self.claim(name)
        row = self.execute(
            "SELECT a.version, v.digest FROM aliases a JOIN versions v "
            "ON v.name=a.name AND v.version=a.version WHERE a.name=? AND a.alias=?",
            (name, alias),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def aliases_of(self, name: str, version: int) -> list[str]:
        self.claim(name)
        rows = self.execute(
            "SELECT alias FROM aliases WHERE name=? AND version=? ORDER BY alias", (name, version)
        ).fetchall()
        return [r[0] for r in rows]

    def put_alias(self, name: str, alias: str, version: int, at: int, actor: str) -> None:
        self.claim(name)
        self.execute(
            "INSERT INTO aliases(name, alias, version, updated_at, updated_by) "
            "VALUES (?,?,?,?,?) ON CONFLICT(name, alias) DO UPDATE SET "
            "version=excluded.version, updated_at=excluded.updated_at, "
            "updated_by=excluded.updated_by",
            (name, alias, version, at, actor),
        )

    def drop_alias(self, name: str, alias: str) -> None:
        self.claim(name)
        self.execute("DELETE FROM aliases WHERE name=? AND alias=?", (name, alias))

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
        self.claim(name)
        self.execute(
            "INSERT INTO audit(at, actor, action, name, version, digest, alias, old_version, "
            "old_digest, detail) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (at, actor, action, name, version, digest, alias, old_version, old_digest,
             json.dumps(detail or {}, sort_keys=True)),
        )
