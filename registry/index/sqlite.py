"""The embedded index: one SQLite file next to the blobs (the default).

WAL mode lets readers run while a writer commits; every write is one ``BEGIN IMMEDIATE``
transaction, which excludes every other writer on the machine, so version numbers are assigned
and made visible atomically (the commit point of a push). Connections are cached per thread and
per process: sqlite3 connections must not cross a fork, and resolve must not pay for opening one
per call.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from loramux.registry.errors import IndexUnavailable
from loramux.registry.index.base import Dialect, Index, Transaction
from loramux.registry.index.migrations import migrate

SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    group_concat="group_concat({expr}, ',')",
    identity="INTEGER PRIMARY KEY AUTOINCREMENT",
    table_suffix=" WITHOUT ROWID",
    table_exists="SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
    schema_lock=None,  # BEGIN IMMEDIATE already excludes other writers
)


@contextlib.contextmanager
def _answering(where: str) -> Iterator[None]:
    """A file SQLite cannot use (locked past the busy timeout, unreadable, not a database, disk
    full) is the registry's 503 with the reason, as an unreachable PostgreSQL is: callers then
    handle one error type whichever index is behind. Constraint and SQL errors stay what they
    are (bugs, not outages)."""
    try:
        yield
    except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
        raise
    except sqlite3.DatabaseError as exc:
        raise IndexUnavailable(f"index {where} cannot answer: {exc}") from exc


class SqliteIndex(Index):
    dialect = SQLITE

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._conns: dict[tuple[int, int], sqlite3.Connection] = {}  # (pid, thread) -> conn
        self._conns_lock = threading.Lock()
        with _answering(str(self.path)):
            self.conn().execute("PRAGMA journal_mode=WAL")
        migrate(self)

    def describe(self) -> str:
        return str(self.path)

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
    def read(self) -> Iterator[sqlite3.Connection]:
        with _answering(str(self.path)):
            yield self.conn()

    @contextlib.contextmanager
    def write(self) -> Iterator[Transaction]:
        """One write transaction; the lock is taken up front so no upgrade can deadlock."""
        with _answering(str(self.path)):
            conn = self.conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(conn, self.dialect)
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

    def checkpoint(self) -> None:
        """Fold the WAL back into the database file (after gc freed space)."""
        with _answering(str(self.path)):
            self.conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
