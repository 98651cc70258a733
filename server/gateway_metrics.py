"""The model-server protocol of the Kubernetes Gateway API Inference Extension, on `/metrics`.

The gateway's endpoint picker (EPP) scrapes each replica's `/metrics` and routes on what it
reads: queue depth, running requests, KV-cache use, and which LoRA adapters a replica already
holds (its LoRA-affinity scorer). loramux exposes the vLLM column of that protocol, so an
InferencePool of loramux replicas works with the picker's default (vLLM) metric mapping,
unchanged.

Followed: kubernetes-sigs/gateway-api-inference-extension v1.5.0 (commit df9f8909fe06),
`docs/proposals/003-model-server-protocol/README.md` (text unchanged through v1.6.0 and main
84436a96 of 2026-08-18), and that release's scraper, `pkg/epp/backend/metrics/metrics.go`
(defaults in `pkg/epp/server/options.go`). The table (`PROTOCOL` below):

  TotalQueuedRequests   Gauge  vllm:num_requests_waiting
  TotalRunningRequests  Gauge  vllm:num_requests_running
  KVCacheUtilization    Gauge  vllm:kv_cache_usage_perc  (a fraction: 1 means 100 %, as vLLM)
  LoRA adapters         Gauge  vllm:lora_requests_info{max_lora, running_lora_adapters,
                               waiting_lora_adapters}; value: when it was last updated (unix s)
  BlockSize, NumGPUBlocks (optional)
                        Gauge  vllm:cache_config_info{block_size, num_gpu_blocks}

How the picker reads them, and what loramux does about it:
- Scalar gauges: it takes the sample with the latest timestamp; loramux emits one sample each.
- LoRA info: it takes the sample with the largest value among those whose running or waiting
  label is non-empty, splits both labels on "," (no trimming in v1.5.0, so no spaces) and reads
  `max_lora` as an int. vLLM leaves one series per label combination it ever had; loramux emits
  only the current one, stamped with the scrape time, so it is always the latest.
- The adapter names are the `model` strings clients send (`sql-helper:prod`, `sql-helper@3`,
  `sql-helper`), since the picker matches them against the request's `model`, and only those. A
  name is listed under the digest it last resolved to here, so an alias that moved stops being
  listed for the old version's digest.
- `max_lora` is the engine's LoRA slots, shifted by the names that share an adapter: the picker
  decides "room for one more" as `len(running) + len(waiting) < max_lora`, counting names, while
  slots hold adapters (`sql-helper:prod` and `sql-helper` may be one). Reported as slots + names
  - distinct adapters in use (unnamed resident ones count too), the picker's test holds exactly
  when a slot is free.
- `running_lora_adapters`: the adapters loaded in the engine, ready to serve (the protocol's
  words; vLLM lists only adapters with a running request, a subset of these). A replica that
  holds an adapter idle still attracts its requests, which is what saves a fetch and a load.
  `waiting_lora_adapters`: adapters admitted requests wait for (being fetched or loaded).
- Queued and running: an admitted request is queued until it reaches the engine (resolving,
  tokenizing, waiting for its adapter), then running, unless the engine's scheduler says it
  waits there (vLLM: its scheduler counts, as of its last step). Queued + running is always
  `loramux_requests_in_flight`.
- KV cache: the vLLM engine's scheduler's own figure. The transformers reference engine has no
  preallocated KV pool (its cache grows per batch), so it reports 0, and no cache_config_info.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from loramux.registry.manifest import Manifest

PROTOCOL_VERSION = "gateway-api-inference-extension v1.5.0 (model-server protocol 003)"


@dataclass(frozen=True)
class Series:
    """One row of the protocol's table, vLLM column."""

    protocol: str
    name: str
    help: str
    labels: tuple[str, ...]


QUEUED = Series("TotalQueuedRequests", "vllm:num_requests_waiting",
                "Requests admitted and waiting: for their adapter, or for the engine.",
                ("model_name",))
RUNNING = Series("TotalRunningRequests", "vllm:num_requests_running",
                 "Requests the engine is running.", ("model_name",))
KV_CACHE = Series("KVCacheUtilization", "vllm:kv_cache_usage_perc",
                  "KV-cache usage. 1 means 100 percent usage.", ("model_name",))
LORA_INFO = Series("LoRA adapters", "vllm:lora_requests_info",
                   "Adapters loaded (running) and awaited (waiting), by the names clients "
                   "send; value: unix time of this state.",
                   ("max_lora", "running_lora_adapters", "waiting_lora_adapters"))
