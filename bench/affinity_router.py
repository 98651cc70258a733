"""TEST HARNESS, not a product: a router that reproduces the Kubernetes inference gateway's
endpoint picker (EPP) for the affinity benchmark. In production the gateway's own endpoint picker
does the routing (deploy/k8s: InferencePool + EPP); nothing here is shipped to route traffic.

What it reproduces, read from kubernetes-sigs/gateway-api-inference-extension at tag v1.5.0
(commit df9f8909fe06, the picker deploy/ runs; the scorer is unchanged at 1748e829, the last
commit before pkg/epp left that repository, 2026-06-16):

- Data (`pkg/epp/backend/metrics/metrics.go`, names and interval in `pkg/epp/server/options.go`):
  each replica's `/metrics`, vLLM names: `vllm:num_requests_waiting` (WaitingQueueSize),
  `vllm:kv_cache_usage_perc` (KVCacheUsagePercent), and `vllm:lora_requests_info`, of which the
  sample with the largest value (its update time) among those with a non-empty adapter label
  wins; its `running_lora_adapters` and `waiting_lora_adapters` labels are split on ","
  (ActiveModels, WaitingModels) and `max_lora` is MaxActiveModels. Refreshed every 50 ms
  (`--refresh-metrics-interval`, default 50ms) by a background poller, not before each pick: a
  pick uses what the last scrape saw, as the EPP does.
- `lora-affinity-scorer` (`scorer/loraaffinity/lora_affinity.go`): 1.0 when the requested model
  is active on the replica; else 0.8 when len(active) + len(waiting) < max_lora; else 0.6 when it
  is waiting there; else 0.0.
- `queue-scorer` (`scorer/queuedepth/queue.go`): (max - q) / (max - min) over the candidates'
  waiting queues, 1.0 for all when they are equal.
- `kv-cache-utilization-scorer`: 1 - KV-cache usage.
- Profile (`scheduling/scheduler_profile.go`): the sum of score x weight; weights as in
  deploy/k8s/base/endpoint-picker.yaml (a test keeps them equal): lora-affinity 20, queue 2,
  kv-cache 2 (why 20: that file's comment and docs/bench.md) (its
  prefix-cache-scorer, weight 1, is left out: it keeps its own in-memory index of prompts, and
  leaving it out means any affinity measured comes from the LoRA rule alone).
- `max-score-picker` (`picker/maxscore/picker.go`, the default): shuffle, then the highest score,
  so ties are broken at random (seeded here, for a repeatable run).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

REFRESH_S = 0.05  # the EPP's default --refresh-metrics-interval
WEIGHTS = {"lora-affinity": 20.0, "queue": 2.0, "kv-cache": 2.0}
WAITING = "vllm:num_requests_waiting"
KV_CACHE = "vllm:kv_cache_usage_perc"
LORA_INFO = "vllm:lora_requests_info"


@dataclass
class ReplicaMetrics:
    """What the picker knows of one replica (its `fwkdl.Metrics`, the fields the scorers read)."""

    waiting_queue: int = 0
    kv_cache_usage: float = 0.0
    active: set[str] = field(default_factory=set)
    waiting: set[str] = field(default_factory=set)
    max_active: int = 0
    scraped_at: float = 0.0


def _adapters(csv: str) -> set[str]:
    return set(csv.split(",")) if csv else set()  # v1.5.0 splits on "," and trims nothing


def parse_metrics(text: str, previous: ReplicaMetrics | None = None) -> ReplicaMetrics:
    """A replica's `/metrics` text as v1.5.0's `promToPodMetrics` reads it: updates a copy of
    `previous`; a LoRA info sample with both adapter labels empty is ignored, and without any
    other the adapter sets and max_lora stay as they were (so, at first, max_lora is 0)."""
    prev = previous or ReplicaMetrics()
    out = ReplicaMetrics(prev.waiting_queue, prev.kv_cache_usage, set(prev.active),
                         set(prev.waiting), prev.max_active, time.monotonic())
    latest, lora = 0.0, None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == WAITING:
                out.waiting_queue = int(sample.value)
            elif sample.name == KV_CACHE:
                out.kv_cache_usage = float(sample.value)
            elif sample.name == LORA_INFO and sample.value > latest and (
                    sample.labels.get("running_lora_adapters")
                    or sample.labels.get("waiting_lora_adapters")):
                latest, lora = sample.value, sample.labels
    if lora is not None:
        out.active = _adapters(lora.get("running_lora_adapters", ""))
        out.waiting = _adapters(lora.get("waiting_lora_adapters", ""))
        if lora.get("max_lora"):
            out.max_active = int(lora["max_lora"])
    return out


def lora_affinity(m: ReplicaMetrics, model: str) -> float:
    """`lora-affinity-scorer`, case for case."""
    if model in m.active:
        return 1.0
    if len(m.active) + len(m.waiting) < m.max_active:
        return 0.8
    if model in m.waiting:
        return 0.6
    return 0.0


def queue_scores(ms: list[ReplicaMetrics]) -> list[float]:
    """`queue-scorer`: min-max normalised, shorter queue higher."""
    lo, hi = min(m.waiting_queue for m in ms), max(m.waiting_queue for m in ms)
    if lo == hi:
        return [1.0] * len(ms)
    return [(hi - m.waiting_queue) / (hi - lo) for m in ms]


def scores(ms: list[ReplicaMetrics], model: str) -> list[float]:
    """The default profile's weighted sum, each scorer's value clamped to [0, 1] as the EPP
    does."""
    queue = queue_scores(ms)
    out = []
    for m, q in zip(ms, queue, strict=True):
        parts = {"lora-affinity": lora_affinity(m, model), "queue": q,
                 "kv-cache": 1.0 - m.kv_cache_usage}
        out.append(sum(WEIGHTS[k] * min(1.0, max(0.0, v)) for k, v in parts.items()))
    return out


class AffinityRouter:
    """Picks a replica per request by the picker's rule, from `/metrics` polled every 50 ms.

    Use as `async with AffinityRouter(urls) as router: url = router.pick(model)`; the first
    scrape of every replica is done before `__aenter__` returns.
    """

    name = "affinity"

    def __init__(self, urls: list[str], seed: int = 0, refresh_s: float = REFRESH_S) -> None:
        self.urls = list(urls)
        self.refresh_s = refresh_s
        self._rng = random.Random(seed)
        self._metrics = [ReplicaMetrics() for _ in self.urls]
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self.scrapes = 0
        self.scrape_errors = 0

    async def __aenter__(self) -> AffinityRouter:
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(5.0))
        await self.refresh()
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def _scrape(self, i: int) -> None:
        assert self._client is not None
        try:
            resp = await self._client.get(f"{self.urls[i]}/metrics")
            resp.raise_for_status()
        except httpx.HTTPError as exc:  # the EPP keeps the last good metrics of a replica
            self.scrape_errors += 1
            log.warning("scrape of %s failed: %s", self.urls[i], exc)
            return
        self._metrics[i] = parse_metrics(resp.text, self._metrics[i])
        self.scrapes += 1

    async def refresh(self) -> None:
        await asyncio.gather(*(self._scrape(i) for i in range(len(self.urls))))

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()

    def pick(self, model: str) -> str:
        """max-score-picker: shuffle, then the best score (random among equals)."""
        scored = list(zip(self.urls, scores(self._metrics, model), strict=True))
        self._rng.shuffle(scored)
        return max(scored, key=lambda pair: pair[1])[0]  # max keeps the first of equals


class RoundRobinRouter:
    """The baseline: replicas in turn, blind to adapters (what a plain Service does, roughly)."""

    name = "round_robin"

    def __init__(self, urls: list[str]) -> None:
        self.urls = list(urls)
        self._next = itertools.cycle(self.urls)

    async def __aenter__(self) -> RoundRobinRouter:
        return self

    async def __aexit__(self, *_: object) -> None:
        pass

    def pick(self, model: str) -> str:
        return next(self._next)
