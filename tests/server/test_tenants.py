"""Tenants on one server (security round 2, items 3, 5, 8 and 17): what one key can cost or learn
about the others.

- Every authenticated route spends the key's budget, not only completions; the `/v1/models`
  listing is answered from memory for the resolve TTL, off the default thread pool.
- A server-overload 429 spends none of the caller's requests per minute.
- A key limited to some adapters sees only those in `/ui/api/metrics` and `/v1/models` (no card
  built from another tenant's manifest); `/metrics` is for an operator key.
- A canary keeps its metric labels when other adapters spent them, and `rollout watch` with no
  canary samples says so instead of "looks fine".

Real app over real HTTP on loopback with a fake engine and tokenizer (tests/server/fake_engine.py),
a real local registry; time is a fake clock where budgets are involved.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

import loramux.registry as reg
from loramux.release.rollout import Watcher, parse_metrics
from loramux.server.settings import ServerSettings
from loramux.support.adapters import write_adapter

sys.path.insert(0, str(Path(__file__).parent))
from fake_engine import FakeEngine, LiveServers, build_runtime

BASE = "fake-base"
SHAPES = {"model.layers.0.self_attn.q_proj": (8, 8)}
HELLO = [{"role": "user", "content": "hi"}]
OPS = "sk-operator-0123456789"  # admin, every adapter
ACME = "sk-acme-tenant-0123456789"  # user, acme-* only
ACME_OPS = "sk-acme-admin-0123456789"  # admin, but acme-* only
GLOBEX = "sk-globex-tenant-0123456789"  # user, globex-* only
KEYS = (f"{OPS} admin name=ops\n{ACME} adapters=acme-* name=acme\n"
        f"{ACME_OPS} admin adapters=acme-* name=acme-ops\n"
        f"{GLOBEX} adapters=globex-* name=globex\n")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ui_metrics(url: str, key: str) -> httpx.Response:
    """`/ui/api/metrics` as the playground asks it: after the login form, with its cookie."""
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/ui/login", data={"token": key, "next": "/ui"}).status_code == 303
        return client.get("/ui/api/metrics")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """acme-x and globex-y hold the same bytes (one digest); sql has a canary on `prod`."""
    registry = reg.open(tmp_path / "registry")
    same = write_adapter(tmp_path / "same", SHAPES, rank=8, seed=1)
    registry.push(same, "acme-x")
    registry.push(same, "globex-y")
    registry.push(write_adapter(tmp_path / "other", SHAPES, rank=2, seed=7), "other")
    for v in (1, 2):
        registry.push(write_adapter(tmp_path / f"sql{v}", SHAPES, rank=2, seed=10 + v), "sql")
    registry.canary_set("sql", "prod", 1, 2, 0.5)
    registry.close()
    return tmp_path / "registry"


@pytest.fixture
def serve(store: Path, tmp_path: Path):
    """`serve(keys_text or None, engine=None, **settings)` → (url, runtime, clock)."""
    servers = LiveServers()

    def start(keys: str | None, engine: FakeEngine | None = None, **kw):
        options: dict[str, object] = {"base": BASE} | kw
        if keys is not None:
            (tmp_path / "keys").write_text(keys)
            options["api_keys"] = tmp_path / "keys"
        clock = Clock()
        runtime = build_runtime(ServerSettings.from_sources(options, environ={}), store,
                                tmp_path / "cache", engine, clock=clock)
        return servers.start(runtime), runtime, clock

    yield start
    servers.close()


def chat(url: str, key: str | None, model: str = BASE, **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={
        "model": model, "messages": HELLO, "max_tokens": 2} | extra,
        headers=bearer(key) if key else {}, timeout=30)


# -- item 17: a server-overload 429 is not the caller's -----------------------------------------


def test_overload_429_spends_none_of_the_callers_rpm(serve) -> None:
    engine = FakeEngine()
    url, _, _ = serve(f"{OPS} admin\n{ACME} rpm=2\n", engine, max_pending=1)
    engine.hold()
    holder = threading.Thread(target=chat, args=(url, OPS))  # takes the one admission place
    holder.start()
    try:
        engine.wait_held(1)
        for _ in range(3):
            refused = chat(url, ACME)
            assert refused.status_code == 429, refused.text
            assert "server is at its limit" in refused.json()["error"]["message"]
    finally:
        engine.release()
        holder.join(timeout=30)
    # the clock never moved: both of the key's requests per minute are still there
    assert [chat(url, ACME).status_code for _ in range(2)] == [200, 200]
    assert chat(url, ACME).status_code == 429


# -- item 3: every authenticated route spends the key's budget --------------------------------


def test_models_and_pages_spend_the_keys_budget(serve) -> None:
    url, _, _ = serve(f"{ACME} rpm=1 concurrency=1\n{GLOBEX} rpm=1\n")
    assert httpx.get(f"{url}/v1/models", headers=bearer(ACME), timeout=30).status_code == 200
    again = httpx.get(f"{url}/v1/models", headers=bearer(ACME), timeout=30)
    assert again.status_code == 429, again.text
    assert again.json()["error"]["type"] == "rate_limit_error"
    assert int(again.headers["retry-after"]) >= 1
    page = ui_metrics(url, ACME)
    assert page.status_code == 429, page.text
    assert chat(url, ACME).status_code == 429, "the listing spent the key's one request"
    # another key is untouched
    assert ui_metrics(url, GLOBEX).status_code == 200


def test_listing_is_kept_for_the_resolve_ttl_off_the_default_pool(serve) -> None:
    url, runtime, _ = serve(None, resolve_ttl_s=60)
    calls: list[str] = []
    real_list = runtime.models.registry.list

    def counting_list(*args, **kwargs):
        calls.append(threading.current_thread().name)
        return real_list(*args, **kwargs)

    runtime.models.registry.list = counting_list
    for _ in range(5):
        listed = httpx.get(f"{url}/v1/models", timeout=30)
        assert listed.status_code == 200
    assert {m["id"] for m in listed.json()["data"]} >= {BASE, "other@1", "sql@2"}
    assert len(calls) == 1, f"{len(calls)} registry listings for 5 requests within the TTL"
    assert calls[0].startswith("loramux-listing"), calls


def test_ready_probes_share_one_registry_query_off_the_default_pool(serve) -> None:
    """`/ready` needs no key: a flood of probes costs one registry query at a time, on the
    listing's threads, never the default pool's."""
    url, runtime, _ = serve(KEYS)
    calls: list[str] = []
    gate = threading.Event()
    real_check = runtime.models.check_registry

    def slow_check() -> None:
        calls.append(threading.current_thread().name)
        gate.wait(30)
        real_check()

    runtime.models.check_registry = slow_check
    answers: list[int] = []
    probes = [threading.Thread(target=lambda: answers.append(
        httpx.get(f"{url}/ready", timeout=30).status_code)) for _ in range(20)]
    for probe in probes:
        probe.start()
    deadline = time.monotonic() + 30
    while not calls and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    threading.Event().wait(0.3)  # let the other probes arrive while the first one waits
    gate.set()
    for probe in probes:
        probe.join(30)
    assert answers == [200] * 20
    assert len(calls) < 5, f"{len(calls)} registry queries for 20 probes at once"
    assert all(name.startswith("loramux-listing") for name in calls), calls


# -- item 8: tenants do not see each other ------------------------------------------------------


def test_ui_metrics_show_a_scoped_key_only_its_adapters(serve) -> None:
    url, _, _ = serve(KEYS)
    assert chat(url, ACME, "acme-x").status_code == 200
    assert chat(url, GLOBEX, "globex-y").status_code == 200
    assert chat(url, GLOBEX).status_code == 200  # the base
    seen = {}
    for key in (ACME, GLOBEX, OPS):
        rows = ui_metrics(url, key)
        assert rows.status_code == 200, rows.text
        seen[key] = {r["adapter"] for r in rows.json()["adapters"]}
    assert seen[ACME] == {"acme-x", "__base__"}
    assert seen[GLOBEX] == {"globex-y", "__base__"}
    assert seen[OPS] == {"acme-x", "globex-y", "__base__"}


def test_a_scoped_key_never_reads_another_tenants_adapter_in_its_cards(serve) -> None:
    url, _, _ = serve(KEYS, max_lora_rank=4)  # rank 8: both refused, with a reason
    for key, mine, theirs in ((ACME, "acme-x", "globex"), (GLOBEX, "globex-y", "acme")):
        listed = httpx.get(f"{url}/v1/models", params={"include_refused": "true"},
                           headers=bearer(key), timeout=30)
        assert listed.status_code == 200, listed.text
        cards = [c for c in listed.json()["data"] if c.get("parent")]
        assert [c["id"] for c in cards] == [f"{mine}@1"]
        assert cards[0]["refused"] and mine in cards[0]["refused"], cards[0]
        assert theirs not in listed.text, listed.text


def test_same_bytes_share_a_digest(store: Path) -> None:
    """What the test above relies on: two tenants' identical adapters are one digest."""
    with reg.open(store) as registry:
        assert registry.resolve("acme-x@1").digest == registry.resolve("globex-y@1").digest


