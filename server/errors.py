"""The server's errors, each with the HTTP status and OpenAI error type it maps to.

Handlers raise these; `app.py` turns them into OpenAI-shaped JSON in one exception handler.
"""

from __future__ import annotations


class ServerError(Exception):
    status = 500
    type = "internal_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(ServerError):
    status = 400
    type = "invalid_request_error"


class ModelNotFound(ServerError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class IncompatibleAdapter(ServerError):
    """The adapter exists but cannot be served on this base/engine (fingerprint, rank, modules)."""

    status = 400
    type = "invalid_request_error"
    code = "incompatible_adapter"


class AdapterUnavailable(ServerError):
    """The adapter could not be fetched or loaded (corrupt, unreadable); only its requests fail."""

    status = 400
    type = "invalid_request_error"
    code = "adapter_unavailable"


class Unauthorized(ServerError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(ServerError):
    status = 403
    type = "permission_error"


class PayloadTooLarge(ServerError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Overloaded(ServerError):
    status = 429
    type = "rate_limit_error"
    code = "server_overloaded"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class EngineUnavailable(ServerError):
    status = 503
    type = "service_unavailable"


class AdapterTooLarge(ServerError):
    """The adapter alone exceeds the server's whole disk cache budget (`--max-cache-bytes`)."""

    status = 400
    type = "invalid_request_error"
    code = "adapter_too_large"


class SettingsError(ServerError):
    """The server's settings cannot work on this machine (e.g. LoRA slots that do not fit)."""

    status = 500
    type = "invalid_settings"
