"""The OpenAI server's request path under bad input and faults (issue 12, items 2, 6, 8, 9).

Every error a client can get is OpenAI's `{"error": {...}}` with the right status: bodies that
json cannot read, the framework's 404/405/bad query, unsupported fields (named in `param`),
engine failures (a generic 500 with an error id, never exception text or local paths), registry
outages (503 with Retry-After) and a stream that fails midway (an error event, then [DONE]).
A chunked body is refused as soon as it passes the limit, not after it was read whole. Requests
are admitted before any tokenization, which runs off the event loop with a bound on characters.

Real app, real HTTP on loopback (uvicorn in a thread), real registry; a fake engine and
tokenizer (tests/server/fake_engine.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import loramux.registry as reg
from loramux.registry.errors import RemoteError
from loramux.server.app import create_app
from loramux.server.settings import ServerSettings

sys.path.insert(0, str(Path(__file__).parent))
from fake_engine import FakeEngine, FakeTokenizer, LiveServers, build_runtime

BASE = "fake-base"
HELLO = [{"role": "user", "content": "hi"}]
SECRET = "/home/operator/secret/weights.py"  # what an exception may say; a client never sees it


def settings(**kw: Any) -> ServerSettings:
    return ServerSettings.from_sources({"base": BASE} | kw, environ={})


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    """The OpenAI error object of `r`, after checking the status and the exact shape."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    return error


@pytest.fixture
def serve(tmp_path: Path):
    """`serve(engine=None, tokenizer=None, **settings)` → (url, runtime) of a live server."""
    servers = LiveServers()

    def start(engine: FakeEngine | None = None, tokenizer=None, **kw: Any):
        runtime = build_runtime(settings(**kw), tmp_path / "registry", tmp_path / "cache",
                                engine or FakeEngine())
        if tokenizer is not None:
            runtime.handlers.tokenizer = tokenizer
        return servers.start(runtime), runtime

    yield start
    servers.close()


# -- item 2: a chunked body is counted as it arrives -----------------------------------------


