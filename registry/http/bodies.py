"""Request bodies: who may send one, and how much of it the server reads.

FastAPI reads (and buffers) a JSON body before it runs a route's dependencies, so the token
check of a route comes after the body. This middleware runs first: any request that can carry
a body (every one of them changes the store) needs a token with ``write`` scope before a single
byte of the body is read, and JSON bodies are counted as they arrive and refused with 413 at the
limit, whether or not a ``Content-Length`` announced them. Blob uploads stream to disk under the
store's own per-file limit (``put_blob``), so only their token is checked here.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loramux.registry.errors import RegistryError, TooLarge
from loramux.registry.http.auth import TokenAuth, bearer_secret
from loramux.registry.http.errors import error_response

MAX_JSON_BODY = 16 << 20
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BLOB_PREFIX = "/v2/blobs/"
UI_FORMS = frozenset({"/ui/login", "/ui/logout"})  # the pages' login form: no token yet


class BodyTooLarge(HTTPException):
    """Raised from inside ``receive``: FastAPI re-raises HTTPExceptions from body reading (any
    other exception there becomes a generic 400), and the app's handler answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


class RequestGate:
    def __init__(self, app: ASGIApp, max_json_bytes: int = MAX_JSON_BODY) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        auth: TokenAuth = scope["app"].state.auth
        try:
            secret = bearer_secret(headers.get(b"authorization", b"").decode("latin-1"))
            if scope["path"] not in UI_FORMS:
                auth.authorize(secret, "write", "sending a request body")
            if not scope["path"].startswith(BLOB_PREFIX):
                declared = headers.get(b"content-length", b"0")
                if declared.isdigit() and int(declared) > self.max_json_bytes:
                    raise TooLarge(f"request body is larger than {self.max_json_bytes} bytes")
                receive = _counted(receive, self.max_json_bytes)
        except RegistryError as exc:
            await error_response(exc)(scope, receive, send)  # the body is never read
            return
        await self.app(scope, receive, send)


def _counted(receive: Receive, limit: int) -> Receive:
    """``receive`` with a running count of body bytes that stops at ``limit``."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return counted
