"""A soak: a real server under a bounded overload for a fixed time, its memory watched.

`clients` loops (twice the server's admission limit in the test and the bench) send requests
back to back over real HTTP: chat completions over the base and several adapters, a third of
them streamed, and half of those cut after the first event (a client that hangs up). The
server's resident memory (with its child processes) is sampled once a second. What a soak
reports: the statuses, the RSS over time, its growth after warm-up, and the server's own
`in_flight` and adapter-lease gauges once the load has stopped.

Shared by `tests/server/test_soak.py` (about a minute) and `loramux bench soak --minutes N`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from loramux.server.engines.lifetime import tree_rss
from loramux.support.adapters import llama_shapes, write_adapter
from loramux.support.launch import ServerProcess
from loramux.support.scrape import metric_sum

HELLO = [{"role": "user", "content": "Hello!"}]


@dataclass
class Sample:
    seconds: float  # since the load started
    rss_bytes: int
    requests: int  # answered so far


@dataclass
class SoakResult:
    seconds: float
    clients: int
    statuses: Counter = field(default_factory=Counter)  # HTTP status (or "error") -> count
    samples: list[Sample] = field(default_factory=list)
    warmup_s: float = 0.0
    in_flight_after: float | None = None
    leases_after: float | None = None

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def rss_after_warmup(self) -> tuple[int, int]:
        """Median RSS over the first 10 % of the time after warm-up, and over the last 10 %:
        medians, so that one sample taken mid-batch does not decide the verdict."""
        late = [s for s in self.samples if s.seconds >= self.warmup_s]
        span = max(1, len(late) // 10)
        return (int(statistics.median(s.rss_bytes for s in late[:span])),
                int(statistics.median(s.rss_bytes for s in late[-span:])))

    @property
    def rss_growth(self) -> float:
        start, end = self.rss_after_warmup()
        return end / start - 1

    def table(self, rows: int = 12) -> str:
        """RSS over time as a small text table (one row every len/rows samples)."""
        step = max(1, len(self.samples) // rows)
        lines = ["   time   RSS (MiB)   answered"]
        for s in [*self.samples[::step], self.samples[-1]][: rows + 1]:
            lines.append(f"{s.seconds:6.0f}s {s.rss_bytes / 2**20:10.1f} {s.requests:10d}")
        return "\n".join(lines)


def metric(url: str, name: str, headers: dict[str, str] | None = None) -> float:
    return metric_sum(httpx.get(f"{url}/metrics", headers=headers, timeout=30).text, name)


async def _client(http: httpx.AsyncClient, models: list[str], index: int, deadline: float,
                  statuses: Counter) -> None:
    turn = index
    while time.monotonic() < deadline:
        turn += 1
        body = {"model": models[turn % len(models)], "messages": HELLO, "max_tokens": 4,
                "temperature": 0}
        try:
            if turn % 3:
                r = await http.post("/v1/chat/completions", json=body)
                statuses[r.status_code] += 1
                if r.status_code == 429:
                    await asyncio.sleep(0.05)  # keep up the pressure without a busy loop
                continue
            async with http.stream("POST", "/v1/chat/completions",
                                   json=body | {"stream": True}) as r:
                statuses[r.status_code] += 1
                async for _ in r.aiter_lines():
                    if turn % 2:
                        break  # hang up mid-stream
        except httpx.HTTPError:
            statuses["error"] += 1


async def _load(url: str, models: list[str], clients: int, seconds: float, pid: int,
                headers: dict[str, str] | None, result: SoakResult) -> None:
    started = time.monotonic()
    deadline = started + seconds
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120,
                                 limits=limits) as http:
        tasks = [asyncio.create_task(_client(http, models, i, deadline, result.statuses))
                 for i in range(clients)]
        while not all(t.done() for t in tasks):
            result.samples.append(Sample(time.monotonic() - started, tree_rss(pid),
                                         result.requests))
            await asyncio.sleep(1.0)
        for task in tasks:
            task.result()  # a bug in the driver itself must not pass as a clean soak


def soak(url: str, models: list[str], clients: int, seconds: float, pid: int,
         headers: dict[str, str] | None = None, warmup_fraction: float = 0.3) -> SoakResult:
    """Warm up (every model answered once: adapters fetched and loaded, first allocations
    made), run the load, then wait a bounded while for the server to report nothing in flight.
    RSS growth is measured from the end of the first `warmup_fraction` of the load."""
    for model in models:
        httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=300, json={
            "model": model, "messages": HELLO, "max_tokens": 4}).raise_for_status()
    result = SoakResult(seconds=seconds, clients=clients, warmup_s=seconds * warmup_fraction)
    asyncio.run(_load(url, models, clients, seconds, pid, headers, result))
    end = time.monotonic() + 60
    while True:
        result.in_flight_after = metric(url, "loramux_requests_in_flight", headers)
        result.leases_after = metric(url, "loramux_adapter_leases", headers)
        if (result.in_flight_after == 0 and result.leases_after == 0) or time.monotonic() > end:
            return result
        time.sleep(0.2)


def soak_server(base: Path, root: Path, limit: int, adapters: int = 3,
                engine: str = "transformers") -> tuple[ServerProcess, list[str]]:
    """A server (reference engine, or vLLM with NF4) over a local registry of random adapters,
    admitting `limit` requests; returns it (not started) and the `model` values to load it."""
    import loramux.registry as reg

    names = [f"soak-{i}" for i in range(adapters)]
    with reg.open(root / "registry") as store:
        shapes = llama_shapes(base)
        for i, name in enumerate(names):
            store.push(write_adapter(root / "adapters" / name, shapes, seed=1000 + i), name,
                       base_model=base)
    engine_args = (["--engine", "transformers", "--quantization", "none"]
                   if engine == "transformers" else ["--engine", "vllm"])
    server = ServerProcess(
        ["--base", str(base), *engine_args, "--registry", str(root / "registry"),
         "--cache-dir", str(root / "cache"), "--max-pending", str(limit),
         "--max-model-len", "128", "--log-level", "warning"], log=root / "server.log")
    return server, [Path(base).name, *names]
