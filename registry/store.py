"""LocalRegistry: the embedded store (a folder with blobs and a SQLite index).

A push is validated before anything is written, copies each file into a verified blob, and then
makes the version visible in one SQLite transaction. That transaction is the commit point: a
process killed before it leaves only blobs and temp files that ``gc`` removes, never a version.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from loramux.registry.base import (
    DEFAULT_LOG_LIMIT,
    base_facts,
    coerce_lineage,
    coerce_quantization,
    default_actor,
    labels_match,
    require_pinned,
)
from loramux.registry.blobs import BlobStore, StoreLock
from loramux.registry.digests import adapter_digest
from loramux.registry.errors import (
    BlobMissing,
    Conflict,
    IntegrityError,
    InvalidName,
    NotFound,
)
from loramux.registry.index import LIVE, Index, now, to_dt, to_us
from loramux.registry.maintenance import collect_garbage, verify_blobs
from loramux.registry.manifest import (
    MAX_DESCRIPTION,
    AliasPointer,
    AuditEntry,
    FileEntry,
    GcReport,
    Lineage,
    Manifest,
    PushRequest,
    QuantizationInfo,
    VerifyReport,
    VersionInfo,
    check_labels,
)
from loramux.registry.refs import AdapterRef, validate_alias, validate_name
from loramux.registry.transfer import materialize
from loramux.registry.validate import Limits, check_rel_path, check_sizes, scan_folder
from loramux.registry.validate import validate_adapter as _validate

log = logging.getLogger(__name__)

_SELECT = "SELECT v.version, v.manifest FROM versions v"
_BY_VERSION = f"{_SELECT} WHERE v.name=? AND v.version=? AND v.{LIVE}"
_LATEST = f"{_SELECT} WHERE v.name=? AND v.{LIVE} ORDER BY v.version DESC LIMIT 1"
_BY_ALIAS = (
    f"{_SELECT} JOIN aliases a ON a.name=v.name AND a.version=v.version "
    f"WHERE a.name=? AND a.alias=? AND v.{LIVE}"
)
_BY_DIGEST = (
    "SELECT v.version, v.manifest, v.digest FROM versions v "
    f"WHERE v.name=? AND v.digest GLOB ? AND v.{LIVE} ORDER BY v.version DESC"
)


class LocalRegistry:
    """The registry in a local folder; safe for many threads and processes at once."""

    def __init__(
        self, root: Path | str, *, limits: Limits | None = None, actor: str | None = None
    ) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "locks").mkdir(exist_ok=True)
        self.limits = limits or Limits()
        self.actor = actor or default_actor()
        self.blobs = BlobStore(self.root)
        self.lock = StoreLock(self.root / "locks" / "gc.lock")
        self.index = Index(self.root / "index.db")

    def __repr__(self) -> str:
        return f"LocalRegistry({str(self.root)!r})"

    def __enter__(self) -> LocalRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.index.close()

    # -- push --------------------------------------------------------------------------------

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
    ) -> Manifest:
        validate_name(name)
        fingerprint, components = base_facts(base_model, base_fingerprint)
        request = PushRequest(
            files=[],
            alias=alias,
            description=description,
            labels=check_labels(labels),
            base_fingerprint=fingerprint,
            base_components=components,
            quantization=coerce_quantization(quantization),
            lineage=coerce_lineage(lineage),
            created_by=created_by,
        )
        self._check_request(request)
        files = scan_folder(Path(folder), self.limits)
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

    def _check_request(self, request: PushRequest) -> None:
        if request.alias is not None:
            validate_alias(request.alias)
        if len(request.description) > MAX_DESCRIPTION:
            raise InvalidName(f"description is longer than {MAX_DESCRIPTION} characters")
        check_labels(request.labels)

    def _commit(self, name: str, request: PushRequest, actor: str) -> Manifest:
        validate_name(name)
        self._check_request(request)
        files = sorted(request.files, key=lambda f: f.path)
        if not files:
            raise InvalidName("a push needs at least one file")
        paths: dict[str, Path] = {}
        for f in files:
            if check_rel_path(f.path) in paths:
                raise InvalidName(f"file {f.path!r} is listed twice")
            paths[f.path] = self.blobs.path(f.sha256)
        check_sizes({f.path: f.size for f in files}, self.limits)
        for f in files:
            size = self.blobs.size(f.sha256)
            if size is None:
                raise BlobMissing(f"blob {f.digest} ({f.path}) has not been uploaded")
            if size != f.size:
                raise IntegrityError(f"{f.path}: blob {f.digest} has {size} bytes, not {f.size}")
        checked = _validate(paths, self.limits)
        digest = adapter_digest(files)
        with self.index.write() as conn:
            at = now()
            latest = self.index.latest(conn, name)
            if latest is not None and latest[1] == digest:
                manifest = self._load(conn, name, latest[0])
                log.info("%s: same content as %s, no new version", name, manifest.ref)
            else:
                (version,) = conn.execute(
                    "SELECT coalesce(max(version), 0) + 1 FROM versions WHERE name=?", (name,)
                ).fetchone()
                manifest = Manifest(
                    name=name,
                    version=version,
                    digest=digest,
                    size=sum(f.size for f in files),
                    files=files,
                    lora=checked.lora,
                    base_model_name_or_path=checked.base_model_name_or_path,
                    base_fingerprint=request.base_fingerprint,
                    base_components=request.base_components,
                    quantization=request.quantization,
                    description=request.description,
                    labels=request.labels,
                    lineage=request.lineage,
                    created_at=to_dt(at),
                    created_by=request.created_by or actor,
                )
                self.index.insert_version(conn, manifest)
                self.index.audit(
                    conn, at=at, actor=actor, action="push", name=name, version=version,
                    digest=digest, detail={"size": manifest.size, "files": len(files)},
                )
                log.info("pushed %s (%s)", manifest.ref, digest)
            if request.alias is not None:
                self._alias_set(conn, name, request.alias, manifest.version, actor, at)
        return manifest

    # -- reads -------------------------------------------------------------------------------

    def resolve(self, ref: str | AdapterRef) -> Manifest:
        r = AdapterRef.parse(ref)
        if r.version is not None:
            row = self.index.manifest_row(_BY_VERSION, (r.name, r.version))
        elif r.alias is not None:
            row = self.index.manifest_row(_BY_ALIAS, (r.name, r.alias))
        elif r.digest is not None:
            rows = self.index.conn().execute(_BY_DIGEST, (r.name, r.digest + "*")).fetchall()
            if len({d for _, _, d in rows}) > 1:
                raise Conflict(f"{r} is ambiguous: give more digits of the digest")
            row = (rows[0][0], rows[0][1]) if rows else None
        else:
            row = self.index.manifest_row(_LATEST, (r.name,))
        if row is None:
            raise self._not_found(r)
        return Manifest.model_validate_json(row[1])

    show = resolve

    def _not_found(self, r: AdapterRef) -> NotFound:
        conn = self.index.conn()
        live = conn.execute(
            f"SELECT count(*), max(version) FROM versions WHERE name=? AND {LIVE}", (r.name,)
        ).fetchone()
        if r.version is not None:
            state = self.index.version_state(r.name, r.version)
            if state is not None and state[0] is not None:
                when = to_dt(state[0]).isoformat(timespec="seconds")
                return NotFound(f"{r} was deleted at {when} by {state[1]}")
        if not live[0]:
            return NotFound(f"no adapter named {r.name!r}")
        if r.alias is not None:
            return NotFound(f"{r.name} has no alias {r.alias!r}")
        if r.digest is not None:
            return NotFound(f"{r.name} has no live version with digest {r.digest}")
        return NotFound(f"{r} does not exist (latest is {r.name}@{live[1]})")

    def _load(self, conn: sqlite3.Connection, name: str, version: int) -> Manifest:
        (text,) = conn.execute(
            "SELECT manifest FROM versions WHERE name=? AND version=?", (name, version)
        ).fetchone()
        return Manifest.model_validate_json(text)

    def list(
        self,
        *,
        name: str | None = None,
        base_fingerprint: str | None = None,
        labels: dict[str, str] | None = None,
        include_deleted: bool = False,
    ) -> list[VersionInfo]:
        if name is not None:
            validate_name(name)
        rows = self.index.list_versions(
            name=name, base_fingerprint=base_fingerprint, include_deleted=include_deleted
        )
        return [v for v in rows if labels_match(v.labels, labels)]

    def pull(self, ref: str | AdapterRef, to: Path | str) -> Path:
        return materialize(self.resolve(ref), self.open_blob, Path(to))

    def open_blob(self, digest: str) -> BinaryIO:
        return self.blobs.open(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blobs.exists(digest)

    # -- aliases and deletion ----------------------------------------------------------------

    def alias_set(
        self, name: str, alias: str, version: int, *, actor: str | None = None
    ) -> AliasPointer:
        validate_name(name)
        validate_alias(alias)
        with self.index.write() as conn:
            return self._alias_set(conn, name, alias, int(version), actor or self.actor, now())

    def _alias_set(
        self, conn: sqlite3.Connection, name: str, alias: str, version: int, actor: str, at: int
    ) -> AliasPointer:
        row = conn.execute(
            f"SELECT digest FROM versions WHERE name=? AND version=? AND {LIVE}", (name, version)
        ).fetchone()
        if row is None:
            raise self._not_found(AdapterRef(name, version=version))
        old = conn.execute(
            "SELECT a.version, v.digest FROM aliases a JOIN versions v "
            "ON v.name=a.name AND v.version=a.version WHERE a.name=? AND a.alias=?",
            (name, alias),
        ).fetchone()
        if old is None or old[0] != version:
            conn.execute(
                "INSERT INTO aliases(name, alias, version, updated_at, updated_by) "
                "VALUES (?,?,?,?,?) ON CONFLICT(name, alias) DO UPDATE SET "
                "version=excluded.version, updated_at=excluded.updated_at, "
                "updated_by=excluded.updated_by",
                (name, alias, version, at, actor),
            )
            self.index.audit(
                conn, at=at, actor=actor, action="alias_set", name=name, alias=alias,
                version=version, digest=row[0], old_version=old[0] if old else None,
                old_digest=old[1] if old else None,
            )
            log.info("alias %s:%s -> %s@%d", name, alias, name, version)
        return AliasPointer(
            name=name, alias=alias, version=version, digest=row[0], since=to_dt(at), set_by=actor
        )

    def alias_rm(self, name: str, alias: str, *, actor: str | None = None) -> None:
        validate_name(name)
        validate_alias(alias)
        with self.index.write() as conn:
            self._alias_rm(conn, name, alias, actor or self.actor, now(), {})

    def _alias_rm(
        self,
        conn: sqlite3.Connection,
        name: str,
        alias: str,
        actor: str,
        at: int,
        detail: dict[str, Any],
    ) -> None:
        old = conn.execute(
            "SELECT a.version, v.digest FROM aliases a JOIN versions v "
            "ON v.name=a.name AND v.version=a.version WHERE a.name=? AND a.alias=?",
            (name, alias),
        ).fetchone()
        if old is None:
            raise NotFound(f"{name} has no alias {alias!r}")
        conn.execute("DELETE FROM aliases WHERE name=? AND alias=?", (name, alias))
        self.index.audit(
            conn, at=at, actor=actor, action="alias_rm", name=name, alias=alias,
            old_version=old[0], old_digest=old[1], detail=detail,
        )

    def delete(
        self, ref: str | AdapterRef, *, force: bool = False, actor: str | None = None
    ) -> VersionInfo:
        actor = actor or self.actor
        r = require_pinned(AdapterRef.parse(ref))
        manifest = self.resolve(r)
        with self.index.write() as conn:
            aliases = self.index.aliases_of(conn, r.name, manifest.version)
            if aliases and not force:
                raise Conflict(
                    f"{manifest.ref} is pointed at by alias(es) {', '.join(aliases)}: "
                    "move them first, or force the delete (which removes them)"
                )
            at = now()
            for alias in aliases:
                self._alias_rm(conn, r.name, alias, actor, at, {"reason": "delete"})
            cur = conn.execute(
                f"UPDATE versions SET deleted_at=?, deleted_by=? WHERE name=? AND version=? "
                f"AND {LIVE}",
                (at, actor, r.name, manifest.version),
            )
            if cur.rowcount != 1:
                raise NotFound(f"{manifest.ref} was deleted concurrently")
            self.index.audit(
                conn, at=at, actor=actor, action="delete", name=r.name,
                version=manifest.version, digest=manifest.digest,
                detail={"forced": force, "aliases": aliases},
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

    def log(
        self,
        *,
        name: str | None = None,
        alias: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = DEFAULT_LOG_LIMIT,
    ) -> list[AuditEntry]:
        return self.index.log(name=name, alias=alias, since=since, until=until, limit=limit)

    def alias_at(self, name: str, alias: str, when: datetime) -> AliasPointer | None:
        """Where ``name:alias`` pointed at ``when`` (None if it did not exist then)."""
        validate_name(name)
        validate_alias(alias)
        row = (
            self.index.conn()
            .execute(
                "SELECT action, version, digest, at, actor FROM audit WHERE name=? AND alias=? "
                "AND action IN ('alias_set', 'alias_rm') AND at<=? ORDER BY at DESC, id DESC "
                "LIMIT 1",
                (name, alias, to_us(when)),
            )
            .fetchone()
        )
        if row is None or row[0] == "alias_rm":
            return None
        return AliasPointer(
            name=name, alias=alias, version=row[1], digest=row[2], since=to_dt(row[3]),
            set_by=row[4],
        )
