"""Parts 1-4 for one quantization: which servers run, with which adapters and slots, in order.

Slots: loramux is started without `--max-loras` (its default is what is measured) and the
value it comes to is recorded; vLLM's server gets that same `--max-loras` and the same
`--max-cpu-loras`, so both have one slot per resident adapter. The mixed-rank batch needs
`max_lora_rank` 64 on both servers: when the main pair has a lower limit (so that vLLM's padding
to 64 does not tax every other figure), a second pair with 64 runs it after the first stops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loramux.bench import mixes, naive, serve, servers, sides, workload
from loramux.bench.config import BenchConfig
from loramux.bench.loadgen import LoadResult
from loramux.bench.sides import Reporter, Side
from loramux.bench.swap import reload_summary, swap_part


class Pair:
    """loramux and vLLM's server with the same limits; vLLM gets `static` as --lora-modules."""

    def __init__(self, wl: workload.Workload, limits: servers.EngineLimits, tag: str,
                 static: dict[str, Path], scratch: Path, logs: Path) -> None:
        self.lmx = Side("loramux", servers.loramux_server(
            wl.model_dir, wl.registry_dir, scratch / f"cache-{tag}", limits,
            logs / f"loramux-{tag}.log"))
        self.vllm = Side("vllm", servers.vllm_server(wl.model_dir, wl.served_name, static,
                                                     limits, logs / f"vllm-{tag}.log"))

    @property
    def both(self) -> list[Side]:
        return [self.lmx, self.vllm]


def slots_of(pair: Pair, limits: servers.EngineLimits) -> dict[str, Any]:
    """What each side's slots came to (loramux's from its log), and an error if they differ."""
    logged = servers.logged_slots(pair.lmx.server.log) if pair.lmx.up else None
    out = {"loramux_max_loras_flag": None, "loramux_effective_max_loras": logged or
           limits.max_loras, "source": "server log" if logged else "loramux's default rule "
           "(server.engines.vllm_engine.slot_count)", "vllm_max_loras": limits.max_loras,
           "max_cpu_loras": limits.max_cpu_loras, "max_lora_rank": limits.max_lora_rank}
    if logged is not None and logged != limits.max_loras:
        out["error"] = (f"loramux's log says max_loras={logged}, vLLM was given "
                        f"{limits.max_loras}: the slots differ")
        out["ok"] = False
    return out


def _static(wl: workload.Workload, with_mixed: bool) -> dict[str, Path]:
    # vLLM loads its --lora-modules at startup into an LRU of max_cpu_loras: the hot-swap
    # adapters go first, so the rest evicts them and their first request is a real load.
    out = dict(wl.cold_adapters) | wl.adapters
    return out | wl.mixed_adapters if with_mixed else out


