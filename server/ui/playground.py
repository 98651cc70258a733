"""The server's playground: routes under ``/ui``.

The page (server-rendered) lists the models ``/v1/models`` lists for the caller's key; its
script asks ``/ui/api/chat`` (the same chat handler as ``/v1/chat/completions``, so the same
adapter resolution, key scopes and budgets) once per chosen adapter, and polls
``/ui/api/metrics`` for the per-adapter figures. The API key travels in the login cookie;
a JSON-only body and a same-origin check keep other sites from driving these routes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

from loramux.server.auth import UI_COOKIE, authenticate_ui, ui_login_check, visible
from loramux.server.errors import (
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    ServerError,
    Unauthorized,
    from_validation,
)
from loramux.server.protocol import ChatCompletionRequest
from loramux.server.ui.stats import per_adapter
from loramux.web import Pages, login_redirect, mount_static
from loramux.web.login import LOGIN, Login

HERE = Path(__file__).resolve().parent
pages = Pages("loramux server", HERE / "templates")
router = APIRouter(prefix="/ui", include_in_schema=False)
MAX_BODY = 64 << 10  # one message of at most 8000 characters, as JSON


class PlaygroundChat(BaseModel):
    """One turn the page sends: the model to ask and the user's message."""

    model: str = Field(min_length=1, max_length=512)
    message: str = Field(min_length=1, max_length=8000)
    max_tokens: int = Field(default=64, ge=1, le=1024)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)


def install(app: FastAPI) -> None:
    """Add ``/ui`` to the server's app, with its own login sessions."""
    login = Login(pages, UI_COOKIE, ui_login_check(app), what="API key")
    app.state.ui_login = login
    app.include_router(login.router())
    app.include_router(router)
    mount_static(app, "/ui/assets", HERE / "static")
    mount_static(app)


def _same_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise Forbidden("cross-origin requests to the playground are refused")
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise InvalidRequest("the playground API takes application/json")


async def _body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise PayloadTooLarge(f"request body exceeds {MAX_BODY} bytes")
    return body


@router.get("")
async def playground(request: Request) -> Response:
    runtime = request.app.state.runtime
    try:
        principal = await authenticate_ui(request)
    except Unauthorized as exc:
        login: Login = request.app.state.ui_login
        if login.has_cookie(request):
            return login.expired("/ui", exc.message)
        return login_redirect(request, LOGIN)
    try:
        with principal.admit():  # every authenticated route spends the key's budget
            cards = visible(principal, await runtime.models.cards(),
                            lambda c: c.root if c.parent else None)
    except ServerError as exc:
        return pages.error(exc.status, exc.message, user=principal.name)
    models = [card.id for card in cards]
    models += sorted({f"{card.root}:{alias}" for card in cards if card.parent
                      for alias in card.aliases})
    return pages.render("playground.html", models=models, user=principal.name,
                        anonymous=not runtime.keys.enabled, base=runtime.settings.name)


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    """One playground turn through the server's chat handler; the answer, which version
    answered (`served`), and how long it took."""
    principal = await authenticate_ui(request)
    _same_origin(request)
    runtime = request.app.state.runtime
    body = await _body(request)
    try:
        turn = PlaygroundChat.model_validate_json(body)
        req = ChatCompletionRequest.model_validate({
            "model": turn.model, "max_tokens": turn.max_tokens, "temperature": turn.temperature,
            "messages": [{"role": "user", "content": turn.message}]})
    except ValidationError as exc:
        raise from_validation(exc.errors()) from None
    started = time.perf_counter()
    served = await runtime.handlers.chat(req, request.is_disconnected, principal)
    assert isinstance(served.body, dict)  # not streamed
    choice: dict[str, Any] = served.body["choices"][0]
    return JSONResponse({"model": turn.model, "served": served.ref, "digest": served.digest,
                         "answer": choice["message"]["content"],
                         "finish_reason": choice.get("finish_reason"),
                         "usage": served.body.get("usage"),
                         "seconds": round(time.perf_counter() - started, 3)})


@router.get("/api/metrics")
async def metrics(request: Request) -> Response:
    """The per-adapter figures the caller's key may see (its own adapters and the base)."""
    principal = await authenticate_ui(request)
    with principal.admit():  # every authenticated route spends the key's budget
        rows = per_adapter(request.app.state.runtime.metrics.registry, principal)
    return JSONResponse({"adapters": rows}, headers={"Cache-Control": "no-store"})
