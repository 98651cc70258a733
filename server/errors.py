"""The server's errors, each with the HTTP status and OpenAI error type it maps to.

Handlers raise these; `app.py` turns them into OpenAI-shaped JSON in one exception handler, and a
stream that fails after its headers went out sends the same body as its last event. The root is
`loramux.errors.LoramuxError`, so the CLI reports them like every other part's errors.
`to_server_error` is the one map from anything else (an HTTP status, an unexpected exception)
onto this hierarchy, and `registry_failure` the one from a failed registry call: a client only
ever sees one of these bodies, never exception text. `logged` is how an unexpected failure
becomes one: a fixed reason and an error id for the client, the detail under that id in the log.
`blames_client` says which failures count against the adapter version that was to answer.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, ClassVar, TypeVar

from loramux.errors import LoramuxError
from loramux.registry.errors import Conflict, IntegrityError, InvalidName, NotFound

log = logging.getLogger(__name__)


class ServerError(LoramuxError):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    code: str | None = None
    # Seconds a client should wait before retrying; sent as `Retry-After` when set.
    retry_after: int | None = None
    # A 4xx that is the adapter's fault, not the request's: it counts against the version.
    adapter_fault: ClassVar[bool] = False

    def __init_subclass__(cls, status: int | None = None, type: str | None = None,
                          code: str | None = None, **kwargs: object) -> None:
        """`class X(ServerError, status=404, code="..."): ...` sets the class attributes."""
        super().__init_subclass__(**kwargs)
        for name, value in (("status", status), ("type", type), ("code", code)):
            if value is not None:
                setattr(cls, name, value)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        """OpenAI's error object: what every failed request and failed stream carries."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def headers(self) -> dict[str, str] | None:
        return None if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class InvalidRequest(ServerError, status=400, type="invalid_request_error"):
    """The request itself is wrong; subclasses name what about it (the `code`)."""


class ModelNotFound(InvalidRequest, status=404, code="model_not_found"):
    """`model` names neither the served base nor an adapter in the registry."""


class RouteNotFound(InvalidRequest, status=404, code="not_found"):
    """No endpoint at this path."""


class MethodNotAllowed(InvalidRequest, status=405, code="method_not_allowed"):
    """The path exists, the HTTP method does not."""


class IncompatibleAdapter(InvalidRequest, code="incompatible_adapter"):
    """The adapter exists but cannot be served on this base/engine (fingerprint, rank, modules)."""

    adapter_fault = True


class AdapterUnavailable(InvalidRequest, code="adapter_unavailable"):
    """The adapter could not be fetched or loaded (corrupt, unreadable); only its requests fail."""

    adapter_fault = True


class PayloadTooLarge(InvalidRequest, status=413, code="request_too_large"):
    """The body is larger than `--max-body-bytes`."""


class Unauthorized(ServerError, status=401, type="authentication_error", code="invalid_api_key"):
    """No API key, or one the server does not know."""


class Forbidden(ServerError, status=403, type="permission_error"):
    """A known key without the scope the endpoint needs (admin)."""


class AdapterForbidden(Forbidden, code="model_not_allowed"):
    """The key is scoped (`adapters=` in the keys file) to names that do not match this one."""


class Overloaded(ServerError, status=429, type="rate_limit_error", code="server_overloaded"):
    retry_after = 1

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message, retry_after=retry_after)


class RateLimited(ServerError, status=429, type="rate_limit_error", code="rate_limit_exceeded"):
    """One API key is past its own budget (requests or tokens per minute, concurrency)."""

    retry_after = 1


class ServiceUnavailable(ServerError, status=503, type="service_unavailable"):
    """Something the server depends on is down; the request may succeed later (Retry-After)."""

    retry_after = 5


class EngineUnavailable(ServiceUnavailable):
    """The engine has stopped or fails its health check."""


class RegistryUnavailable(ServiceUnavailable, code="registry_unavailable"):
    """The registry cannot answer (unreachable, refusing our token, failing): not the client's
    fault, so 503 rather than a 4xx that would tell the client its request was wrong."""


class RegistryAnswerRefused(ServerError, status=502, type="bad_gateway",
                            code="registry_answer_refused"):
    """The registry (or something in front of it) answered another version than the one the
    reference pins, or a manifest whose digest its files do not give: nothing is served."""


class CacheFull(ServiceUnavailable, code="adapter_cache_full"):
    """The adapter cache's disk is full: the server's condition, not the adapter's (503)."""


class InternalError(ServerError, code="internal_error"):
    """A bug: the client gets an error id to quote, the log gets the traceback under that id."""


class SettingsError(ServerError, type="invalid_settings"):
    """The server's settings cannot work on this machine (e.g. LoRA slots that do not fit)."""

    exit_code = 2


