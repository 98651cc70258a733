"""Per-adapter figures for the playground's live table, read from the server's own Prometheus
registry (the numbers ``/metrics`` exports, summed per adapter), so the page and a scraper
never disagree. Series that carry a ``version`` label (requests, time to first token) are
also broken down per version, so a canary and its stable version can be compared live. An error
is what the rollout watcher counts as one (``wire.is_error``: not 2xx, 429 and 499 apart).

A key limited to some adapters sees their rows and the base's only: not other tenants' names,
and not ``__other__``, which sums adapters of every tenant."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from loramux.server.auth import Principal
from loramux.server.metrics import BASE, OTHER
from loramux.wire import COMPLETION_TOKENS, LATENCY, PROMPT_TOKENS, REQUESTS, TTFT, is_error

# sample name -> the figure it adds to
_FIELDS = {
    REQUESTS: "requests",
    PROMPT_TOKENS: "prompt_tokens",
    COMPLETION_TOKENS: "completion_tokens",
    f"{TTFT}_sum": "ttft_sum",
    f"{TTFT}_count": "ttft_count",
    f"{LATENCY}_sum": "latency_sum",
    f"{LATENCY}_count": "latency_count",
}


@dataclass
class Figures:
    requests: float = 0
    errors: float = 0
    prompt_tokens: float = 0
    completion_tokens: float = 0
    ttft_sum: float = 0
    ttft_count: float = 0
    latency_sum: float = 0
    latency_count: float = 0

    def add(self, name: str, value: float, status: str) -> None:
        setattr(self, name, getattr(self, name) + value)
        if name == "requests" and is_error(status):
            self.errors += value

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "ttft_mean_s": self.ttft_sum / self.ttft_count if self.ttft_count else None,
                "latency_mean_s": (self.latency_sum / self.latency_count
                                   if self.latency_count else None)}


@dataclass
class AdapterFigures(Figures):
    versions: dict[str, Figures] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return super().as_dict() | {"versions": {
            v: {k: f[k] for k in ("requests", "errors", "ttft_mean_s")}
            for v, f in sorted((v, figures.as_dict()) for v, figures in self.versions.items())}}


def may_see(principal: Principal | None, label: str) -> bool:
    """Whether the row of the adapter label `label` is for `principal`'s eyes (None: all)."""
    if principal is None or principal.adapters is None or label == BASE:
        return True
    return label != OTHER and principal.may_use(label)


def per_adapter(registry: CollectorRegistry,
                principal: Principal | None = None) -> list[dict[str, Any]]:
    """One row per adapter label (`__base__` for the base model) that `principal` may see,
    sorted by name."""
    rows: dict[str, AdapterFigures] = {}
    for family in registry.collect():
        for sample in family.samples:
            name = _FIELDS.get(sample.name)
            if name is None or "adapter" not in sample.labels:
                continue
            row = rows.setdefault(sample.labels["adapter"], AdapterFigures())
            status = sample.labels.get("status", "200")
            row.add(name, sample.value, status)
            if sample.labels.get("version"):
                row.versions.setdefault(sample.labels["version"], Figures()).add(
                    name, sample.value, status)
    return [{"adapter": adapter} | row.as_dict() for adapter, row in sorted(rows.items())
            if may_see(principal, adapter)]
