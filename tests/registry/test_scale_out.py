"""Several registry servers on one PostgreSQL index (issue 13, item 4 and its must-holds).

Two real ``loramux registry serve --index postgresql://…`` processes share one database (which
they migrate together on start) and one blob store: a repository in a real OCI registry
(docker-registry), or, for the tests that look at blob files, one folder both serve. Checked: a
push through one server resolves through the other at once; 8 concurrent pushers over both get
8 distinct versions and every alias move is in the audit log, each one recording the target it
really replaced; a server SIGKILLed mid-push leaves no partial version; a ``loramux serve``
reading through one server sees an alias moved through the other within its resolve TTL.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from oci_registry import fresh_repository, oci_registry  # noqa: F401  (a fixture)
from registry_support import (
    ADMIN_TOKEN,
    READ_TOKEN,
    TOKENS,
    WRITE_TOKEN,
    folder_bytes,
    write_adapter,
)

from loramux.registry import RemoteError
from loramux.registry.digests import adapter_digest
from loramux.registry.remote import RemoteRegistry
from loramux.support.launch import RegistryProcess
from loramux.support.postgres import PostgresServer

pytestmark = pytest.mark.timeout(240)
PUSHERS = 8


class Fleet:
    """Registry server processes over one PostgreSQL database and one blob store: the same
    store folder, or (``oci``) each server its own folder and one OCI repository."""

    def __init__(self, tmp: Path, dsn: str, blobs: str | None) -> None:
        self.root, self.dsn, self.blobs, self.logs = tmp / "store", dsn, blobs, tmp / "logs"
        self.servers: list[RegistryProcess] = []
        self._all: list[RegistryProcess] = []

    def start(self, i: int) -> RegistryProcess:
        root = self.root if self.blobs is None else self.root.with_name(f"store-{i}")
        args = ["--index", self.dsn, "--log-level", "warning"]
        server = RegistryProcess(root, self.logs / f"registry-{i}-{time.monotonic_ns()}.log",
                                 args=args + (["--blobs", self.blobs] if self.blobs else []),
                                 env={"LORAMUX_REGISTRY_TOKENS": TOKENS})
        self._all.append(server)
        server.start()
        return server

    def start_all(self, n: int) -> None:
        """``n`` servers at once (they migrate the index together), numbered in order."""
        with ThreadPoolExecutor(n) as pool:
            self.servers = list(pool.map(self.start, range(n)))

    def restart(self, i: int) -> None:
        self.servers[i] = self.start(i)

    def client(self, i: int, token: str = WRITE_TOKEN) -> RemoteRegistry:
        return RemoteRegistry(self.servers[i].url, token=token)

    def stop(self) -> None:
        for server in self._all:
            server.stop()


@pytest.fixture(params=["oci"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path,
          postgres_server: PostgresServer) -> Iterator[Fleet]:
    """Two servers on a database no one has migrated yet (they race to do it) and the blob
    store ``request.param`` names: ``folder`` or ``oci`` (a fresh repository)."""
    blobs = None
    if request.param == "oci":
        oci = request.getfixturevalue("oci_registry")
        blobs = oci.location(fresh_repository("loramux/fleet"))
    dsn = postgres_server.create_database(migrated=False)
    fleet = Fleet(tmp_path, dsn, blobs)
    try:
        fleet.start_all(2)
        yield fleet
    finally:
        fleet.stop()
        postgres_server.drop_database(dsn)


@pytest.mark.parametrize("fleet", ["folder", "oci"], indirect=True)
def test_a_push_through_one_server_resolves_through_the_other(fleet: Fleet, adapters,
                                                              tmp_path: Path) -> None:
    with fleet.client(0) as a, fleet.client(1, READ_TOKEN) as b:
        pushed = a.push(adapters["a"], "shared", alias="prod")
        assert b.resolve("shared:prod") == pushed  # no wait: the index is the same rows
        assert b.resolve(f"shared@{pushed.digest}") == pushed
        out = b.pull("shared@1", tmp_path / "pulled")
        assert folder_bytes(out) == folder_bytes(adapters["a"])
        second = a.push(adapters["b"], "shared")
        assert b.resolve("shared").version == second.version == 2


def test_concurrent_pushers_over_two_servers(fleet: Fleet, tmp_path: Path) -> None:
    """8 pushers, each with its own adapter and ``alias=prod``, released together over both
    servers: versions 1..8 with 8 digests; then 8 concurrent alias moves. The audit log holds
    every move, and each records as its old target the version the move before it set: had two
    moves interleaved, two entries would name the same old target and one move would be lost."""
    folders = [write_adapter(tmp_path / f"p{i}", seed=100 + i) for i in range(PUSHERS)]
    with fleet.client(0) as warm:  # blobs first: the pushes below are mostly their commits
        for folder in folders:
            warm.push(folder, "warm-up")
    clients = [fleet.client(i % 2) for i in range(PUSHERS)]
    start = threading.Barrier(PUSHERS)

    def push(i: int) -> int:
        start.wait(30)
        return clients[i].push(folders[i], "fleet", alias="prod").version

    def move(i: int) -> None:
        start.wait(30)
        clients[i].alias_set("fleet", "canary", i + 1)

    try:
        with ThreadPoolExecutor(PUSHERS) as pool:
            versions = list(pool.map(push, range(PUSHERS)))
            assert sorted(versions) == list(range(1, PUSHERS + 1))
            list(pool.map(move, range(PUSHERS)))
        reader = clients[1]
        listed = reader.list(name="fleet")
        assert sorted(v.version for v in listed) == list(range(1, PUSHERS + 1))
        assert len({v.digest for v in listed}) == PUSHERS
        expected = {adapter_digest(reader.resolve(f"fleet@{v}").files) for v in versions}
        assert {v.digest for v in listed} == expected
        for alias in ("prod", "canary"):
            moves = sorted((e for e in reader.log(name="fleet", alias=alias, limit=100)
                            if e.action == "alias_set"), key=lambda e: e.id)
            assert len(moves) == PUSHERS, f"{alias}: {len(moves)} moves logged"
            assert [e.old_version for e in moves] == [None, *(e.version for e in moves[:-1])]
            assert reader.resolve(f"fleet:{alias}").version == moves[-1].version
    finally:
        for client in clients:
            client.close()


def _push_until_killed(url: str, name: str, folders: list[Path],
                       errors: list[BaseException]) -> None:
    with RemoteRegistry(url, token=WRITE_TOKEN) as client:
        for folder in folders:
            try:
                client.push(folder, name)
            except Exception as exc:
                errors.append(exc)
                return


@pytest.mark.parametrize("fleet", ["folder"], indirect=True)  # looks at the blob files
def test_sigkilled_registry_server_leaves_no_partial_version(fleet: Fleet,
                                                              tmp_path: Path) -> None:
    """Pushes of fresh ~4 MB adapters (every push uploads) through server 0, SIGKILLed at a
    random moment, three times; server 1 then sees only whole versions, numbered without
    gaps, and its gc (the advisory lock the dead server held is gone with its connection)
    removes what the killed pushes left."""
    rng = random.Random(1307)
    runs = [[write_adapter(tmp_path / f"r{run}-{i}", seed=1000 * run + i, hidden=4096, r=32)
             for i in range(12)] for run in range(3)]
    for folders in runs:
        errors: list[BaseException] = []
        pusher = threading.Thread(target=_push_until_killed, daemon=True,
                                  args=(fleet.servers[0].url, "crashy", folders, errors))
        pusher.start()
        time.sleep(rng.uniform(0.02, 0.3))  # a push takes ~50 ms here
        proc = fleet.servers[0].proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        pusher.join(60)
        assert not pusher.is_alive() and errors, "the pushes ended before the kill"
        assert isinstance(errors[0], RemoteError), repr(errors[0])  # "unreachable", no other
        fleet.restart(0)  # the next run pushes through a fresh server on the same index

    with fleet.client(1, ADMIN_TOKEN) as other:
        versions = other.list(name="crashy")
        numbers = sorted(v.version for v in versions)
        assert numbers == list(range(1, len(numbers) + 1)), "a killed push consumed a number"
        for v in versions:  # every visible version is complete: every blob there, intact
            manifest = other.resolve(f"crashy@{v.version}")
            assert manifest.digest == adapter_digest(manifest.files)
            for f in manifest.files:
                assert (fleet.root / "blobs" / "sha256" / f.sha256).stat().st_size == f.size
        assert other.verify().ok
        report = other.gc()  # waits on the advisory lock; a dead server's was dropped with it
        assert other.verify().ok
        assert report.removed_blobs + report.removed_temp_files > 0, (
            "no kill landed mid-push: the test did not test anything")
        with fleet.client(0) as again:
            more = again.push(write_adapter(tmp_path / "after", seed=7), "crashy")
        assert more.version == len(numbers) + 1


def test_a_server_killed_inside_its_commit_leaves_nothing(fleet: Fleet, adapters) -> None:
    """The kill lands inside the commit transaction, for sure: the test holds a lock on
    ``version_files`` so the server's commit waits after inserting the version row and before
    its files; then SIGKILL. PostgreSQL rolls it all back (row, alias move, audit entry);
    committed piecemeal, server 1 would list a version whose blobs gc then deletes."""
    import psycopg

    with fleet.client(0) as a:
        first = a.push(adapters["a"], "held", alias="prod")
    errors: list[BaseException] = []
    with psycopg.connect(fleet.dsn) as blocker, \
            psycopg.connect(fleet.dsn, autocommit=True) as watcher:
        blocker.execute("LOCK TABLE version_files IN EXCLUSIVE MODE")  # reads still pass
        pusher = threading.Thread(target=_push_until_killed, daemon=True,
                                  args=(fleet.servers[0].url, "held", [adapters["b"]], errors))
        pusher.start()
        deadline = time.monotonic() + 30
        while not watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type='Lock' "
                "AND query LIKE 'INSERT INTO version_files%'").fetchone()[0]:
            assert time.monotonic() < deadline, "the commit never reached version_files"
            time.sleep(0.02)
        proc = fleet.servers[0].proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        blocker.rollback()
    pusher.join(30)
    assert errors and isinstance(errors[0], RemoteError), errors
    with fleet.client(1, ADMIN_TOKEN) as other:
        assert [v.version for v in other.list(name="held")] == [1]
        assert other.resolve("held:prod") == first
        assert [e.action for e in other.log(name="held", limit=10)] == ["alias_set", "push"]
        other.gc()
        assert other.verify().ok
        assert other.push(adapters["b"], "held").version == 2


def test_serve_sees_an_alias_moved_through_the_other_server(fleet: Fleet, tmp_path: Path,
                                                            monkeypatch) -> None:
    """``loramux serve`` (fake engine, real app and HTTP) resolves through server 1; the alias
    is moved through server 0; within the resolve TTL the served digest is the new one."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "server"))
    from fake_engine import LiveServers, build_runtime

    from loramux.server.settings import ServerSettings
    from loramux.support.adapters import write_adapter as write_served

    shapes = {"model.layers.0.self_attn.q_proj": (8, 8)}
    with fleet.client(0) as writer:
        v1 = writer.push(write_served(tmp_path / "s1", shapes, rank=2, seed=1), "tone",
                         alias="prod")
        v2 = writer.push(write_served(tmp_path / "s2", shapes, rank=2, seed=2), "tone")
        ttl = 1.0
        settings = ServerSettings.from_sources({"base": "fake-base", "resolve_ttl_s": ttl},
                                               environ={})
        monkeypatch.setenv("LORAMUX_TOKEN", READ_TOKEN)
        servers = LiveServers()
        try:
            url = servers.start(build_runtime(settings, fleet.servers[1].url,  # type: ignore[arg-type]
                                              tmp_path / "cache"))

            def served() -> str:
                r = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
                    "model": "tone:prod", "max_tokens": 2,
                    "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200, r.text
                return r.headers["x-loramux-adapter-digest"]

            assert served() == v1.digest
            writer.alias_set("tone", "prod", v2.version)
            moved = time.monotonic()
            while (digest := served()) != v2.digest:
                assert digest == v1.digest
                assert time.monotonic() - moved < ttl + 2, "the alias move never showed"
                time.sleep(0.05)
            assert time.monotonic() - moved <= ttl + 1
        finally:
            servers.close()
