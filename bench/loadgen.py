"""The one load generator every server is driven by: the same requests, the same client code.

Each request streams `/v1/completions` (server-sent events) so time to first token is seen on the
wire: from just before the request is sent to the first event that carries a choice. Output
tokens come from the final usage event (`stream_options.include_usage`); a request is good only
if the server produced exactly `max_tokens` tokens (`ignore_eos`), so every server does the same
work. Throughput is all output tokens over the wall time of the whole batch.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from loramux.bench.workload import Request


@dataclass
class RequestResult:
    model: str
    ok: bool
    ttft_s: float | None = None
    latency_s: float | None = None
    output_tokens: int = 0
    error: str | None = None


@dataclass
class LoadResult:
    """One trial: a batch of requests at a fixed concurrency."""

    requests: int
    concurrency: int
    wall_s: float
    output_tokens: int
    failures: int
    first_error: str | None
    ttft_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # of each good request, as ttft_s

    @property
    def ok(self) -> bool:
        return self.failures == 0

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def tail_ttft(self, adapters: set[str]) -> list[float]:
        """TTFTs of the good requests for `adapters` (e.g. the least popular ones)."""
        return [t for m, t in zip(self.models, self.ttft_s, strict=True) if m in adapters]

    def summary(self, tail: set[str] | None = None) -> dict[str, Any]:
        """Figures of this trial; with `tail`, also TTFT over the requests for those adapters."""
        out = {"ok": self.ok, "requests": self.requests, "concurrency": self.concurrency,
                "failures": self.failures, "first_error": self.first_error,
                "wall_s": round(self.wall_s, 4), "output_tokens": self.output_tokens,
                "tokens_per_s": round(self.tokens_per_s, 2),
                "ttft_p50_ms": _ms(percentile(self.ttft_s, 50)),
                "ttft_p99_ms": _ms(percentile(self.ttft_s, 99)),
                "latency_p50_ms": _ms(percentile(self.latency_s, 50)),
                "latency_p99_ms": _ms(percentile(self.latency_s, 99))}
        if tail:
            ttft = self.tail_ttft(tail)
            out |= {"tail_adapters": len(tail), "tail_requests": len(ttft),
                    "tail_ttft_p50_ms": _ms(percentile(ttft, 50)),
                    "tail_ttft_p99_ms": _ms(percentile(ttft, 99))}
        return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 2)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def spread(values: list[float]) -> dict[str, float | None]:
    """Median and min-max across trials."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


async def _one(client: httpx.AsyncClient, sem: asyncio.Semaphore,
               request: Request) -> RequestResult:
    async with sem:
        result = RequestResult(request.model, ok=False)
        started = time.perf_counter()
        try:
            async with client.stream("POST", "/v1/completions", json=request.payload()) as resp:
                if resp.status_code != 200:
                    body = (await resp.aread()).decode(errors="replace")
                    result.error = f"HTTP {resp.status_code}: {body[:300]}"
                    return result
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        result.error = f"stream error: {json.dumps(event['error'])[:300]}"
                        return result
                    if event.get("choices") and result.ttft_s is None:
                        result.ttft_s = time.perf_counter() - started
                    usage = event.get("usage")
                    if usage:
                        result.output_tokens = int(usage.get("completion_tokens") or 0)
        except (httpx.HTTPError, ValueError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"[:300]
            return result
        result.latency_s = time.perf_counter() - started
        if result.ttft_s is None:
            result.error = "no token streamed"
        elif result.output_tokens != request.max_tokens:
            result.error = (f"{result.output_tokens} output tokens, expected "
                            f"{request.max_tokens} (ignore_eos not honoured?)")
        else:
            result.ok = True
        return result


async def run_load_async(url: str, requests: list[Request], concurrency: int,
                         timeout_s: float = 600) -> LoadResult:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout_s),
                                 limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(_one(client, sem, r) for r in requests))
        wall = time.perf_counter() - started
    failed = [r for r in results if not r.ok]
    timed = [r for r in results if r.ok and r.ttft_s is not None]
    return LoadResult(
        requests=len(requests), concurrency=concurrency, wall_s=wall,
        output_tokens=sum(r.output_tokens for r in results if r.ok), failures=len(failed),
        first_error=(f"{failed[0].model}: {failed[0].error}" if failed else None),
        ttft_s=[r.ttft_s for r in timed], models=[r.model for r in timed],
        latency_s=[r.latency_s for r in results if r.ok and r.latency_s is not None])


def run_load(url: str, requests: list[Request], concurrency: int,
             timeout_s: float = 600) -> LoadResult:
    """Send `requests` to the server at `url`, at most `concurrency` in flight."""
    return asyncio.run(run_load_async(url, requests, concurrency, timeout_s))


def single_ttft(url: str, request: Request, timeout_s: float = 600) -> RequestResult:
    """One request alone (nothing else in flight): its time to first token."""
    async def go() -> RequestResult:
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout_s)) as client:
            return await _one(client, asyncio.Semaphore(1), request)

    return asyncio.run(go())


def as_dict(result: RequestResult) -> dict[str, Any]:
    return asdict(result)
