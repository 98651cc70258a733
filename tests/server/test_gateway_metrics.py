"""The inference gateway's model-server protocol on `/metrics` (issue 14, item 1).

A live server (real HTTP, real registry and adapter manager, a fake engine) runs a mixed load:
several adapters, one through an alias, a base request, two requests waiting for an adapter
load that the test holds, and requests the engine keeps waiting; admission is full. Every row
of the protocol's table is checked on the scrape, parsed by prometheus_client: name, type,
labels and values; and the scrape is read the way the endpoint picker reads it. One slow test
does the same against the real vLLM engine (the session server), whose scheduler feeds the
counts and the KV cache.

The table is copied here from the protocol (gateway-api-inference-extension v1.5.0,
docs/proposals/003-model-server-protocol, vLLM column), not imported from the code under test.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import loramux.registry as reg
from loramux.server.engines.base import AdapterHandle, EngineLoad, GenerationRequest
from loramux.server.settings import ServerSettings
from loramux.support.adapters import write_adapter

sys.path.insert(0, str(Path(__file__).parent))
from fake_engine import FakeEngine, LiveServers, build_runtime

BASE = "fake-base"
SHAPES = {"model.layers.0.self_attn.q_proj": (8, 8)}
LORA_LABELS = {"max_lora", "running_lora_adapters", "waiting_lora_adapters"}
# The protocol's table, vLLM column: metric name → (type, labels the picker reads).
TABLE = {
    "vllm:num_requests_waiting": ("gauge", set()),
    "vllm:num_requests_running": ("gauge", set()),
    "vllm:kv_cache_usage_perc": ("gauge", set()),
    "vllm:lora_requests_info": ("gauge", LORA_LABELS),
}
OPTIONAL = {"vllm:cache_config_info": ("gauge", {"block_size", "num_gpu_blocks"})}


def scrape(url: str, key: str | None = None) -> dict:
    """`/metrics` as the endpoint picker reads it; `key`: an operator's, where the server has
    keys (then /metrics answers only an admin key without adapters=, or --open-metrics)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=10).text
    return {f.name: f for f in text_string_to_metric_families(text)}


def picker_view(families: dict) -> dict:
    """What the endpoint picker (v1.5.0, pkg/epp/backend/metrics/metrics.go) takes from a
    scrape: the latest sample of each gauge, and of the LoRA gauge the one with the largest value
    among those with a non-empty adapter label, its labels split on ','."""
    view: dict = {}
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running",
                 "vllm:kv_cache_usage_perc"):
        view[name] = families[name].samples[-1].value
    lora = [s for s in families["vllm:lora_requests_info"].samples
            if s.labels["running_lora_adapters"] or s.labels["waiting_lora_adapters"]]
    latest = max(lora, key=lambda s: s.value) if lora else None

    def split(value: str) -> set[str]:
        return set(value.split(",")) if value else set()

    view["active"] = split(latest.labels["running_lora_adapters"]) if latest else set()
    view["waiting"] = split(latest.labels["waiting_lora_adapters"]) if latest else set()
    view["max_lora"] = int(latest.labels["max_lora"]) if latest else None
    return view


def check_table(families: dict, model: str, optional: bool) -> None:
    """Every row: present, a gauge, one sample, the labels the picker reads (the scalar gauges
    carry vLLM's `model_name` too)."""
    rows = TABLE | (OPTIONAL if optional else {})
    for name, (kind, labels) in rows.items():
        assert name in families, f"{name} missing from /metrics"
        family = families[name]
        assert family.type == kind, (name, family.type)
        assert len(family.samples) == 1, (name, family.samples)
        sample = family.samples[0]
        assert sample.name == name
        expected = labels if labels else {"model_name"}
        assert set(sample.labels) == expected, (name, sample.labels)
        if not labels:
            assert sample.labels["model_name"] == model
    lora = families["vllm:lora_requests_info"].samples[0]
    assert abs(lora.value - time.time()) < 60, "the LoRA gauge's value is its update time"
    assert int(lora.labels["max_lora"]) > 0
    for label in ("running_lora_adapters", "waiting_lora_adapters"):
        assert " " not in lora.labels[label], "the picker does not trim names"
    if not optional:
        assert "vllm:cache_config_info" not in families


