"""The ``Registry`` protocol both stores implement, and the argument handling they share.

The trainer and the server hold a ``Registry`` and never care whether it is a local folder or a
remote server; keeping the argument coercion here keeps the two implementations identical in
what they accept.
"""

from __future__ import annotations

import getpass
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

from pydantic import ValidationError

from loramux.registry.errors import InvalidBaseModel, InvalidName, InvalidRequest
from loramux.registry.fingerprint import base_components, fingerprint_of
from loramux.registry.manifest import (
    AliasPointer,
    AuditEntry,
    GcReport,
    Lineage,
    Manifest,
    QuantizationInfo,
    VerifyReport,
    VersionInfo,
)
from loramux.registry.refs import AdapterRef, validate_digest

DEFAULT_LOG_LIMIT = 100


@runtime_checkable
class Registry(Protocol):
    def push(
        self,
        folder: Path | str,
        name: str,
        *,
        alias: str | None = None,
        description: str = "",
        labels: dict[str, str] | None = None,
        base_model: Path | str | None = None,
        base_fingerprint: str | None = None,
        quantization: QuantizationInfo | str | dict[str, Any] | None = None,
        lineage: Lineage | dict[str, Any] | None = None,
        created_by: str | None = None,
    ) -> Manifest: ...

    def resolve(self, ref: str | AdapterRef) -> Manifest: ...

    def show(self, ref: str | AdapterRef) -> Manifest: ...

    def list(
        self,
        *,
        name: str | None = None,
        base_fingerprint: str | None = None,
        labels: dict[str, str] | None = None,
        include_deleted: bool = False,
    ) -> list[VersionInfo]: ...

    def pull(self, ref: str | AdapterRef, to: Path | str) -> Path: ...

    def open_blob(self, digest: str) -> BinaryIO: ...

    def alias_set(self, name: str, alias: str, version: int) -> AliasPointer: ...

    def alias_rm(self, name: str, alias: str) -> None: ...

    def delete(self, ref: str | AdapterRef, *, force: bool = False) -> VersionInfo: ...

    def gc(self) -> GcReport: ...

    def verify(self) -> VerifyReport: ...

    def log(
        self,
        *,
        name: str | None = None,
        alias: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = DEFAULT_LOG_LIMIT,
    ) -> list[AuditEntry]: ...

    def alias_at(self, name: str, alias: str, when: datetime) -> AliasPointer | None: ...

    def close(self) -> None: ...


def default_actor() -> str:
    """``user@host`` for the audit log; containers without a passwd entry still get one."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def coerce_quantization(
    value: QuantizationInfo | str | dict[str, Any] | None,
) -> QuantizationInfo | None:
    if value is None or isinstance(value, QuantizationInfo):
        return value
    if isinstance(value, str):
        return QuantizationInfo.parse(value)
    try:
        return QuantizationInfo.model_validate(value)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid quantization {value!r}: {_first(exc)}") from None


def coerce_lineage(value: Lineage | dict[str, Any] | None) -> Lineage | None:
    if value is None or isinstance(value, Lineage):
        return value
    try:
        return Lineage.model_validate(value)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid lineage: {_first(exc)}") from None


def _first(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(str(p) for p in error['loc']) or 'value'}: {error['msg']}"


def base_facts(
    base_model: Path | str | None, base_fingerprint: str | None
) -> tuple[str | None, dict[str, str] | None]:
    """Fingerprint (and its components) from a base folder, or the fingerprint given."""
    if base_fingerprint is not None:
        validate_digest(base_fingerprint, full=True)
    if base_model is None:
        return base_fingerprint, None
    components = base_components(Path(base_model))
    fingerprint = fingerprint_of(components)
    if base_fingerprint is not None and base_fingerprint != fingerprint:
        raise InvalidBaseModel(
            f"{base_model} has fingerprint {fingerprint}, not the {base_fingerprint} given"
        )
    return fingerprint, components


def labels_match(have: dict[str, str], want: dict[str, str] | None) -> bool:
    return all(have.get(k) == v for k, v in (want or {}).items())


def require_pinned(ref: AdapterRef) -> AdapterRef:
    """Destructive operations take a version that cannot move under the caller's feet."""
    if not ref.pins_version:
        raise InvalidName(f"delete needs an exact version ({ref.name}@N or @sha256:…), not {ref}")
    return ref