def test_prometheus_metrics_are_for_operators(serve) -> None:
    url, _, _ = serve(KEYS)
    assert chat(url, ACME, "acme-x").status_code == 200

    def get(key: str | None) -> httpx.Response:
        return httpx.get(f"{url}/metrics", headers=bearer(key) if key else {}, timeout=30)

    assert get(None).status_code == 401
    for tenant in (ACME, GLOBEX, ACME_OPS):  # a user key, or an admin key scoped to a tenant
        refused = get(tenant)
        assert refused.status_code == 403, refused.text
        assert "acme-x" not in refused.text
    allowed = get(OPS)
    assert allowed.status_code == 200 and 'adapter="acme-x"' in allowed.text


def test_open_metrics_and_keyless_servers_keep_metrics_open(serve) -> None:
    url, _, _ = serve(KEYS, open_metrics=True)
    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 200
    url, _, _ = serve(None)
    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 200


# -- item 5: a canary is never judged on no data ------------------------------------------------


def test_a_canary_keeps_its_labels_when_other_adapters_spent_them(serve) -> None:
    url, _, _ = serve(None, max_adapter_labels=1)
    assert chat(url, None, "other@1").status_code == 200  # spends the one free label
    for i in range(40):
        assert chat(url, None, "sql:prod", user=f"user-{i}").status_code == 200
    text = httpx.get(f"{url}/metrics", timeout=30).text
    counts = parse_metrics(text, "sql")
    assert set(counts) == {1, 2}, text
    assert counts[1].requests + counts[2].requests == 40
    assert counts[2].requests > 0
    # names outside any alias still fold into __other__: the bound holds
    assert chat(url, None, "acme-x@1").status_code == 200
    assert 'adapter="acme-x"' not in httpx.get(f"{url}/metrics", timeout=30).text


