"""The check both servers run on every request before any route: who may send what, from where.

A server without keys trusts whoever reaches its port, which on loopback means this machine.
A web page the developer visits is on this machine too: its browser posts to
``http://127.0.0.1:8000`` without asking first when the body is a form or ``text/plain`` (a CORS
"simple request"), and a rebound DNS name (``evil.example`` resolving to 127.0.0.1) lets the
page read the answers. So:

- a POST/PUT/PATCH with a body to the JSON API (``/v1``, ``/v2``) must say
  ``application/json`` (415 otherwise), which a browser cannot send cross-origin without a
  preflight this server never grants; with keys or without;
- without keys, an ``Origin`` other than the server's own is refused (403): clients (curl, SDKs)
  send none, the server's own pages send its own;
- without keys on a loopback address, a ``Host`` other than a loopback one (any port) is refused
  (421): that is DNS rebinding, or a proxy that should have had keys.

With keys the key is the guard: a page cannot read or send it, so Origin and Host pass.
Answers with 413 also close the connection (``Connection: close``): otherwise the server would
read the rest of a body it already refused, however large.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address

from starlette.types import ASGIApp, Message, Receive, Scope, Send

Refusal = Callable[[int, str, str], ASGIApp]  # (status, message, code) -> an error response
BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


@dataclass(frozen=True)
class FrontPolicy:
    """What one server requires. ``keyless`` is asked per request (keys can appear later)."""

    json_prefixes: tuple[str, ...]  # a body sent here must be application/json
    keyless: Callable[[], bool]
    loopback_only: bool  # listening on loopback: only loopback Host names are this server
    raw_prefixes: tuple[str, ...] = ()  # under json_prefixes but raw bytes (blob uploads)


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1, with or without a port (the Host header's form)."""
    if host.startswith("["):
        name = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        name = host.split(":", 1)[0]
    else:
        name = host
    if name.lower() in ("localhost", "localhost."):
        return True
    try:
        return ip_address(name).is_loopback
    except ValueError:
        return False


def _media_type(value: bytes) -> str:
    return value.split(b";", 1)[0].strip().lower().decode("latin-1")


def _has_body(headers: dict[bytes, bytes]) -> bool:
    declared = headers.get(b"content-length", b"")
    return b"transfer-encoding" in headers or (declared != b"" and declared.strip() != b"0")


class FrontGuard:
    """Pure ASGI middleware (nothing buffered; streaming bodies and answers pass untouched)."""

    def __init__(self, app: ASGIApp, policy: FrontPolicy, refuse: Refusal) -> None:
        self.app = app
        self.policy = policy
        self.refuse = refuse

    def _problem(self, scope: Scope) -> tuple[int, str, str] | None:
        headers = dict(scope["headers"])
        path: str = scope["path"]
        if scope["method"].encode() in BODY_METHODS and path.startswith(self.policy.json_prefixes) \
                and not path.startswith(self.policy.raw_prefixes or ("\0",)):
            kind = headers.get(b"content-type")
            if (kind is not None or _has_body(headers)) \
                    and _media_type(kind or b"") != "application/json":
                return 415, "this endpoint takes a body of Content-Type: application/json", \
                    "unsupported_media_type"
        if not self.policy.keyless():
            return None
        host = headers.get(b"host", b"").decode("latin-1")
        if self.policy.loopback_only and not is_loopback_host(host):
            return 421, (f"this server has no keys and answers only to a loopback Host, not "
                         f"{host[:100]!r}; configure keys to serve other names"), "misdirected"
        origin = headers.get(b"origin")
        if origin is not None:
            own = f"{scope.get('scheme', 'http')}://{host}"
            if origin.decode("latin-1").lower() != own.lower():
                return 403, ("cross-origin request refused: this server has no keys, so only "
                             "its own pages and clients that send no Origin may call it"), \
                    "cross_origin"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self._problem(scope)
        if problem is not None:
            await self.refuse(*problem)(scope, receive, _closing(send, always=True))
            return
        await self.app(scope, receive, _closing(send))


def _closing(send: Send, always: bool = False) -> Send:
    """``send`` that adds ``Connection: close`` to a 413 (or to anything, ``always``: a refused
    request's body is never read, so the connection cannot carry another request)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and (always or message["status"] == 413):
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return sending
