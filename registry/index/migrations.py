"""The index schema as numbered migrations, one text for SQLite and PostgreSQL alike.

``meta.schema_version`` holds how many have been applied. Opening an index applies the missing
ones in one write transaction (which the backend serializes between processes), so several
servers starting at once migrate once; an index newer than this loramux is refused, not guessed
at. A migration is never edited once released: add the next one instead.

``{identity}`` and ``{table_suffix}`` are the only dialect differences (see ``Dialect``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loramux.registry.errors import RegistryError

if TYPE_CHECKING:
    from loramux.registry.index.base import Connection, Dialect, Index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    number: int
    about: str
    sql: str


MIGRATIONS = (
    Migration(1, "names, versions, files, aliases, audit log", """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions(
    name TEXT NOT NULL, version INTEGER NOT NULL, digest TEXT NOT NULL, size BIGINT NOT NULL,
    created_at BIGINT NOT NULL, created_by TEXT NOT NULL, base_fingerprint TEXT,
    manifest TEXT NOT NULL, deleted_at BIGINT, deleted_by TEXT,
    PRIMARY KEY (name, version)
){table_suffix};
CREATE INDEX IF NOT EXISTS versions_by_digest ON versions(name, digest);
CREATE INDEX IF NOT EXISTS versions_by_base ON versions(base_fingerprint);
CREATE TABLE IF NOT EXISTS version_files(
    name TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (name, version, path)
){table_suffix};
CREATE INDEX IF NOT EXISTS version_files_by_blob ON version_files(sha256);
CREATE TABLE IF NOT EXISTS aliases(
    name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL,
    updated_at BIGINT NOT NULL, updated_by TEXT NOT NULL,
    PRIMARY KEY (name, alias)
){table_suffix};
CREATE INDEX IF NOT EXISTS aliases_by_version ON aliases(name, version);
CREATE TABLE IF NOT EXISTS audit(
    id {identity}, at BIGINT NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, name TEXT NOT NULL, version INTEGER, digest TEXT, alias TEXT,
    old_version INTEGER, old_digest TEXT, detail TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS audit_by_name ON audit(name, at);
CREATE INDEX IF NOT EXISTS audit_by_alias ON audit(name, alias, at);
CREATE INDEX IF NOT EXISTS audit_by_at ON audit(at);
"""),
    Migration(2, "versions.oci_digest: the version's OCI artifact manifest", """
ALTER TABLE versions ADD COLUMN oci_digest TEXT;
"""),
    Migration(3, "evaluations: eval-gated promotion results per version", """
CREATE TABLE IF NOT EXISTS evaluations(
    id {identity}, audit_id BIGINT NOT NULL, at BIGINT NOT NULL, name TEXT NOT NULL,
    version INTEGER NOT NULL, role TEXT NOT NULL, passed INTEGER NOT NULL, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS evaluations_by_version ON evaluations(name, version, at);
"""),
    Migration(4, "aliases.canary_version, canary_weight: a weighted canary beside an alias", """
ALTER TABLE aliases ADD COLUMN canary_version INTEGER;
ALTER TABLE aliases ADD COLUMN canary_weight BIGINT NOT NULL DEFAULT 0;
"""),
)
LATEST = MIGRATIONS[-1].number


class SchemaTooNew(RegistryError, status=500, exit_code=9):
    """The index was migrated by a newer loramux than this one."""


def statements(migration: Migration, *, identity: str, table_suffix: str) -> list[str]:
    text = migration.sql.format(identity=identity, table_suffix=table_suffix)
    return [s.strip() for s in text.split(";") if s.strip()]


def check_version(found: int | None, where: str) -> bool:
    """True if migrations are due; raises for an index newer than this code."""
    if found is not None and found > LATEST:
        raise SchemaTooNew(f"{where} has index schema {found}; this loramux reads up to "
                           f"{LATEST}: upgrade loramux")
    return found != LATEST


def _version(conn: Connection, dialect: Dialect) -> int | None:
    if conn.execute(dialect.sql(dialect.table_exists), ("meta",)).fetchone() is None:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else None


def migrate(index: Index) -> None:
    """Bring the index to ``LATEST``; a no-op (one read) when it is there already."""
    where = index.describe()
    with index.read() as conn:  # opening an up-to-date index takes no write lock
        if not check_version(_version(conn, index.dialect), where):
            return
    with index.write() as tx:
        if tx.dialect.schema_lock:
            tx.execute(tx.dialect.schema_lock)  # servers starting together migrate one by one
        found = _version(tx.connection, tx.dialect)
        if not check_version(found, where):
            return
        for migration in MIGRATIONS[found or 0:]:
            log.info("%s: index migration %d (%s)", where, migration.number, migration.about)
            for stmt in statements(migration, identity=tx.dialect.identity,
                                   table_suffix=tx.dialect.table_suffix):
                tx.execute(stmt)
        tx.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?) ON CONFLICT(key) "
                   "DO UPDATE SET value=excluded.value", (str(LATEST),))
