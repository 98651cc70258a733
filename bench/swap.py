"""Part 3: a never-loaded adapter's first token vs a warm one's vs the base, on each server,
and what a base reload costs instead (loramux restarted)."""

from __future__ import annotations

import statistics
from typing import Any

from loramux.bench import loadgen, workload
from loramux.bench.config import BenchConfig
from loramux.bench.loadgen import spread
from loramux.bench.sides import Reporter, Side
from loramux.bench.summary import metric, ms
from loramux.bench.workload import Request

ROW_KEYS = ("cold_ttft_ms", "warm_ttft_ms", "base_ttft_ms", "cold_minus_warm_ms", "fetch_ms",
            "engine_load_ms")


def swap_part(side: Side, wl: workload.Workload, cfg: BenchConfig,
              rep: Reporter) -> dict[str, Any]:
    """On a running, otherwise idle server: cold vs warm adapter TTFT, one request at a time."""
    names = list(wl.cold_adapters)
    prompts = workload.make_prompts(wl.model_dir, 3 * len(names) + 2, cfg.prompt_tokens,
                                    seed=29)
    # The first requests a server sees pay one-off costs; pay them with the base and a
    # load-test adapter, so the cold figures hold only what a new adapter costs.
    for model, prompt in ((wl.served_name, prompts[-1]), (wl.names[0], prompts[-2])):
        loadgen.single_ttft(side.url, Request(model, prompt, cfg.swap_tokens))
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        cold = loadgen.single_ttft(side.url, Request(name, prompts[3 * i], cfg.swap_tokens))
        warm = loadgen.single_ttft(side.url, Request(name, prompts[3 * i + 1], cfg.swap_tokens))
        base = loadgen.single_ttft(side.url, Request(wl.served_name, prompts[3 * i + 2],
                                                     cfg.swap_tokens))
        for what, r in (("cold", cold), ("warm", warm), ("base", base)):
            if not r.ok:
                return {"ok": False, "error": f"{what} request for {r.model} failed: {r.error}"}
        rows.append({
            "adapter": name, "cold_ttft_ms": ms(cold.ttft_s), "warm_ttft_ms": ms(warm.ttft_s),
            "base_ttft_ms": ms(base.ttft_s), "cold_minus_warm_ms": ms(cold.ttft_s - warm.ttft_s),
            "fetch_ms": ms(metric(side.url, "loramux_adapter_fetch_seconds_sum", adapter=name)),
            "engine_load_ms": ms(metric(side.url, "loramux_adapter_load_seconds_sum",
                                        adapter=name))})
        rep.line(f"  {side.name} {name}: cold {rows[-1]['cold_ttft_ms']:.0f} ms, warm "
                 f"{rows[-1]['warm_ttft_ms']:.0f} ms, base {rows[-1]['base_ttft_ms']:.0f} ms")
    out: dict[str, Any] = {"ok": True, "trials": rows}
    for key in ROW_KEYS:
        out[key] = spread([r[key] for r in rows if r[key] is not None])
    return out


def reload_summary(swap: dict[str, Any], starts: list[dict[str, Any]]) -> dict[str, Any]:
    """What a base reload costs (engine start, restart to ready) against a cold swap."""
    engine = [s["engine_s"] for s in starts if s.get("engine_s") is not None]
    ready = [s["startup_s"] for s in starts if s.get("startup_s") is not None]
    out: dict[str, Any] = {"starts": starts, "reload_engine_s": spread(engine),
                           "restart_to_ready_s": spread(ready)}
    cold = (swap.get("cold_ttft_ms") or {}).get("median") if swap.get("ok") else None
    if cold:
        if engine:
            out["ratio_reload_over_cold_swap"] = statistics.median(engine) / (cold / 1e3)
        if ready:
            out["ratio_restart_over_cold_swap"] = statistics.median(ready) / (cold / 1e3)
    return out
