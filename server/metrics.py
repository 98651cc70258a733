"""Prometheus metrics, per adapter where that helps, with label cardinality bounded.

A server with thousands of adapters must not grow thousands of series per metric: the first
`max_adapter_labels` adapter names get their own label value, the rest share `__other__`.
Requests and time to first token also carry the adapter `version` (so a canary and its stable
version can be compared live: `loramux registry rollout status`); at most `VERSIONS_PER_LABEL`
times as many (adapter, version) pairs as adapter names get one, the rest `__other__` too.

First come, first served would let unrelated traffic spend every label before a canary starts,
and a canary folded into `__other__` is invisible to `rollout watch`. So a request through an
alias (`name:prod`, where canaries live) *reserves* its name and version: reserved labels come
from a second allowance of the same size, kept for them alone.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from loramux import wire

OTHER = "__other__"
BASE = "__base__"
VERSIONS_PER_LABEL = 4
NO_VERSION = ""  # the base, an adapter past the cap, a request that failed before resolving
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _Allowance:
    """A bounded set of label keys: `cap` first come, first served, and `cap` more for keys
    that ask with `reserve` (an alias's versions)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._seen: set[object] = set()
        self._reserved = 0
        self._lock = threading.Lock()

    def admit(self, key: object, reserve: bool) -> bool:
        with self._lock:
            if key in self._seen:
                return True
            if len(self._seen) - self._reserved < self.cap:
                self._seen.add(key)
                return True
            if reserve and self._reserved < self.cap:
                self._seen.add(key)
                self._reserved += 1
                return True
        return False


class AdapterLabels:
    """Maps adapter names to label values, folding names past the cap into one."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._allowance = _Allowance(cap)

    def __call__(self, name: str | None, reserve: bool = False) -> str:
        if name is None:
            return BASE
        return name if self._allowance.admit(name, reserve) else OTHER


class VersionLabels:
    """Maps (adapter label, version) to the `version` label value, bounded like the names."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._allowance = _Allowance(cap)

    def __call__(self, label: str, version: int | None, reserve: bool = False) -> str:
        if version is None or label in (BASE, OTHER):
            return NO_VERSION
        return str(version) if self._allowance.admit((label, version), reserve) else OTHER


class Metrics:
    def __init__(self, max_adapter_labels: int = 100) -> None:
        self.registry = CollectorRegistry()
        self.label = AdapterLabels(max_adapter_labels)
        self.version = VersionLabels(VERSIONS_PER_LABEL * max_adapter_labels)
        r = self.registry
        self.requests = Counter(wire.REQUESTS,
                                "Requests by endpoint, adapter, status and adapter version.",
                                ["endpoint", "adapter", "status", "version"], registry=r)
        self.prompt_tokens = Counter(wire.PROMPT_TOKENS, "Prompt tokens.",
                                     ["adapter"], registry=r)
        self.completion_tokens = Counter(wire.COMPLETION_TOKENS,
                                         "Generated tokens.", ["adapter"], registry=r)
        self.ttft = Histogram(wire.TTFT,
                              "Time to first token, by adapter and version.",
                              ["adapter", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram(wire.LATENCY, "End-to-end latency.",
                                 ["adapter"], buckets=LATENCY_BUCKETS, registry=r)
        self.fetch_seconds = Histogram("loramux_adapter_fetch_seconds",
                                       "Registry fetch into the local cache.", ["adapter"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.load_seconds = Histogram("loramux_adapter_load_seconds", "Engine adapter load.",
                                      ["adapter"], buckets=LATENCY_BUCKETS, registry=r)
        self.fetches = Counter("loramux_adapter_fetches_total", "Adapter fetches.", ["adapter"],
                               registry=r)
        self.loads = Counter(wire.ADAPTER_LOADS, "Adapter loads into the engine.",
                             ["adapter"], registry=r)
        self.load_failures = Counter("loramux_adapter_load_failures_total",
                                     "Adapters that could not be fetched or loaded.", ["adapter"],
                                     registry=r)
        self.cache_hits = Counter("loramux_adapter_cache_hits_total",
                                  "Requests whose adapter was already resident.", registry=r)
        self.cache_misses = Counter("loramux_adapter_cache_misses_total",
                                    "Requests that had to fetch or load their adapter.",
                                    registry=r)
        self.evictions = Counter("loramux_adapter_evictions_total",
                                 "Adapters dropped from the engine or the disk cache.", ["tier"],
                                 registry=r)
        self.resident = Gauge("loramux_adapters_resident", "Adapters loaded in the engine.",
                              registry=r)
        self.cache_bytes = Gauge("loramux_adapter_cache_bytes", "Bytes in the local cache.",
                                 registry=r)
        # Read at scrape time from the adapter manager's slots (the truth, not a second count).
        self.leases = Gauge("loramux_adapter_leases", "Adapter uses held by requests now: 0 "
                            "when nothing runs, whatever ended how.", registry=r)
        self.cache_damaged = Counter("loramux_adapter_cache_damaged",
                                     "Cached adapter folders that no longer matched their "
                                     "digests: moved aside and fetched again.", registry=r)
        self.in_flight = Gauge("loramux_requests_in_flight", "Running plus queued requests.",
                               registry=r)
        self.base_loads = Counter(
            wire.BASE_MODEL_LOADS, "Times the engine loaded the base weights: 1 for the "
            "server's life, unless an operator restarted the engine.", registry=r)
