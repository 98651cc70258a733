"""Parts 1-2: loramux and vLLM's own server under the same mixes, side by side.

Fairness rules kept here: both servers get the same model folder, quantization, slots
(`max_loras`, `max_cpu_loras`), rank limit, engine limits and environment; both are up at the
same time but only one is under load at any moment, and the order alternates trial by trial
and mix by mix, so slow drift of a shared machine lands on both; both are warmed with one
request per adapter (vLLM's server loads its `--lora-modules` at startup, loramux on first use)
before anything is timed; every trial's request list is built once and sent unchanged to each.
"""

from __future__ import annotations

from typing import Any

from loramux.bench import loadgen, mixes, workload
from loramux.bench.config import BenchConfig
from loramux.bench.loadgen import LoadResult
from loramux.bench.mixes import Mix
from loramux.bench.sides import Reporter, Side
from loramux.bench.summary import paired_ratio, summarize

SIDES = ("loramux", "vllm")


class Trials:
    """Every load trial of a run: results by mix and side, and each trial's tail adapters."""

    def __init__(self) -> None:
        self.mixes: dict[str, Mix] = {}
        self.results: dict[str, dict[str, list[LoadResult]]] = {}
        self.tails: dict[str, list[set[str]]] = {}
        self.errors: dict[str, str] = {}  # side -> why it has no trials

    def of(self, mix: str, side: str) -> list[LoadResult]:
        return self.results.get(mix, {}).get(side, [])


def warm(sides: list[Side], wl: workload.Workload, cfg: BenchConfig, names: list[str],
         rep: Reporter) -> list[Side]:
    """One request per adapter in `names` (and one for the base) on each live side."""
    for s in sides:
        if not s.up:
            continue
        message = f"warming {s.name}: one request for each of {len(names)} adapters"
        with rep.phase("warm-up requests"), rep.status(message):
            result = loadgen.run_load(s.url, mixes.warmup_requests(wl, cfg, names),
                                      cfg.concurrency)
        if not result.ok:
            s.error = f"{s.name} failed its warm-up: {result.first_error}"
            rep.line(f"[red]{s.error}[/red]")
    return [s for s in sides if s.up]


def run_mixes(wl: workload.Workload, cfg: BenchConfig, sides: list[Side], todo: list[Mix],
              trials: Trials, rep: Reporter, title: str, phase: str = "") -> None:
    """Every (trial, mix) on each live side, order alternating; `phase` tags the time spent
    (e.g. " (real base)") so each workload's trials are counted apart."""
    for s in sides:
        if not s.up:
            trials.errors[s.name] = s.error or f"{s.name} is not up"
    live = [s for s in sides if s.up]
    rep.line(f"{title}: {cfg.trials} trials x {[m.key for m in todo]} x {[s.name for s in live]}"
             f", requests of {cfg.prompt_tokens}+{cfg.max_tokens} tokens at concurrency "
             f"{cfg.concurrency}")
    popularity = mixes.popularity(wl, cfg)
    with rep.progress() as progress:
        task = progress.add_task("load trials", total=cfg.trials * len(todo) * len(live))
        for trial in range(cfg.trials):
            for i, mix in enumerate(todo):
                trials.mixes[mix.key] = mix
                requests = mixes.trial_requests(wl, cfg, mix, trial)
                models = [r.model for r in requests]
                order_of = popularity if mix.kind == "zipf" else None
                tail = mixes.least_popular(models, order_of) if mix.kind != "base" else set()
                trials.tails.setdefault(mix.key, []).append(tail)
                for s in live if (trial + i) % 2 == 0 else live[::-1]:
                    progress.update(task, description=f"trial {trial + 1} {mix.key} {s.name}")
                    result = loadgen.run_load(s.url, requests, cfg.concurrency)
                    trials.results.setdefault(mix.key, {}).setdefault(s.name, []).append(result)
                    batch = " (mixed-rank batches)" if mix.kind in ("mixed", "rank16") else ""
                    rep.add(f"load trials, {s.name}{batch}{phase}", result.wall_s)
                    progress.advance(task)
                    msg = (f"{result.tokens_per_s:7.1f} tok/s, TTFT p50 "
                           f"{result.summary()['ttft_p50_ms']} ms" if result.ok
                           else f"[red]FAILED {result.first_error}[/red]")
                    progress.console.print(f"  trial {trial + 1} {mix.key:>6} {s.name:8} {msg}",
                                           highlight=False)


def _row(mix: Mix, trials: Trials) -> dict[str, Any]:
    row: dict[str, Any] = {"label": mix.label, "kind": mix.kind, "k": mix.k,
                           "requests": mix.requests}
    tails = trials.tails.get(mix.key) if mix.kind != "base" else None
    for side in SIDES:
        runs = trials.of(mix.key, side)
        row[side] = (summarize(runs, tails) if runs or side not in trials.errors
                     else {"ok": False, "error": trials.errors[side]})
    ok = all(row[n].get("ok") for n in SIDES)
    row["ratio_loramux_over_vllm"] = (paired_ratio(trials.of(mix.key, "loramux"),
                                                   trials.of(mix.key, "vllm")) if ok else None)
    if not ok:
        row["ratio_error"] = "; ".join(f"{n}: {row[n]['error']}" for n in SIDES
                                       if row[n].get("ok") is False)
    return row


def summary(trials: Trials, slots: dict[str, Any]) -> dict[str, Any]:
    """Per mix: both sides and their ratio; per adapter mix: tokens/s over base (paired by
    trial, same server); the mixed-rank batch over its all-rank-16 twin."""
    rows = {key: _row(mix, trials) for key, mix in trials.mixes.items()}
    to_base: dict[str, Any] = {}
    if "base" in trials.mixes:
        for key, mix in trials.mixes.items():
            if mix.kind in ("uniform", "zipf"):
                to_base[key] = {side: paired_ratio(trials.of(key, side), trials.of("base", side))
                                for side in SIDES}
    out: dict[str, Any] = {"mixes": rows, "ratio_to_base": to_base, "slots": slots}
    if "mixed" in trials.mixes and "rank16" in trials.mixes:
        out["mixed_over_rank16"] = {side: paired_ratio(trials.of("mixed", side),
                                                       trials.of("rank16", side))
                                    for side in SIDES}
    return out
