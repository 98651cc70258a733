"""HTTP transport: routes, auth and shared state as dependencies, one error handler.

Handlers hold the logic; this module turns HTTP into validated requests and errors into
OpenAI-shaped JSON. Every error a client can get has that shape: the server's own errors, the
framework's (unknown route, wrong method, a bad query), and, through a last-resort middleware,
any unexpected exception, which becomes a generic 500 whose details only the log sees.
Bodies are read as a stream and refused (413) as soon as they pass the limit, chunked or not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from loramux import __version__
from loramux.server import gateway_metrics, openapi
from loramux.server.admission import Budgeted, budgeted
from loramux.server.auth import (
    Admin,
    User,
    is_loopback,
    protect_routes,
    require_admin,
    require_operator,
    visible,
)
from loramux.server.errors import (
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    ServerError,
    for_status,
    from_validation,
    probe_failure,
    to_server_error,
)
from loramux.server.handlers import Served
from loramux.server.logs import AccessLog
from loramux.server.protocol import (
    AdapterAction,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from loramux.server.resolver import with_user_header
from loramux.server.runtime import Runtime
from loramux.server.ui import playground
from loramux.web.front import FrontGuard, FrontPolicy
from loramux.wire import DIGEST_HEADER, REF_HEADER

log = logging.getLogger(__name__)
MAX_JSON_DEPTH = 64  # deeper than any real request; bounds the recursion of whatever reads it


def error_response(error: ServerError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes: from Content-Length when
    it is declared, else by counting a chunked body as it arrives (never buffering it all)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _too_deep(data: Any, body: bytes) -> bool:
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:  # the common case, at C speed
        return False
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                return True
            values = item.values() if isinstance(item, dict) else item
            stack.extend((value, depth + 1) for value in values)
    return False


def parse_json(body: bytes) -> Any:
    """JSON, or a 400 for anything json cannot read: syntax, invalid UTF-8, NaN, an integer
    over Python's 4300 digits (ValueError), nesting deeper than the interpreter's stack
    (RecursionError) or than MAX_JSON_DEPTH."""
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise InvalidRequest(f"JSON body nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:
        raise InvalidRequest("JSON body this server cannot read: invalid UTF-8, NaN/Infinity, "
                             "or an integer of more than 4300 digits") from None
    if _too_deep(data, body):
        raise InvalidRequest(f"JSON body nested deeper than {MAX_JSON_DEPTH} levels")
    return data


class _LastResort:
    """ASGI middleware: an exception no handler knows becomes a generic 500 in OpenAI's shape
    (`errors.to_server_error` logs its details under an error id). Once a response has started
    nothing can be sent instead, so the exception goes on to the server, which drops the
    connection."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        started = False

        async def watch(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started or scope["type"] != "http":
                raise
            await error_response(to_server_error(exc))(scope, receive, send)


def _refusal(status: int, message: str, code: str) -> JSONResponse:
    """What `FrontGuard` answers: 403 as a permission error, 415/421 as invalid requests."""
    error = (Forbidden if status == 403 else InvalidRequest)(message, code=code)
    error.status = status
    return error_response(error)


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


Rt = Annotated[Runtime, Depends(get_runtime)]


def create_app(runtime: Runtime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.models.pin(runtime.settings.pin)
        yield
        # Here, not after uvicorn returns: uvicorn re-raises SIGTERM once it has shut down, which
        # would end the process before any later cleanup and orphan vLLM's engine processes.
        runtime.close()

    app = FastAPI(title="loramux", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible multi-LoRA server; adapters from the registry.")
    app.state.runtime = runtime
    gateway_metrics.install(runtime.handlers, runtime.metrics.registry)  # the gateway's view
    app.add_middleware(_LastResort)
    app.add_middleware(FrontGuard, refuse=_refusal, policy=FrontPolicy(
        json_prefixes=("/v1/",), keyless=lambda: not runtime.keys.enabled,
        loopback_only=is_loopback(runtime.settings.host)))
    app.add_middleware(AccessLog, headers=(REF_HEADER, DIGEST_HEADER))
    openapi.install(app, [ChatCompletionRequest, CompletionRequest, AdapterAction])

    @app.exception_handler(ServerError)
    async def _server_error(_: Request, exc: ServerError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        response = error_response(for_status(exc.status_code, request.url.path, exc.detail))
        response.headers.update(exc.headers or {})  # 405's Allow
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(from_validation(exc.errors()))

    async def parse(request: Request, model: type[BaseModel], runtime: Runtime):
        data = parse_json(await read_body(request, runtime.settings.max_body_bytes))
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise from_validation(exc.errors()) from None

    def _respond(served: Served) -> Response:
        headers = {DIGEST_HEADER: served.digest, REF_HEADER: served.ref}
        if isinstance(served.body, dict):
            return JSONResponse(served.body, headers=headers)
        return StreamingResponse(served.body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", **headers})

    @app.post("/v1/chat/completions", openapi_extra=openapi.request_body(ChatCompletionRequest),
              responses=openapi.completion_responses(ChatCompletion))
    async def chat_completions(request: Request, runtime: Rt, principal: User) -> Response:
        """OpenAI's chat completions; `model` is the base or any registry adapter ref."""
        req = await parse(request, ChatCompletionRequest, runtime)
        req = with_user_header(req, request.headers)  # canary stickiness
        return _respond(await runtime.handlers.chat(req, request.is_disconnected, principal))

    @app.post("/v1/completions", openapi_extra=openapi.request_body(CompletionRequest),
              responses=openapi.completion_responses(Completion))
    async def completions(request: Request, runtime: Rt, principal: User) -> Response:
        """OpenAI's (legacy) text completions, one prompt per request."""
        req = await parse(request, CompletionRequest, runtime)
        req = with_user_header(req, request.headers)  # canary stickiness
        return _respond(await runtime.handlers.completion(req, request.is_disconnected,
                                                          principal))

    @app.get("/v1/models", responses=openapi.errors(*openapi.READ_ERRORS, 429))
    async def models(runtime: Rt, principal: Budgeted,
                     include_refused: bool = False) -> ModelList:
        """The base and the adapters it can serve (those the API key may use); with
        `?include_refused=true` every other registry adapter too, with the reason in `refused`."""
        cards: list[ModelCard] = await runtime.models.cards(include_refused)
        return ModelList(data=visible(principal, cards, lambda c: c.root if c.parent else None))

    @app.post("/v1/adapters/load", openapi_extra=openapi.request_body(AdapterAction),
              responses=openapi.errors(*openapi.ADMIN_ERRORS), dependencies=[Depends(budgeted)])
    async def load_adapter(request: Request, runtime: Rt, principal: Admin) -> dict[str, Any]:
        req = await parse(request, AdapterAction, runtime)
        return await runtime.models.load(req.model, principal)

    @app.post("/v1/adapters/unload", openapi_extra=openapi.request_body(AdapterAction),
              responses=openapi.errors(*openapi.ADMIN_ERRORS), dependencies=[Depends(budgeted)])
    async def unload_adapter(request: Request, runtime: Rt, principal: Admin) -> dict[str, Any]:
        req = await parse(request, AdapterAction, runtime)
        return await runtime.models.unload(req.model, principal)

    @app.get("/v1/admin/engine", dependencies=[Depends(require_admin), Depends(budgeted)],
             responses=openapi.errors(401, 403, 405, 500, 503))
    async def engine_state(runtime: Rt) -> dict[str, Any]:
        """The engine's process and how many times it loaded the base weights."""
        return runtime.engine_state()

    @app.post("/v1/admin/engine/restart", dependencies=[Depends(require_operator)],
              responses=openapi.errors(401, 403, 405, 500, 503))
    async def restart_engine(runtime: Rt) -> dict[str, Any]:
        """Operator action: reload the base weights in a fresh engine; in-flight requests fail,
        loaded adapters are loaded again. The base-load counter goes up by one."""
        return await runtime.restart_engine()

    @app.get("/health", responses=openapi.errors(405, 500, 503))
    async def health(runtime: Rt) -> dict[str, str]:
        try:
            await runtime.engine_health()
        except Exception as exc:  # unauthenticated: a fixed reason, the detail in the log
            raise probe_failure(exc) from None
        return {"status": "ok"}

    @app.get("/ready", responses=openapi.errors(405, 500, 503))
    async def ready(runtime: Rt) -> dict[str, Any]:
        try:
            await runtime.engine_health()
            await runtime.models.registry_ready()
        except Exception as exc:  # unauthenticated: a fixed reason, the detail in the log
            raise probe_failure(exc) from None
        return {"status": "ready", "model": runtime.settings.name,
                "engine": runtime.engine.info.name}

    # Every tenant's adapter names and counts: an operator's (unscoped admin key) unless
    # --open-metrics; a server without keys has no tenants and keeps it open.
    metrics_access = [] if runtime.settings.open_metrics else [Depends(require_operator),
                                                                Depends(budgeted)]

    @app.get("/metrics", dependencies=metrics_access,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}},
                        **openapi.errors(401, 403, 405, 429, 500)})
    async def metrics(runtime: Rt) -> Response:
        return Response(generate_latest(runtime.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    playground.install(app)  # /ui: the chat playground
    if runtime.settings.protect_metrics:
        protect_routes(app)  # last: every route it guards exists by now
    return app
