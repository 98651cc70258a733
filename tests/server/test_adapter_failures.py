"""An adapter's own failures, and what a caller can and cannot make count against a canary, on a
live server (real app, real HTTP, real local registry and adapter manager, fake engine).

- A stored version with a tensor the server cannot check (F8_E4M3, F4: pushed before the
  registry refused them) fails its own requests with one remembered 400, never a 500 retried on
  every request, and leaves nothing in the engine.
- An engine's load error is the adapter's failure (400, remembered, the engine's slot given
  back); the client gets a fixed reason and an error id, never the engine's text (which names the
  local cache path). `/health` and `/ready`, unauthenticated, answer a fixed reason the same way.
- Per-version counts (what `rollout watch` judges a canary on) hold only requests the alias's
  split routed, and of their failures only the server's and the adapter's: a caller's 4xx, or a
  caller pinning `name@N`, cannot push a canary towards its rollback.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import MethodType, SimpleNamespace

import httpx
import pytest

import loramux.registry as reg
from loramux.registry import validate
from loramux.registry.errors import IntegrityError
from loramux.release.rollout import parse_metrics
from loramux.server.resolver import sticky_point
from loramux.server.runtime import Runtime
from loramux.server.settings import ServerSettings
from loramux.support.adapters import write_adapter

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "support"))
from fake_engine import FakeEngine, FakeRuntime, LiveServers, build_runtime
from raw_safetensors import add_raw_tensor

SHAPES = {"model.layers.0.self_attn.q_proj": (8, 8)}
CACHE_MARK = "adapter-cache-dir"  # in the cache folder's name: must never reach a client


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[reg.LocalRegistry, FakeRuntime, str]]:
    registry = reg.open(tmp_path / "registry")
    servers = LiveServers()
    settings = ServerSettings.from_sources({"base": "fake-base", "resolve_ttl_s": 0.2},
                                           environ={})
    runtime = build_runtime(settings, tmp_path / "registry", tmp_path / CACHE_MARK, FakeEngine())
    url = servers.start(runtime)
    yield registry, runtime, url
    servers.close()
    registry.close()


def ask(url: str, model: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", timeout=30,
                      json={"model": model, "prompt": "hi", "max_tokens": 1, **body})


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def push_unchecked(registry, folder: Path, name: str, monkeypatch: pytest.MonkeyPatch):
    """Push as a registry from before the dtype check did (or another registry would)."""
    with monkeypatch.context() as m:
        m.setattr(validate, "LOADABLE_DTYPES", frozenset({*validate.LOADABLE_DTYPES,
                                                          "F8_E4M3", "F4"}))
        return registry.push(folder, name)


@pytest.mark.parametrize("dtype", ["F8_E4M3", "F4"])
def test_a_tensor_the_server_cannot_check_is_a_remembered_400(
        live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    registry, runtime, url = live
    folder = write_adapter(tmp_path / "fp8", SHAPES, rank=2)
    add_raw_tensor(folder / "adapter_model.safetensors", "extra.scale", dtype, [4, 4])
    push_unchecked(registry, folder, "fp8", monkeypatch)
    engine = runtime.engine

    errors = [error_of(ask(url, "fp8"), 400) for _ in range(3)]
    assert errors[0]["code"] == "adapter_unavailable"
    assert f"dtype {dtype}" in errors[0]["message"] and "extra.scale" in errors[0]["message"]
    assert errors[0] == errors[1] == errors[2]
    assert engine.load_attempts == 1, "the failure was not remembered: loaded on every request"
    assert engine.loaded == {}, "the refused adapter kept its slot in the engine"
    assert ask(url, "fake-base").status_code == 200  # the server itself is fine


def test_an_engine_load_error_is_the_adapters_failure_and_names_no_path(
        live, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry, runtime, url = live
    registry.push(write_adapter(tmp_path / "a", SHAPES, rank=2), "a")
    engine = runtime.engine
    cache = runtime.adapters._cache.root
    engine.load_error = RuntimeError(f"cannot read {cache}/x/adapter_model.safetensors: boom")

    with caplog.at_level(logging.ERROR):
        first = ask(url, "a")
        second = ask(url, "a")
    error = error_of(first, 400)
    assert error["code"] == "adapter_unavailable" and "error id" in error["message"]
    assert CACHE_MARK not in first.text and "boom" not in first.text, first.text
    assert "RuntimeError" not in first.text
    assert error_of(second, 400) == error  # remembered: the same answer, no second load
    assert engine.load_attempts == 1
    assert engine.loaded == {}, "the engine kept the slot of a failed load"
    error_id = error["message"].split("error id ")[1].split(")")[0]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and "boom" in logged[0].getMessage(), "the detail belongs in the log"


def test_health_and_ready_answer_a_fixed_reason(live, caplog: pytest.LogCaptureFixture) -> None:
    _, runtime, url = live
    runtime.engine_health = MethodType(Runtime.engine_health, runtime)  # the real check's words
    runtime.engine.health_error = RuntimeError(f"worker died reading {CACHE_MARK}/secret")
    with caplog.at_level(logging.ERROR):
        answers = [httpx.get(f"{url}{path}", timeout=10) for path in ("/health", "/ready")]
    for answer in answers:
        error = error_of(answer, 503)
        assert CACHE_MARK not in answer.text and "RuntimeError" not in answer.text, answer.text
        assert error["message"].startswith("the engine is not healthy (error id ")
        error_id = error["message"].split("error id ")[1].split(")")[0]
        assert any(error_id in r.getMessage() and CACHE_MARK in r.getMessage()
                   for r in caplog.records)
    runtime.engine.health_error = None
    assert httpx.get(f"{url}/ready", timeout=10).status_code == 200

    def refused(**_: object) -> None:  # a registry answer that fails its check, in its words
        raise IntegrityError(f"index at {CACHE_MARK}/index.db disagrees")

    runtime.models.registry = SimpleNamespace(list=refused)
    answer = httpx.get(f"{url}/ready", timeout=10)
    assert error_of(answer, 503)["message"].startswith(
        "the adapter registry cannot answer (error id "), answer.text
    assert CACHE_MARK not in answer.text


def _users(model: str, weight: float, canary: bool, n: int) -> list[str]:
    """`n` users the split of `model` puts on its canary (else its stable) side."""
    users = (f"user-{i}" for i in range(100_000))
    return [u for u in users if (sticky_point(model, u) < weight) == canary][:n]


def test_only_split_routed_requests_and_server_side_failures_count_per_version(
        live, tmp_path: Path) -> None:
    registry, runtime, url = live
    for v in (1, 2):
        registry.push(write_adapter(tmp_path / f"sql{v}", SHAPES, rank=2, seed=v), "sql")
    registry.canary_set("sql", "prod", 1, 2, 0.5)
    on_canary, on_stable = (_users("sql:prod", 0.5, side, 4) for side in (True, False))
    digest = registry.resolve("sql@2").digest

    def versions() -> dict:
        return parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text, "sql")

    too_long = {"max_tokens": 10_000}  # context_length_exceeded: the caller's own mistake
    for user in on_canary:  # aimed at the canary through the split, with bad requests
        error = error_of(ask(url, "sql:prod", user=user, **too_long), 400)
        assert error["code"] == "context_length_exceeded"
    for _ in range(4):  # aimed at it by pinning it: bad and good requests alike
        error_of(ask(url, "sql@2", **too_long), 400)
        assert ask(url, "sql@2").status_code == 200
        assert ask(url, f"sql@{digest}").status_code == 200
    counted = versions()
    assert 2 not in counted or (counted[2].requests, counted[2].errors) == (0, 0), \
        f"a caller's own 4xx or pinned requests counted for the canary: {counted[2]}"

    for user in on_stable + on_canary:
        assert ask(url, "sql:prod", user=user).status_code == 200
    counted = versions()
    assert (counted[1].requests, counted[1].errors) == (4, 0)
    assert (counted[2].requests, counted[2].errors) == (4, 0)

    # A failure on the server's side (the engine cannot load the new canary) does count.
    v3 = registry.push(write_adapter(tmp_path / "sql3", SHAPES, rank=2, seed=3), "sql")
    registry.canary_set("sql", "prod", 1, v3.version, 0.5)
    runtime.engine.load_error = RuntimeError("the engine cannot load it")
    time.sleep(0.4)  # past the resolver's TTL: the alias's new split is seen
    for user in on_canary:
        error = error_of(ask(url, "sql:prod", user=user), 400)
        assert error["code"] == "adapter_unavailable"
    counted = versions()
    assert (counted[v3.version].requests, counted[v3.version].errors) == (4, 4)
