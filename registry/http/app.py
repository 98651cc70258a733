"""The registry over HTTP (FastAPI), a thin layer over :class:`LocalRegistry`.

Push is OCI-like: the client uploads each blob (``PUT /v2/blobs/sha256:<hex>``, streamed to a
temp file, hashed on the way and refused unless it matches; ``HEAD`` first to skip blobs already
there), then posts the manifest draft (``POST /v2/adapters/{name}/versions``), which the server
validates against the stored blobs and commits in one transaction. A client that dies between
the two steps leaves unreferenced blobs for ``gc`` and no version.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from loramux.registry.base import DEFAULT_LOG_LIMIT
from loramux.registry.blobs import BlobUpload
from loramux.registry.canary import CanaryRequest, CanaryState, Split
from loramux.registry.errors import Forbidden, InvalidRequest
from loramux.registry.evaluations import EvaluationBody, EvaluationEntry, PromoteRequest
from loramux.registry.http import errors as http_errors
from loramux.registry.http import pages as ui_pages
from loramux.registry.http.auth import (
    Identity,
    TokenAuth,
    actor_of,
    check_scope,
    require_admin,
    require_read,
    require_write,
)
from loramux.registry.http.bodies import BLOB_PREFIX, RequestGate
from loramux.registry.http.errors import error_response, responses
from loramux.registry.manifest import (
    AliasPointer,
    AuditEntry,
    GcReport,
    Manifest,
    PushRequest,
    VerifyReport,
    VersionInfo,
    parse_labels,
)
from loramux.registry.refs import AdapterRef
from loramux.registry.store import LocalRegistry
from loramux.registry.validate import Limits
from loramux.web.front import FrontGuard, FrontPolicy, is_loopback_host
from loramux.web.serving import ConnectionLimits, uvicorn_config

log = logging.getLogger(__name__)
router = APIRouter(responses=responses(400, 401, 403))  # every route but /health needs a token
public = APIRouter()
Reader = Annotated[Identity, Depends(require_read)]
Writer = Annotated[Identity, Depends(require_write)]
Admin = Annotated[Identity, Depends(require_admin)]
UPLOAD_BATCH = 1 << 20  # bytes gathered on the event loop before one write in a worker thread
BLOB_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}}}
BLOB_BYTES = {200: {"content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}, "description": "The blob's bytes"}}


class _BlobResponse(FileResponse):
    chunk_size = 1 << 20


class BlobStored(BaseModel):
    digest: str
    size: int


class Health(BaseModel):
    status: str


def _registry(request: Request) -> LocalRegistry:
    return request.app.state.registry


def _front_refusal(status: int, message: str, code: str) -> Response:
    """What `FrontGuard` answers, in the registry's envelope (403 Forbidden, else
    InvalidRequest with the guard's status: 415 or 421)."""
    return error_response((Forbidden if status == 403 else InvalidRequest)(message), status)


def create_app(registry: LocalRegistry, auth: TokenAuth, host: str = "127.0.0.1") -> FastAPI:
    """``host``: the address it listens on; without tokens on loopback, only loopback Host
    names are answered (see loramux.web.front)."""
    from loramux import __version__

    app = FastAPI(
        title="loramux registry",
        version=__version__,
        description="Versioned, content-addressed store of LoRA adapters. Every error answers "
        '{"error": {"message", "type", "code"}}.',
    )
    app.state.registry = registry
    app.state.auth = auth
    http_errors.install(app)
    app.include_router(public)
    app.include_router(router)
    ui_pages.install(app)  # /ui: the web pages
    app.add_middleware(RequestGate)
    app.add_middleware(FrontGuard, refuse=_front_refusal, policy=FrontPolicy(
        json_prefixes=("/v2/",), raw_prefixes=(BLOB_PREFIX,),
        keyless=lambda: not app.state.auth.tokens, loopback_only=is_loopback_host(host)))
    return app


@public.get("/health")
def health(request: Request) -> Health:
    _registry(request).ping()
    return Health(status="ok")


@router.get("/v2/whoami")
def whoami(request: Request, identity: Reader) -> dict[str, object]:
    limits = _registry(request).limits
    return {
        "name": identity.name,
        "scopes": sorted(identity.scopes),
        "limits": {
            "max_total_bytes": limits.max_total_bytes,
            "max_file_bytes": limits.file_bytes,
            "max_files": limits.max_files,
            "max_config_bytes": limits.max_config_bytes,
        },
    }


@router.get("/v2/adapters")
def list_versions(
    request: Request,
    _: Reader,
    name: str | None = None,
    base_fingerprint: str | None = None,
    label: Annotated[list[str] | None, Query(description="k=v, repeatable")] = None,
    include_deleted: bool = False,
) -> list[VersionInfo]:
    labels = parse_labels(label or [])
    return _registry(request).list(
        name=name, base_fingerprint=base_fingerprint, labels=labels,
        include_deleted=include_deleted,
    )