def test_watcher_without_canary_samples_gives_no_verdict(serve, store: Path) -> None:
    url, _, _ = serve(None)
    reports: list[str] = []
    with reg.open(store) as registry:
        watcher = Watcher(registry, "sql:prod", [url], interval=0.01, min_requests=5)
        assert watcher.run(rounds=2, report=reports.append) is None
    assert not watcher.judged
    assert reports and all("no verdict on canary @2" in r for r in reports), reports
    assert not any("looks fine" in r for r in reports)


def test_rollout_watch_exits_12_without_a_verdict_and_0_with_one(serve, store: Path) -> None:
    from loramux.cli import app

    url, _, _ = serve(None)
    args = ["rollout", "watch", "sql:prod", "--server", url, "--registry", str(store),
            "--rounds", "2", "--interval", "0.1", "--min-requests", "5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 12, result.output
    assert "no verdict" in result.output and "looks fine" not in result.output

    def traffic() -> None:
        for i in range(60):
            chat(url, None, "sql:prod", user=f"user-{i}")

    # the watcher's first round is its baseline; traffic after it is judged
    runner = threading.Timer(0.5, traffic)
    runner.start()
    result = CliRunner().invoke(app, [*args[:-4], "--interval", "5", "--min-requests", "5"])
    runner.join()
    assert result.exit_code == 0, result.output
    assert "looks fine" in result.output
