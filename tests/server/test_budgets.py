"""Per-key budgets (issue 12): requests and tokens per minute, and requests in flight per key.

A key past its limit gets 429 `rate_limit_error` with `Retry-After` (the seconds until its
budget admits the request), and other keys are not affected: one tenant cannot take the whole
admission. Time is a fake clock the test moves, so every assertion is about counts and exact
numbers, never about how fast this machine is. Over real HTTP with a fake engine.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from loramux.server.budgets import KeyBudget, Limits
from loramux.server.errors import RateLimited
from loramux.server.settings import ServerSettings

sys.path.insert(0, str(Path(__file__).parent))
from fake_engine import FakeEngine, LiveServers, build_runtime

BASE = "fake-base"
HELLO = [{"role": "user", "content": "hi"}]  # "<user>hi": 8 prompt tokens for FakeTokenizer
PROMPT = len("<user>hi")
KEY_A, KEY_B = "sk-a-0123456789abcdef", "sk-b-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def serve(tmp_path: Path):
    """`serve(keys_text, engine=None, **settings)` → (url, engine, clock)."""
    servers = LiveServers()

    def start(keys: str, engine: FakeEngine | None = None, **kw):
        (tmp_path / "keys").write_text(keys)
        clock, engine = Clock(), engine or FakeEngine()
        settings = ServerSettings.from_sources(
            {"base": BASE, "api_keys": tmp_path / "keys"} | kw, environ={})
        runtime = build_runtime(settings, tmp_path / "registry", tmp_path / "cache", engine,
                                clock=clock)
        return servers.start(runtime), engine, clock

    yield start
    servers.close()


def chat(url: str, key: str, max_tokens: int = 2, **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={
        "model": BASE, "messages": HELLO, "max_tokens": max_tokens} | extra,
        headers={"Authorization": f"Bearer {key}"}, timeout=30)


def assert_limited(response: httpx.Response, retry_after: int, words: str) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == str(retry_after)
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert words in error["message"], error["message"]


def test_requests_per_minute(serve) -> None:
    url, _, clock = serve(f"{KEY_A} rpm=2 name=team-a\n{KEY_B} rpm=2\n")
    assert [chat(url, KEY_A).status_code for _ in range(2)] == [200, 200]
    assert_limited(chat(url, KEY_A), 30, "API key `team-a` is past its limit of 2 requests")
    assert chat(url, KEY_B).status_code == 200, "another key has its own budget"
    clock.now += 29
    assert_limited(chat(url, KEY_A), 1, "requests per minute")
    clock.now += 1  # 30 s: one request's worth has come back, not two
    assert [chat(url, KEY_A).status_code for _ in range(2)] == [200, 429]


def test_tokens_per_minute_reserve_the_worst_case_and_settle_what_was_used(serve) -> None:
    """Each request reserves prompt + max_tokens (8 + 40) and uses prompt + 2 (the engine stops
    early): settling gives 38 back each time, so a budget of 100 admits six of them in a row;
    without settling it would admit two."""
    url, _, clock = serve(f"{KEY_A} tpm=100\n", engine=FakeEngine(answer_tokens=2))
    statuses = [chat(url, KEY_A, max_tokens=40).status_code for _ in range(7)]
    assert statuses == [200] * 6 + [429], statuses
    # 100 - 6 * (8 + 2) = 40 left; 48 needed; 8 tokens at 100/60 per second = 4.8 s.
    refused = chat(url, KEY_A, max_tokens=40)
    assert_limited(refused, 5, "this request reserves 48")
    assert chat(url, KEY_A, max_tokens=30).status_code == 200, "38 fit in what is left"
    clock.now += 60
    assert chat(url, KEY_A, max_tokens=500).status_code == 200, (
        "a request above the whole budget is capped at one full bucket, not impossible")


def test_a_stream_holds_its_tokens_until_it_ends(serve) -> None:
    url, _, _ = serve(f"{KEY_A} tpm=100\n", engine=FakeEngine(answer_tokens=2))

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as http:
            statuses = []
            for _ in range(6):
                async with http.stream("POST", f"{url}/v1/chat/completions", json={
                        "model": BASE, "messages": HELLO, "max_tokens": 40, "stream": True},
                        headers={"Authorization": f"Bearer {KEY_A}"}) as response:
                    statuses.append(response.status_code)
                    text = "".join([chunk async for chunk in response.aiter_text()])
                    assert text.rstrip().endswith("data: [DONE]"), text
            return statuses

    assert asyncio.run(scenario()) == [200] * 6, "streams settle like the others"
    assert chat(url, KEY_A, max_tokens=40).status_code == 429


def test_one_key_cannot_take_the_whole_admission(serve) -> None:
    """max_pending is 4; key A may hold 2. A's third request is refused while 2 are held,
    and key B still gets in: A has not used up the server."""
    engine = FakeEngine()
    url, _, _ = serve(f"{KEY_A} concurrency=2\n{KEY_B}\n", engine=engine,
                      max_pending=4)

    async def scenario():
        async with httpx.AsyncClient(timeout=30) as http:
            def post(key: str):
                return http.post(f"{url}/v1/chat/completions", json={
                    "model": BASE, "messages": HELLO, "max_tokens": 2},
                    headers={"Authorization": f"Bearer {key}"})

            engine.hold()
            held = [asyncio.create_task(post(KEY_A)) for _ in range(2)]
            await asyncio.to_thread(engine.wait_held, 2)
            try:
                third = await asyncio.wait_for(post(KEY_A), 10)
                other = asyncio.create_task(post(KEY_B))
                await asyncio.to_thread(engine.wait_held, 3)  # B is in, next to A's two
            finally:
                engine.release()
            done = await asyncio.gather(*held, other)
            after = await post(KEY_A)
        return third, done, after

    third, done, after = asyncio.run(scenario())
    assert_limited(third, 1, "already has 2 requests in flight")
    assert [r.status_code for r in done] == [200, 200, 200]
    assert after.status_code == 200, "a finished request gives its place back"


def test_budget_arithmetic() -> None:
    """The buckets on their own: a capped reservation that used more leaves a debt; a refused
    token reservation gives the request's place in rpm back; a request that never reached the
    engine gives all its tokens back."""
    clock = Clock()
    budget = KeyBudget("k", Limits(rpm=2, tpm=60), clock)  # tpm 60: one token a second
    with budget.admit() as ticket:
        ticket.reserve(610)  # capped at one full bucket
        ticket.usage = lambda: 90
    assert budget.tokens.level == -30 and budget.requests.level == 1
    with pytest.raises(RateLimited) as refused, budget.admit() as ticket:
        ticket.reserve(1)
    assert refused.value.retry_after == 31 and budget.requests.level == 1
    clock.now += 31
    with budget.admit() as ticket:
        ticket.reserve(1)  # no usage set: it never ran
    assert budget.tokens.level == 1 and budget.requests.level == 1
    with budget.admit():
        pass
    with pytest.raises(RateLimited) as refused, budget.admit():
        pass
    assert refused.value.retry_after == 30 and budget.in_flight == 0
