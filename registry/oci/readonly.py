"""A read-only registry straight on the OCI artifacts: pulls keep working without loramux.

``loramux.registry.open("oci://host:port/repository")`` gives one. Versions are found by their
tags (docs/oci-artifact.md), every manifest is checked against its config and every file against
its sha256 as it lands (``Registry.pull``), so a stale or tampered mirror cannot hand out wrong
bytes. Aliases and the audit log live only in the loramux index: asking for them, or writing,
is refused with one line that says where to go instead.
"""

from __future__ import annotations

import logging
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from loramux.registry.base import Registry, default_actor
from loramux.registry.errors import Conflict, InvalidRequest, NotFound
from loramux.registry.manifest import (
    AliasPointer,
    AuditEntry,
    GcReport,
    Manifest,
    PushRequest,
    VerifyReport,
    VersionInfo,
)
from loramux.registry.oci.artifact import fetch_artifact, names_in, versions_in
from loramux.registry.oci.client import OciClient
from loramux.registry.refs import AdapterRef

log = logging.getLogger(__name__)


class OciReadOnlyRegistry(Registry):
    """Resolve, show, list and pull from the artifacts in one OCI repository."""

    def __init__(self, location: str, *, client: OciClient | None = None,
                 actor: str | None = None) -> None:
        self.client = client or OciClient(location)  # credentials: LORAMUX_OCI_* (oci/auth.py)
        self.location = str(self.client.location)
        self.actor = actor or default_actor()

    def __repr__(self) -> str:
        return f"OciReadOnlyRegistry({self.location!r})"

    def close(self) -> None:
        self.client.close()

    # -- reads -------------------------------------------------------------------------------

    def _resolve(self, r: AdapterRef) -> Manifest:
        if r.alias is not None:
            raise NotFound(f"{r}: aliases live in the loramux index, not in OCI tags; pin a "
                           f"version (NAME@N) to read from {self.location}")
        if r.version is not None:
            return self._fetch(r.name, r.version)
        versions = self._versions(r.name)
        if r.digest is None:
            return self._fetch(r.name, versions[-1])
        matches = [m for m in (self._fetch(r.name, v) for v in reversed(versions))
                   if m.digest.startswith(r.digest)]
        if len({m.digest for m in matches}) > 1:
            raise Conflict(f"{r} is ambiguous: give more digits of the digest")
        if not matches:
            raise NotFound(f"{r.name} has no version with digest {r.digest} in {self.location}")
        return matches[0]

    def _versions(self, name: str) -> list[int]:
        versions = versions_in(self.client.tags(), name)
        if not versions:
            raise NotFound(f"no adapter named {name!r} in {self.location}")
        return versions

    def _fetch(self, name: str, version: int) -> Manifest:
        manifest, _ = fetch_artifact(self.client, name, version, self.location)
        return manifest

    def _list(self, name: str | None, base_fingerprint: str | None, labels: dict[str, str],
              include_deleted: bool) -> list[VersionInfo]:
        """Every tagged version (deletions are not mirrored: ``include_deleted`` is moot)."""
        tags = self.client.tags()
        out = []
        for each in [name] if name is not None else names_in(tags):
            for version in reversed(versions_in(tags, each)):
                m = self._fetch(each, version)
                if base_fingerprint is not None and m.base_fingerprint != base_fingerprint:
                    continue
                if any(m.labels.get(k) != v for k, v in labels.items()):
                    continue
                out.append(VersionInfo(**m.model_dump(
                    include=set(VersionInfo.model_fields) - {"aliases", "deleted"})))
        return out

    def open_blob(self, digest: str) -> BinaryIO:
        """The blob in an anonymous temp file, verified by the client as it downloads."""
        out = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the caller
        try:
            self.client.download_blob(digest, out)  # type: ignore[arg-type]
            out.seek(0)
        except BaseException:
            out.close()
            raise
        return out  # type: ignore[return-value]

    # -- everything else needs the loramux registry ------------------------------------------

    def _refuse(self, what: str) -> NoReturn:
        raise InvalidRequest(f"{self.location} is a read-only OCI mirror: {what} needs the "
                             "loramux registry (a folder or an http(s):// URL)")

    def push(self, folder: Path | str, name: str, **options: Any) -> Manifest:  # type: ignore[override]
        self._refuse("push")  # before the base class reads the folder or fingerprints a base

    def _push(self, folder: Path, name: str, request: PushRequest) -> Manifest:
        self._refuse("push")

    def alias_set(self, name: str, alias: str, version: int) -> AliasPointer:
        self._refuse("moving an alias")

    def alias_rm(self, name: str, alias: str) -> None:
        self._refuse("removing an alias")

    def delete(self, ref: str | AdapterRef, *, force: bool = False) -> VersionInfo:
        self._refuse("delete")

    def gc(self) -> GcReport:
        self._refuse("gc")

    def verify(self) -> VerifyReport:
        self._refuse("verify")

    def _log(self, name: str | None, alias: str | None, since: datetime | None,
             until: datetime | None, limit: int) -> list[AuditEntry]:
        self._refuse("the audit log")

    def alias_at(self, name: str, alias: str, when: datetime) -> AliasPointer | None:
        self._refuse("alias history")
