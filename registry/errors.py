"""Registry errors: one hierarchy shared by the store, the HTTP server, the client and the CLI.

Each class carries the HTTP status and the CLI exit code it maps to, so the three translation
points (FastAPI exception handler, remote client, CLI group) stay one-liners and agree. The class
name travels over HTTP as ``error.type``; the remote client turns it back into the same class.
"""

from __future__ import annotations

from typing import ClassVar


class RegistryError(Exception):
    """Base of every error the registry raises on purpose."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "registry_error"
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(RegistryError):
    status = 404
    code = "not_found"
    exit_code = 3


class BlobMissing(NotFound):
    """A push references a blob the store does not have (not uploaded, or collected)."""

    code = "blob_missing"


class Conflict(RegistryError):
    status = 409
    code = "conflict"
    exit_code = 4


class InvalidName(RegistryError):
    """A name, alias, reference or file path inside an adapter that does not match the rules."""

    status = 422
    code = "invalid_name"
    exit_code = 5


class InvalidRequest(RegistryError):
    """Arguments that do not fit the API (a malformed lineage, quantization, request body)."""

    status = 422
    code = "invalid_request"
    exit_code = 5


class InvalidAdapter(RegistryError):
    """The folder is not something the server could load as a LoRA adapter."""

    status = 422
    code = "invalid_adapter"
    exit_code = 5


class PickleWeights(InvalidAdapter):
    code = "pickle_weights"


class NotLora(InvalidAdapter):
    code = "not_lora"


class ConfigMismatch(InvalidAdapter):
    """adapter_config.json and the safetensors tensors disagree (rank, modules, pairs)."""

    code = "config_mismatch"


class InvalidBaseModel(RegistryError):
    """A folder given as the base model cannot be fingerprinted."""

    status = 422
    code = "invalid_base_model"
    exit_code = 5


class IntegrityError(RegistryError):
    """Bytes do not hash to the digest they are stored or announced under."""

    status = 422
    code = "integrity_error"
    exit_code = 6


class TooLarge(RegistryError):
    status = 413
    code = "too_large"
    exit_code = 7


class Unauthorized(RegistryError):
    status = 401
    code = "unauthorized"
    exit_code = 8


class Forbidden(RegistryError):
    status = 403
    code = "forbidden"
    exit_code = 8


class RemoteError(RegistryError):
    """The remote registry could not be reached or answered something unexpected."""

    status = 502
    code = "remote_error"
    exit_code = 9


def _all_subclasses(cls: type[RegistryError]) -> list[type[RegistryError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def error_class(type_name: str | None, status: int) -> type[RegistryError]:
    """The class a remote error envelope names, else the most generic one for its status."""
    by_name = {c.__name__: c for c in _all_subclasses(RegistryError)}
    if type_name in by_name:
        return by_name[type_name]
    for cls in (NotFound, Conflict, TooLarge, Unauthorized, Forbidden):
        if cls.status == status:
            return cls
    return RemoteError if status >= 500 else RegistryError