@router.get("/v2/resolve", response_model=Manifest, responses=responses(404, 409))
async def resolve(request: Request, _: Reader, ref: str) -> Response:
    """The manifest ``ref`` resolves to now. The inference server may call this per request,
    so on SQLite it runs on the event loop (an indexed read in WAL mode never waits for writers
    and takes tens of microseconds, less than a thread-pool hop); a database server is a network
    round trip that can wait seconds when the database is down, so that read goes to a thread
    and never stalls the other requests (health checks included). Serialized once."""
    registry = _registry(request)
    if registry.index.dialect.name == "sqlite":
        manifest = registry.resolve(ref)
    else:
        manifest = await run_in_threadpool(registry.resolve, ref)
    headers = {"X-Adapter-Digest": manifest.digest, "X-Adapter-Ref": manifest.ref}
    return Response(manifest.model_dump_json(), media_type="application/json", headers=headers)


def _blob_response(request: Request, digest: str, *, head: bool) -> Response:
    """A folder store's file is sent as is; an OCI store's blob is first downloaded into a
    temp file and verified (a corrupt blob is a 422, never bytes), then streamed."""
    registry = _registry(request)
    headers = {"X-Content-Digest": digest, "ETag": f'"{digest}"', "Cache-Control": "immutable"}
    path = registry.blob_path(digest)
    if path is not None:
        return _BlobResponse(path, media_type="application/octet-stream", headers=headers)
    if head:
        headers["Content-Length"] = str(registry.blob_size(digest))
        return Response(media_type="application/octet-stream", headers=headers)
    blob = registry.open_blob(digest)
    headers["Content-Length"] = str(os.fstat(blob.fileno()).st_size)
    return StreamingResponse(_chunks(blob), media_type="application/octet-stream",
                             headers=headers)


def _chunks(blob: BinaryIO) -> Iterator[bytes]:
    with blob:
        while chunk := blob.read(_BlobResponse.chunk_size):
            yield chunk


@router.get("/v2/blobs/{digest}", response_class=_BlobResponse,
            responses={**BLOB_BYTES, **responses(404, 422, 503)})
def get_blob(request: Request, _: Reader, digest: str) -> Response:
    """The blob's bytes, streamed; ``X-Content-Digest`` names them (the client re-hashes)."""
    return _blob_response(request, digest, head=False)


@router.head("/v2/blobs/{digest}", response_class=_BlobResponse,
             responses={**BLOB_BYTES, **responses(404, 503)})
def head_blob(request: Request, _: Reader, digest: str) -> Response:
    """200 with the size if the server has the blob (a push skips it), else 404."""
    return _blob_response(request, digest, head=True)


@router.put("/v2/blobs/{digest}", status_code=201, response_model=BlobStored,
            responses=responses(404, 413, 422, 503), openapi_extra=BLOB_BODY)
async def put_blob(request: Request, _: Writer, digest: str) -> BlobStored | Response:
    """Stream the body to a temp file, hashing it; it becomes a blob only if it matches.

    The event loop only gathers the body (and counts it against the limit); the writing and
    hashing happen in worker threads, a batch at a time, so a large upload onto a slow disk
    never stalls the requests the registry serves meanwhile."""
    declared = request.headers.get("content-length")
    size = int(declared) if declared is not None and declared.isdigit() else None
    upload = await run_in_threadpool(_registry(request).upload, digest, size=size)
    try:
        await _receive_blob(request, upload)
        hex_, size = await run_in_threadpool(upload.finish)
    except ClientDisconnect:
        log.info("upload of %s aborted by the client; nothing stored", digest)
        return Response(status_code=400)  # nobody is listening any more
    finally:
        upload.close()
    return BlobStored(digest=f"sha256:{hex_}", size=size)


async def _receive_blob(request: Request, upload: BlobUpload) -> None:
    batch, received = bytearray(), 0
    async for chunk in request.stream():
        received += len(chunk)
        upload.check(received)  # a running count: an oversized body stops here, not at its end
        batch += chunk
        if len(batch) >= UPLOAD_BATCH:
            await run_in_threadpool(upload.feed, batch)
            batch = bytearray()
    if batch:
        await run_in_threadpool(upload.feed, batch)


@router.post("/v2/adapters/{name}/versions", status_code=201,
             responses=responses(404, 409, 413, 422, 503))
def push(
    request: Request, identity: Writer, name: str, body: Annotated[PushRequest, Body()]
) -> Manifest:
    """Commit a version from uploaded blobs. Runs in a worker thread: validation reads the
    stored safetensors headers and matches the adapter's own patterns (bounded in time)."""
    return _registry(request).commit(name, body, actor=actor_of(identity, request))


@router.put("/v2/adapters/{name}/aliases/{alias}", responses=responses(404, 413))
def alias_set(
    request: Request,
    identity: Writer,
    name: str,
    alias: str,
    version: Annotated[int, Body(embed=True, ge=1, le=2**62)],
) -> AliasPointer:
    return _registry(request).alias_set(name, alias, version, actor=actor_of(identity, request))


