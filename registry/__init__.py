"""The loramux adapter registry: versioned, content-addressed LoRA adapters.

``loramux.registry.open()`` returns a :class:`Registry`, local (a folder) or remote (a URL);
both have the same methods, so callers never care which one they hold.
"""

from __future__ import annotations

import os
from pathlib import Path

from loramux.registry.base import Registry
from loramux.registry.blobs import ENV_BLOBS, blobs_from_env
from loramux.registry.errors import (
    BlobMissing,
    ConfigMismatch,
    Conflict,
    Forbidden,
    IntegrityError,
    Invalid,
    InvalidAdapter,
    InvalidBaseModel,
    InvalidName,
    InvalidPattern,
    InvalidRequest,
    NotFound,
    NotLora,
    PickleWeights,
    RegistryError,
    RemoteError,
    TooLarge,
    Unauthorized,
)
from loramux.registry.fingerprint import base_fingerprint
from loramux.registry.index import ENV_INDEX, index_from_env
from loramux.registry.manifest import (
    AliasPointer,
    AuditEntry,
    FileEntry,
    GcReport,
    Lineage,
    LoraFacts,
    Manifest,
    QuantizationInfo,
    VerifyReport,
    VersionInfo,
)
from loramux.registry.oci.location import is_oci_url
from loramux.registry.refs import AdapterRef
from loramux.registry.remote import RemoteRegistry
from loramux.registry.store import LocalRegistry
from loramux.registry.validate import Limits
from loramux.wire import ENV_REGISTRY

DEFAULT_ROOT = Path("~/.loramux/registry")


def default_location() -> str:
    """``LORAMUX_REGISTRY`` if set, else ``~/.loramux/registry``."""
    return os.environ.get(ENV_REGISTRY) or str(DEFAULT_ROOT.expanduser())


def is_url(location: str | Path) -> bool:
    """True for ``http(s)://``; any other ``scheme://`` is refused (a typo, not a folder)."""
    text = str(location)
    if text.startswith(("http://", "https://")):
        return True
    scheme, sep, _ = text.partition("://")
    if sep and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
        raise InvalidName(f"unknown registry URL scheme {scheme + '://'!r} in {text!r}: use "
                          "http://, https:// or a folder path")
    return False


def open(
    path_or_url: str | Path | None = None,
    *,
    token: str | None = None,
    limits: Limits | None = None,
    create: bool = True,
    index: str | None = None,
    blobs: str | None = None,
) -> Registry:
    """A registry at a local path or an ``http(s)://`` URL (default: env, then home); an
    ``oci://host:port/repository`` reads a registry's OCI artifacts, read-only.

    For a URL, ``token`` defaults to ``LORAMUX_TOKEN``; ``limits`` apply to a local store only
    (a server enforces its own). Without ``create``, a folder that holds no registry raises
    ``NotFound`` ("no registry at …") instead of becoming a new, empty one. ``index``, for a
    local store, is its index database (default: ``LORAMUX_REGISTRY_INDEX``, else SQLite in the
    folder). ``blobs``, for a local store, is its blob store (``oci://host:port/repository``;
    default: ``LORAMUX_REGISTRY_BLOBS``, else the one the folder was created with, else itself).
    """
    location = str(path_or_url) if path_or_url is not None else default_location()
    if is_oci_url(location):
        from loramux.registry.oci.readonly import OciReadOnlyRegistry

        return OciReadOnlyRegistry(location)
    if is_url(location):
        return RemoteRegistry(location, token=token)
    return LocalRegistry(Path(location).expanduser(), limits=limits, create=create,
                         index=index or index_from_env(), blobs=blobs or blobs_from_env())


__all__ = [
    "ENV_BLOBS",
    "ENV_INDEX",
    "AdapterRef",
    "AliasPointer",
    "AuditEntry",
    "BlobMissing",
    "ConfigMismatch",
    "Conflict",
    "FileEntry",
    "Forbidden",
    "GcReport",
    "IntegrityError",
    "Invalid",
    "InvalidAdapter",
    "InvalidBaseModel",
    "InvalidName",
    "InvalidPattern",
    "InvalidRequest",
    "Limits",
    "Lineage",
    "LocalRegistry",
    "LoraFacts",
    "Manifest",
    "NotFound",
    "NotLora",
    "PickleWeights",
    "QuantizationInfo",
    "Registry",
    "RegistryError",
    "RemoteError",
    "RemoteRegistry",
    "TooLarge",
    "Unauthorized",
    "VerifyReport",
    "VersionInfo",
    "base_fingerprint",
    "open",
]
