"""The affinity harness (bench/affinity_router.py): the endpoint picker's rule case by case, and
three live replicas (real app and HTTP on loopback, real registry and adapter manager, the fake
engine) where routing by the rule, fed by their `/metrics`, loads fewer adapters than round robin
for the same Zipf sequence."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

import loramux.registry as reg
from loramux.bench import affinity
from loramux.bench.affinity_router import (
    WEIGHTS,
    AffinityRouter,
    ReplicaMetrics,
    RoundRobinRouter,
    lora_affinity,
    parse_metrics,
    scores,
)
from loramux.bench.workload import Request
from loramux.server.settings import ServerSettings
from loramux.support.adapters import write_adapter

sys.path.insert(0, str(Path(__file__).parent.parent / "server"))
from fake_engine import FakeEngine, LiveServers, build_runtime

SHAPES = {"model.layers.0.self_attn.q_proj": (8, 8)}
SLOTS = 3


def lora_sample(running: str, waiting: str, max_lora: int, value: float) -> str:
    return (f'vllm:lora_requests_info{{max_lora="{max_lora}",running_lora_adapters="{running}",'
            f'waiting_lora_adapters="{waiting}"}} {value}\n')


LORA_TYPE = "# TYPE vllm:lora_requests_info gauge\n"


def test_lora_affinity_scorer_cases() -> None:
    m = ReplicaMetrics(active={"a", "b"}, waiting={"c"}, max_active=4)
    assert lora_affinity(m, "a") == 1.0  # active
    assert lora_affinity(m, "z") == 0.8  # room: 2 + 1 < 4
    full = ReplicaMetrics(active={"a", "b", "d"}, waiting={"c"}, max_active=4)
    assert lora_affinity(full, "c") == 0.6  # waiting, no room
    assert lora_affinity(full, "z") == 0.0  # no room, neither active nor waiting


def test_parse_takes_latest_nonempty_lora_sample_and_keeps_state_without_one() -> None:
    text = ("# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 3\n" + LORA_TYPE
            + lora_sample("old", "", 4, 10.0) + lora_sample("a,b", "", 8, 20.0)
            + lora_sample("", "", 2, 99.0))
    m = parse_metrics(text)
    assert (m.waiting_queue, m.active, m.waiting, m.max_active) == (3, {"a", "b"}, set(), 8)
    later = parse_metrics(LORA_TYPE + lora_sample("", "", 2, 50.0), m)  # both labels empty: ignored
    assert (later.active, later.max_active) == ({"a", "b"}, 8)


def test_weighted_sum_prefers_the_holder_over_a_shorter_queue() -> None:
    """With the shipped weights (lora-affinity 20, queue 2, kv-cache 2) a replica holding the
    adapter wins even against an idle one with room: a one-request queue difference is the
    queue scorer's full 2 points, less than affinity's 20 x (1.0 - 0.8)."""
    w = WEIGHTS
    holder = ReplicaMetrics(waiting_queue=4, active={"a"}, max_active=2)
    full = ReplicaMetrics(waiting_queue=0, active={"b", "c"}, max_active=2)
    roomy = ReplicaMetrics(waiting_queue=0, active=set(), max_active=2)
    on_holder = w["lora-affinity"] * 1.0 + w["queue"] * 0.0 + w["kv-cache"]
    assert scores([holder, full], "a") == [on_holder, 0.0 + w["queue"] + w["kv-cache"]]
    assert scores([holder, roomy], "a") == [
        on_holder, w["lora-affinity"] * 0.8 + w["queue"] + w["kv-cache"]]
    assert on_holder > w["lora-affinity"] * 0.8 + w["queue"] + w["kv-cache"]


@pytest.fixture
def fleet(tmp_path: Path):
    """`fleet(tag)` → 3 fresh replica URLs (fake engine, SLOTS adapters each) over one registry
    holding adapters a0..a9."""
    registry = reg.open(tmp_path / "registry")
    names = [f"a{i}" for i in range(10)]
    for i, name in enumerate(names):
        registry.push(write_adapter(tmp_path / "src" / name, SHAPES, rank=2, seed=i), name)
    servers = LiveServers()

    def start(tag: str) -> list[str]:
        urls = []
        for i in range(3):
            settings = ServerSettings.from_sources({"base": "fake-base"}, environ={})
            runtime = build_runtime(settings, tmp_path / "registry",
                                    tmp_path / f"cache-{tag}-{i}", FakeEngine())
            runtime.adapters.options.max_resident = SLOTS  # `--max-cpu-loras 3`
            urls.append(servers.start(runtime))
        return urls

    start.names = names
    yield start
    servers.close()
    registry.close()


def test_affinity_routes_repeats_to_the_replica_holding_the_adapter(fleet) -> None:
    models = affinity.zipf_sequence(fleet.names, 60, 1.0, seed=0)
    requests = [Request(m, "hello there", 4) for m in models]
    outcome = {}
    for routing in ("round_robin", "affinity"):
        urls = fleet(routing)
        router = (AffinityRouter(urls, refresh_s=0.01) if routing == "affinity"
                  else RoundRobinRouter(urls))
        result, sent = asyncio.run(affinity.drive(router, requests, concurrency=4))
        assert result.ok, result.first_error
        per = [affinity.counters(u) for u in urls]
        outcome[routing] = (sum(c["loads"] for c in per), sum(c["hits"] for c in per), sent)
    rr_loads, rr_hits, _ = outcome["round_robin"]
    aff_loads, aff_hits, sent = outcome["affinity"]
    assert aff_loads < rr_loads, outcome
    assert aff_hits > rr_hits, outcome
    assert sum(sent.values()) == 60 and min(sent.values()) > 0, sent  # all three replicas used
