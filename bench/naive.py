"""Part 4: the naive baseline (transformers + peft, one request at a time) on a prefix of the
same uniform trials loramux ran, for the ratio."""

from __future__ import annotations

from typing import Any

from loramux.bench import loadgen, mixes, workload
from loramux.bench.config import BenchConfig
from loramux.bench.loadgen import LoadResult, spread
from loramux.bench.serve import Trials
from loramux.bench.sides import Reporter, Side
from loramux.bench.summary import summarize


def naive_mixes(cfg: BenchConfig) -> list[mixes.Mix]:
    return [m for m in mixes.sweep(cfg) if m.k in cfg.naive_ks]


def trial_requests(wl: workload.Workload, cfg: BenchConfig, mix: mixes.Mix,
                   trial: int) -> list[workload.Request]:
    return mixes.trial_requests(wl, cfg, mix, trial)[: cfg.naive_requests]


def adapters_used(wl: workload.Workload, cfg: BenchConfig) -> dict[str, Any]:
    """Only the adapters its requests name: loading all of them into one PeftModel would take
    minutes and measure nothing."""
    used = {r.model for trial in range(cfg.naive_trials) for mix in naive_mixes(cfg)
            for r in trial_requests(wl, cfg, mix, trial)}
    return {n: p for n, p in wl.adapters.items() if n in used}


def run_trials(wl: workload.Workload, cfg: BenchConfig, nv: Side,
               results: dict[str, list[LoadResult]], rep: Reporter) -> None:
    if not nv.up:
        return
    rep.line(f"part 4: naive transformers + peft loop, {cfg.naive_requests} requests per K, "
             "one at a time")
    warm = loadgen.run_load(nv.url, mixes.warmup_requests(wl, cfg, [])[:1], 1)
    if not warm.ok:
        nv.error = f"naive failed its warm-up: {warm.first_error}"
        rep.line(f"[red]{nv.error}[/red]")
        return
    for trial in range(cfg.naive_trials):
        for mix in naive_mixes(cfg):
            with rep.status(f"  naive trial {trial + 1} {mix.key}"):
                result = loadgen.run_load(nv.url, trial_requests(wl, cfg, mix, trial),
                                          cfg.concurrency)
            results.setdefault(mix.key, []).append(result)
            rep.add("load trials, naive", result.wall_s)
            rep.line(f"  naive {mix.key}: " + (
                f"{result.tokens_per_s:.1f} tok/s" if result.ok
                else f"[red]FAILED {result.first_error}[/red]"))


def summary(cfg: BenchConfig, results: dict[str, list[LoadResult]], trials: Trials,
            nv: Side | None, serve: bool) -> dict[str, Any]:
    per_k: dict[str, Any] = {}
    for mix in naive_mixes(cfg):
        runs = results.get(mix.key, [])
        naive = (summarize(runs) if runs else
                 {"ok": False, "error": (nv.error if nv else None) or "not run"})
        row: dict[str, Any] = {"naive": naive}
        lmx = trials.of(mix.key, "loramux")
        if not serve:
            row["ratio_error"] = "loramux not measured in this run (part `serve` not run)"
        elif naive.get("ok") and lmx and all(r.ok for r in lmx):
            row["ratio_loramux_over_naive"] = spread(
                [a.tokens_per_s / b.tokens_per_s for a in lmx for b in runs
                 if b.tokens_per_s > 0])
        else:
            row["ratio_error"] = naive.get("error") or "loramux failed"
        per_k[mix.key] = row
    return {"requests": cfg.naive_requests, "trials": cfg.naive_trials, "per_k": per_k}
