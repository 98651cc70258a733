"""The index backends themselves: migrations, the OCI digest column, the setting, outages.

The contract suite (test_contract.py) shows both backends behave alike; these are the parts it
cannot see: a store made by an older loramux is migrated in place, servers starting together
migrate once, a newer schema is refused, a bad ``--index`` is one line, and a database that goes
away is a 503 with its reason that heals without a restart.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from postgres import require_postgres
from registry_support import READ_TOKEN, TOKENS
from typer.testing import CliRunner

from loramux.registry.cli import app
from loramux.registry.errors import IndexUnavailable, Invalid
from loramux.registry.index import INDEX_FILE, open_index
from loramux.registry.index.migrations import LATEST, MIGRATIONS, SchemaTooNew, statements
from loramux.registry.index.postgres import CHECK_IDLE_S, PostgresIndex, redact
from loramux.registry.index.sqlite import SQLITE
from loramux.registry.remote import RemoteRegistry
from loramux.registry.store import LocalRegistry
from loramux.support.postgres import PostgresServer

pytestmark = pytest.mark.timeout(120)


def _schema_version(index) -> int:
    with index.read() as conn:
        return int(conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])


def test_a_store_of_schema_1_is_migrated_in_place(tmp_path: Path, adapters) -> None:
    """A SQLite store as the previous loramux left it (schema 1, no oci_digest) opens, keeps its
    versions, and gains the column."""
    root = tmp_path / "old"
    root.mkdir()
    conn = sqlite3.connect(root / INDEX_FILE)
    for stmt in statements(MIGRATIONS[0], identity=SQLITE.identity,
                           table_suffix=SQLITE.table_suffix):
        conn.execute(stmt)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.commit()
    conn.close()
    store = LocalRegistry(root)
    try:
        assert _schema_version(store.index) == LATEST == len(MIGRATIONS)
        pushed = store.push(adapters["a"], "kept")
        with store.index.write() as tx:
            assert tx.set_oci_digest("kept", 1, "sha256:" + "ab" * 32)
            assert not tx.set_oci_digest("kept", 9, "sha256:" + "ab" * 32)
        assert store.index.oci_digest("kept", 1) == "sha256:" + "ab" * 32
        assert store.index.oci_digest("kept", 9) is None
    finally:
        store.close()
    reopened = LocalRegistry(root)  # a second open finds nothing to do
    assert reopened.resolve("kept") == pushed
    reopened.close()


def test_an_index_newer_than_this_loramux_is_refused(tmp_path: Path, postgres_dsn: str) -> None:
    for index in (open_index(None, tmp_path), open_index(postgres_dsn, tmp_path)):
        with index.write() as tx:
            tx.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(LATEST + 1),))
        index.close()
    with pytest.raises(SchemaTooNew, match=f"index schema {LATEST + 1}; this loramux reads up"):
        open_index(None, tmp_path)
    with pytest.raises(SchemaTooNew, match=r"postgresql://postgres@127\.0\.0\.1"):
        open_index(postgres_dsn, tmp_path)


def test_servers_starting_together_migrate_once(postgres_server) -> None:
    """Eight processes' worth of opens on an empty database at the same instant: one migrates
    (under the schema lock), the others find it done; none fails on a half-made schema."""
    dsn = postgres_server.create_database(migrated=False)
    start = threading.Barrier(8)
    errors: list[BaseException] = []
    opened: list[PostgresIndex] = []

    def open_one() -> None:
        start.wait(30)
        try:
            opened.append(PostgresIndex(dsn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert _schema_version(opened[0]) == LATEST
    finally:
        for index in opened:
            index.close()
        postgres_server.drop_database(dsn)


def test_the_oci_digest_round_trips_on_postgresql(postgres_dsn: str, adapters,
                                                  tmp_path: Path) -> None:
    store = LocalRegistry(tmp_path / "s", index=postgres_dsn)
    try:
        store.push(adapters["a"], "art")
        with store.index.write() as tx:
            assert tx.set_oci_digest("art", 1, "sha256:" + "cd" * 32)
        assert store.index.oci_digest("art", 1) == "sha256:" + "cd" * 32
    finally:
        store.close()


def test_a_bad_index_setting_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="unknown index 'mysql'"):
        LocalRegistry(tmp_path, index="mysql://db/x")
    result = CliRunner().invoke(app, ["serve", "--root", str(tmp_path), "--index", "mysql://x"],
                                env={"LORAMUX_REGISTRY_TOKENS": TOKENS})
    assert result.exit_code == Invalid.exit_code
    assert "unknown index 'mysql'" in result.output and "Traceback" not in result.output
    assert redact("postgresql://u:secret@h:5/db") == "postgresql://u@h:5/db"


def test_an_index_outage_is_a_503_with_its_reason_and_heals(tmp_path: Path, http_server,
                                                           adapters) -> None:
    """The database goes away under a running server: resolve is IndexUnavailable (503 over
    HTTP, the reason without the password), /health says so; back up, the same server and
    store answer again with no restart."""
    require_postgres()
    pg = PostgresServer().start()
    store = None
    try:
        store = LocalRegistry(tmp_path / "s", index=pg.create_database())
        pushed = store.push(adapters["a"], "up")
        http_server.use(store)
        with RemoteRegistry(http_server.url, token=READ_TOKEN) as client:
            assert client.resolve("up") == pushed
            # Idle past the check window: the checkout checks the connection, finds it dead and
            # waits for a new one (a connection used just before would fail the query at once).
            time.sleep(CHECK_IDLE_S + 0.2)
            pg.pause()
            failed: list[BaseException] = []

            def resolve() -> None:
                try:
                    client.resolve("up")
                except BaseException as exc:  # checked below
                    failed.append(exc)

            waiting = threading.Thread(target=resolve)
            waiting.start()
            time.sleep(0.3)  # the resolve is now waiting for the paused database
            # ... and the server's event loop is not: another route answers meanwhile
            assert httpx.get(f"{http_server.url}/openapi.json", timeout=30).status_code == 200
            assert waiting.is_alive(), "answered only after the resolve gave up"
            waiting.join(60)
            assert len(failed) == 1 and isinstance(failed[0], IndexUnavailable), failed
            assert "cannot answer" in str(failed[0]) and failed[0].status == 503
            assert httpx.get(f"{http_server.url}/health", timeout=30).status_code == 503
            pg.resume()
            deadline = time.monotonic() + 20
            while True:
                try:
                    assert client.resolve("up") == pushed
                    break
                except IndexUnavailable:
                    assert time.monotonic() < deadline, "the index never came back"
                    time.sleep(0.2)
            assert store.resolve("up") == pushed
    finally:
        if store is not None:
            store.close()
        pg.stop()


def test_an_unusable_sqlite_file_is_index_unavailable_not_a_driver_error(tmp_path: Path,
                                                                          adapters) -> None:
    """Callers (the server's resolver, the vLLM plugin) handle one error type for an index that
    cannot answer, whichever database is behind it: SQLite's own errors never leave the index."""
    store = LocalRegistry(tmp_path / "store", actor="tester")
    store.push(adapters["a"], "alpha")
    store.close()
    index = open_index(None, tmp_path / "store")
    index.conn().execute("PRAGMA busy_timeout=50")
    blocker = sqlite3.connect(tmp_path / "store" / INDEX_FILE, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process writes past the busy timeout
    try:
        with pytest.raises(IndexUnavailable, match="cannot answer: database is locked"), \
                index.write() as tx:
            tx.next_version("alpha")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with index.write() as tx:  # it heals once the file is free
        assert tx.next_version("alpha") == 2
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / INDEX_FILE).write_bytes(b"not a database" * 512)
    with pytest.raises(IndexUnavailable, match="file is not a database"):
        open_index(None, tmp_path / "garbage")
