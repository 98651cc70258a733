"""How both servers run under uvicorn: connection limits and which proxies are believed.

uvicorn alone waits forever for a request's headers (a client that opens many connections and
sends half a request each holds them all: slowloris), accepts any number of connections, and
takes ``X-Forwarded-Proto``/``-For`` from whatever ``FORWARDED_ALLOW_IPS`` says in the
environment. Here every connection gets ``header_timeout_s`` to send its request line and
headers (from the moment it opens, and again for each next request on a kept-alive one), at
most ``MAX_HEADER_BYTES`` of them, at most ``max_connections`` connections and requests in
flight (503 past that), and forwarded headers are believed only from ``forwarded_allow_ips``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loramux.wire import FORWARDED_ALLOW_IPS, HEADER_TIMEOUT_S, KEEP_ALIVE_S, MAX_CONNECTIONS

if TYPE_CHECKING:
    import uvicorn

MAX_HEADER_BYTES = 16 << 10  # request line and headers together; more is a 400


@dataclass(frozen=True)
class ConnectionLimits:
    """The uvicorn settings both servers expose as flags (the defaults live in loramux.wire)."""

    keep_alive_s: int = KEEP_ALIVE_S
    header_timeout_s: float = HEADER_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    forwarded_allow_ips: str = FORWARDED_ALLOW_IPS


def protocol_class(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a deadline for each request's headers: h11, not httptools,
    since h11 also bounds the header bytes (``h11_max_incomplete_event_size``)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # a request's headers are still to come
                if self._deadline is None and self.conn.our_state is h11.IDLE:
                    self._arm()
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # idle now: the keep-alive timeout takes over until data comes

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._deadline = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self.logger.info("closed a connection that sent no complete request headers "
                                 "within %s s", header_timeout_s)
                self.transport.close()

    return HeaderDeadlineProtocol


def uvicorn_config(app: Any, *, host: str, port: int, log_level: str,
                   limits: ConnectionLimits, **more: Any) -> uvicorn.Config:
    """The one uvicorn.Config both `loramux serve` and `loramux registry serve` run."""
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level,
        http=protocol_class(limits.header_timeout_s),
        timeout_keep_alive=limits.keep_alive_s,
        limit_concurrency=limits.max_connections,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        proxy_headers=True, forwarded_allow_ips=limits.forwarded_allow_ips or [], **more)
