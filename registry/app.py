"""The registry over HTTP (FastAPI), a thin layer over :class:`LocalRegistry`.

Push is OCI-like: the client uploads each blob (``PUT /v2/blobs/sha256:<hex>``, streamed to a
temp file, hashed on the way and refused unless it matches; ``HEAD`` first to skip blobs already
there), then posts the manifest draft (``POST /v2/adapters/{name}/versions``), which the server
validates against the stored blobs and commits in one transaction. A client that dies between
the two steps leaves unreferenced blobs for ``gc`` and no version.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loramux.registry.auth import Identity, TokenAuth, actor_of, require_read, require_write
from loramux.registry.base import DEFAULT_LOG_LIMIT
from loramux.registry.errors import (
    InvalidRequest,
    RegistryError,
    TooLarge,
    Unauthorized,
)
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

log = logging.getLogger(__name__)
router = APIRouter()
Reader = Annotated[Identity, Depends(require_read)]
Writer = Annotated[Identity, Depends(require_write)]


MAX_JSON_BODY = 16 << 20


class _BlobResponse(FileResponse):
    chunk_size = 1 << 20


class _JsonBodyLimit:
    """Bounds every request body except blob uploads (which stream to disk under their own
    limit): FastAPI would otherwise read a manifest draft of any size into memory. Bodies are
    small JSON, so the middleware reads them first and replays them to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_JSON_BODY) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/v2/blobs/"):
            await self.app(scope, receive, send)
            return
        too_large = TooLarge(f"request body is larger than {self.max_bytes} bytes")
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(too_large, scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refuse(too_large, scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(exc: RegistryError, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(exc)(scope, receive, send)


def _registry(request: Request) -> LocalRegistry:
    return request.app.state.registry


def error_response(exc: RegistryError) -> JSONResponse:
    """The one place a RegistryError becomes an HTTP answer (the client maps it back)."""
    body = {"error": {"message": exc.message, "type": type(exc).__name__, "code": exc.code}}
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return JSONResponse(status_code=exc.status, content=body, headers=headers)


async def _registry_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RegistryError)
    if exc.status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    return error_response(exc)


async def _request_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own validation failures, in the same envelope as everything else."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return await _registry_error(
        request, InvalidRequest(f"invalid request: {where}: {first.get('msg', exc)}")
    )


def create_app(registry: LocalRegistry, auth: TokenAuth) -> FastAPI:
    from loramux import __version__

    app = FastAPI(
        title="loramux registry",
        version=__version__,
        description="Versioned, content-addressed store of LoRA adapters.",
    )
    app.state.registry = registry
    app.state.auth = auth
    app.add_exception_handler(RegistryError, _registry_error)
    app.add_exception_handler(RequestValidationError, _request_error)
    app.include_router(router)
    app.add_middleware(_JsonBodyLimit)
    return app


@router.get("/health")
def health(request: Request) -> dict[str, str]:
    _registry(request).ping()
    return {"status": "ok"}


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


@router.get("/v2/resolve", response_model=Manifest)
async def resolve(request: Request, _: Reader, ref: str) -> Response:
    """The manifest ``ref`` resolves to now. The inference server may call this per request,
    so it runs on the event loop (an indexed read in WAL mode never waits for writers and takes
    tens of microseconds, less than a thread-pool hop) and serializes the manifest once."""
    manifest = _registry(request).resolve(ref)
    headers = {"X-Adapter-Digest": manifest.digest, "X-Adapter-Ref": manifest.ref}
    return Response(manifest.model_dump_json(), media_type="application/json", headers=headers)


def _blob_response(request: Request, digest: str) -> _BlobResponse:
    path = _registry(request).blob_file(digest)
    headers = {"X-Content-Digest": digest, "ETag": f'"{digest}"', "Cache-Control": "immutable"}
    return _BlobResponse(path, media_type="application/octet-stream", headers=headers)


@router.get("/v2/blobs/{digest}", response_class=_BlobResponse)
def get_blob(request: Request, _: Reader, digest: str) -> _BlobResponse:
    """The blob's bytes, streamed; ``X-Content-Digest`` names them (the client re-hashes)."""
    return _blob_response(request, digest)


@router.head("/v2/blobs/{digest}", response_class=_BlobResponse)
def head_blob(request: Request, _: Reader, digest: str) -> _BlobResponse:
    """200 with the size if the server has the blob (a push skips it), else 404."""
    return _blob_response(request, digest)


@router.put("/v2/blobs/{digest}", status_code=201, response_model=None)
async def put_blob(request: Request, _: Writer, digest: str) -> dict[str, object] | Response:
    """Stream the body to a temp file, hashing it; it becomes a blob only if it matches."""
    declared = request.headers.get("content-length")
    size = int(declared) if declared is not None and declared.isdigit() else None
    upload = await run_in_threadpool(_registry(request).upload, digest, size=size)
    try:
        async for chunk in request.stream():
            upload.feed(chunk)
        hex_, size = await run_in_threadpool(upload.finish)
    except ClientDisconnect:
        log.info("upload of %s aborted by the client; nothing stored", digest)
        return Response(status_code=400)  # nobody is listening any more
    finally:
        upload.close()
    return {"digest": f"sha256:{hex_}", "size": size}


@router.post("/v2/adapters/{name}/versions", status_code=201)
def push(
    request: Request, identity: Writer, name: str, body: Annotated[PushRequest, Body()]
) -> Manifest:
    return _registry(request).commit(name, body, actor=actor_of(identity, request))


@router.put("/v2/adapters/{name}/aliases/{alias}")
def alias_set(
    request: Request,
    identity: Writer,
    name: str,
    alias: str,
    version: Annotated[int, Body(embed=True)],
) -> AliasPointer:
    return _registry(request).alias_set(name, alias, version, actor=actor_of(identity, request))


@router.delete("/v2/adapters/{name}/aliases/{alias}", status_code=204)
def alias_rm(request: Request, identity: Writer, name: str, alias: str) -> Response:
    _registry(request).alias_rm(name, alias, actor=actor_of(identity, request))
    return Response(status_code=204)


@router.delete("/v2/adapters/{name}/versions/{selector}")
def delete(
    request: Request, identity: Writer, name: str, selector: str, force: bool = False
) -> VersionInfo:
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


@router.post("/v2/gc")
def gc(request: Request, _: Writer) -> GcReport:
    return _registry(request).gc()


@router.post("/v2/verify")
def verify(request: Request, _: Writer) -> VerifyReport:
    return _registry(request).verify()


def serve(
    root: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8700,
    auth: TokenAuth,
    limits: Limits | None = None,
    log_level: str = "info",
) -> None:
    """Run the server in the foreground (what ``loramux registry serve`` does)."""
    import uvicorn

    registry = LocalRegistry(root, limits=limits)
    uvicorn.run(create_app(registry, auth), host=host, port=port, log_level=log_level)