class SchedulingEngine(FakeEngine):
    """The fake engine with a scheduler's view, as vLLM has: of the requests it holds, `slots`
    run and the rest wait. While `held`, requests wait in the engine; adapter loads for digests
    in `gated` wait until `open_loads()`. Both gates poll on the event loop: the fake engine's
    own gate takes a worker thread per request, and this machine's default pool is small."""

    def __init__(self, slots: int) -> None:
        super().__init__()
        self.slots = slots
        self.held = False
        self.inside = 0
        self.gated: set[str] = set()
        self.loading = 0
        self._loads_open = False

    async def generate(self, request: GenerationRequest):
        self.inside += 1
        try:
            while self.held:
                await asyncio.sleep(0.01)
            async for delta in super().generate(request):
                yield delta
        finally:
            self.inside -= 1

    def scheduler_load(self) -> EngineLoad:
        running = min(self.inside, self.slots)
        return EngineLoad(running, self.inside - running, 0.25 if self.inside else 0.0,
                          block_size=16, num_blocks=1000)

    async def load_adapter(self, adapter: AdapterHandle) -> None:
        if adapter.digest in self.gated:
            self.loading += 1
            try:
                while not self._loads_open:
                    await asyncio.sleep(0.01)
            finally:
                self.loading -= 1
        await super().load_adapter(adapter)

    def open_loads(self) -> None:
        self._loads_open = True


@pytest.fixture
def serve(tmp_path: Path):
    """`serve(engine, **settings)` → url, with adapters sql-helper (v1, alias prod), chat-bot,
    summ and slow in the registry; `serve.registry` to change it."""
    servers = LiveServers()
    registry = reg.open(tmp_path / "registry")
    manifests = {name: registry.push(write_adapter(tmp_path / name, SHAPES, rank=2, seed=i),
                                     name, alias="prod" if name == "sql-helper" else None)
                 for i, name in enumerate(["sql-helper", "chat-bot", "summ", "slow"])}

    def start(engine: FakeEngine, **kw) -> str:
        settings = ServerSettings.from_sources({"base": BASE} | kw, environ={})
        runtime = build_runtime(settings, tmp_path / "registry", tmp_path / "cache", engine)
        return servers.start(runtime)

    start.registry, start.manifests, start.tmp = registry, manifests, tmp_path
    yield start
    servers.close()
    registry.close()


