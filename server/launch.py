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


class ChildServer:
    """A server command in a child process on loopback, ready when `GET ready_path` answers 200.

    `with ChildServer(...) as url:` starts it and stops it on exit. Stopping also reaps the
    child's own children (vLLM's engine core and workers), which would otherwise hold GBs.
    """

    def __init__(self, cmd: list[str], log: Path, port: int, ready_path: str = "/health",
                 env: dict[str, str] | None = None, timeout_s: float = 300,
                 name: str | None = None) -> None:
        self.cmd, self.log, self.port, self.ready_path = cmd, log, port, ready_path
        self.env, self.timeout_s = env or {}, timeout_s
        self.name = name or Path(cmd[0]).name
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self.strict_children = False  # raise when children had to be killed

    def start(self) -> str:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         env=os.environ | {"PYTHONUNBUFFERED": "1"} | self.env)
        while True:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{tail}")
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
                    self.startup_seconds = time.monotonic() - started
                    return self.url
            except httpx.TransportError:
                pass
            if time.monotonic() - started > self.timeout_s:
                self.stop()
                raise RuntimeError(f"{self.name} not ready after {self.timeout_s:.0f}s; "
                                   f"log: {self.log}")
            time.sleep(0.25)

    def stop(self) -> None:
        """Stop the server and reap its children; with `strict_children`, raise if any of them
        outlived it (loramux promises that SIGTERM leaves nothing behind)."""
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
        if alive and self.strict_children:
            raise RuntimeError(f"{self.name} left {len(alive)} child processes running")

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class ServerProcess(ChildServer):
    """`loramux serve ARGS` as a child: the command a user runs, ready at `/ready`."""

    def __init__(self, args: list[str], log: Path, port: int | None = None,
                 timeout_s: float = 300, env: dict[str, str] | None = None) -> None:
        port = port or free_port()
        self.args = args
        super().__init__([sys.executable, "-m", "loramux.cli", "serve", *args, "--port",
                          str(port)], log, port, "/ready", env, timeout_s, "loramux serve")
        self.strict_children = True
