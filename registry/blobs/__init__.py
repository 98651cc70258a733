"""Blob stores: where the registry keeps file contents, by sha256 digest.

Two implementations behind one protocol, :class:`BlobStore`: ``FolderBlobStore``, the local
folder (the default, in the registry's root), and ``OciBlobStore``, a repository of an OCI
distribution registry (``oci://host:port/repository``), which several registry servers can
share. The setting is ``--blobs`` on ``loramux registry serve`` or ``LORAMUX_REGISTRY_BLOBS``; a
root remembers the store it was created with (``blobs-location``), so later commands on the same
folder need not repeat it, and a different one is refused rather than silently showing an empty
store.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol

from loramux.registry.blobs.folder import BlobUpload, BlobWriter, FolderBlobStore
from loramux.registry.blobs.lock import StoreLock
from loramux.registry.errors import Conflict, InvalidName

ENV_BLOBS = "LORAMUX_REGISTRY_BLOBS"
BLOBS_HELP = ("Blob store: oci://host:port/repository (an OCI registry; plain http to loopback, "
              "oci+http:// to force it), default the folder itself (env LORAMUX_REGISTRY_BLOBS).")
LOCATION_FILE = "blobs-location"


class BlobStore(Protocol):
    """What the registry needs from a blob store. ``open`` may verify (OCI does); callers hash
    what they read anyway. ``local_path`` is a file to send as is (NotFound if the folder lacks
    it), or None for a store without local files (then stream ``open``)."""

    def exists(self, digest: str) -> bool: ...
    def size(self, digest: str) -> int | None: ...
    def open(self, digest: str) -> BinaryIO: ...
    def local_path(self, digest: str) -> Path | None: ...
    def local_files(self, hexes: Iterable[str]) -> AbstractContextManager[dict[str, Path]]: ...
    def writer(self, *, max_bytes: int | None = None, what: str = "blob") -> BlobWriter: ...
    def ingest_file(self, src: Path, *, max_bytes: int | None = None) -> tuple[str, int]: ...
    def hash_stored(self, hex_: str) -> tuple[str, int] | None: ...
    def quarantine_if_corrupt(self, hex_: str) -> str | None: ...
    def all_hex(self) -> list[str]: ...
    def remove(self, hex_: str) -> int: ...
    def drop_artifact(self, digest: str) -> bool: ...
    def temp_files(self) -> list[Path]: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...


def blobs_from_env() -> str | None:
    return os.environ.get(ENV_BLOBS) or None


def _normalized(location: str | None) -> str | None:
    if not location or location == "folder":
        return None
    from loramux.registry.oci.location import OciLocation, is_oci_url

    if not is_oci_url(location):
        raise InvalidName(f"unknown blob store {location!r}: use oci://host:port/repository, "
                          "or leave it unset for the registry's own folder")
    return str(OciLocation.parse(location))


def open_blobs(root: Path, location: str | None) -> BlobStore:
    """The blob store for the registry in ``root``: ``location`` (an OCI URL), else the one
    ``root`` was created with, else the folder. Raises Conflict if they disagree."""
    wanted = _normalized(location)
    recorded_file = root / LOCATION_FILE
    recorded = recorded_file.read_text().strip() if recorded_file.is_file() else None
    if recorded is None and wanted is not None:
        if FolderBlobStore.holds_blobs(root):
            raise Conflict(f"the registry in {root} keeps its blobs in its folder, not {wanted}")
        tmp = root / f".{LOCATION_FILE}.{os.getpid()}"
        tmp.write_text(wanted + "\n")
        os.replace(tmp, recorded_file)
        recorded = wanted
    if wanted is not None and wanted != recorded:
        raise Conflict(f"the registry in {root} keeps its blobs in {recorded}, not {wanted}")
    if recorded is None:
        return FolderBlobStore(root)
    from loramux.registry.blobs.oci import OciBlobStore
    from loramux.registry.oci.client import OciClient

    return OciBlobStore(root, OciClient(recorded))


__all__ = ["BLOBS_HELP", "ENV_BLOBS", "BlobStore", "BlobUpload", "BlobWriter", "FolderBlobStore",
           "StoreLock", "blobs_from_env", "open_blobs"]
