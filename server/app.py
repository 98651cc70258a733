"""HTTP transport: routes, auth and shared state as dependencies, one error handler.

Handlers hold the logic; this module turns HTTP into validated requests and errors into
OpenAI-shaped JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from loramux.server.errors import (
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    ServerError,
    Unauthorized,
)
from loramux.server.protocol import (
    AdapterAction,
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from loramux.server.runtime import Runtime

log = logging.getLogger(__name__)


def _error_body(message: str, type_: str, param: str | None = None,
                code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


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

    app = FastAPI(title="loramux", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible multi-LoRA server; adapters from the registry.")
    app.state.runtime = runtime

    @app.exception_handler(ServerError)
    async def _server_error(_: Request, exc: ServerError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if hasattr(exc, "retry_after") else None
        return JSONResponse(_error_body(exc.message, exc.type, exc.param, exc.code),
                            status_code=exc.status, headers=headers)

    @app.exception_handler(404)
    async def _not_found(request: Request, _: Exception) -> JSONResponse:
        return JSONResponse(_error_body(f"no route {request.url.path}", "invalid_request_error",
                                        code="not_found"), status_code=404)

    def _key(request: Request, runtime: Runtime) -> set[str]:
        if not runtime.api_keys:
            return {"user", "admin"}
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        scopes = runtime.api_keys.get(token.strip())
        if scopes is None:
            raise Unauthorized("invalid API key")
        return scopes

    def user(request: Request, runtime: Rt) -> None:
        _key(request, runtime)

    def admin(request: Request, runtime: Rt) -> None:
        if "admin" not in _key(request, runtime):
            raise Forbidden("this endpoint needs an API key with the admin scope")

    async def parse(request: Request, model: type[BaseModel], runtime: Runtime):
        declared = request.headers.get("content-length")
        limit = runtime.settings.max_body_bytes
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        body = await request.body()
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"malformed JSON body: {exc}") from exc
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise InvalidRequest(f"{where}: {first['msg']}", param=where) from exc

    async def _respond(result) -> Response:
        if isinstance(result, dict):
            return JSONResponse(result)
        return StreamingResponse(result, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.post("/v1/chat/completions", dependencies=[Depends(user)])
    async def chat_completions(request: Request, runtime: Rt) -> Response:
        req = await parse(request, ChatCompletionRequest, runtime)
        return await _respond(await runtime.handlers.chat(req, request.is_disconnected))

    @app.post("/v1/completions", dependencies=[Depends(user)])
    async def completions(request: Request, runtime: Rt) -> Response:
        req = await parse(request, CompletionRequest, runtime)
        return await _respond(await runtime.handlers.completion(req, request.is_disconnected))

    @app.get("/v1/models", dependencies=[Depends(user)])
    async def models(runtime: Rt, include_refused: bool = False) -> ModelList:
        """The base and the adapters it can serve; `?include_refused=true` adds every other
        registry adapter, with the reason it is refused in `refused`."""
        cards: list[ModelCard] = await runtime.models.cards(include_refused)
        return ModelList(data=cards)

    @app.post("/v1/adapters/load", dependencies=[Depends(admin)])
    async def load_adapter(request: Request, runtime: Rt) -> dict[str, Any]:
        req = await parse(request, AdapterAction, runtime)
        return await runtime.models.load(req.model)

    @app.post("/v1/adapters/unload", dependencies=[Depends(admin)])
    async def unload_adapter(request: Request, runtime: Rt) -> dict[str, Any]:
        req = await parse(request, AdapterAction, runtime)
        return await runtime.models.unload(req.model)

    @app.get("/v1/admin/engine", dependencies=[Depends(admin)])
    async def engine_state(runtime: Rt) -> dict[str, Any]:
        """The engine's process and how many times it loaded the base weights."""
        return runtime.engine_state()

    @app.post("/v1/admin/engine/restart", dependencies=[Depends(admin)])
    async def restart_engine(runtime: Rt) -> dict[str, Any]:
        """Operator action: reload the base weights in a fresh engine; in-flight requests fail,
        loaded adapters are loaded again. The base-load counter goes up by one."""
        return await runtime.restart_engine()

    @app.get("/health")
    async def health(runtime: Rt) -> dict[str, str]:
        await runtime.engine_health()
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(runtime: Rt) -> dict[str, Any]:
        await runtime.engine_health()
        await asyncio.to_thread(runtime.models.check_registry)
        return {"status": "ready", "model": runtime.settings.name,
                "engine": runtime.engine.info.name}

    @app.get("/metrics")
    async def metrics(runtime: Rt) -> Response:
        return Response(generate_latest(runtime.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    return app
