"""Schema fuzzing of the OpenAI server (issue 12): schemathesis generates requests from the
server's own /openapi.json, valid ones and invalid ones, and sends them over real HTTP.

Pass: no 5xx; every 4xx is OpenAI's error object; responses match the documented statuses,
content types and schemas; data the schema calls invalid is refused; and afterwards the server
still answers a correct completion with nothing left in flight. Hypothesis runs derandomized
with a fixed example budget, so every run sends the same requests in bounded time.

The fast variant (every run) serves a fake engine; the `slow` one fuzzes the session's real
vLLM server with a small budget, every generated `max_tokens` capped so that each request
stays cheap on a CPU.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from loramux.server.app import create_app
from loramux.server.settings import ServerSettings
from loramux.support.scrape import metric_sum

sys.path.insert(0, str(Path(__file__).parent))
from fake_engine import WORD, FakeEngine, LiveServer, build_runtime

BASE = "fake-base"
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]
# (path, method, examples per generation mode): the completion endpoints get most of the budget.
OPERATIONS = [("/v1/chat/completions", "POST", 30), ("/v1/completions", "POST", 20),
              ("/v1/models", "GET", 25), ("/v1/adapters/load", "POST", 8),
              ("/v1/adapters/unload", "POST", 8), ("/v1/admin/engine", "GET", 3),
              ("/v1/admin/engine/restart", "POST", 3), ("/health", "GET", 3),
              ("/ready", "GET", 3), ("/metrics", "GET", 3)]


def check_response(case, response: requests.Response) -> None:
    """The pass criteria for one generated request."""
    assert response.status_code < 500, (response.status_code, response.text[:500], case.body)
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
    elif "text/event-stream" in response.headers.get("content-type", ""):
        lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]", lines[-3:]
        assert not any('"error"' in line for line in lines), lines
    case.validate_response(response, checks=CHECKS)


def fuzz(schema, path: str, method: str, examples: int, base_url: str,
         headers: dict[str, str] | None = None,
         adjust: Callable[[Any], None] | None = None) -> tuple[int, int]:
    """Send `examples` positive and `examples` negative cases of one operation; returns how
    many requests went out and the least that must have (the whole budget for an operation
    with a body; one otherwise, as Hypothesis stops once it has tried every distinct input)."""
    operation = schema[path][method]
    has_input = bool(len(operation.body) or len(operation.query))
    sent = 0
    with requests.Session() as session:
        # Without a body or parameters there is nothing to make invalid.
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)[:2 if has_input else 1]:
            @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case) -> None:
                nonlocal sent
                if adjust is not None:
                    adjust(case)
                response = case.call(base_url=base_url, session=session, headers=headers,
                                     timeout=60)
                sent += 1
                check_response(case, response)

            run()
    return sent, (2 * examples if len(operation.body) else 1)


def answers_correctly(url: str, headers: dict[str, str] | None = None,
                      model: str = BASE) -> str:
    r = httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=120, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
        "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    settings_ = ServerSettings.from_sources({"base": BASE, "max_body_bytes": 65536}, environ={})
    runtime = build_runtime(settings_, root / "registry", root / "cache",
                            FakeEngine(max_model_len=512, answer_tokens=3))
    with LiveServer(create_app(runtime)) as url:
        yield url, runtime


@pytest.mark.parametrize(("path", "method", "examples"), OPERATIONS,
                         ids=[f"{m} {p}" for p, m, _ in OPERATIONS])
def test_fuzz_against_a_fake_engine(fake_server, path: str, method: str, examples: int) -> None:
    url, runtime = fake_server
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    sent, planned = fuzz(schema, path, method, examples, url)
    assert sent >= planned, (sent, planned)
    assert answers_correctly(url) == WORD * 3, "the server still answers afterwards"
    assert runtime.handlers.admission.count == 0, "nothing left in flight"
    assert metric_sum(httpx.get(f"{url}/metrics").text, "loramux_requests_in_flight") == 0


def _cheap(case) -> None:
    """Keep generated requests cheap for a CPU engine: few tokens, few choices, while every
    other field stays as generated."""
    if isinstance(case.body, dict):
        for key, cap in (("max_tokens", 4), ("max_completion_tokens", 4), ("n", 2)):
            value = case.body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > cap:
                case.body[key] = cap


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fuzz_against_the_real_vllm_engine(server) -> None:
    from conftest import ADMIN_KEY

    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    before = answers_correctly(server.url, auth, model="demo-base")
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=auth)
    for path, method, examples in [("/v1/chat/completions", "POST", 20),
                                   ("/v1/completions", "POST", 15), ("/v1/models", "GET", 3),
                                   ("/v1/adapters/load", "POST", 3)]:
        fuzz(schema, path, method, examples, server.url, headers=auth, adjust=_cheap)
    assert answers_correctly(server.url, auth, model="demo-base") == before, "same answer after"
    assert server.metric("loramux_requests_in_flight") == 0
