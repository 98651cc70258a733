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

    def __init_subclass__(
        cls, *, status: int | None = None, exit_code: int | None = None, **kwargs: object
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.code = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()  # NotLora -> not_lora
        cls.status = status or cls.status
        cls.exit_code = exit_code or cls.exit_code


class NotFound(RegistryError, status=404, exit_code=3):
    """A name, alias, version, blob or registry that is not there."""


class BlobMissing(NotFound):
    """A push references a blob the store does not have (not uploaded, or collected)."""


class Conflict(RegistryError, status=409, exit_code=4):
    """The request contradicts the store's state (aliases on a version, an ambiguous digest)."""


class Invalid(RegistryError, status=400, exit_code=5):
    """Input that does not fit the rules; the subclasses say which input (HTTP 400, as the
    OpenAI server answers bad input)."""


class InvalidName(Invalid):
    """A name, alias, reference, label or file path inside an adapter that breaks the rules."""


class InvalidRequest(Invalid):
    """Arguments that do not fit the API (a malformed lineage, quantization, request body)."""


class InvalidAdapter(Invalid):
    """The folder is not something the server could load as a LoRA adapter."""


class InvalidPattern(InvalidAdapter):
    """A regex in adapter_config.json (``target_modules``, ``rank_pattern``/``alpha_pattern``
    keys) that is malformed, too long, or too slow to match: it comes from the pusher."""


class PickleWeights(InvalidAdapter):
    """Weights in a pickle ``.bin``: loading runs code, so they are refused."""


class NotLora(InvalidAdapter):
    """A PEFT adapter of another kind (prefix tuning, IA3…)."""


class ConfigMismatch(InvalidAdapter):
    """adapter_config.json and the safetensors tensors disagree (rank, modules, pairs)."""


class InvalidBaseModel(Invalid):
    """A folder given as the base model cannot be fingerprinted."""


class IntegrityError(RegistryError, status=422, exit_code=6):
    """Bytes do not hash to the digest they are stored or announced under."""


class TooLarge(RegistryError, status=413, exit_code=7):
    """More bytes than the store's limits allow."""


class Unauthorized(RegistryError, status=401, exit_code=8):
    """No bearer token, or one the server does not know."""


class Forbidden(RegistryError, status=403, exit_code=8):
    """A token whose scope does not allow the operation."""


class MethodNotAllowed(RegistryError, status=405):
    """An HTTP method the route does not have."""


class InternalError(RegistryError, status=500):
    """A bug: what the registry server answers instead of a traceback."""


class IndexUnavailable(RegistryError, status=503, exit_code=9):
    """The index database (PostgreSQL) cannot be reached or fails: the store's condition, not
    the request's, so 503 and worth a retry."""


class RemoteError(RegistryError, status=502, exit_code=9):
    """The remote registry could not be reached or answered something unexpected."""


class BlobStoreUnavailable(RegistryError, status=503, exit_code=9):
    """The blob store (an OCI registry) cannot be reached, fails, or refuses the registry's
    credentials: the store's condition, not the request's, so 503 and worth a retry."""


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


# What a registry (local store, HTTP client or OCI mirror) may raise when it cannot answer: its
# own errors, and the operating system's (a cache disk, a socket). Callers catch exactly these.
REGISTRY_FAILURES: tuple[type[BaseException], ...] = (RegistryError, OSError)