def test_chunked_body_is_refused_at_the_limit_not_after_reading_it(tmp_path: Path) -> None:
    """64 KiB sent chunked (no Content-Length) against a 4 KiB limit: the server answers 413
    after reading at most the chunk that crossed the limit, never the rest."""
    runtime = build_runtime(settings(max_body_bytes=4096), tmp_path / "registry",
                            tmp_path / "cache", FakeEngine())
    app = create_app(runtime)
    chunk, total = b" " * 1024, 64
    consumed = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal consumed
        if consumed >= total:
            return {"type": "http.disconnect"}
        consumed += 1
        return {"type": "http.request", "body": chunk, "more_body": consumed < total}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "scheme": "http",
             "headers": [(b"host", b"127.0.0.1"), (b"transfer-encoding", b"chunked"),
                         (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = json.loads(b"".join(m.get("body", b"") for m in sent
                               if m["type"] == "http.response.body"))
    assert start["status"] == 413, body
    assert body["error"]["code"] == "request_too_large"
    assert consumed <= 4096 // 1024 + 1, f"read {consumed} of {total} chunks past a 4 KiB limit"


# -- item 6: every error in OpenAI's shape ----------------------------------------------------


def _chat(**kw: Any) -> dict[str, Any]:
    return {"model": BASE, "messages": HELLO, "max_tokens": 2} | kw


RAW_BODIES = {
    "deep nesting (RecursionError)": b'{"model": "fake-base", "messages": ' + b"[" * 100_000,
    "huge integer (ValueError)": (b'{"model": "fake-base", "messages": [], "max_tokens": 1'
                                  + b"0" * 5000 + b"}"),
    "NaN": b'{"model": "fake-base", "messages": [{"role": "user", "content": "hi"}], '
           b'"temperature": NaN}',
    "65 levels in a schema": json.dumps(_chat(response_format={
        "type": "json_schema", "json_schema": json.loads('{"a":' * 65 + "1" + "}" * 65)})
    ).encode(),
    "not UTF-8": b'{"model": "\xff\xfe"}',
    "not JSON": b"model=fake-base",
}


def test_bodies_json_cannot_read_are_400(serve) -> None:
    url, _ = serve()
    for what, raw in RAW_BODIES.items():
        r = httpx.post(f"{url}/v1/chat/completions", content=raw, timeout=30,
                       headers={"content-type": "application/json"})
        error = error_of(r, 400)
        assert error["type"] == "invalid_request_error", (what, error)


def test_framework_errors_have_openai_shape(serve) -> None:
    url, _ = serve()
    r = httpx.get(f"{url}/v1/chat/completions", timeout=10)
    assert error_of(r, 405)["code"] == "method_not_allowed"
    assert r.headers["allow"] == "POST"
    assert error_of(httpx.get(f"{url}/v2/nothing", timeout=10), 404)["code"] == "not_found"
    bad_query = error_of(httpx.get(f"{url}/v1/models?include_refused=perhaps", timeout=10), 400)
    assert bad_query["param"] == "include_refused", bad_query


@pytest.mark.parametrize(("field", "value", "code"), [
    ("seed", 2**64, None),  # vLLM's samplers take int64; past it the engine failed with a 500
    ("seed", -(2**63) - 1, None),
    ("logit_bias", {"hello": 5}, "invalid_value"),  # keys are token ids
    ("logit_bias", {"50256": 500}, "invalid_value"),
    ("logit_bias", {"50256": -100}, "unsupported_parameter"),  # valid, but not applied
    ("tools", [{"type": "function", "function": {"name": "f"}}], "unsupported_parameter"),
    ("tool_choice", "auto", "unsupported_parameter"),
    ("functions", [{"name": "f"}], "unsupported_parameter"),
    ("function_call", "auto", "unsupported_parameter"),
    ("parallel_tool_calls", True, "unsupported_parameter"),
    ("top_k", -2, None),  # -1 and 0 are "off"; below is no value
    ("min_p", 1.5, None),
    ("presence_penalty", 2.5, None),  # OpenAI's range is [-2, 2]
    ("repetition_penalty", 0, None),
    ("audio", {"voice": "alloy", "format": "wav"}, "unsupported_parameter"),
    ("modalities", ["text", "audio"], "unsupported_parameter"),
    ("store", True, "unsupported_parameter"),
    ("service_tier", "flex", "unsupported_parameter"),
])
def test_fields_not_honoured_are_refused_by_name(serve, field: str, value: Any,
                                                 code: str | None) -> None:
    url, runtime = serve()
    r = httpx.post(f"{url}/v1/chat/completions", json=_chat(**{field: value}), timeout=10)
    error = error_of(r, 400)
    assert (error["param"], error["code"]) == (field, code), error
    assert field in error["message"], error
    assert runtime.engine.served == [], "nothing reached the engine"


def test_neutral_values_of_unsupported_fields_pass(serve) -> None:
    """What OpenAI clients send by default (null, 0, [], "none") asks for nothing: accepted."""
    url, _ = serve()
    neutral = dict(tools=[], tool_choice="none", logit_bias={}, frequency_penalty=0,
                   presence_penalty=0.0, top_k=-1, min_p=0, repetition_penalty=1.0,
                   parallel_tool_calls=None, store=False,
                   service_tier="auto", modalities=["text"], seed=2**63 - 1,
                   some_vendor_extension={"ignored": True})
    r = httpx.post(f"{url}/v1/chat/completions", json=_chat(**neutral), timeout=10)
    assert r.status_code == 200, r.text
    r = httpx.post(f"{url}/v1/completions", timeout=10, json={
        "model": BASE, "prompt": "hi", "max_tokens": 2, "echo": True})
    assert (error_of(r, 400)["param"], r.json()["error"]["code"]) == (
        "echo", "unsupported_parameter")


class FailingEngine(FakeEngine):
    """Fails with an exception whose text holds a local path: before the first token, or after
    `after` tokens."""

    def __init__(self, after: int | None = None) -> None:
        super().__init__()
        self.after = after

    async def generate(self, request):
        if self.after is None:
            raise RuntimeError(f"boom in {SECRET}")
        count = 0
        async for delta in super().generate(request):
            if count == self.after:
                raise RuntimeError(f"boom in {SECRET}")
            count += 1
            yield delta


def test_unexpected_engine_error_is_a_generic_500(serve, caplog) -> None:
    url, runtime = serve(FailingEngine())
    r = httpx.post(f"{url}/v1/chat/completions", json=_chat(), timeout=10)
    error = error_of(r, 500)
    assert SECRET not in r.text and "boom" not in r.text and "RuntimeError" not in r.text
    error_id = error["message"].split("error id ")[1].split(")")[0]
    logged = [rec for rec in caplog.records if error_id in rec.getMessage()]
    assert logged and logged[0].exc_info, "the details are in the server's log, under the id"
    assert runtime.handlers.admission.count == 0


def test_error_inside_a_stream_is_an_event_then_done(serve) -> None:
    url, runtime = serve(FailingEngine(after=1))
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=10,
                      json=_chat(max_tokens=5, stream=True)) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]", lines
    last = json.loads(lines[-2].removeprefix("data: "))
    assert set(last) == {"error"} and set(last["error"]) == {"message", "type", "param", "code"}
    assert last["error"]["type"] == "internal_error", last
    assert SECRET not in "\n".join(lines) and "boom" not in "\n".join(lines)
    assert runtime.handlers.admission.count == 0


