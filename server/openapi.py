"""What /openapi.json says about the API: request bodies, responses and every error status.

The app parses bodies itself (streamed, bounded, see `app.read_json`), so FastAPI sees no body
parameter and would document none; the protocol models are added to the schema here instead,
and each route names its body, its success response and its errors, all errors in OpenAI's
shape. Client generators and fuzzers (tests/server/test_fuzz_server.py) read this.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from loramux.server.protocol import ErrorResponse
from loramux.wire import DIGEST_HEADER, REF_HEADER

ERRORS: dict[int, str] = {
    400: "The request is invalid (malformed JSON, a bad or unsupported field, too long a prompt, "
         "an adapter this server cannot serve); `error.param` names the field.",
    401: "No API key, or an unknown one.",
    403: "The key may not use this endpoint or this adapter.",
    404: "`model` names neither the base nor a registry adapter.",
    405: "The path exists but not with this HTTP method.",
    413: "The body is larger than --max-body-bytes.",
    429: "The server or this key is at its limit; retry after `Retry-After` seconds.",
    500: "A bug in the server: the message carries an error id, the log the details.",
    503: "The engine or the adapter registry cannot answer; retry after `Retry-After` seconds.",
}
COMPLETION_ERRORS = (400, 401, 403, 404, 405, 413, 429, 500, 503)
ADMIN_ERRORS = (400, 401, 403, 404, 405, 413, 429, 500, 503)  # 429: the key's budget
READ_ERRORS = (400, 401, 403, 405, 500, 503)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for these statuses, each with OpenAI's error body."""
    return {status: {"model": ErrorResponse, "description": ERRORS[status]}
            for status in statuses}


def completion_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """200 as JSON (`model`) or as server-sent events, with the provenance headers."""
    headers = {
        DIGEST_HEADER: {"description": "Manifest digest of the adapter that produced the "
                        "response (`sha256:…`), or `base` when no adapter did.",
                        "schema": {"type": "string"}},
        REF_HEADER: {"description": "The adapter version `model` resolved to (`name@N`), or "
                     "the served base's name.", "schema": {"type": "string"}},
    }
    ok = {"model": model, "headers": headers,
          "description": "The completion; with `stream: true`, server-sent events of chunks, "
          "then `data: [DONE]`. A failure after the first event is sent as an event "
          "`data: {\"error\": {…}}` (OpenAI's error object) before `data: [DONE]`.",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    return {200: ok, **errors(*COMPLETION_ERRORS)}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra=` naming `model` as the JSON body (the app still parses it itself)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def install(app: FastAPI, bodies: list[type[BaseModel]]) -> None:
    """Make `app.openapi()` add the body models' schemas and drop FastAPI's 422, which this
    server never sends (a request that fails validation is a 400 in OpenAI's shape)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            _, defs = models_json_schema([(m, "validation") for m in bodies],
                                         ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in defs.get("$defs", {}).items():
                components.setdefault(name, definition)
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
