"""Every error the registry's HTTP server answers, in one envelope, and how OpenAPI shows it.

``{"error": {"message", "type", "code"}}``: ``type`` is the RegistryError class name, which the
remote client turns back into the same class. FastAPI's and Starlette's own errors (a body that
is not JSON, an unknown path, a wrong method) and bugs get the same envelope, never
``{"detail": …}`` or a plain-text 500.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from loramux.registry.errors import (
    BlobStoreUnavailable,
    Forbidden,
    IndexUnavailable,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RegistryError,
    RemoteError,
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
    id: str | None = None  # 5xx only: the id the registry's log holds the detail under


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
# What a 5xx answer says, whatever the detail: the detail (the database's user@host, the OCI
# realm, user and upstream errors) is for the operator, so it goes to the log under an error id
# and any token holder, readers included, sees only the id and one of these.
_FIXED_REASON: dict[type[RegistryError], str] = {
    IndexUnavailable: "the registry's index database cannot answer; retry later",
    BlobStoreUnavailable: "the registry's blob store cannot answer; retry later",
    RemoteError: "a store behind the registry answered something unexpected",
}
_INTERNAL = "internal error in the registry"


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each with the registry's envelope."""
    return {s: {"model": ErrorEnvelope, "description": _MEANING[s]} for s in statuses}


def error_response(exc: RegistryError, status: int | None = None,
                   error_id: str | None = None) -> JSONResponse:
    """The one place a RegistryError becomes an HTTP answer (the client maps it back)."""
    body: dict[str, Any] = {"error": {"message": exc.message, "type": type(exc).__name__,
                                      "code": exc.code}}
    if error_id is not None:
        body["error"]["id"] = error_id
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    if (status or exc.status) == 503:
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse(status_code=status or exc.status, content=body, headers=headers)


def new_error_id() -> str:
    return uuid.uuid4().hex[:12]


def for_client(exc: RegistryError, where: str) -> tuple[RegistryError, str | None]:
    """What a client may see of ``exc``: a 4xx as it is (it is about the request); a 5xx is
    logged with its detail under a new error id and becomes the same class (the remote client
    maps ``type`` back) with a fixed reason and the id. Every answer (API and pages) goes
    through here."""
    if exc.status < 500:
        return exc, None
    error_id = new_error_id()
    log.error("error %s: %s: %s: %s", error_id, where, type(exc).__name__, exc)
    reason = next((text for cls, text in _FIXED_REASON.items() if isinstance(exc, cls)),
                  _INTERNAL)
    return type(exc)(f"{reason} (error id {error_id}; the detail is in the registry's "
                     "log)"), error_id


async def _registry_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RegistryError)
    shown, error_id = for_client(exc, f"{request.method} {request.url.path}")
    return error_response(shown, error_id=error_id)


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
    error_id = new_error_id()
    log.error("error %s: %s %s failed", error_id, request.method, request.url.path, exc_info=exc)
    return error_response(InternalError(f"{_INTERNAL} (error id {error_id}; the detail is in "
                                        "the registry's log)"), error_id=error_id)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RegistryError, _registry_error)
    app.add_exception_handler(RequestValidationError, _request_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
