"""Handler and admission logic through the real FastAPI app (in process, httpx's ASGI transport)
with a fake engine: request number `limit + 1` gets 429 with `Retry-After` while `limit` are in
flight, and the usage chunk of a stream appears only with `stream_options.include_usage`.

The fake engine holds every request at a gate until the test opens it, so "in flight" is a fact
the test waits for (an event), never a sleep that hopes the requests have started.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from loramux.server import compat
from loramux.server.adapters import AdapterManager, AdapterManagerOptions
from loramux.server.admission import Admission
from loramux.server.app import create_app
from loramux.server.auth import KeyStore
from loramux.server.engines.base import Delta, EngineInfo, GenerationRequest
from loramux.server.handlers import Handlers
from loramux.server.metrics import Metrics
from loramux.server.models import ServingModels
from loramux.server.resolver import Resolver
from loramux.server.settings import ServerSettings

BASE_NAME, LIMIT, WORDS = "fake-base", 3, ["alpha", " beta", " gamma", " delta"]
HELLO = [{"role": "user", "content": "Hello!"}]


class FakeTokenizer:
    """One token per character: enough for prompt lengths the test can compute."""

    def apply_chat_template(self, messages, **_) -> list[int]:
        return [ord(c) for m in messages for c in f"<{m['role']}>{m['content']}"]

    def __call__(self, text: str, **_) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


class GatedEngine:
    """Streams WORDS, one token each, once `gate` is open; counts requests that reached it."""

    def __init__(self) -> None:
        self.info = EngineInfo("fake", BASE_NAME, "none", 4096, 1, 64, 1)
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0
        self.all_waiting = asyncio.Event()
        self.expect_waiting = 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.waiting += 1
        if self.waiting >= self.expect_waiting:
            self.all_waiting.set()
        await self.gate.wait()
        self.waiting -= 1
        words = WORDS[:request.sampling.max_tokens]
        for i, word in enumerate(words):
            yield Delta(0, word, [i + 1], "length" if i == len(words) - 1 else None)

    async def abort(self, request_id: str) -> None:
        pass

    async def check_health(self) -> None:
        pass


@pytest.fixture
def app_and_engine(tmp_path: Path):
    engine, metrics = GatedEngine(), Metrics()
    registry = SimpleNamespace()  # base-model requests never reach the registry
    models = ServingModels(
        registry, Resolver(registry, BASE_NAME), AdapterManager(
            engine, registry, metrics, AdapterManagerOptions(cache_dir=tmp_path / "cache")),
        compat.ServedBase(None, "none", 64), metrics, BASE_NAME)
    handlers = Handlers(engine, FakeTokenizer(), models, metrics, Admission(LIMIT, metrics))
    runtime = SimpleNamespace(settings=ServerSettings(base=BASE_NAME), keys=KeyStore(None),
                              handlers=handlers, metrics=metrics, models=models)
    return create_app(runtime), engine


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                             timeout=30)


def test_request_past_the_limit_gets_429_with_retry_after(app_and_engine) -> None:
    app, engine = app_and_engine
    body = {"model": BASE_NAME, "messages": HELLO, "max_tokens": 2}

    async def scenario():
        engine.gate.clear()
        engine.expect_waiting = LIMIT
        async with client(app) as http:
            held = [asyncio.create_task(http.post("/v1/chat/completions", json=body))
                    for _ in range(LIMIT)]
            await asyncio.wait_for(engine.all_waiting.wait(), 10)  # LIMIT in flight, for sure
            try:  # a request admitted past the limit would wait at the gate: bound it
                refused = await asyncio.wait_for(http.post("/v1/chat/completions", json=body), 10)
                streamed = await asyncio.wait_for(http.post("/v1/completions", json={
                    "model": BASE_NAME, "prompt": "Hi", "max_tokens": 2, "stream": True}), 10)
            finally:
                engine.gate.set()
            done = await asyncio.gather(*held)
            after = await http.post("/v1/chat/completions", json=body)
        return refused, streamed, done, after

    refused, streamed, done, after = asyncio.run(scenario())
    for r in (refused, streamed):
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "1"
        error = r.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "server_overloaded"
        assert f"limit of {LIMIT}" in error["message"]
    assert [r.status_code for r in done] == [200] * LIMIT, "the admitted ones all finish"
    assert after.status_code == 200, "slots are given back when requests end"


def _events(text: str) -> list:
    lines = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data:")]
    assert lines[-1] == "[DONE]", lines
    return [json.loads(line) for line in lines[:-1]]


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"messages": HELLO}),
    ("/v1/completions", {"prompt": "Hello!"}),
])
def test_usage_chunk_only_with_include_usage(app_and_engine, path: str, body: dict) -> None:
    app, _ = app_and_engine
    body = {"model": BASE_NAME, "max_tokens": 3, "stream": True} | body
    prompt_tokens = (len("<user>Hello!") if "messages" in body else len("Hello!"))

    async def both():
        async with client(app) as http:
            plain = await http.post(path, json=body)
            usage = await http.post(path, json=body | {"stream_options": {"include_usage": True}})
        return plain, usage

    plain, usage = asyncio.run(both())
    assert plain.status_code == usage.status_code == 200
    without = _events(plain.text)
    assert without and all("usage" not in e for e in without), without
    text = "".join(c.get("text") or c.get("delta", {}).get("content") or ""
                   for e in without for c in e["choices"])
    assert text == "".join(WORDS[:3])

    with_usage = _events(usage.text)
    *chunks, last = with_usage
    assert last["choices"] == [] and last["usage"] == {
        "prompt_tokens": prompt_tokens, "completion_tokens": 3,
        "total_tokens": prompt_tokens + 3}
    assert all(c.get("usage") is None for c in chunks), chunks