def test_registry_outage_is_503_with_retry_after(serve, monkeypatch, tmp_path: Path) -> None:
    url, runtime = serve()

    def down(*_: Any, **__: Any):
        raise RemoteError(f"registry http://10.0.0.9 unreachable: {SECRET}")

    def garbled(*_: Any, **__: Any):
        raise ValueError("Expecting value: line 1 column 1 (char 0)")

    for failure in (down, garbled):
        for method in ("list", "show", "resolve", "resolve_split"):
            monkeypatch.setattr(runtime.registry, method, failure)
        for path in ("/v1/models", "/ready"):
            r = httpx.get(f"{url}{path}", timeout=10)
            error = error_of(r, 503)
            assert error["code"] == "registry_unavailable", (path, error)
            assert int(r.headers["retry-after"]) >= 1
            assert SECRET not in r.text
    for method in ("resolve", "resolve_split"):  # an alias resolves with its canary split
        monkeypatch.setattr(runtime.registry, method, down)
    r = httpx.post(f"{url}/v1/chat/completions", json=_chat(model="someone:prod"), timeout=10)
    assert error_of(r, 503)["code"] == "registry_unavailable"
    assert int(r.headers["retry-after"]) >= 1


def test_a_version_deleted_during_the_listing_is_left_out(serve, tmp_path: Path,
                                                          monkeypatch) -> None:
    from loramux.support.adapters import write_adapter

    url, runtime = serve()
    shapes = {"model.layers.0.self_attn.q_proj": (8, 8)}
    runtime.registry.push(write_adapter(tmp_path / "a", shapes, rank=2), "kept")
    runtime.registry.push(write_adapter(tmp_path / "b", shapes, rank=2, seed=1), "gone")
    show = runtime.registry.show

    def racing_show(ref, *a: Any, **kw: Any):
        if str(ref).startswith("gone"):
            raise reg.errors.NotFound("gone@1 was deleted")
        return show(ref, *a, **kw)

    monkeypatch.setattr(runtime.registry, "show", racing_show)
    r = httpx.get(f"{url}/v1/models", timeout=10)
    assert r.status_code == 200, r.text
    assert [m["id"] for m in r.json()["data"]] == [BASE, "kept@1"]


# -- item 8: admission before work, tokenization off the event loop --------------------------


