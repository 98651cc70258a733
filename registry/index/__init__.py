"""The registry's index: names, versions, aliases, manifests and the audit log.

Two backends behind one :class:`Index`: SQLite in the store folder (the embedded default) and
PostgreSQL (shared by several registry servers), picked by :func:`open_index` from one setting:
``--index`` on the command line, else ``LORAMUX_REGISTRY_INDEX``, else SQLite.
"""

from __future__ import annotations

import os
from pathlib import Path

from loramux.registry.errors import Invalid
from loramux.registry.index.base import Index, Transaction
from loramux.registry.index.times import now, to_dt, to_us

ENV_INDEX = "LORAMUX_REGISTRY_INDEX"
INDEX_FILE = "index.db"
INDEX_HELP = ("Index database: postgresql://USER@HOST:PORT/DB for one shared by several servers "
              f"(env {ENV_INDEX}; default: SQLite in the store folder).")
_POSTGRES = ("postgresql://", "postgres://")


def index_from_env() -> str | None:
    """The index named by ``LORAMUX_REGISTRY_INDEX`` (None: the default SQLite file)."""
    return os.environ.get(ENV_INDEX) or None


def check_spec(spec: str | None) -> str | None:
    """``spec`` if it names a backend this loramux has (None and ``sqlite``: the default)."""
    if spec in (None, "", "sqlite"):
        return None
    if spec.startswith(_POSTGRES):
        return spec
    scheme = spec.partition("://")[0] if "://" in spec else spec
    raise Invalid(f"unknown index {scheme!r}: use postgresql://USER@HOST:PORT/DB, or leave it "
                  "out for SQLite in the store folder")


def is_shared(spec: str | None) -> bool:
    """True when the index lives outside the store folder (a database server)."""
    return check_spec(spec) is not None


def open_index(spec: str | None, root: Path) -> Index:
    """The index ``spec`` names, or the SQLite file in ``root`` when it names none."""
    spec = check_spec(spec)
    if spec is None:
        from loramux.registry.index.sqlite import SqliteIndex

        return SqliteIndex(root / INDEX_FILE)
    from loramux.registry.index.postgres import PostgresIndex  # psycopg only when used

    return PostgresIndex(spec)


__all__ = ["ENV_INDEX", "INDEX_FILE", "INDEX_HELP", "Index", "Transaction", "check_spec",
           "index_from_env", "is_shared", "now", "open_index", "to_dt", "to_us"]