def gateway_part(wl: workload.Workload, cfg: BenchConfig, quantization: str, scratch: Path,
                 logs: Path, rep: Reporter, *, serve_on: bool, swap: bool, naive_on: bool,
                 on_started: Callable[[], None] | None = None) -> dict[str, Any]:
    slots = servers.loramux_slots(cfg.max_cpu_loras)
    limits = cfg.limits(quantization, slots)
    one_pair = cfg.max_lora_rank >= cfg.mixed_rank
    pair = Pair(wl, limits, f"{quantization}-0", _static(wl, one_pair), scratch, logs)
    started = pair.both if serve_on else [pair.lmx]
    nv = None
    if naive_on:
        nv = Side("naive", servers.naive_server(wl.model_dir, wl.served_name,
                                                naive.adapters_used(wl, cfg), limits,
                                                logs / f"naive-{quantization}.log"))
    out: dict[str, Any] = {"quantization": quantization, "limits": asdict(limits)}
    trials = serve.Trials()
    naive_results: dict[str, list[LoadResult]] = {}
    try:
        sides.start(started + ([nv] if nv and cfg.quick else []), parallel=cfg.quick, rep=rep)
        if on_started is not None:
            on_started()
        if swap:
            rep.line(f"part 3: hot swap, {len(wl.cold_adapters)} never-loaded adapters")
            with rep.phase("hot swap"):
                out["swap"] = {s.name: swap_part(s, wl, cfg, rep) if s.up
                               else {"ok": False, "error": s.error} for s in started}
        if serve_on:
            todo = [*mixes.sweep(cfg), mixes.zipf(cfg)]
            names = list(wl.adapters)
            if one_pair:
                todo += mixes.ranks(cfg)
                names += list(wl.mixed_adapters)
            live = serve.warm(pair.both, wl, cfg, names, rep)
            serve.run_mixes(wl, cfg, live, todo, trials, rep, "part 1-2")
    except BaseException:
        if nv is not None:
            nv.stop()
        raise
    finally:
        for s in started:
            s.stop()
    out["servers"] = {s.name: s.info() for s in started}
    if nv is not None:
        try:
            if not cfg.quick:
                sides.start([nv], parallel=False, rep=rep)
            naive.run_trials(wl, cfg, nv, naive_results, rep)
        finally:
            nv.stop()
        out["servers"]["naive"] = nv.info()
    if serve_on and not one_pair:
        out["servers_mixed_rank"] = _ranks_pair(wl, cfg, quantization, slots, trials, scratch,
                                                logs, rep)
    if serve_on:
        out["serve"] = serve.summary(trials, slots_of(pair, limits))
    if naive_on:
        out["naive"] = naive.summary(cfg, naive_results, trials, nv, serve_on)
    if swap:
        out["reload"] = _reloads(wl, cfg, limits, pair.lmx, out.get("swap", {}), scratch,
                                 logs, rep)  # its starts count as server starts
    return out


def _ranks_pair(wl: workload.Workload, cfg: BenchConfig, quantization: str, slots: int,
                trials: serve.Trials, scratch: Path, logs: Path,
                rep: Reporter) -> dict[str, Any]:
    """The mixed-rank batch and its all-rank-16 twin on a pair with max_lora_rank 64."""
    limits = cfg.limits(quantization, slots, max_lora_rank=cfg.mixed_rank)
    todo = mixes.ranks(cfg)
    twins = wl.names[: cfg.mixed_adapters]
    static = wl.mixed_adapters | {n: wl.adapters[n] for n in twins}
    pair = Pair(wl, limits, f"{quantization}-rank{cfg.mixed_rank}", static, scratch, logs)
    try:  # started together: no start-up figure is read from this pair
        sides.start(pair.both, parallel=True, rep=rep)
        live = serve.warm(pair.both, wl, cfg, list(static), rep)
        serve.run_mixes(wl, cfg, live, todo, trials, rep, f"mixed ranks (max_lora_rank "
                                                          f"{cfg.mixed_rank})")
    finally:
        for s in pair.both:
            s.stop()
    return {s.name: s.info() for s in pair.both} | {"limits": asdict(limits)}


def _reloads(wl: workload.Workload, cfg: BenchConfig, limits: servers.EngineLimits,
             first: Side, swap: dict[str, Any], scratch: Path, logs: Path,
             rep: Reporter) -> dict[str, Any]:
    starts = [{"startup_s": sides.rounded(first.startup_s),
               "engine_s": servers.engine_seconds(first.server.log)}] if first.up else []
    for i in range(1, cfg.reload_restarts + 1):
        again = Side("loramux", servers.loramux_server(
            wl.model_dir, wl.registry_dir, scratch / f"cache-reload-{i}", limits,
            logs / f"loramux-reload-{i}.log"))
        try:
            sides.start([again], parallel=False, rep=rep)
        finally:
            again.stop()
        if again.up:
            starts.append({"startup_s": sides.rounded(again.startup_s),
                           "engine_s": servers.engine_seconds(again.server.log)})
    return reload_summary(swap.get("loramux", {}), starts)
