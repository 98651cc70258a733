"""PostgreSQL fixtures: one server per session, a fresh database per test.

The server (``loramux.support.postgres``) runs from a temp folder on a free loopback port and is
stopped at the end of the session; each test's database is dropped after it. PostgreSQL 15 or 16
is found by ``services`` (Debian's folders, then PATH); missing, it is a skip for a developer
without root and a failure with CI set or as root (``services.unavailable``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import services  # this folder is on sys.path wherever this module is importable

import loramux.support.postgres as pg
from loramux.support.postgres import PostgresServer


def require_postgres() -> None:
    """Point ``PostgresServer`` at the binaries ``services`` found (it runs ``pg.PG_BIN/…``);
    skip or fail (``services.unavailable``) when there are none."""
    pg.PG_BIN = Path(services.require("postgresql"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    require_postgres()
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database for one test (dropped after it, whoever still holds connections)."""
    dsn = postgres_server.create_database()
    yield dsn
    postgres_server.drop_database(dsn)
