"""Affinity, measured (issue 14, item 3): N `loramux serve` replicas on loopback sharing one
registry, the same Zipf request sequence routed round robin and then by the endpoint picker's
LoRA-affinity rule (the test harness in `affinity_router`, fed by the replicas' live `/metrics`).

Each routing gets fresh replicas (empty adapter caches), so both start cold. Per routing: adapter
loads per replica (`loramux_adapter_loads_total`), cache hit rate (`loramux_adapter_cache_hits_
total` over hits + misses), TTFT p50/p99 (streamed, time to the first event with a choice, as in
`loadgen`), and the ratio of round-robin loads to affinity loads (target: at least 3).

Replicas keep few adapters (`--max-cpu-loras`), so placement matters: round robin sends every
adapter everywhere and each replica churns through its few slots; the picker sends a request to a
replica already holding its adapter.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from loramux.bench import loadgen, workload
from loramux.bench.affinity_router import WEIGHTS, AffinityRouter, RoundRobinRouter
from loramux.bench.servers import EngineLimits, bench_env
from loramux.support.launch import ServerProcess
from loramux.support.scrape import metric_sum

TARGET = 3.0  # round-robin loads / affinity loads
ROUTINGS = ("round_robin", "affinity")


@dataclass(frozen=True)
class AffinityConfig:
    replicas: int = 3
    adapters: int = 30
    requests: int = 300
    concurrency: int = 8
    zipf_alpha: float = 1.0
    slots: int = 10  # --max-cpu-loras: adapters one replica keeps loaded
    prompt_tokens: int = 16
    max_tokens: int = 8
    engine: str = "vllm"  # or transformers (the reference engine)
    seed: int = 0


def zipf_sequence(names: list[str], count: int, alpha: float, seed: int) -> list[str]:
    """`count` draws, the i-th name with probability proportional to 1 / (i + 1) ** alpha."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) ** alpha for i in range(len(names))]
    return rng.choices(names, weights=weights, k=count)


def replica(model_dir: Path, registry: Path, cache: Path, cfg: AffinityConfig,
            log: Path) -> ServerProcess:
    """One `loramux serve` replica: its own adapter cache, the shared registry."""
    args = ["--base", str(model_dir), "--registry", str(registry), "--engine", cfg.engine,
            "--quantization", "none", "--max-cpu-loras", str(cfg.slots),
            "--max-lora-rank", "16", "--max-model-len", "256", "--max-num-seqs", "16",
            "--kv-cache-gib", "0.5", "--cache-dir", str(cache), "--max-pending", "4096"]
    return ServerProcess(args, log=log, timeout_s=900, env=bench_env(EngineLimits()))


def counters(url: str) -> dict[str, float]:
    """A replica's adapter loads, cache hits and misses, from its `/metrics`."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    names = {"loads": "loramux_adapter_loads_total", "hits": "loramux_adapter_cache_hits_total",
             "misses": "loramux_adapter_cache_misses_total"}
    return {key: metric_sum(text, name) for key, name in names.items()}


async def drive(router: AffinityRouter | RoundRobinRouter, requests: list[workload.Request],
                concurrency: int) -> tuple[loadgen.LoadResult, dict[str, int]]:
    """The requests in order, at most `concurrency` in flight, each sent where `router` picks
    at the moment it is dispatched; returns the load result and requests per replica."""
    sem = asyncio.Semaphore(concurrency)
    sent = dict.fromkeys(router.urls, 0)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    clients = {u: httpx.AsyncClient(base_url=u, timeout=httpx.Timeout(600), limits=limits)
               for u in router.urls}

    async def one(request: workload.Request) -> loadgen.RequestResult:
        async with sem:  # FIFO: requests are picked for in sequence order, when dispatched
            url = router.pick(request.model)
            sent[url] += 1
            return await loadgen._one(clients[url], asyncio.Semaphore(1), request)

    try:
        async with router:
            started = time.perf_counter()
            results = await asyncio.gather(*(one(r) for r in requests))
            wall = time.perf_counter() - started
    finally:
        for client in clients.values():
            await client.aclose()
    failed = [r for r in results if not r.ok]
    timed = [r for r in results if r.ok and r.ttft_s is not None]
    return loadgen.LoadResult(
        requests=len(requests), concurrency=concurrency, wall_s=wall,
        output_tokens=sum(r.output_tokens for r in results if r.ok), failures=len(failed),
        first_error=(f"{failed[0].model}: {failed[0].error}" if failed else None),
        ttft_s=[r.ttft_s for r in timed], models=[r.model for r in timed],
        latency_s=[r.latency_s for r in results if r.ok and r.latency_s is not None]), sent


def run_routing(routing: str, model_dir: Path, registry: Path, scratch: Path, logs: Path,
                cfg: AffinityConfig, requests: list[workload.Request]) -> dict[str, Any]:
    """Fresh replicas, one pass of `requests` routed by `routing`, the replicas' counters."""
    procs = [replica(model_dir, registry, scratch / f"{routing}-cache-{i}", cfg,
                     logs / f"affinity-{routing}-{i}.log") for i in range(cfg.replicas)]
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(cfg.replicas) as pool:
            urls = list(pool.map(lambda p: p.start(), procs))
        startup = time.monotonic() - started
        router = (AffinityRouter(urls, seed=cfg.seed) if routing == "affinity"
                  else RoundRobinRouter(urls))
        result, sent = asyncio.run(drive(router, requests, cfg.concurrency))
        per = [counters(u) for u in urls]
    finally:
        for p in procs:
            p.stop()
    loads = [int(c["loads"]) for c in per]
    hits, misses = sum(c["hits"] for c in per), sum(c["misses"] for c in per)
    summary = result.summary()
    out = {"routing": routing, "ok": result.ok, "startup_s": round(startup, 1),
           "loads_per_replica": loads, "loads": sum(loads),
           "requests_per_replica": [sent[u] for u in urls],
           "cache_hits": int(hits), "cache_misses": int(misses),
           "cache_hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
           **{k: summary[k] for k in ("failures", "first_error", "wall_s", "ttft_p50_ms",
                                      "ttft_p99_ms", "latency_p50_ms", "latency_p99_ms")}}
    if isinstance(router, AffinityRouter):
        rounds = router.scrapes / cfg.replicas  # every replica is scraped once per round
        out |= {"scrapes": router.scrapes, "scrape_errors": router.scrape_errors,
                "scrape_round_ms": round(result.wall_s * 1e3 / rounds, 1) if rounds else None}
    if not result.ok:
        out["error"] = f"{result.failures} requests failed; first: {result.first_error}"
    return out