class CountingTokenizer(FakeTokenizer):
    """Counts templating calls; a prompt longer than `block_over` characters blocks its worker
    until `release` is set (or 15 s pass), telling the test through `entered`."""

    def __init__(self, block_over: int | None = None) -> None:
        self.calls = 0
        self.block_over = block_over
        self.entered, self.release = threading.Event(), threading.Event()

    def apply_chat_template(self, messages, **kw: Any) -> list[int]:
        self.calls += 1
        if self.block_over is not None and sum(len(m["content"]) for m in messages) > \
                self.block_over:
            self.entered.set()
            self.release.wait(15)
        return super().apply_chat_template(messages, **kw)


def test_admission_comes_before_tokenization(serve) -> None:
    """With the admission limit N held, k more huge-prompt requests get 429 and none of them
    costs a tokenization: only the N admitted ones were templated."""
    limit, extra = 2, 3
    engine, tokenizer = FakeEngine(), CountingTokenizer()
    url, runtime = serve(engine, tokenizer, max_pending=limit)
    huge = _chat(messages=[{"role": "user", "content": "x" * 200_000}], max_tokens=1)
    held = _chat(max_tokens=1)
    engine.hold()
    with httpx.Client(timeout=30) as http:
        threads = [threading.Thread(target=http.post, args=(f"{url}/v1/chat/completions",),
                                    kwargs={"json": held}) for _ in range(limit)]
        for t in threads:
            t.start()
        engine.wait_held(limit)
        refused = [http.post(f"{url}/v1/chat/completions", json=huge) for _ in range(extra)]
        engine.release()
        for t in threads:
            t.join()
    for r in refused:
        assert error_of(r, 429)["type"] == "rate_limit_error"
        assert r.headers["retry-after"] == "1"
    assert tokenizer.calls == limit, f"{tokenizer.calls} templatings for {limit} admitted"
    assert runtime.handlers.admission.count == 0


def test_prompt_characters_are_bounded_before_any_tokenization(serve) -> None:
    tokenizer = CountingTokenizer()
    url, _ = serve(tokenizer=tokenizer, max_prompt_chars=1000)
    messages = [{"role": "system", "content": "s" * 600}, {"role": "user", "content": "u" * 401}]
    r = httpx.post(f"{url}/v1/chat/completions", timeout=10, json=_chat(messages=messages))
    error = error_of(r, 400)
    assert (error["param"], error["code"]) == ("messages", "prompt_too_long"), error
    assert "1001" in error["message"] and "1000" in error["message"]
    r = httpx.post(f"{url}/v1/completions", timeout=10,
                   json={"model": BASE, "prompt": "p" * 1001, "max_tokens": 1})
    assert error_of(r, 400)["param"] == "prompt"
    assert tokenizer.calls == 0


def test_a_huge_prompt_does_not_block_a_cheap_request(serve) -> None:
    """While a 4 MB prompt is in its tokenizer (held there by the test), a cheap request is
    answered: the tokenizer runs in a worker thread, not on the server's event loop. On the
    loop, the cheap request could not be served until the tokenizer gave up."""
    tokenizer = CountingTokenizer(block_over=1_000_000)
    url, _ = serve(tokenizer=tokenizer, max_prompt_chars=5_000_000, max_body_bytes=8 * 2**20)
    huge = _chat(messages=[{"role": "user", "content": "x" * 4_000_000}], max_tokens=1)
    results: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: results.setdefault("huge", httpx.post(
        f"{url}/v1/chat/completions", json=huge, timeout=60)))
    slow.start()
    try:
        assert tokenizer.entered.wait(30), "the huge prompt never reached its tokenizer"
        started = time.monotonic()
        cheap = httpx.post(f"{url}/v1/chat/completions", json=_chat(), timeout=5)
        assert cheap.status_code == 200, cheap.text
        assert not tokenizer.release.is_set() and time.monotonic() - started < 5
    finally:
        tokenizer.release.set()
        slow.join(60)
    # The fake tokenizer makes one token per character: 4 M tokens are past the context.
    assert error_of(results["huge"], 400)["code"] == "context_length_exceeded"
