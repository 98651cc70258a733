"""Ports without a race: the server binds port 0 and we read back the port it got.

Finding a free port by binding, closing and handing the number to a child is racy: another
process (a parallel test, another server) can take it in between, and then the child fails to
bind or, worse, the caller talks to a stranger. Every server loramux starts (`loramux serve`,
`loramux registry serve`, vLLM's OpenAI server) accepts `--port 0`, so the kernel picks the
port atomically at bind time; the launcher then reads it from the child's own listening socket.
"""

from __future__ import annotations

from typing import Any

import psutil


def listening_ports(pid: int, host: str = "127.0.0.1") -> list[int]:
    """TCP ports process `pid` itself (not its children) listens on at `host`, sorted.

    Empty while the process has not bound yet, and once it is gone.
    """
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []
    return sorted({c.laddr.port for c in conns
                   if c.status == psutil.CONN_LISTEN and c.laddr.ip in (host, "0.0.0.0", "::")})


def uvicorn_port(server: Any) -> int:
    """The port an in-process `uvicorn.Server` started with `port=0` got (after `started`)."""
    return int(server.servers[0].sockets[0].getsockname()[1])


class InProcessServer:
    """A uvicorn server for `config` (bound to port 0) in a thread of this process, ready when
    constructed: real HTTP on loopback for tests that need the app in reach. One place for the
    start, the wait and the stop that every in-process test server shares."""

    def __init__(self, config: Any, timeout_s: float = 30) -> None:
        import threading
        import time

        import uvicorn

        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process test server did not start")
            time.sleep(0.02)
        self.port = uvicorn_port(self.server)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
