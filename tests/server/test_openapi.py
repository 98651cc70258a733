"""/openapi.json describes the API (issue 12): the request bodies (the protocol models, though the
app parses bodies itself), the success responses with their provenance headers, and every error
status with OpenAI's error schema. FastAPI's 422 never appears: validation failures are 400.
Served by the live app over real HTTP, with a fake engine."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from loramux.server.app import create_app
from loramux.server.settings import ServerSettings

sys.path.insert(0, str(Path(__file__).parent))
from fake_engine import LiveServer, build_runtime

ERROR_REF = "#/components/schemas/ErrorResponse"
STATUSES = {"400", "401", "403", "404", "405", "413", "429", "503"}


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("openapi")
    runtime = build_runtime(ServerSettings.from_sources({"base": "fake-base"}, environ={}),
                            root / "registry", root / "cache")
    with LiveServer(create_app(runtime)) as url:
        r = httpx.get(f"{url}/openapi.json", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _resolve(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


@pytest.mark.parametrize(("path", "body", "fields"), [
    ("/v1/chat/completions", "ChatCompletionRequest", {"model", "messages", "max_tokens",
                                                       "stream", "tools", "logit_bias", "seed"}),
    ("/v1/completions", "CompletionRequest", {"model", "prompt", "max_tokens", "echo"}),
    ("/v1/adapters/load", "AdapterAction", {"model"}),
    ("/v1/adapters/unload", "AdapterAction", {"model"}),
])
def test_request_bodies_are_documented(schema, path: str, body: str, fields: set[str]) -> None:
    request = schema["paths"][path]["post"]["requestBody"]
    assert request["required"] is True
    ref = request["content"]["application/json"]["schema"]["$ref"]
    assert ref == f"#/components/schemas/{body}"
    model = _resolve(schema, ref)
    assert fields <= set(model["properties"]), set(model["properties"])
    for inner in _refs(model):  # every $ref inside resolves
        _resolve(schema, inner)
    seed = model["properties"].get("seed")
    if seed:  # bounds are part of the contract, e.g. the int64 seed vLLM's samplers take
        number = next(s for s in seed["anyOf"] if s.get("type") == "integer")
        assert (number["minimum"], number["maximum"]) == (-(2**63), 2**63 - 1)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [
            r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


@pytest.mark.parametrize(("path", "response"), [
    ("/v1/chat/completions", "ChatCompletion"), ("/v1/completions", "Completion")])
def test_completion_responses_and_every_error_status(schema, path: str, response: str) -> None:
    responses = schema["paths"][path]["post"]["responses"]
    assert set(responses) >= STATUSES, sorted(responses)
    ok = responses["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith(f"/{response}")
    assert "text/event-stream" in ok["content"]
    assert {"x-loramux-adapter-digest", "x-loramux-adapter-ref"} <= set(ok["headers"])
    usage = _resolve(schema, ok["content"]["application/json"]["schema"]["$ref"])
    assert {"id", "choices", "usage", "model"} <= set(usage["required"])


def test_every_error_response_has_the_openai_error_schema(schema) -> None:
    seen: set[str] = set()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (path, method)
            errors = {s: r for s, r in responses.items() if s[0] in "45"}
            assert errors, f"{method.upper()} {path} documents no error"
            for status, r in errors.items():
                ref = r["content"]["application/json"]["schema"]["$ref"]
                assert ref == ERROR_REF, (path, method, status, ref)
                seen.add(status)
    assert seen >= STATUSES, sorted(seen)
    error = _resolve(schema, ERROR_REF)
    detail = _resolve(schema, error["properties"]["error"]["$ref"])
    assert set(detail["required"]) == {"message", "type", "param", "code"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]