class AdapterTooLarge(InvalidRequest, code="adapter_too_large"):
    """The adapter alone exceeds the server's whole disk cache budget (`--max-cache-bytes`)."""

    adapter_fault = True


def for_status(status: int, path: str, detail: str | None = None) -> ServerError:
    """The error for a status the web framework decided (unknown route, wrong method)."""
    if status == 404:
        return RouteNotFound(f"no route {path}")
    if status == 405:
        return MethodNotAllowed(f"method not allowed on {path}")
    if 400 <= status < 500:
        error = InvalidRequest(detail or f"bad request to {path}")
        error.status = status  # keeps the framework's status, e.g. 400 for a broken upload
        return error
    return to_server_error(RuntimeError(f"HTTP {status} from the framework on {path}: {detail}"))


E = TypeVar("E", bound=ServerError)


def logged(error: type[E], reason: str, exc: BaseException, **kwargs: Any) -> E:
    """`error` with the fixed `reason` and a new error id, the detail of `exc` (its type, text
    and traceback, which may hold local paths or an engine's internals) logged under that id
    and never sent: the one way an unexpected failure reaches a client."""
    error_id = uuid.uuid4().hex[:12]
    log.error("error id %s: %s: %s: %s", error_id, reason, type(exc).__name__, exc,
              exc_info=exc)
    return error(f"{reason} (error id {error_id}); the server's log has the details", **kwargs)


def to_server_error(exc: BaseException) -> ServerError:
    """`exc` as a ServerError; anything unexpected becomes a generic 500 whose details (type,
    message, traceback: possibly local paths) are logged here under an id and never sent."""
    if isinstance(exc, ServerError):
        return exc
    return logged(InternalError, "the server failed on this request", exc)


def blames_client(exc: BaseException | None) -> bool:
    """Whether a failed request says nothing about the adapter version that was to answer it:
    the client's own mistakes (4xx: too long a prompt, a bad parameter, a missing key), a
    refusal before any work (429) and a client gone away (cancelled). The adapter's own
    failures (`AdapterUnavailable`, `IncompatibleAdapter`, `AdapterTooLarge`) and the server's
    (5xx: engine errors, timeouts) count against the version: a canary is judged on those."""
    if isinstance(exc, asyncio.CancelledError):
        return True
    if not isinstance(exc, ServerError):
        return False  # no answer yet (None) or an unexpected failure: the server's
    return exc.status < 500 and not exc.adapter_fault


def from_validation(errors: list[dict[str, Any]]) -> InvalidRequest:
    """A 400 from pydantic's errors (a body that fails the protocol models, or a bad query
    parameter), naming the first failing field in `param`; the `unsupported_parameter` and
    `invalid_value` codes of the protocol's own checks are passed on."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [str(p) for p in first.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]  # FastAPI's prefix for where the value came from
    where = ".".join(loc) or None
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if where and f"`{loc[0]}`" not in message:
        message = f"{where}: {message}"
    code = first.get("type") if first.get("type") in ("unsupported_parameter",
                                                       "invalid_value") else None
    return InvalidRequest(message, param=where, code=code)


def registry_failure(exc: Exception, model: str | None, served_name: str) -> ServerError:
    """The server's error for a failed registry call about `model` (None: not about one)."""
    if model is not None and isinstance(exc, (NotFound, InvalidName)):
        detail = (f"it is neither the served base `{served_name}` nor a registry adapter ({exc})"
                  if isinstance(exc, NotFound) else str(exc))
        return ModelNotFound(f"The model `{model}` does not exist: {detail}", param="model")
    if model is not None and isinstance(exc, Conflict):
        return InvalidRequest(f"The model `{model}` is ambiguous: {exc}", param="model")
    about = f" for `{model}`" if model is not None else ""
    if isinstance(exc, IntegrityError):
        log.warning("registry answer%s refused: %s", about, exc)
        return RegistryAnswerRefused(f"the adapter registry's answer{about} was refused: {exc}")
    log.warning("registry call%s failed: %s: %s", about, type(exc).__name__, exc)
    return RegistryUnavailable(f"the adapter registry cannot answer{about}; retry shortly")


def probe_failure(exc: BaseException) -> ServiceUnavailable:
    """What the unauthenticated `/health` and `/ready` answer when a check fails: which part is
    down (the registry, else the engine) and an error id, never the exception's text (an
    engine's internals, a registry URL or a local path); the detail goes to the log."""
    if isinstance(exc, (RegistryUnavailable, RegistryAnswerRefused)):
        return logged(RegistryUnavailable, "the adapter registry cannot answer", exc)
    return logged(EngineUnavailable, "the engine is not healthy", exc)