class Load:
    """Streaming chat requests in threads; each one's status code once it ends."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.threads: list[threading.Thread] = []
        self.statuses: list[int] = []

    def send(self, model: str) -> None:
        def run() -> None:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 3, "stream": True}
            with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=body,
                              timeout=60) as response:
                response.read()
                self.statuses.append(response.status_code)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> list[int]:
        for thread in self.threads:
            thread.join(timeout=60)
        return self.statuses


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def test_every_series_of_the_protocol_under_a_mixed_load(serve) -> None:
    engine = SchedulingEngine(slots=4)
    engine.gated.add(serve.manifests["slow"].digest)
    engine.held = True
    url = serve(engine, max_pending=8)
    load = Load(url)
    for model in ["sql-helper:prod", "sql-helper:prod", "chat-bot@1", "summ", BASE,
                  "sql-helper:prod"]:
        load.send(model)
    wait_for(lambda: engine.inside == 6, "6 requests in the engine")
    load.send("slow")
    load.send("slow")
    wait_for(lambda: engine.loading == 1, "a load of `slow` waits at the gate")
    wait_for(lambda: scrape(url)["loramux_requests_in_flight"].samples[0].value == 8,
             "8 requests admitted")
    over = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
        "model": "summ", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert over.status_code == 429, "admission is full"

    families = scrape(url)
    check_table(families, BASE, optional=True)
    view = picker_view(families)
    # 6 in the engine: its scheduler runs 4, 2 wait there; 2 more wait for their adapter.
    assert view["vllm:num_requests_running"] == 4
    assert view["vllm:num_requests_waiting"] == 2 + 2
    assert view["vllm:kv_cache_usage_perc"] == 0.25
    assert view["active"] == {"sql-helper:prod", "chat-bot@1", "summ"}, "names clients sent"
    assert view["waiting"] == {"slow"}, "awaited under the name the client sent"
    assert view["max_lora"] == 8, "the fake engine's 8 slots, one name per adapter"
    info = families["vllm:cache_config_info"].samples[0].labels
    assert (info["block_size"], info["num_gpu_blocks"]) == ("16", "1000")

    engine.open_loads()
    engine.held = False
    assert load.join() == [200] * 8
    view = picker_view(scrape(url))
    assert (view["vllm:num_requests_running"], view["vllm:num_requests_waiting"]) == (0, 0)
    assert view["vllm:kv_cache_usage_perc"] == 0.0
    assert view["active"] == {"sql-helper:prod", "chat-bot@1", "summ", "slow"}
    assert view["waiting"] == set()
    assert httpx.post(f"{url}/v1/completions", timeout=30, json={
        "model": "summ@1", "prompt": "hi", "max_tokens": 1}).status_code == 200
    view = picker_view(scrape(url))
    assert view["active"] == {"sql-helper:prod", "chat-bot@1", "summ", "summ@1", "slow"}
    # 5 names for 4 adapters: the picker's `names < max_lora` must still mean "a slot is free"
    assert view["max_lora"] == 8 + 1


def test_a_moved_alias_is_listed_for_the_version_it_names_now(serve) -> None:
    engine = SchedulingEngine(slots=4)
    url = serve(engine, resolve_ttl_s=0)
    assert httpx.post(f"{url}/v1/completions", timeout=30, json={
        "model": "sql-helper:prod", "prompt": "hi", "max_tokens": 1}).status_code == 200
    assert "sql-helper:prod" in picker_view(scrape(url))["active"]
    v2 = serve.registry.push(write_adapter(serve.tmp / "v2", SHAPES, rank=2, seed=99),
                             "sql-helper", alias="prod")
    engine.gated.add(v2.digest)
    load = Load(url)
    load.send("sql-helper:prod")
    wait_for(lambda: engine.loading == 1, "the new version's load waits")
    view = picker_view(scrape(url))
    assert view["active"] == set(), "v1 is loaded, but prod names v2 now"
    assert view["waiting"] == {"sql-helper:prod"}
    assert view["max_lora"] == 8 - 1, "v1 holds a slot under no name a client uses now"
    engine.open_loads()
    assert load.join() == [200]
    view = picker_view(scrape(url))
    assert view["active"] == {"sql-helper:prod"}


def test_an_engine_without_a_scheduler_view(serve) -> None:
    """The reference engine's case: what reached the engine runs, KV use reads 0 and the
    optional cache layout is left out."""
    engine = FakeEngine()
    engine.hold()
    url = serve(engine, max_pending=4)
    load = Load(url)
    for model in ["chat-bot", "summ@1", BASE]:
        load.send(model)
    engine.wait_held(3)
    families = scrape(url)
    check_table(families, BASE, optional=False)
    view = picker_view(families)
    assert (view["vllm:num_requests_running"], view["vllm:num_requests_waiting"]) == (3, 0)
    assert view["vllm:kv_cache_usage_perc"] == 0.0
    assert view["active"] == {"chat-bot", "summ@1"}
    engine.release()
    assert load.join() == [200] * 3


@pytest.mark.slow
def test_the_vllm_engine_feeds_the_protocol(server) -> None:
    """The session's vLLM server (2 LoRA slots) under 6 streams over 4 adapters: its scheduler
    runs some and defers the rest (no slot for their adapter), and the KV cache fills."""
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-user-test",
                           max_retries=0, timeout=300)
    models = ["rand-0", "rand-1", "rand-2", "rand-3", "rand-0@1", "rand-1"]
    seen: list[dict] = []
    done = threading.Event()

    def ask(model: str) -> None:
        stream = client.completions.create(model=model, prompt="Once upon a time",
                                           max_tokens=96, temperature=0, stream=True,
                                           extra_body={"ignore_eos": True})
        for _ in stream:
            pass

    threads = [threading.Thread(target=ask, args=(m,), daemon=True) for m in models]
    for thread in threads:
        thread.start()

    def watch() -> None:
        for thread in threads:
            thread.join(300)
        done.set()

    threading.Thread(target=watch, daemon=True).start()
    while not done.is_set():
        families = scrape(server.url, key="sk-admin-test")  # tests/server/conftest.py
        check_table(families, server.base.name, optional=True)
        seen.append(picker_view(families))
        time.sleep(0.05)
    assert max(v["vllm:num_requests_running"] for v in seen) >= 2
    assert max(v["vllm:num_requests_waiting"] for v in seen) >= 1
    assert max(v["vllm:kv_cache_usage_perc"] for v in seen) > 0
    assert all(0 <= v["vllm:kv_cache_usage_perc"] <= 1 for v in seen)
    assert set().union(*(v["active"] for v in seen)) >= set(models)
    # max_lora - names = 2 slots - adapters in use: rand-0 and rand-0@1 are one adapter, so the
    # names can outnumber the slots; adapters left resident by earlier tests hold slots unnamed
    assert all(v["max_lora"] - len(v["active"]) - len(v["waiting"]) <= 2 for v in seen)
    assert all(v["max_lora"] >= 0 for v in seen)
    info = scrape(server.url, key="sk-admin-test")["vllm:cache_config_info"].samples[0].labels
    assert int(info["block_size"]) > 0 and int(info["num_gpu_blocks"]) > 0
    idle = picker_view(scrape(server.url, key="sk-admin-test"))
    assert (idle["vllm:num_requests_running"], idle["vllm:num_requests_waiting"]) == (0, 0)
