"""LocalRegistry: the embedded store (a folder with blobs and a SQLite index).

A push is validated before anything is written, copies each file into a verified blob, and then
makes the version visible in one SQLite transaction. That transaction is the commit point: a
process killed before it leaves only blobs and temp files that ``gc`` removes, never a version.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from loramux.registry.base import Registry, default_actor, labels_match, require_pinned
from loramux.registry.blobs import BlobUpload, StoreLock, open_blobs
from loramux.registry.blobs.oci import OciBlobStore
from loramux.registry.canary import LocalCanaries, end_canary
from loramux.registry.digests import adapter_digest
from loramux.registry.errors import BlobMissing, Conflict, IntegrityError, InvalidName, NotFound
from loramux.registry.evaluations import LocalPromotions
from loramux.registry.index import INDEX_FILE, Transaction, is_shared, now, open_index, to_dt
from loramux.registry.index.canary import canaries_of
from loramux.registry.maintenance import collect_garbage, verify_blobs
from loramux.registry.manifest import (
    AliasPointer,
    AuditEntry,
    FileEntry,
    GcReport,
    Manifest,
    PushRequest,
    VerifyReport,
    VersionInfo,
)
from loramux.registry.oci.artifact import push_artifact
from loramux.registry.push_args import check_push_request, ignored_facts
from loramux.registry.refs import AdapterRef, validate_alias, validate_digest, validate_name
from loramux.registry.validate import Limits, check_rel_path, check_sizes, scan_folder
from loramux.registry.validate import validate_adapter as _validate

log = logging.getLogger(__name__)

# Manifest fields a push request carries as they are.
_FROM_REQUEST = ("base_fingerprint", "base_components", "quantization", "description", "labels",
                 "lineage")


class LocalRegistry(LocalCanaries, LocalPromotions, Registry):
    """The registry in a local folder; safe for many threads and processes at once."""

    def __init__(
        self,
        root: Path | str,
        *,
        limits: Limits | None = None,
        actor: str | None = None,
        create: bool = True,
        index: str | None = None,
        blobs: str | None = None,
    ) -> None:
        """``index``: a ``postgresql://`` DSN for a shared index (default: SQLite in ``root``)."""
        self.root = Path(root).expanduser()
        if not create and not is_shared(index) and not (self.root / INDEX_FILE).is_file():
            raise NotFound(f"no registry at {self.root}")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "locks").mkdir(exist_ok=True)
        self.limits = limits or Limits()
        self.actor = actor or default_actor()
        self.blobs = open_blobs(self.root, blobs)
        self.index = open_index(index, self.root)
        # a shared index brings a lock every server sees; the file lock covers one machine
        self.lock = self.index.store_lock() or StoreLock(self.root / "locks" / "gc.lock")

    def __repr__(self) -> str:
        return f"LocalRegistry({str(self.root)!r})"

    def close(self) -> None:
        self.index.close()
        self.blobs.close()

    # -- push --------------------------------------------------------------------------------

    def _push(self, folder: Path, name: str, request: PushRequest) -> Manifest:
        files = scan_folder(folder, self.limits)
        _validate(files, self.limits)  # refuse before storing anything
        with self.lock.shared():
            for rel, path in files.items():
                hex_, size = self.blobs.ingest_file(path, max_bytes=self.limits.file_bytes)
                request.files.append(FileEntry(path=rel, size=size, sha256=hex_))
            return self._commit(name, request, self.actor)

    def commit(self, name: str, request: PushRequest, *, actor: str | None = None) -> Manifest:
        """Create a version from blobs already in the store (the HTTP push's second step)."""
        with self.lock.shared():
            return self._commit(name, request, actor or self.actor)

    def upload(self, digest: str, *, size: int | None = None) -> BlobUpload:
        """Receive the blob ``digest`` in pieces (the HTTP push's first step); close it always.

        Blocks while gc runs. ``size``, when announced, is checked against the limit first.
        """
        validate_digest(digest, full=True)
        return BlobUpload(self.blobs, self.lock, digest, max_bytes=self.limits.file_bytes,
                          size=size)

    def blob_path(self, digest: str) -> Path | None:
        """The local file holding blob ``sha256:<64 hex>``, to send as is; None when the store
        is not a folder (an OCI registry: stream :meth:`open_blob`). Raises NotFound."""
        validate_digest(digest, full=True)
        return self.blobs.local_path(digest)

    def blob_size(self, digest: str) -> int:
        """The size of blob ``sha256:<64 hex>``. Raises NotFound."""
        validate_digest(digest, full=True)
        size = self.blobs.size(digest)
        if size is None:
            raise NotFound(f"blob {digest} is not in the store")
        return size

    def ping(self) -> None:
        """Raises unless the index and the blob store answer (the HTTP health check)."""
        self.index.ping()
        self.blobs.ping()

    def _commit(self, name: str, request: PushRequest, actor: str) -> Manifest:
        validate_name(name)
        check_push_request(request)
        files = sorted(request.files, key=lambda f: f.path)
        if not files:
            raise InvalidName("a push needs at least one file")
        seen: set[str] = set()
        for f in files:
            if check_rel_path(f.path) in seen:
                raise InvalidName(f"file {f.path!r} is listed twice")
            seen.add(f.path)
        check_sizes({f.path: f.size for f in files}, self.limits)
        for f in files:
            size = self.blobs.size(f.sha256)
            if size is None:
                raise BlobMissing(f"blob {f.digest} ({f.path}) has not been uploaded")
            if size != f.size:
                raise IntegrityError(f"{f.path}: blob {f.digest} has {size} bytes, not {f.size}")
        with self.blobs.local_files(f.sha256 for f in files) as local:
            checked = _validate({f.path: local[f.sha256] for f in files}, self.limits)
        digest = adapter_digest(files)
        with self.index.write() as tx:
            at = now()
            latest = tx.latest(name)
            if latest is not None and latest[1] == digest and not request.new_version:
                manifest = tx.manifest(name, latest[0])
                if ignored := ignored_facts(request, manifest):
                    raise Conflict(
                        f"{manifest.ref} already holds these files, without the "
                        f"{', '.join(ignored)} given: a version's facts are fixed, so nothing "
                        "was recorded; add --new-version to record them as "
                        "a new version (same files, nothing re-uploaded)")
                log.info("%s: same content as %s, no new version", name, manifest.ref)
            else:
                manifest = Manifest(
                    name=name,
                    version=tx.next_version(name),
                    digest=digest,
                    size=sum(f.size for f in files),
                    files=files,
                    lora=checked.lora,
                    base_model_name_or_path=checked.base_model_name_or_path,
                    **{k: getattr(request, k) for k in _FROM_REQUEST},
                    created_at=to_dt(at),
                    created_by=request.created_by or actor,
                )
                tx.insert_version(manifest)
                if isinstance(self.blobs, OciBlobStore):  # its OCI artifact, before the commit
                    oci_digest = push_artifact(self.blobs.client, manifest)
                    tx.set_oci_digest(name, manifest.version, oci_digest)
                tx.audit(
                    at=at, actor=actor, action="push", name=name, version=manifest.version,
                    digest=digest, detail={"size": manifest.size, "files": len(files)},
                )
                log.info("pushed %s (%s)", manifest.ref, digest)
            if request.alias is not None:
                self._alias_set(tx, name, request.alias, manifest.version, actor, at)
                end_canary(tx, name, request.alias, actor, at)
        return manifest

    # -- reads -------------------------------------------------------------------------------

    def _resolve(self, r: AdapterRef) -> Manifest:
        manifest = self.index.find(r)
        if manifest is None:
            raise self._not_found(r)
        return manifest

    def _not_found(self, r: AdapterRef) -> NotFound:
        live, latest = self.index.live_versions(r.name)
        if r.version is not None:
            state = self.index.version_state(r.name, r.version)
            if state is not None and state[0] is not None:
                when = to_dt(state[0]).isoformat(timespec="seconds")
                return NotFound(f"{r} was deleted at {when} by {state[1]}")
        if not live:
            return NotFound(f"no adapter named {r.name!r}")
        if r.alias is not None:
            return NotFound(f"{r.name} has no alias {r.alias!r}")
        if r.digest is not None:
            return NotFound(f"{r.name} has no live version with digest {r.digest}")
        return NotFound(f"{r} does not exist (latest is {r.name}@{latest})")

    def _list(self, name: str | None, base_fingerprint: str | None, labels: dict[str, str],
              include_deleted: bool) -> list[VersionInfo]:
        rows = self.index.list_versions(
            name=name, base_fingerprint=base_fingerprint, include_deleted=include_deleted
        )
        return [v for v in rows if labels_match(v.labels, labels)]

    def open_blob(self, digest: str) -> BinaryIO:
        return self.blobs.open(digest)

    # -- aliases and deletion ----------------------------------------------------------------

    def alias_set(
        self, name: str, alias: str, version: int, *, actor: str | None = None
    ) -> AliasPointer:
        validate_name(name)
        validate_alias(alias)
        actor, at = actor or self.actor, now()
        with self.index.write() as tx:
            pointer = self._alias_set(tx, name, alias, int(version), actor, at)
            end_canary(tx, name, alias, actor, at)  # a plain move ends any canary
            return pointer

    def _alias_set(
        self, tx: Transaction, name: str, alias: str, version: int, actor: str, at: int
    ) -> AliasPointer:
        digest = tx.live_digest(name, version)
        if digest is None:
            raise self._not_found(AdapterRef(name, version=version))
        old = tx.alias_target(name, alias)
        if old is None or old[0] != version:
            tx.put_alias(name, alias, version, at, actor)
            tx.audit(
                at=at, actor=actor, action="alias_set", name=name, alias=alias,
                version=version, digest=digest, old_version=old[0] if old else None,
                old_digest=old[1] if old else None,
            )
            log.info("alias %s:%s -> %s@%d", name, alias, name, version)
        return AliasPointer(
            name=name, alias=alias, version=version, digest=digest, since=to_dt(at), set_by=actor
        )

    def alias_rm(self, name: str, alias: str, *, actor: str | None = None) -> None:
        validate_name(name)
        validate_alias(alias)
        with self.index.write() as tx:
            self._alias_rm(tx, name, alias, actor or self.actor, now(), {})

    def _alias_rm(
        self, tx: Transaction, name: str, alias: str, actor: str, at: int, detail: dict[str, Any]
    ) -> None:
        old = tx.alias_target(name, alias)
        if old is None:
            raise NotFound(f"{name} has no alias {alias!r}")
        tx.drop_alias(name, alias)
        tx.audit(
            at=at, actor=actor, action="alias_rm", name=name, alias=alias,
            old_version=old[0], old_digest=old[1], detail=detail,
        )

    def delete(
        self, ref: str | AdapterRef, *, force: bool = False, actor: str | None = None
    ) -> VersionInfo:
        actor = actor or self.actor
        r = require_pinned(AdapterRef.parse(ref))
        manifest = self.resolve(r)
        with self.index.write() as tx:
            aliases = tx.aliases_of(r.name, manifest.version)
            canaries = canaries_of(tx, r.name, manifest.version)
            if aliases and not force:
                raise Conflict(
                    f"{manifest.ref} is pointed at by alias(es) {', '.join(aliases)}: "
                    "move them first, or force the delete (which removes them)"
                )
            if canaries and not force:
                where = ", ".join(f"{r.name}:{alias}" for alias in canaries)
                raise Conflict(f"{manifest.ref} is the canary of {where}: end the canary first "
                               "(alias set without --canary), or force the delete (which ends it)")
            at = now()
            for alias in canaries:  # each end is an audit row of its own
                end_canary(tx, r.name, alias, actor, at, reason=f"{manifest.ref} deleted")
            for alias in aliases:
                self._alias_rm(tx, r.name, alias, actor, at, {"reason": "delete"})
            if not tx.mark_deleted(r.name, manifest.version, at, actor):
                raise NotFound(f"{manifest.ref} was deleted concurrently")
            tx.audit(
                at=at, actor=actor, action="delete", name=r.name, version=manifest.version,
                digest=manifest.digest,
                detail={"forced": force, "aliases": aliases, "canaries": canaries},
            )
        log.info("deleted %s", manifest.ref)
        return VersionInfo(
            **manifest.model_dump(include=set(VersionInfo.model_fields) - {"aliases"}),
            deleted=True,
        )

    # -- maintenance -------------------------------------------------------------------------

    def gc(self) -> GcReport:
        """Remove unreferenced blobs and temp files. Waits for running pushes to finish."""
        return collect_garbage(self.index, self.blobs, self.lock)

    def verify(self) -> VerifyReport:
        """Re-hash every blob; report (and quarantine) corrupt ones, report missing ones."""
        return verify_blobs(self.index, self.blobs, self.lock)

    # -- audit -------------------------------------------------------------------------------

    def _log(self, name: str | None, alias: str | None, since: datetime | None,
             until: datetime | None, limit: int) -> list[AuditEntry]:
        return self.index.log(name=name, alias=alias, since=since, until=until, limit=limit)

    def alias_at(self, name: str, alias: str, when: datetime) -> AliasPointer | None:
        validate_name(name)
        validate_alias(alias)
        return self.index.alias_at(name, alias, when)
