"""The server's errors, each with the HTTP status and OpenAI error type it maps to.

Handlers raise these; `app.py` turns them into OpenAI-shaped JSON in one exception handler. The
root is `loramux.errors.LoramuxError`, so the CLI reports them like every other part's errors.
"""

from __future__ import annotations

from typing import ClassVar

from loramux.errors import LoramuxError


class ServerError(LoramuxError):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    code: str | None = None

    def __init_subclass__(cls, status: int | None = None, type: str | None = None,
                          code: str | None = None, **kwargs: object) -> None:
        """`class X(ServerError, status=404, code="..."): ...` sets the class attributes."""
        super().__init_subclass__(**kwargs)
        for name, value in (("status", status), ("type", type), ("code", code)):
            if value is not None:
                setattr(cls, name, value)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(ServerError, status=400, type="invalid_request_error"):
    """The request itself is wrong; subclasses name what about it (the `code`)."""


class ModelNotFound(InvalidRequest, status=404, code="model_not_found"):
    """`model` names neither the served base nor an adapter in the registry."""


class IncompatibleAdapter(InvalidRequest, code="incompatible_adapter"):
    """The adapter exists but cannot be served on this base/engine (fingerprint, rank, modules)."""


class AdapterUnavailable(InvalidRequest, code="adapter_unavailable"):
    """The adapter could not be fetched or loaded (corrupt, unreadable); only its requests fail."""


class PayloadTooLarge(InvalidRequest, status=413, code="request_too_large"):
    """The body is larger than `--max-body-bytes`."""


class Unauthorized(ServerError, status=401, type="authentication_error", code="invalid_api_key"):
    """No API key, or one the server does not know."""


class Forbidden(ServerError, status=403, type="permission_error"):
    """A known key without the scope the endpoint needs (admin)."""


class Overloaded(ServerError, status=429, type="rate_limit_error", code="server_overloaded"):
    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(ServerError, status=503, type="service_unavailable"):
    """Something the server depends on is down; the request may succeed later."""


class EngineUnavailable(ServiceUnavailable):
    """The engine has stopped or fails its health check."""


class RegistryUnavailable(ServiceUnavailable, code="registry_unavailable"):
    """The registry cannot answer (unreachable, refusing our token, failing): not the client's
    fault, so 503 rather than a 4xx that would tell the client its request was wrong."""


class CacheFull(ServiceUnavailable, code="adapter_cache_full"):
    """The adapter cache's disk is full: the server's condition, not the adapter's (503)."""


class SettingsError(ServerError, type="invalid_settings"):
    """The server's settings cannot work on this machine (e.g. LoRA slots that do not fit)."""

    exit_code = 2


class AdapterTooLarge(InvalidRequest, code="adapter_too_large"):
    """The adapter alone exceeds the server's whole disk cache budget (`--max-cache-bytes`)."""
