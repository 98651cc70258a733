"""Pushes killed with SIGKILL at random moments never leave a visible half version."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest
from registry_support import WRITE_TOKEN, write_adapter

from loramux.registry.digests import adapter_digest
from loramux.registry.store import LocalRegistry

WORKER = Path(__file__).parent / "registry_support.py"


class ZygotePipe:
    """The zygote's stdout carries its answers (numbers) and its children's ``started <pid>``
    lines, in either order and in one read or several: a child may speak before its parent
    has sent the pid. Such lines are held aside until someone waits for them."""

    def __init__(self, stdin: BinaryIO, stdout: BinaryIO, timeout: float = 30) -> None:
        self._stdin, self._stdout, self._timeout = stdin, stdout, timeout
        self._lines: list[str] = []
        self._started: list[str] = []

    def line(self) -> str:
        if not self._lines:
            ready, _, _ = select.select([self._stdout], [], [], self._timeout)
            assert ready, "zygote or pusher stopped answering"
            data = self._stdout.read(4096)
            assert data, "zygote died"
            while not data.endswith(b"\n"):
                data += self._stdout.read(4096)
            self._lines.extend(data.decode().splitlines())
        return self._lines.pop(0)

    def ask(self, command: str) -> int:
        """Send a command; its numeric answer, skipping (and keeping) children's lines."""
        self._stdin.write(command.encode() + b"\n")
        while (answer := self.line()).startswith("started "):
            self._started.append(answer)
        return int(answer)

    def wait_started(self, pid: int) -> None:
        want = f"started {pid}"
        while want not in self._started:
            line = self.line()
            assert line.startswith("started "), f"unexpected {line!r} from the zygote"
            self._started.append(line)
        self._started.remove(want)


def _kill_pushes(
    location: str, folders: list[Path], runs: int, max_delay: float, *, fresh: bool = False
) -> list[int]:
    """Let a pushing process run a random while, then SIGKILL it; ``runs`` times.

    The pushers are forked from a pre-imported zygote process, so that each run costs its
    random delay rather than an interpreter start-up; the delay starts when the child says
    it is about to push. ``fresh``: every push uploads a new adapter (see ``push_forever``).
    """
    rng = random.Random(20240507)
    env = {**os.environ, "LORAMUX_TOKEN": WRITE_TOKEN}
    cmd = [sys.executable, str(WORKER), "zygote", location, "crashy", *map(str, folders)]
    zygote = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                              bufsize=0)
    assert zygote.stdin is not None and zygote.stdout is not None
    pipe = ZygotePipe(zygote.stdin, zygote.stdout)  # type: ignore[arg-type]
    codes: list[int] = []
    pid = None
    try:
        assert pipe.line() == "ready"
        for _ in range(runs):
            pid = pipe.ask("fork fresh" if fresh else "fork")
            pipe.wait_started(pid)
            time.sleep(rng.uniform(0, max_delay))
            os.kill(pid, signal.SIGKILL)
            codes.append(pipe.ask(f"wait {pid}"))
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
        referenced = set(store.index.blob_users())
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
                                                       crash_folders, caplog) -> None:
    caplog.set_level(logging.INFO, logger="loramux.registry.http.app")
    root = tmp_path / "store"
    store = LocalRegistry(root)
    http_server.use(store)
    try:
        codes = _kill_pushes(http_server.url, crash_folders, runs=20, max_delay=0.3,
                             fresh=True)
        assert codes.count(-signal.SIGKILL) == len(codes)
        time.sleep(0.2)  # let the server notice the dropped connections
        leftovers = _check_store(root, crash_folders)  # its gc waits for every open upload
    finally:
        store.close()
    aborted = sum("aborted by the client" in r.getMessage() for r in caplog.records)
    assert leftovers + aborted > 0, "no run was killed mid-write: the test did not test anything"


def _unread(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, struct.pack("i", 0)))[0]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("child_first", [True, False], ids=["child-first", "parent-first"])
def test_zygote_pipe_takes_lines_in_either_order(child_first: bool) -> None:
    """Each line in a read of its own: a child's ``started`` line read before its pid once
    made the reader pop and push it back forever."""
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    first, second = (b"started 7\n", b"7\n") if child_first else (b"7\n", b"started 7\n")

    def zygote() -> None:
        os.read(in_r, 5)  # "fork\n"
        os.write(out_w, first)
        while _unread(out_r):  # the reader took the first line on its own
            time.sleep(0.005)
        os.write(out_w, second)

    thread = threading.Thread(target=zygote, daemon=True)
    thread.start()
    with open(out_r, "rb", buffering=0) as stdout, open(in_w, "wb", buffering=0) as stdin:
        pipe = ZygotePipe(stdin, stdout, timeout=10)
        assert pipe.ask("fork") == 7
        pipe.wait_started(7)
    thread.join(5)
    os.close(out_w)
    os.close(in_r)
