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