def run(cfg: AffinityConfig, out_dir: Path, cache: Path = workload.DEFAULT_CACHE,
        command: str = "") -> tuple[dict[str, Any], Path]:
    """The whole benchmark; writes `<stamp>-affinity.json` and `.md` into `out_dir`."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()
    model_dir = workload.demo_base()
    recipe = workload.AdapterRecipe(count=cfg.adapters, cold=0, mixed_per_rank=0)
    folders = workload.build_adapters(model_dir, cache, recipe)
    names = workload.adapter_names(recipe)[0]
    models = zipf_sequence(names, cfg.requests, cfg.zipf_alpha, cfg.seed)
    prompts = workload.make_prompts(model_dir, cfg.requests, cfg.prompt_tokens, cfg.seed)
    requests = workload.requests_for(prompts, models, cfg.max_tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = out_dir / f"{stamp}-logs"
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"affinity-{stamp}-", dir=cache))
    try:
        registry = scratch / "registry"
        workload.publish(registry, model_dir, {n: folders[n] for n in names})
        routings = {r: run_routing(r, model_dir, registry, scratch, logs, cfg, requests)
                    for r in ROUTINGS}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rr, aff = routings["round_robin"]["loads"], routings["affinity"]["loads"]
    ratio = round(rr / aff, 2) if aff else None
    results = {
        "schema": "loramux-bench-affinity/1", "timestamp": stamp, "command": command,
        "config": asdict(cfg), "model": str(model_dir), "weights": WEIGHTS,
        "distinct_adapters_requested": len(set(models)), "routings": routings,
        "load_reduction": ratio, "target": TARGET,
        "target_met": ratio is not None and ratio >= TARGET,
        "duration_s": round(time.monotonic() - started, 1)}
    path = out_dir / f"{stamp}-affinity.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(results))
    if all(r["ok"] for r in routings.values()):
        shutil.rmtree(logs, ignore_errors=True)
    return results, path


def markdown(results: dict[str, Any]) -> str:
    """The results as the table docs/bench.md quotes."""
    cfg = results["config"]
    lines = [f"# Affinity ({results['timestamp']})", "",
             f"`{results['command']}`: {cfg['replicas']} replicas ({cfg['engine']} engine, "
             f"{cfg['slots']} adapter slots each), {cfg['requests']} requests over "
             f"{cfg['adapters']} adapters (Zipf {cfg['zipf_alpha']}, seed {cfg['seed']}, "
             f"{results['distinct_adapters_requested']} distinct), {cfg['concurrency']} in "
             f"flight, {cfg['prompt_tokens']} prompt + {cfg['max_tokens']} output tokens.", "",
             "| routing | adapter loads (per replica) | requests per replica | cache hit rate "
             "| TTFT p50 ms | TTFT p99 ms | failures |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results["routings"].items():
        loads = " + ".join(str(n) for n in r["loads_per_replica"])
        hit = "-" if r["cache_hit_rate"] is None else f"{r['cache_hit_rate']:.1%}"
        lines.append(f"| {name} | {r['loads']} ({loads}) | "
                     f"{' / '.join(str(n) for n in r['requests_per_replica'])} | {hit} | "
                     f"{r['ttft_p50_ms']} | {r['ttft_p99_ms']} | {r['failures']} |")
    verdict = "met" if results["target_met"] else "MISSED"
    lines += ["", f"Load reduction (round robin / affinity): **{results['load_reduction']}x** "
              f"(target {results['target']}x: {verdict}).", ""]
    return "\n".join(lines)
