"""PostgreSQL fixtures: one server per session, a fresh database per test.

The server (``loramux.support.postgres``) runs from a temp folder on a free loopback port and is
stopped at the end of the session; each test's database is dropped after it. Missing binaries:
a developer without root skips (with that reason); as root (CI) that is a failure, since
``.ci/system-deps`` installs them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from loramux.support.postgres import PG_BIN, PostgresServer, installed


def require_postgres() -> None:
    """Skip (no root, no PostgreSQL) or fail (root: CI must have it) when it is missing."""
    if installed():
        return
    if os.geteuid() == 0:
        pytest.fail(f"PostgreSQL 15 is missing ({PG_BIN}): run .ci/system-deps")
    pytest.skip(f"PostgreSQL 15 is not installed ({PG_BIN}) and this is not root: "
                ".ci/system-deps installs it")


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
