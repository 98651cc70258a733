"""Every error the registry's HTTP server answers, in one envelope, and how OpenAPI shows it.

``{"error": {"message", "type", "code"}}``: ``type`` is the RegistryError class name, which the
remote client turns back into the same class. FastAPI's and Starlette's own errors (a body that
is not JSON, an unknown path, a wrong method) and bugs get the same envelope, never
``{"detail": …}`` or a plain-text 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from loramux.registry.errors import (
    Forbidden,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RegistryError,
    TooLarge,
    Unauthorized,
)

log = logging.getLogger(__name__)
_BY_STATUS: dict[int, type[RegistryError]] = {
    400: InvalidRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
    405: MethodNotAllowed, 413: TooLarge,
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str


class ErrorEnvelope(BaseModel):
    """What every registry error answers (the remote client maps ``type`` back to a class)."""

    error: ErrorDetail


_MEANING = {
    400: "Invalid input (name, reference, adapter, manifest field, body)",
    401: "No bearer token, or an unknown one",
    403: "The token lacks the scope the operation needs",
    404: "No such adapter, version, alias or blob",
    409: "Conflicts with the store's state (aliases on a version, an ambiguous digest)",
    413: "Larger than the registry's limits",
    422: "Bytes that do not hash to the digest they were announced under",
    503: "A backing store (the index database, the OCI blob registry) cannot answer; retry "
         "after Retry-After seconds",
}
RETRY_AFTER_S = 5


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each with the registry's envelope."""
    return {s: {"model": ErrorEnvelope, "description": _MEANING[s]} for s in statuses}


def error_response(exc: RegistryError, status: int | None = None) -> JSONResponse:
    """The one place a RegistryError becomes an HTTP answer (the client maps it back)."""
    body = {"error": {"message": exc.message, "type": type(exc).__name__, "code": exc.code}}
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    if (status or exc.status) == 503:
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse(status_code=status or exc.status, content=body, headers=headers)


async def _registry_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RegistryError)
    if exc.status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    return error_response(exc)


async def _request_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own validation failures, naming the first offending field."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(InvalidRequest(f"invalid request: {where}: {first.get('msg', exc)}"))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's errors: unknown path, wrong method, unparsable body, body over the limit."""
    assert isinstance(exc, HTTPException)
    cls = _BY_STATUS.get(exc.status_code, RegistryError)
    response = error_response(cls(str(exc.detail)), exc.status_code)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered without it (no paths, no exception text)."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(InternalError("internal error in the registry; see its log"))


def install(app: FastAPI) -> None:
    app.add_exception_handler(RegistryError, _registry_error)
    app.add_exception_handler(RequestValidationError, _request_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