CACHE_CONFIG = Series("BlockSize, NumGPUBlocks", "vllm:cache_config_info",
                      "KV-cache layout (paged engines only).", ("block_size", "num_gpu_blocks"))
PROTOCOL = (QUEUED, RUNNING, KV_CACHE, LORA_INFO, CACHE_CONFIG)


class ClientNames:
    """`model` strings clients sent → the adapter digest each last resolved to (LRU, bounded:
    a label must not grow without end)."""

    def __init__(self, cap: int = 1024) -> None:
        self.cap = cap
        self._digests: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def saw(self, model: str, manifest: Manifest) -> None:
        """A client asked for `model`, which resolved to `manifest`."""
        if "," in model:  # never from a parsed ref; the label's separator all the same
            return
        with self._lock:
            self._digests[model] = manifest.digest
            self._digests.move_to_end(model)
            while len(self._digests) > self.cap:
                self._digests.popitem(last=False)

    def for_digests(self, digests: set[str]) -> list[str]:
        with self._lock:
            return sorted(n for n, d in self._digests.items() if d in digests)


@dataclass(eq=False)
class Ticket:
    """One admitted request, as the gateway sees it: queued until it reaches the engine."""

    model: str | None = None  # the client's `model`, once it resolved to an adapter
    digest: str | None = None
    in_engine: bool = False


class RequestStates:
    """Admitted requests and where each one is; `Admission` holds one per server."""

    def __init__(self) -> None:
        self._tickets: set[Ticket] = set()

    @contextmanager
    def admitted(self) -> Iterator[Ticket]:
        ticket = Ticket()
        self._tickets.add(ticket)
        try:
            yield ticket
        finally:
            self._tickets.discard(ticket)

    def snapshot(self) -> list[Ticket]:
        return list(self._tickets)


class GatewayCollector(Collector):
    """Builds the protocol's series at scrape time from the server's own state (no second
    count to drift): admission's tickets, the adapter manager's resident set, the engine."""

    def __init__(self, handlers: Any) -> None:
        """`handlers`: the server's `handlers.Handlers`, which reach every part read here."""
        self._states: RequestStates = handlers.admission.states
        self._names: ClientNames = handlers.models.client_names
        self._adapters = handlers.models.adapters
        self._engine = handlers.engine
        self._model = handlers.models.served_name

    def max_lora(self) -> int:
        return min(self._engine.info.max_loras, self._adapters.options.max_resident)

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(s.name, s.help, labels=s.labels) for s in PROTOCOL]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        tickets = self._states.snapshot()
        submitted = sum(t.in_engine for t in tickets)
        load_of = getattr(self._engine, "scheduler_load", None)
        load = load_of() if load_of is not None else None
        if load is None:
            running, kv = submitted, 0.0
        else:  # the scheduler's counts are a step old: never more running than submitted
            running = min(load.running, submitted)
            kv = load.kv_cache_usage if submitted else 0.0
        for series, value in ((QUEUED, len(tickets) - running), (RUNNING, running),
                              (KV_CACHE, kv)):
            family = GaugeMetricFamily(series.name, series.help, labels=series.labels)
            family.add_metric([self._model], value)
            yield family

        resident = set(self._adapters.resident_digests())
        loaded = self._names.for_digests(resident)
        waits = {t.model: t.digest for t in tickets
                 if t.model and not t.in_engine and t.digest not in resident}
        awaited = sorted(set(waits) - set(loaded))
        in_use = len(resident) + len({waits[name] for name in awaited})
        max_lora = self.max_lora() + len(loaded) + len(awaited) - in_use
        family = GaugeMetricFamily(LORA_INFO.name, LORA_INFO.help, labels=LORA_INFO.labels)
        family.add_metric([str(max(max_lora, 0)), ",".join(loaded), ",".join(awaited)],
                          time.time())
        yield family

        if load is not None and load.block_size is not None and load.num_blocks is not None:
            family = GaugeMetricFamily(CACHE_CONFIG.name, CACHE_CONFIG.help,
                                       labels=CACHE_CONFIG.labels)
            family.add_metric([str(load.block_size), str(load.num_blocks)], 1.0)
            yield family


def install(handlers: Any, registry: CollectorRegistry) -> None:
    """Serve the protocol's series from `registry`; a second call for it changes nothing."""
    with suppress(ValueError):  # "Duplicated timeseries": installed already (an app built twice)
        registry.register(GatewayCollector(handlers))
