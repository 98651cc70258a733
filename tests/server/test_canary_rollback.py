"""A broken canary is rolled back automatically, on the real stack (vLLM engine, `loramux serve`,
local registry, openai client): the demo's caps adapter published as a new version of a codeword
adapter answers the codeword eval wrongly; the watcher scores both versions through the server,
sets the canary's weight to 0, and not one of the requests in flight across the rollback fails."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from loramux.release.rollout import Watcher, eval_scorer
from loramux.server.resolver import sticky_point
from loramux.server.settings import ServerSettings

pytestmark = pytest.mark.slow
NAME = "canary-codeword"
USER_KEY = "sk-user-test"  # written to the keys file by conftest
ADMIN_KEY = "sk-admin-test"  # an operator's key: /metrics names every tenant's adapters


def test_a_wrong_answering_canary_is_rolled_back_with_no_request_lost(
        server, demo_adapters: dict[str, Path], demo_data: dict[str, Path], tmp_path: Path):
    registry = server.registry()
    good = registry.push(demo_adapters["codeword"], NAME, base_model=server.base)
    broken = registry.push(demo_adapters["caps"], NAME, base_model=server.base)
    registry.canary_set(NAME, "prod", good.version, broken.version, 0.5)
    lines = (demo_data["codeword"] / "eval.jsonl").read_text().splitlines()[:12]
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("\n".join(lines) + "\n")
    watcher = Watcher(registry, f"{NAME}:prod", [server.url], max_score_drop=0.3,
                      evaluate=eval_scorer(server.url, str(eval_file), api_key=USER_KEY),
                      auto_rollback=True, interval=0.5, api_key=ADMIN_KEY)
    watcher.check()  # the metrics baseline

    stop, answered = threading.Event(), []

    async def traffic() -> None:
        client = server.async_openai()

        async def one(i: int) -> None:
            raw = await client.chat.completions.with_raw_response.create(
                model=f"{NAME}:prod", messages=[{"role": "user", "content": "cat code word?"}],
                max_tokens=4, temperature=0, user=f"user-{i}")
            answered.append(raw.headers["x-loramux-adapter-ref"])

        i = 0
        while not stop.is_set():  # 8 in flight at any time, across the rollback
            await asyncio.gather(*(one(i + k) for k in range(8)))
            i += 8

    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _run(traffic(), errors))
    thread.start()
    try:
        reason = watcher.run(rounds=4)
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not errors, f"a request failed across the rollback: {errors[0]!r}"
    assert reason is not None and "eval score" in reason, reason
    state = registry.canary(NAME, "prod")
    assert (state.stable, state.canary, state.weight) == (good.version, broken.version, 0.0)
    [row] = [e for e in registry.log(name=NAME, limit=1) if e.action == "canary"]
    assert row.detail["reason"].startswith("auto-rollback: canary @")
    assert {f"{NAME}@{good.version}", f"{NAME}@{broken.version}"} <= set(answered)

    # Once the server has looked the alias up again, every caller gets the stable version.
    time.sleep(ServerSettings.model_fields["resolve_ttl_s"].default + 1)
    client = server.openai()
    after = {client.chat.completions.with_raw_response.create(
        model=f"{NAME}:prod", messages=[{"role": "user", "content": "cat code word?"}],
        max_tokens=1, temperature=0, user=f"after-{i}").headers["x-loramux-adapter-ref"]
        for i in range(16)}
    assert after == {f"{NAME}@{good.version}"}, after
    # ... callers of whom half fell on the canary's side before the rollback.
    assert sum(sticky_point(f"{NAME}:prod", f"after-{i}") < 0.5 for i in range(16)) >= 4


def _run(coro, errors: list[BaseException]) -> None:
    try:
        asyncio.run(coro)
    except BaseException as exc:  # handed to the test thread
        errors.append(exc)
