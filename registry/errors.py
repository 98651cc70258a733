"""Registry errors: one hierarchy shared by the store, the HTTP server, the client and the CLI.

Under :class:`loramux.errors.LoramuxError`, each class carries the HTTP status and the CLI exit
code it maps to, so the three translation points (FastAPI exception handler, remote client, CLI
group) stay one-liners and agree. The class name travels over HTTP as ``error.type`` (and its
snake_case as ``error.code``); the remote client turns it back into the same class.
"""

from __future__ import annotations

import re
from typing import ClassVar

from loramux.errors import LoramuxError


class RegistryError(LoramuxError):
    """Base of every error the registry raises on purpose."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "registry_error"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.code = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()  # NotLora -> not_lora


class NotFound(RegistryError):
    status = 404
    exit_code = 3


class BlobMissing(NotFound):
    """A push references a blob the store does not have (not uploaded, or collected)."""


class Conflict(RegistryError):
    status = 409
    exit_code = 4


class Invalid(RegistryError):
    """Input that does not fit the rules; the subclasses say which input."""

    status = 422
    exit_code = 5


class InvalidName(Invalid):
    """A name, alias, reference, label or file path inside an adapter that breaks the rules."""


class InvalidRequest(Invalid):
    """Arguments that do not fit the API (a malformed lineage, quantization, request body)."""


class InvalidAdapter(Invalid):
    """The folder is not something the server could load as a LoRA adapter."""


class PickleWeights(InvalidAdapter):
    """Weights in a pickle ``.bin``: loading runs code, so they are refused."""


class NotLora(InvalidAdapter):
    """A PEFT adapter of another kind (prefix tuning, IA3…)."""


class ConfigMismatch(InvalidAdapter):
    """adapter_config.json and the safetensors tensors disagree (rank, modules, pairs)."""


class InvalidBaseModel(Invalid):
    """A folder given as the base model cannot be fingerprinted."""


class IntegrityError(RegistryError):
    """Bytes do not hash to the digest they are stored or announced under."""

    status = 422
    exit_code = 6


class TooLarge(RegistryError):
    status = 413
    exit_code = 7


class Unauthorized(RegistryError):
    status = 401
    exit_code = 8


class Forbidden(RegistryError):
    status = 403
    exit_code = 8


class RemoteError(RegistryError):
    """The remote registry could not be reached or answered something unexpected."""

    status = 502
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
