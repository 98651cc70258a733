"""The registry's web pages: routes under ``/ui``, server-rendered, read-only.

Every page needs a token with ``read`` scope, sent as the login cookie (see ``loramux.web``); a
browser without one is sent to the login form. Registry errors (no such adapter, a bad
name) become an HTML page with the error's status, not the API's JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from loramux.registry.errors import NotFound, RegistryError, Unauthorized
from loramux.registry.http import views
from loramux.registry.http.auth import (
    UI_COOKIE,
    Identity,
    TokenAuth,
    login_check,
    ui_identity,
)
from loramux.registry.refs import validate_name
from loramux.registry.store import LocalRegistry
from loramux.web import Pages, login_redirect, mount_static, safe_next
from loramux.web.login import LOGIN, Login

FILE_TYPES = {".png": "image/png", ".json": "application/json", ".md": "text/plain",
              ".yaml": "text/plain", ".txt": "text/plain"}
pages = Pages("loramux registry", Path(__file__).resolve().parent / "templates")
router = APIRouter(prefix="/ui", include_in_schema=False)


def install(app: FastAPI) -> None:
    """Add ``/ui`` to the registry's app, with its own login sessions."""
    login = Login(pages, UI_COOKIE, login_check(app))
    app.state.ui_login = login
    app.include_router(login.router())
    app.include_router(router)
    mount_static(app)


async def _page(request: Request, build: Callable[[LocalRegistry], dict[str, Any]],
                template: str) -> Response:
    """Authenticate by cookie, build the context in a worker thread (the registry's reads
    block), render; a missing or invalid cookie goes to the login form, a registry error
    (no such adapter, a bad name) to an error page with its status."""
    auth: TokenAuth = request.app.state.auth
    try:
        identity = ui_identity(request)
    except Unauthorized as exc:
        login: Login = request.app.state.ui_login
        if login.has_cookie(request):
            return login.expired(safe_next(request.url.path), str(exc))
        return login_redirect(request, LOGIN)
    context = _who(identity, auth)
    try:
        context.update(await run_in_threadpool(build, request.app.state.registry))
    except RegistryError as exc:
        return pages.error(exc.status, str(exc), **context)
    return pages.render(template, **context)


def _who(identity: Identity, auth: TokenAuth) -> dict[str, Any]:
    return {"user": identity.name, "anonymous": identity.anonymous,
            "login_path": LOGIN if auth.tokens else None}


@router.get("")
async def index(request: Request) -> Response:
    def build(registry: LocalRegistry) -> dict[str, Any]:
        entries = registry.log(limit=views.HISTORY_LIMIT)
        return {"adapters": views.adapters(registry),
                "evaluations": views.latest_by_alias(entries, "evaluate"),
                "canaries": views.latest_by_alias(entries, "canary")}

    return await _page(request, build, "index.html")


@router.get("/adapters/{name}")
async def adapter(request: Request, name: str) -> Response:
    def build(registry: LocalRegistry) -> dict[str, Any]:
        validate_name(name)
        found = views.versions(registry, name)
        entries = views.history(registry, name)
        return {"name": name, "versions": found,
                "history": views.alias_history(entries),
                "evaluations": views.latest_by_alias(entries, "evaluate"),
                "canaries": views.latest_by_alias(entries, "canary")}

    return await _page(request, build, "adapter.html")


@router.get("/adapters/{name}/versions/{version}")
async def version(request: Request, name: str, version: int) -> Response:
    def build(registry: LocalRegistry) -> dict[str, Any]:
        manifest = registry.show(f"{name}@{version}")
        report = views.report(registry, manifest)
        lineage = manifest.lineage.model_dump(mode="json") if manifest.lineage else {}
        paths = {f.path for f in manifest.files}
        aliases = next((v.aliases for v in registry.list(name=name) if v.version == version), [])
        evaluations = [e for e in views.history(registry, name)
                       if e.action == "evaluate" and _candidate(e) == version]
        return {"name": name, "m": manifest, "lineage": lineage, "aliases": aliases,
                "figures": views.report_figures(report), "evaluations": evaluations,
                "curve": views.CURVE_FILE if views.CURVE_FILE in paths else None,
                "extra": {k: v for k, v in lineage.items() if k not in _SHOWN}}

    return await _page(request, build, "version.html")


_SHOWN = {"dataset_digest", "dataset", "hyperparameters", "metrics", "library_versions"}


def _candidate(entry: Any) -> int | None:
    candidate = entry.detail.get("candidate")
    return candidate.get("version") if isinstance(candidate, dict) else entry.version


@router.get("/adapters/{name}/versions/{version}/files/{path:path}")
async def version_file(request: Request, name: str, version: int, path: str) -> Response:
    """A file of the version (the loss curve, the report), with a type that a browser shows
    but never runs (nosniff; no HTML)."""
    try:
        ui_identity(request)
    except Unauthorized:
        return Response("sign in first", status_code=401, media_type="text/plain")

    def open_file(registry: LocalRegistry) -> BinaryIO:
        entry = registry.show(f"{name}@{version}").file(path)
        return registry.open_blob(entry.digest)

    try:
        blob = await run_in_threadpool(open_file, request.app.state.registry)
    except (RegistryError, KeyError):
        return Response(f"{name}@{version} has no file {path!r}", status_code=404,
                        media_type="text/plain")
    kind = FILE_TYPES.get(Path(path).suffix, "application/octet-stream")
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"}
    if kind == "application/octet-stream":
        headers["Content-Disposition"] = "attachment"
    return StreamingResponse(_chunks(blob), media_type=kind, headers=headers)


def _chunks(blob: BinaryIO) -> Iterator[bytes]:
    with blob:  # a sync iterator: Starlette reads it in a worker thread
        while chunk := blob.read(1 << 20):
            yield chunk


@router.get("/adapters/{name}/diff")
async def diff(request: Request, name: str, a: int | None = None, b: int | None = None
               ) -> Response:
    def build(registry: LocalRegistry) -> dict[str, Any]:
        found = views.versions(registry, name)
        numbers = sorted(v.version for v in found)
        left = a if a is not None else (numbers[-2] if len(numbers) > 1 else numbers[-1])
        right = b if b is not None else numbers[-1]
        for number in (left, right):
            if number not in numbers:
                raise NotFound(f"{name} has no version {number}")
        ma, mb = registry.show(f"{name}@{left}"), registry.show(f"{name}@{right}")
        rows = views.diff(ma, mb)
        return {"name": name, "numbers": numbers, "a": ma, "b": mb, "rows": rows,
                "changes": sum(r.changed for r in rows),
                "config_diff": views.config_diff(registry, ma, mb)}

    return await _page(request, build, "diff.html")
