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

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(ServerError):
    """The request itself is wrong; subclasses name what about it (the `code`)."""

    status = 400
    type = "invalid_request_error"


class ModelNotFound(InvalidRequest):
    status = 404
    code = "model_not_found"


class IncompatibleAdapter(InvalidRequest):
    """The adapter exists but cannot be served on this base/engine (fingerprint, rank, modules)."""

    code = "incompatible_adapter"


class AdapterUnavailable(InvalidRequest):
    """The adapter could not be fetched or loaded (corrupt, unreadable); only its requests fail."""

    code = "adapter_unavailable"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class Unauthorized(ServerError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(ServerError):
    status = 403
    type = "permission_error"


class Overloaded(ServerError):
    status = 429
    type = "rate_limit_error"
    code = "server_overloaded"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(ServerError):
    """Something the server depends on is down; the request may succeed later."""

    status = 503
    type = "service_unavailable"


class EngineUnavailable(ServiceUnavailable):
    pass


class RegistryUnavailable(ServiceUnavailable):
    """The registry cannot answer (unreachable, refusing our token, failing): not the client's
    fault, so 503 rather than a 4xx that would tell the client its request was wrong."""

    code = "registry_unavailable"


class SettingsError(ServerError):
    """The server's settings cannot work on this machine (e.g. LoRA slots that do not fit)."""

    exit_code = 2
    type = "invalid_settings"


class AdapterTooLarge(InvalidRequest):
    """The adapter alone exceeds the server's whole disk cache budget (`--max-cache-bytes`)."""

    code = "adapter_too_large"
