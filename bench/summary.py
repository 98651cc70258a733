"""Trials into figures: medians with min-max across trials, paired ratios, metric scrapes."""

from __future__ import annotations

from typing import Any

import httpx

from loramux.bench.loadgen import LoadResult, spread

FIGURES = ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "latency_p50_ms", "tail_ttft_p50_ms",
           "tail_ttft_p99_ms")


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 2)


def summarize(trials: list[LoadResult], tails: list[set[str]] | None = None) -> dict[str, Any]:
    """Median and min-max of each figure across trials; failed if any trial failed. `tails`:
    per trial, the least popular adapters whose requests get their own TTFT figures."""
    failed = [t for t in trials if not t.ok]
    if not trials or failed:
        reason = failed[0].first_error if failed else "no trial ran"
        n_failed = sum(t.failures for t in failed)
        return {"ok": False, "error": f"{n_failed} request(s) failed; first: {reason}",
                "trials": [t.summary() for t in trials]}
    per = [t.summary(tails[i] if tails else None) for i, t in enumerate(trials)]
    out: dict[str, Any] = {"ok": True}
    for key in FIGURES:
        values = [p[key] for p in per if p.get(key) is not None]
        if values:
            out[key] = spread(values)
    out["trials"] = per
    return out


def paired_ratio(num: list[LoadResult], den: list[LoadResult]) -> dict[str, Any] | None:
    """Ratio of tokens/s trial by trial (paired), then its median and min-max."""
    if not num or not den or any(not t.ok for t in num + den):
        return None
    return spread([a.tokens_per_s / b.tokens_per_s
                   for a, b in zip(num, den, strict=False) if b.tokens_per_s > 0])


def metric(url: str, name: str, **labels: str) -> float | None:
    """Sum of a Prometheus metric's samples matching `labels`; None if absent or unreachable."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    total, seen = 0.0, False
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    return total if seen else None
