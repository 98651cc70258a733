"""Start `loramux serve` as a child process and wait until it is ready.

The demo, the tests and the benchmarks all need a real server on loopback; this is the one way
they start it, so they exercise the same command a user runs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`with ServerProcess(args, log=path) as url:` — a ready server, stopped on exit."""

    def __init__(self, args: list[str], log: Path, port: int | None = None,
                 timeout_s: float = 300, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.args = args
        self.log = log
        self.timeout_s = timeout_s
        self.env = env or {}
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    def start(self) -> str:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("w")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loramux.cli", "serve", *self.args, "--port", str(self.port)],
            stdout=out, stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONUNBUFFERED": "1"} | self.env)
        while True:
            if self.proc.poll() is not None:
                tail = self.log.read_text()[-3000:]
                raise RuntimeError(f"loramux serve exited ({self.proc.returncode}):\n{tail}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    self.startup_seconds = time.monotonic() - started
                    return self.url
            except httpx.TransportError:
                pass
            if time.monotonic() - started > self.timeout_s:
                self.stop()
                raise RuntimeError(f"loramux serve not ready after {self.timeout_s:.0f}s; "
                                   f"log: {self.log}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server; raise if it left engine processes behind (they would hold GBs)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        import psutil

        children = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        _, alive = psutil.wait_procs(children, timeout=15)
        for child in alive:
            child.kill()
        if alive:
            raise RuntimeError(f"loramux serve left {len(alive)} child processes running")

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
