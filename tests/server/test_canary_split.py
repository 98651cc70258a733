"""Weighted canaries on a live server (real app, real HTTP, fake engine, real local registry):
the alias splits per request by weight, sticky per user (`user` field or `X-Loramux-User`
header), the version answering is in `x-loramux-adapter-ref`, the metrics carry it, and
`rollout status` reads them back."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

import loramux.registry as reg
from loramux.release.rollout import Watcher, parse_metrics, rollout_status
from loramux.server.settings import ServerSettings
from loramux.support.adapters import write_adapter

sys.path.insert(0, str(Path(__file__).parent))
from fake_engine import LiveServers, build_runtime

SHAPES = {"model.layers.0.self_attn.q_proj": (8, 8)}
TTL = 0.3
WEIGHT = 0.25


@pytest.fixture
def live(tmp_path: Path):
    registry = reg.open(tmp_path / "registry")
    for v in (1, 2):
        registry.push(write_adapter(tmp_path / f"sql{v}", SHAPES, rank=2, seed=v), "sql")
    registry.canary_set("sql", "prod", 1, 2, WEIGHT)
    servers = LiveServers()
    settings = ServerSettings.from_sources({"base": "fake-base", "resolve_ttl_s": TTL},
                                           environ={})
    url = servers.start(build_runtime(settings, tmp_path / "registry", tmp_path / "cache"))
    yield registry, url
    servers.close()
    registry.close()


def ask(client: httpx.Client, user: str | None = None, *, header: bool = False) -> str:
    body = {"model": "sql:prod", "prompt": "hi", "max_tokens": 1}
    headers = {}
    if user is not None and header:
        headers["X-Loramux-User"] = user
    elif user is not None:
        body["user"] = user
    response = client.post("/v1/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "sql:prod"  # what the caller asked for, as OpenAI does
    return response.headers["x-loramux-adapter-ref"]  # which version answered


def test_split_is_weighted_and_sticky_per_user(live) -> None:
    registry, url = live
    users = [f"user-{i}" for i in range(300)]
    with httpx.Client(base_url=url, timeout=30) as client:
        first = {u: ask(client, u, header=i % 2 == 0) for i, u in enumerate(users)}
        share = sum(ref == "sql@2" for ref in first.values()) / len(users)
        assert abs(share - WEIGHT) < 0.08, f"canary share {share:.2f}, weight {WEIGHT}"
        for i, u in enumerate(users):  # the other way of naming the user: the same side
            assert ask(client, u, header=i % 2 == 1) == first[u], u
        anonymous = {ask(client) for _ in range(60)}
        assert anonymous == {"sql@1", "sql@2"}  # no user: random per request

        metrics = parse_metrics(client.get("/metrics").text, "sql")
        on_canary = sum(ref == "sql@2" for ref in first.values()) * 2
        assert metrics[2].requests >= on_canary  # + anonymous ones
        assert metrics[1].requests >= 2 * len(users) - on_canary
        assert metrics[2].requests + metrics[1].requests == 2 * len(users) + 60
        assert metrics[2].errors == 0 and metrics[2].ttft_count == metrics[2].requests

        found = rollout_status(registry, "sql:prod", [url])
        assert (found.stable.version, found.canary.version) == (1, 2)
        assert abs(found.share(found.canary) - WEIGHT) < 0.1

        registry.canary_set("sql", "prod", 1, 2, 0.0, reason="test rollback")
        time.sleep(TTL + 0.2)
        assert {ask(client, u) for u in users[:100]} == {"sql@1"}


def test_raising_the_weight_only_moves_users_onto_the_canary(live) -> None:
    registry, url = live
    users = [f"u{i}" for i in range(200)]
    with httpx.Client(base_url=url, timeout=30) as client:
        before = {u: ask(client, u) for u in users}
        registry.canary_set("sql", "prod", 1, 2, 0.6)
        time.sleep(TTL + 0.2)
        after = {u: ask(client, u) for u in users}
    assert all(after[u] == "sql@2" for u in users if before[u] == "sql@2")
    assert sum(r == "sql@2" for r in after.values()) > sum(r == "sql@2" for r in before.values())


def test_watcher_rolls_back_a_failing_canary(live, tmp_path: Path) -> None:
    """The canary's files are damaged in the store: every request it gets fails (non-2xx), the
    stable side answers. The watcher sees the error rate and sets the weight to 0."""
    registry, url = live
    canary = registry.resolve("sql@2")
    for f in canary.files:  # corrupt the canary's weights: the server refuses to load them
        if f.path.endswith(".safetensors"):
            blob = Path(registry.blobs.local_path(f"sha256:{f.sha256}"))
            blob.chmod(0o644)
            blob.write_bytes(b"not the bytes the manifest names")
    watcher = Watcher(registry, "sql:prod", [url], max_error_delta=0.2, auto_rollback=True,
                      interval=0.05, min_requests=10)
    watcher.check()  # the baseline: what happens from now on is judged
    statuses = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(80):
            statuses.append(client.post("/v1/completions", json={
                "model": "sql:prod", "prompt": "hi", "max_tokens": 1,
                "user": f"user-{i}"}).status_code)
    assert 200 in statuses and any(s != 200 for s in statuses)
    reason = watcher.run(rounds=3)
    assert reason is not None and "error rate" in reason
    state = registry.canary("sql", "prod")
    assert (state.stable, state.canary, state.weight) == (1, 2, 0.0)
    [row] = [e for e in registry.log(name="sql", limit=1) if e.action == "canary"]
    assert row.detail["weight"] == 0.0 and row.detail["reason"].startswith("auto-rollback: ")
