"""A PostgreSQL 15 server on loopback in a temp folder, for the tests and the benchmark.

The registry's shared index needs a real PostgreSQL; this starts one the way CI has it (Debian's
``postgresql-15``, installed by ``.ci/system-deps``): ``initdb`` in a fresh folder under /tmp, a
free loopback port, durability off (a test server: nothing to keep across a crash). Each
``create_database()`` is a copy of a template the index has already migrated. PostgreSQL refuses
to run as root, so as root the cluster belongs to the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")  # where Debian's postgresql-15 puts it
TEMPLATE = "loramux_template"
_SERVER_SETTINGS = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                    "-c max_connections=400 -c shared_buffers=64MB")


def installed() -> bool:
    """True if the PostgreSQL 15 server binaries are there."""
    return (PG_BIN / "initdb").is_file() and (PG_BIN / "pg_ctl").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """``initdb`` + ``pg_ctl start`` in a temp folder; ``create_database()`` hands out DSNs."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="loramux-pg-"))  # /tmp: postgres can reach it
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.as_root = os.geteuid() == 0
        self.port = 0
        self._names = itertools.count()

    def _run(self, *cmd: str | Path) -> None:
        argv = [str(c) for c in cmd]
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        if self.as_root:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")
        for _ in range(5):  # a port taken between our probe and the server's bind: try another
            self.port = _free_port()
            try:
                self._pg_start()
                break
            except subprocess.CalledProcessError:
                text = self.log.read_text(errors="replace")
                if "could not bind" not in text:
                    raise RuntimeError(f"PostgreSQL did not start:\n{text}") from None
        else:
            raise RuntimeError(f"PostgreSQL found no free port:\n{self.log.read_text()}")
        self._make_template()
        return self

    def _pg_start(self) -> None:
        opts = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 {_SERVER_SETTINGS}"
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60",
                  "-o", opts, "start")

    def pause(self) -> None:
        """Stop the server, keeping its data: an outage, ended by ``resume()``."""
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start it again on the same port, as an operator would after an outage."""
        self._pg_start()

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql)

    def _make_template(self) -> None:
        from loramux.registry.index.postgres import PostgresIndex

        self.admin(f"CREATE DATABASE {TEMPLATE}")
        PostgresIndex(self.dsn(TEMPLATE)).close()  # the migrations, once

    def create_database(self, *, migrated: bool = True) -> str:
        """A fresh, empty database (with the index's tables unless ``migrated`` is False)."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE if migrated else 'template0'}")
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        name = dsn.rsplit("/", 1)[1]
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # leftover clients too

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)