@router.put("/v2/adapters/{name}/aliases/{alias}/canary", responses=responses(404, 413))
def canary_set(request: Request, identity: Writer, name: str, alias: str,
               body: Annotated[CanaryRequest, Body()]) -> CanaryState:
    """Point the alias at ``stable`` and send ``weight`` of its requests to ``canary``."""
    return _registry(request).canary_set(name, alias, body.stable, body.canary, body.weight,
                                         reason=body.reason, actor=actor_of(identity, request))


@router.get("/v2/adapters/{name}/aliases/{alias}/canary", responses=responses(404))
def canary_state(request: Request, _: Reader, name: str, alias: str) -> CanaryState:
    return _registry(request).canary(name, alias)


@router.get("/v2/resolve/split", responses=responses(404, 409))
async def resolve_split(request: Request, _: Reader, ref: str) -> Split:
    """As ``/v2/resolve``, with an alias's canary and its share: what a server splits by."""
    registry = _registry(request)
    if registry.index.dialect.name == "sqlite":
        return registry.resolve_split(ref)
    return await run_in_threadpool(registry.resolve_split, ref)


@router.delete("/v2/adapters/{name}/aliases/{alias}", status_code=204,
               responses=responses(404))
def alias_rm(request: Request, identity: Writer, name: str, alias: str) -> Response:
    _registry(request).alias_rm(name, alias, actor=actor_of(identity, request))
    return Response(status_code=204)


@router.delete("/v2/adapters/{name}/versions/{selector}", responses=responses(404, 409))
def delete(
    request: Request, identity: Writer, name: str, selector: str,
    force: Annotated[bool, Query(description="Also remove aliases; needs 'admin'")] = False,
) -> VersionInfo:
    """Yank a version; ``force`` (which also removes the aliases pointing at it, taking the
    version away from everyone who uses them) needs an admin token."""
    if force:
        check_scope(identity, "admin", "a forced delete")
    ref = AdapterRef.parse(f"{name}@{selector}")
    return _registry(request).delete(ref, force=force, actor=actor_of(identity, request))


class LogQuery(BaseModel):
    """``GET /v2/log``'s filters: the arguments of ``Registry.log``."""

    name: str | None = None
    alias: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(DEFAULT_LOG_LIMIT, ge=0, le=100_000)


@router.get("/v2/log")
def audit_log(request: Request, _: Reader, query: Annotated[LogQuery, Query()]) -> list[AuditEntry]:
    return _registry(request).log(**query.model_dump())


@router.get("/v2/alias-at")
def alias_at(
    request: Request, _: Reader, name: str, alias: str, when: datetime
) -> AliasPointer | None:
    return _registry(request).alias_at(name, alias, when)


@router.post("/v2/adapters/{name}/evaluations", status_code=201, responses=responses(404, 413))
def record_evaluation(request: Request, identity: Writer, name: str,
                      body: Annotated[EvaluationBody, Body()]) -> EvaluationEntry:
    """Record an eval-gate run (``loramux registry promote`` measured it on a server)."""
    return _registry(request).record_evaluation(name, body, actor=actor_of(identity, request))


@router.get("/v2/adapters/{name}/versions/{version}/evaluations", responses=responses(404))
def evaluations(request: Request, _: Reader, name: str,
                version: Annotated[int, Path(ge=1, le=2**62)],
                limit: Annotated[int, Query(ge=0, le=1000)] = 5) -> list[EvaluationEntry]:
    return _registry(request).evaluations(name, version, limit)


@router.post("/v2/adapters/{name}/aliases/{alias}/promote", responses=responses(404, 409, 422))
def promote_alias(request: Request, identity: Writer, name: str, alias: str,
                  body: Annotated[PromoteRequest, Body()]) -> AliasPointer:
    """Move the alias if it still points at ``expected``, citing a passing evaluation."""
    return _registry(request).promote_alias(
        name, alias, body.version, expected=body.expected, evaluation_id=body.evaluation_id,
        actor=actor_of(identity, request))

@router.post("/v2/gc")
def gc(request: Request, _: Admin) -> GcReport:
    """Remove unreferenced blobs and leftovers of interrupted pushes (admin)."""
    return _registry(request).gc()


@router.post("/v2/verify")
def verify(request: Request, _: Admin) -> VerifyReport:
    """Re-hash every blob, moving corrupt ones to quarantine (admin: it changes the store)."""
    return _registry(request).verify()


def serve(
    root: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8700,
    auth: TokenAuth,
    limits: Limits | None = None,
    log_level: str = "info",
    index: str | None = None,
    blobs: str | None = None,
    connection_limits: ConnectionLimits | None = None,
) -> None:
    """Run the server in the foreground (what ``loramux registry serve`` does).

    ``index``: a shared index database (``postgresql://…``) for several servers; default SQLite.
    ``blobs``: a shared blob store (``oci://host:port/repository``); default the root folder.
    """
    import uvicorn

    registry = LocalRegistry(root, limits=limits, index=index, blobs=blobs)
    config = uvicorn_config(create_app(registry, auth, host), host=host, port=port,
                            log_level=log_level, limits=connection_limits or ConnectionLimits())
    uvicorn.Server(config).run()
