"""Pushes killed with SIGKILL at random moments never leave a visible half version."""

from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from registry_support import WRITE_TOKEN, write_adapter

from loramux.registry.digests import adapter_digest
from loramux.registry.store import LocalRegistry

WORKER = Path(__file__).parent / "registry_support.py"


def _kill_pushes(location: str, folders: list[Path], runs: int, max_delay: float) -> list[int]:
    """Let a pushing process run a random while, then SIGKILL it; ``runs`` times.

    The pushers are forked from a pre-imported zygote process, so that each run costs its
    random delay rather than an interpreter start-up; the delay starts when the child says
    it is about to push.
    """
    rng = random.Random(20240507)
    env = {**os.environ, "LORAMUX_TOKEN": WRITE_TOKEN}
    cmd = [sys.executable, str(WORKER), "zygote", location, "crashy", *map(str, folders)]
    zygote = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                              bufsize=0)
    assert zygote.stdin is not None and zygote.stdout is not None
    lines: list[str] = []

    def read_line() -> str:
        if not lines:
            ready, _, _ = select.select([zygote.stdout], [], [], 30)
            assert ready, "zygote or pusher stopped answering"
            data = zygote.stdout.read(4096)  # type: ignore[union-attr]
            assert data, "zygote died"
            while not data.endswith(b"\n"):
                data += zygote.stdout.read(4096)  # type: ignore[union-attr]
            lines.extend(data.decode().splitlines())
        return lines.pop(0)

    def ask(line: str) -> int:
        zygote.stdin.write(line.encode() + b"\n")  # type: ignore[union-attr]
        answer = read_line()
        while answer.startswith("started"):  # the child spoke before its parent
            lines.append(answer)
            answer = read_line()
        return int(answer)

    codes: list[int] = []
    pid = None
    try:
        assert read_line() == "ready"
        for _ in range(runs):
            pid = ask("fork")
            assert read_line() == f"started {pid}"
            time.sleep(rng.uniform(0, max_delay))
            os.kill(pid, signal.SIGKILL)
            codes.append(ask(f"wait {pid}"))
            pid = None
    finally:
        if pid is not None:  # a failed assertion must not leave a pusher running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        zygote.kill()
        zygote.wait()
    return codes


def _check_store(root: Path, folders: list[Path]) -> int:
    """Integrity, completeness, gc; returns how many leftovers gc removed."""
    conn = sqlite3.connect(root / "index.db")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    store = LocalRegistry(root)
    try:
        versions = store.list(name="crashy")
        numbers = sorted(v.version for v in versions)
        assert numbers == list(range(1, len(numbers) + 1)), "a killed push consumed a number"
        valid = {adapter_digest(store.resolve(f"crashy@{n}").files) for n in numbers}
        for v in versions:  # every visible version is complete: all its blobs are there, intact
            manifest = store.resolve(f"crashy@{v.version}")
            assert manifest.digest in valid
            for f in manifest.files:
                assert store.blobs.size(f.sha256) == f.size
        assert store.verify().ok

        report = store.gc()
        assert list((root / "tmp").iterdir()) == []
        referenced = store.index.referenced_blobs(store.index.conn())
        assert set(store.blobs.all_hex()) == referenced
        assert store.verify().ok
        # and the store still takes pushes
        latest = store.resolve("crashy").digest if numbers else None
        for folder in folders:
            pushed = store.push(folder, "crashy")
            if pushed.digest != latest:
                break
        assert pushed.version == len(numbers) + 1
    finally:
        store.close()
    return report.removed_temp_files + report.removed_blobs


@pytest.fixture(scope="module")
def crash_folders(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("crash-adapters")
    # ~4 MB each, so that a push spends most of its time copying and hashing blobs
    return [write_adapter(base / f"f{i}", seed=i, hidden=4096, r=32) for i in range(3)]


@pytest.mark.timeout(180)
def test_sigkilled_local_pushes_leave_no_half_version(tmp_path: Path, crash_folders) -> None:
    root = tmp_path / "store"
    LocalRegistry(root).close()
    codes = _kill_pushes(str(root), crash_folders, runs=30, max_delay=0.1)
    assert codes.count(-signal.SIGKILL) == len(codes)
    leftovers = _check_store(root, crash_folders)
    assert leftovers > 0, "no run was killed mid-write: the test did not test anything"


@pytest.mark.timeout(180)
def test_sigkilled_remote_pushes_leave_no_half_version(tmp_path: Path, http_server,
                                                       crash_folders) -> None:
    root = tmp_path / "store"
    store = LocalRegistry(root)
    http_server.use(store)
    try:
        codes = _kill_pushes(http_server.url, crash_folders, runs=12, max_delay=0.3)
        assert codes.count(-signal.SIGKILL) == len(codes)
        time.sleep(0.2)  # let the server notice the dropped connections
        _check_store(root, crash_folders)
    finally:
        store.close()
