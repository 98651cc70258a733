"""Start a server as a child process on loopback and wait until it is ready.

The demo, the tests and the benchmarks all need real servers (`loramux serve`, `loramux registry
serve`, vLLM's own OpenAI server); this is the one way they start them, so they exercise the
command a user runs. The child binds port 0 and the port it got is read from its own listening
socket (see ports.py), so two servers never race for a port and we never talk to a stranger.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx

from loramux.support.ports import listening_ports

HOST = "127.0.0.1"


class ChildServer:
    """A server command in a child process on loopback, ready when `GET ready_path` answers 200
    on a port the child itself listens on.

    `port=None` (the default) means the command makes the child bind port 0 (e.g. `--port 0`);
    `port` and `url` are known once `start()` returns. A given port is only trusted when the
    child owns it. `with ChildServer(...) as url:` starts it and stops it on exit. Stopping also
    reaps the child's own children (vLLM's engine core and workers), which would otherwise hold
    GBs.
    """

    def __init__(self, cmd: list[str], log: Path, port: int | None = None,
                 ready_path: str = "/health", env: dict[str, str] | None = None,
                 timeout_s: float = 300, name: str | None = None) -> None:
        self.cmd, self.log, self.port, self.ready_path = cmd, log, port, ready_path
        self.env, self.timeout_s = env or {}, timeout_s
        self.name = name or Path(cmd[0]).name
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self.strict_children = False  # raise when children had to be killed
        self.stopped = False

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"{self.name} has no port yet: start() it first")
        return f"http://{HOST}:{self.port}"

    def start(self) -> str:
        _unwind_on_sigterm()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        wanted = self.port
        self.stopped = False
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         env=os.environ | {"PYTHONUNBUFFERED": "1"} | self.env)
        while True:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{tail}")
            owned = listening_ports(self.proc.pid, HOST)
            for port in owned if wanted is None else [p for p in owned if p == wanted]:
                if self._ready(port):
                    self.port = port
                    self.startup_seconds = time.monotonic() - started
                    return self.url
            if time.monotonic() - started > self.timeout_s:
                self.stop()
                raise RuntimeError(f"{self.name} not ready after {self.timeout_s:.0f}s; "
                                   f"log: {self.log}")
            time.sleep(0.25)

    def _ready(self, port: int) -> bool:
        try:
            return httpx.get(f"http://{HOST}:{port}{self.ready_path}",
                             timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        """Stop the server and reap its children; with `strict_children`, raise if any of them
        outlived it (loramux promises that SIGTERM leaves nothing behind)."""
        if self.proc is None or self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is not None:  # it went by itself: say so where a failure shows it
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.is_file() else ""
            print(f"{self.name} had exited ({self.proc.returncode}) before it was stopped; "
                  f"its log ends:\n{tail}", file=sys.stderr)
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


def _unwind_on_sigterm() -> None:
    """Make SIGTERM a KeyboardInterrupt in a process that starts servers (a benchmark, the demo,
    a test session). Its default action ends Python without unwinding, so no `with ChildServer`
    would stop its server, and vLLM's engine processes would live on holding GBs; as an
    interrupt it unwinds like Ctrl-C (pytest ends the session and tears its fixtures down,
    rather than failing one test and going on, as it would on a SystemExit). Only where SIGTERM
    still has its default action and on the main thread (signal handlers live there): a process
    with its own handler keeps it."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class ServerProcess(ChildServer):
    """`loramux serve ARGS` as a child: the command a user runs, ready at `/ready`."""

    def __init__(self, args: list[str], log: Path, port: int | None = None,
                 timeout_s: float = 300, env: dict[str, str] | None = None) -> None:
        self.args = args
        super().__init__([sys.executable, "-m", "loramux.cli", "serve", *args, "--port",
                          str(port or 0)], log, port, "/ready", env, timeout_s, "loramux serve")
        self.strict_children = True


class RegistryProcess(ChildServer):
    """`loramux registry serve --root ROOT ARGS` as a child, ready at `/health`."""

    def __init__(self, root: Path, log: Path, args: list[str] | None = None,
                 env: dict[str, str] | None = None, timeout_s: float = 60,
                 port: int | None = None) -> None:
        """`port`: that port rather than any free one (a restart where clients already point)."""
        super().__init__([sys.executable, "-m", "loramux.cli", "registry", "serve", "--root",
                          str(root), "--create", *(args or []), "--port", str(port or 0)],
                         log, port, "/health", env, timeout_s, "loramux registry serve")
