"""One benchmark run: build the workload, start the servers, drive them, collect every figure.

Parts (any subset): `serve` (1: loramux vs vLLM's OpenAI server, 2: multi-LoRA overhead),
`swap` (3: cold adapter vs warm adapter vs base reload), `naive` (4: transformers + peft loop),
`components` (5: the registry's and the trainer's own benchmarks).

Fairness rules kept here: both vLLM-based servers get the same model folder, quantization,
engine limits and environment; both are up at the same time but only one is under load at any
moment, and trials alternate which server goes first, so slow drift of a shared machine lands on
both; both are warmed with one request per adapter (vLLM's server loads its `--lora-modules` at
startup, loramux on first use) before anything is timed; every trial's request list (models,
prompts, token counts) is built once and sent unchanged to each server.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loramux.bench import loadgen, machine, servers, workload
from loramux.bench.loadgen import LoadResult, spread
from loramux.bench.workload import Request

log = logging.getLogger(__name__)

PARTS = ("serve", "swap", "naive", "components")
RESULTS_DIR = workload.REPO / "bench" / "results"


@dataclass(frozen=True)
class BenchConfig:
    quick: bool = False
    quantizations: tuple[str, ...] = ("bitsandbytes",)  # the first is the primary one
    ks: tuple[int, ...] = (0, 1, 8, 64)  # 0 = base only
    adapters: int = 64
    cold: int = 5  # hot-swap trials, one never-loaded adapter each
    requests: int = 64  # per trial and K
    prompt_tokens: int = 64
    max_tokens: int = 64
    concurrency: int = 32
    trials: int = 3
    naive_requests: int = 8  # the naive loop runs one request at a time: a prefix of the list
    naive_trials: int = 1
    swap_tokens: int = 8
    reload_restarts: int = 2  # extra loramux starts for the reload figure (plus the first one)
    max_loras: int = 8
    max_cpu_loras: int = 64
    max_model_len: int = 512
    kv_cache_gib: int = 1
    seed: int = 0

    @classmethod
    def preset(cls, quick: bool) -> BenchConfig:
        if not quick:
            return cls()
        return cls(quick=True, ks=(0, 1, 4), adapters=4, cold=2, requests=8, prompt_tokens=16,
                   max_tokens=8, trials=2, naive_requests=2, swap_tokens=4, reload_restarts=0,
                   max_loras=2, max_cpu_loras=4, max_model_len=256)

    def limits(self, quantization: str) -> servers.EngineLimits:
        return servers.EngineLimits(
            quantization=quantization, max_loras=self.max_loras,
            max_cpu_loras=self.max_cpu_loras, max_lora_rank=16,
            max_model_len=self.max_model_len, kv_cache_gib=self.kv_cache_gib)

    def check(self) -> None:
        if any(k < 0 or k > self.adapters for k in self.ks):
            raise ValueError(f"every K must be between 0 and --adapters ({self.adapters})")
        if self.prompt_tokens + self.max_tokens > self.max_model_len:
            raise ValueError("prompt_tokens + max_tokens exceeds max_model_len")
        if not self.quantizations:
            raise ValueError("at least one quantization")


class Reporter:
    """Progress lines (with elapsed time) and spinners for long waits."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.started = time.monotonic()

    def line(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        self.console.print(f"[dim]{elapsed:7.1f}s[/dim] {message}", highlight=False)

    @contextmanager
    def status(self, message: str) -> Iterator[None]:
        self.line(message)
        with self.console.status(message):
            yield

    def progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=self.console, transient=True)


# -- helpers ------------------------------------------------------------------------------------


def k_label(k: int) -> str:
    return "base" if k == 0 else str(k)


def _prompts(wl: workload.Workload, cfg: BenchConfig, count: int, tokens: int,
             salt: int) -> list[str]:
    return workload.make_prompts(wl.model_dir, count, tokens, seed=cfg.seed * 1_000_003 + salt)


def trial_requests(wl: workload.Workload, cfg: BenchConfig, trial: int, k: int) -> list[Request]:
    """The request list of one (trial, K): identical for every server it is sent to."""
    salt = 1000 * (trial + 1) + k
    prompts = _prompts(wl, cfg, cfg.requests, cfg.prompt_tokens, salt)
    models = workload.assign_models(wl.names, k, cfg.requests, wl.served_name,
                                    seed=cfg.seed * 7919 + salt)
    return workload.requests_for(prompts, models, cfg.max_tokens)


def warmup_requests(wl: workload.Workload, cfg: BenchConfig) -> list[Request]:
    """One short request per load-test adapter and one for the base."""
    models = [wl.served_name, *wl.names]
    prompts = _prompts(wl, cfg, len(models), cfg.prompt_tokens, salt=17)
    return workload.requests_for(prompts, models, min(4, cfg.max_tokens))


def _metric(url: str, name: str, **labels: str) -> float | None:
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


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 2)


def _summarize(trials: list[LoadResult]) -> dict[str, Any]:
    """Median and min-max across trials; failed if any trial failed."""
    failed = [t for t in trials if not t.ok]
    if not trials or failed:
        reason = failed[0].first_error if failed else "no trial ran"
        n_failed = sum(t.failures for t in failed)
        return {"ok": False, "error": f"{n_failed} request(s) failed; first: {reason}"}
    per = [t.summary() for t in trials]
    return {"ok": True,
            "tokens_per_s": spread([p["tokens_per_s"] for p in per]),
            "ttft_p50_ms": spread([p["ttft_p50_ms"] for p in per]),
            "ttft_p99_ms": spread([p["ttft_p99_ms"] for p in per]),
            "latency_p50_ms": spread([p["latency_p50_ms"] for p in per])}


def _paired_ratio(num: list[LoadResult], den: list[LoadResult]) -> dict[str, Any] | None:
    """Ratio of tokens/s trial by trial (paired), then its median and min-max."""
    if not num or not den or any(not t.ok for t in num + den):
        return None
    return spread([a.tokens_per_s / b.tokens_per_s
                   for a, b in zip(num, den, strict=False) if b.tokens_per_s > 0])


class _Side:
    """One server in the run: its process, its start figures, its failure if any."""

    def __init__(self, name: str, server) -> None:
        self.name, self.server = name, server
        self.error: str | None = None
        self.startup_s: float | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def up(self) -> bool:
        return self.error is None and self.startup_s is not None

    def start(self) -> None:
        try:
            self.server.start()
            self.startup_s = self.server.startup_seconds
        except Exception as exc:  # reported, never raised: the other side still runs
            self.error = f"{self.name} did not start: {str(exc)[-1500:]}"
        except BaseException:  # interrupted while waiting: leave no server behind
            self.server.stop()
            raise

    def stop(self) -> None:
        self.server.stop()

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"startup_s": _round(self.startup_s), "error": self.error,
                               "log": str(self.server.log)}
        if self.name == "loramux":
            out["engine_s"] = servers.engine_seconds(self.server.log)
        return out


def _round(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def _start(sides: list[_Side], parallel: bool, rep: Reporter) -> None:
    names = ", ".join(s.name for s in sides)
    with rep.status(f"starting {names}{' (in parallel)' if parallel and len(sides) > 1 else ''}"):
        if parallel:
            threads = [threading.Thread(target=s.start) for s in sides]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for s in sides:
                s.start()
    for s in sides:
        if s.error:
            rep.line(f"[red]{s.error.splitlines()[0]}[/red] (log: {s.server.log})")
        else:
            rep.line(f"{s.name} ready in {s.startup_s:.1f}s")


# -- parts --------------------------------------------------------------------------------------


def swap_part(side: _Side, wl: workload.Workload, cfg: BenchConfig,
              rep: Reporter) -> dict[str, Any]:
    """Part 3 on a running, otherwise idle loramux server: cold vs warm adapter TTFT."""
    names = list(wl.cold_adapters)
    prompts = _prompts(wl, cfg, 3 * len(names) + 2, cfg.prompt_tokens, salt=29)
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
            "adapter": name, "cold_ttft_ms": _ms(cold.ttft_s), "warm_ttft_ms": _ms(warm.ttft_s),
            "base_ttft_ms": _ms(base.ttft_s),
            "fetch_ms": _ms(_metric(side.url, "loramux_adapter_fetch_seconds_sum",
                                    adapter=name)),
            "engine_load_ms": _ms(_metric(side.url, "loramux_adapter_load_seconds_sum",
                                          adapter=name))})
        rep.line(f"  {name}: cold {rows[-1]['cold_ttft_ms']:.0f} ms, warm "
                 f"{rows[-1]['warm_ttft_ms']:.0f} ms, base {rows[-1]['base_ttft_ms']:.0f} ms")
    return {"ok": True, "trials": rows}


def _reload_summary(swap: dict[str, Any], starts: list[dict[str, Any]]) -> dict[str, Any]:
    engine = [s["engine_s"] for s in starts if s.get("engine_s") is not None]
    ready = [s["startup_s"] for s in starts if s.get("startup_s") is not None]
    out: dict[str, Any] = {"starts": starts, "reload_engine_s": spread(engine),
                           "restart_to_ready_s": spread(ready)}
    if swap.get("ok"):
        rows = swap["trials"]
        for key in ("cold_ttft_ms", "warm_ttft_ms", "base_ttft_ms", "fetch_ms",
                    "engine_load_ms"):
            out[key] = spread([r[key] for r in rows if r[key] is not None])
        cold_s = out["cold_ttft_ms"]["median"] / 1e3
        if engine and cold_s:
            out["ratio_reload_over_cold_swap"] = statistics.median(engine) / cold_s
        if ready and cold_s:
            out["ratio_restart_over_cold_swap"] = statistics.median(ready) / cold_s
    return out


def gateway_part(wl: workload.Workload, cfg: BenchConfig, quantization: str, scratch: Path,
                 logs: Path, rep: Reporter, *, serve: bool, swap: bool, naive: bool,
                 on_started: Callable[[], None] | None = None) -> dict[str, Any]:
    """Parts 1-3 (and 4 when asked) for one quantization."""
    limits = cfg.limits(quantization)
    tag = quantization
    lmx = _Side("loramux", servers.loramux_server(
        wl.model_dir, wl.registry_dir, scratch / f"cache-{tag}-0", limits,
        logs / f"loramux-{tag}-0.log"))
    sides = [lmx]
    vllm = None
    if serve:
        vllm = _Side("vllm", servers.vllm_server(wl.model_dir, wl.served_name, wl.adapters,
                                                 limits, logs / f"vllm-{tag}.log"))
        sides.append(vllm)
    nv = None
    if naive:
        nv = _Side("naive", servers.naive_server(wl.model_dir, wl.served_name, wl.adapters,
                                                 limits, logs / f"naive-{tag}.log"))
        if cfg.quick:  # quick mode starts everything at once (its figures are not for reading)
            sides.append(nv)
    out: dict[str, Any] = {"quantization": quantization, "limits": asdict(limits)}
    trials: dict[str, dict[int, list[LoadResult]]] = {"loramux": {}, "vllm": {}, "naive": {}}
    try:
        _start(sides, parallel=cfg.quick, rep=rep)
        if on_started is not None:
            on_started()
        if swap:
            if lmx.up:
                rep.line(f"part 3: hot swap, {len(wl.cold_adapters)} never-loaded adapters")
                out["swap"] = swap_part(lmx, wl, cfg, rep)
            else:
                out["swap"] = {"ok": False, "error": lmx.error}
        if serve and vllm is not None:
            _serve_trials(wl, cfg, [lmx, vllm], trials, rep)
    except BaseException:
        if nv is not None:
            nv.stop()
        raise
    finally:
        for s in sides:
            if s is not nv:
                s.stop()
    out["servers"] = {s.name: s.info() for s in sides if s is not nv}
    if nv is not None:
        try:
            if not cfg.quick:
                _start([nv], parallel=False, rep=rep)
            _naive_trials(wl, cfg, nv, trials, rep)
        finally:
            nv.stop()
        out["servers"]["naive"] = nv.info()
    if serve:
        out["serve"] = _serve_summary(cfg, trials, lmx, vllm)
    if naive:
        out["naive"] = _naive_summary(cfg, trials, lmx, nv, serve)
    if swap:
        starts = [{"startup_s": _round(lmx.startup_s),
                   "engine_s": servers.engine_seconds(lmx.server.log)}] if lmx.up else []
        for i in range(1, cfg.reload_restarts + 1):
            again = _Side("loramux", servers.loramux_server(
                wl.model_dir, wl.registry_dir, scratch / f"cache-{tag}-{i}", limits,
                logs / f"loramux-{tag}-{i}.log"))
            try:
                _start([again], parallel=False, rep=rep)
            finally:
                again.stop()
            if again.up:
                starts.append({"startup_s": _round(again.startup_s),
                               "engine_s": servers.engine_seconds(again.server.log)})
        out["swap"] = out.get("swap", {}) | _reload_summary(out.get("swap", {}), starts)
    return out


def _serve_trials(wl: workload.Workload, cfg: BenchConfig, sides: list[_Side],
                  trials: dict[str, dict[int, list[LoadResult]]], rep: Reporter) -> None:
    live = [s for s in sides if s.up]
    for s in live:
        with rep.status(f"warming {s.name}: one request per adapter"):
            warm = loadgen.run_load(s.url, warmup_requests(wl, cfg), cfg.concurrency)
        if not warm.ok:
            s.error = f"{s.name} failed its warm-up: {warm.first_error}"
            rep.line(f"[red]{s.error}[/red]")
    live = [s for s in live if s.error is None]
    rep.line(f"part 1: {cfg.trials} trials x K in {[k_label(k) for k in cfg.ks]} x "
             f"{[s.name for s in live]}, {cfg.requests} requests of {cfg.prompt_tokens}+"
             f"{cfg.max_tokens} tokens at concurrency {cfg.concurrency}")
    with rep.progress() as progress:
        task = progress.add_task("load trials", total=cfg.trials * len(cfg.ks) * len(live))
        for trial in range(cfg.trials):
            for ki, k in enumerate(cfg.ks):
                requests = trial_requests(wl, cfg, trial, k)
                order = live if (trial + ki) % 2 == 0 else live[::-1]
                for s in order:
                    progress.update(task, description=f"trial {trial + 1} K={k_label(k)} "
                                                      f"{s.name}")
                    result = loadgen.run_load(s.url, requests, cfg.concurrency)
                    trials[s.name].setdefault(k, []).append(result)
                    progress.advance(task)
                    msg = (f"{result.tokens_per_s:7.1f} tok/s, TTFT p50 "
                           f"{result.summary()['ttft_p50_ms']} ms" if result.ok
                           else f"[red]FAILED {result.first_error}[/red]")
                    progress.console.print(
                        f"  trial {trial + 1} K={k_label(k):>4} {s.name:8} {msg}",
                        highlight=False)


def _serve_summary(cfg: BenchConfig, trials: dict[str, dict[int, list[LoadResult]]],
                   lmx: _Side, vllm: _Side | None) -> dict[str, Any]:
    per_k: dict[str, Any] = {}
    for k in cfg.ks:
        row: dict[str, Any] = {}
        for side in (lmx, vllm):
            if side is None:
                continue
            runs = trials[side.name].get(k, [])
            row[side.name] = (_summarize(runs) if side.error is None or runs
                              else {"ok": False, "error": side.error})
            row[side.name]["trials"] = [r.summary() for r in runs]
        ok = all(row[n].get("ok") for n in row)
        row["ratio_loramux_over_vllm"] = (_paired_ratio(trials["loramux"].get(k, []),
                                                        trials["vllm"].get(k, []))
                                          if ok else None)
        if not ok:
            row["ratio_error"] = "; ".join(f"{n}: {row[n]['error']}" for n in row
                                           if isinstance(row[n], dict)
                                           and row[n].get("ok") is False)
        per_k[str(k)] = row
    overhead: dict[str, Any] = {}
    if 0 in cfg.ks:
        for k in cfg.ks:
            if k == 0:
                continue
            overhead[str(k)] = {name: _paired_ratio(trials[name].get(k, []),
                                                    trials[name].get(0, []))
                                for name in ("loramux", "vllm")}
    return {"per_k": per_k, "multi_lora_overhead": overhead}


def _naive_trials(wl: workload.Workload, cfg: BenchConfig, nv: _Side,
                  trials: dict[str, dict[int, list[LoadResult]]], rep: Reporter) -> None:
    if not nv.up:
        return
    rep.line(f"part 4: naive transformers + peft loop, {cfg.naive_requests} requests per K, "
             "one at a time")
    warm = loadgen.run_load(nv.url, warmup_requests(wl, cfg)[:2], 1)
    if not warm.ok:
        nv.error = f"naive failed its warm-up: {warm.first_error}"
        rep.line(f"[red]{nv.error}[/red]")
        return
    for trial in range(cfg.naive_trials):
        for k in cfg.ks:
            requests = trial_requests(wl, cfg, trial, k)[: cfg.naive_requests]
            with rep.status(f"  naive trial {trial + 1} K={k_label(k)}"):
                result = loadgen.run_load(nv.url, requests, cfg.concurrency)
            trials["naive"].setdefault(k, []).append(result)
            rep.line(f"  naive K={k_label(k)}: " + (
                f"{result.tokens_per_s:.1f} tok/s" if result.ok
                else f"[red]FAILED {result.first_error}[/red]"))


def _naive_summary(cfg: BenchConfig, trials: dict[str, dict[int, list[LoadResult]]],
                   lmx: _Side, nv: _Side | None, serve: bool) -> dict[str, Any]:
    per_k: dict[str, Any] = {}
    for k in cfg.ks:
        runs = trials["naive"].get(k, [])
        naive = _summarize(runs) if runs else {"ok": False,
                                               "error": (nv.error if nv else None)
                                               or "not run"}
        naive["trials"] = [r.summary() for r in runs]
        row: dict[str, Any] = {"naive": naive}
        lmx_runs = trials["loramux"].get(k, [])
        if not serve:
            row["ratio_error"] = "loramux not measured in this run (part `serve` not run)"
        elif naive.get("ok") and lmx_runs and all(r.ok for r in lmx_runs):
            row["ratio_loramux_over_naive"] = spread(
                [a.tokens_per_s / b.tokens_per_s for a in lmx_runs for b in runs
                 if b.tokens_per_s > 0])
        else:
            row["ratio_error"] = naive.get("error") or "loramux failed"
        per_k[str(k)] = row
    return {"requests": cfg.naive_requests, "trials": cfg.naive_trials, "per_k": per_k}


def _call_bench(module: str, quick: bool) -> dict[str, Any]:
    """Another part's own benchmark (`module.run(quick=...)`), or why it is not available."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        return {"available": False, "reason": f"{module} not importable: {exc}"}
    run = getattr(mod, "run", None)
    if run is None:
        return {"available": False, "reason": f"{module} has no run()"}
    kwargs: dict[str, Any] = {"quick": quick}
    params = inspect.signature(run).parameters
    if "show" in params:
        kwargs["show"] = False
    if "base" in params:  # the demo base, wherever the checkout is (not the working folder)
        kwargs["base"] = workload.demo_base()
    started = time.monotonic()
    try:
        result = run(**kwargs)
    except Exception as exc:
        log.exception("%s.run failed", module)
        return {"available": True, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"available": True, "ok": True, "seconds": round(time.monotonic() - started, 1),
            "result": result}


def components_part(quick: bool, rep: Reporter, live: bool = True) -> dict[str, Any]:
    """Part 5; `live=False` prints plain lines (for a background thread: rich allows one
    live display at a time)."""
    out = {}
    for key, module in (("registry", "loramux.registry.bench"),
                        ("trainer", "loramux.trainer.bench")):
        message = f"part 5: {module}.run(quick={quick})"
        if live:
            with rep.status(message):
                out[key] = _call_bench(module, quick)
        else:
            rep.line(message + " (in the background)")
            out[key] = _call_bench(module, quick)
        r = out[key]
        rep.line(f"  {key}: " + ("not available: " + r["reason"] if not r["available"]
                                 else f"done in {r['seconds']}s" if r.get("ok")
                                 else f"[red]FAILED {r['error']}[/red]"))
    return out


# -- the run ------------------------------------------------------------------------------------


def prepare(cfg: BenchConfig, cache: Path, scratch: Path, rep: Reporter) -> workload.Workload:
    if cfg.quick:
        with rep.status("workload: the demo base model (quick mode)"):
            model_dir = workload.demo_base()
        parameters = workload.demo_parameters(model_dir)
    else:
        with rep.status("workload: random-weight Llama (cached after the first run)"):
            model_dir, parameters = workload.build_model(cache)
    recipe = workload.AdapterRecipe(count=cfg.adapters, cold=cfg.cold)
    with rep.status(f"workload: {cfg.adapters} + {cfg.cold} random rank-{recipe.rank} adapters "
                    "(cached after the first run)"):
        folders = workload.build_adapters(model_dir, cache, recipe)
    load_names, cold_names = workload.adapter_names(recipe)
    registry_dir = scratch / "registry"
    with rep.status(f"workload: pushing {len(folders)} adapters to a scratch registry"):
        workload.publish(registry_dir, model_dir, folders)
    rep.line(f"workload: {model_dir.name} ({parameters / 1e6:.1f} M parameters), "
             f"{len(folders)} adapters in {registry_dir}")
    return workload.Workload(
        model_dir=model_dir, parameters=parameters, served_name=model_dir.name,
        adapters={n: folders[n] for n in load_names},
        cold_adapters={n: folders[n] for n in cold_names}, registry_dir=registry_dir,
        scratch=scratch, recipe=asdict(recipe))


def run(cfg: BenchConfig, parts: tuple[str, ...] = PARTS, out_dir: Path = RESULTS_DIR,
        cache: Path = workload.DEFAULT_CACHE, command: str = "",
        console: Console | None = None,
        on_result: Callable[[dict[str, Any], Path], None] | None = None) -> tuple[dict, Path]:
    """Run the asked parts; returns the results and the path of the JSON written."""
    cfg.check()
    rep = Reporter(console)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = out_dir / f"{stamp}-logs"
    results: dict[str, Any] = {
        "schema": "loramux-bench/1", "timestamp": stamp, "command": command,
        "quick": cfg.quick, "parts": list(parts), "config": asdict(cfg),
        "machine": machine.facts(), "gateway": {}, "errors": []}
    started = time.monotonic()
    need_servers = any(p in parts for p in ("serve", "swap", "naive"))
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"run-{stamp}-", dir=cache))
    background: threading.Thread | None = None
    components: dict[str, Any] = {}

    def start_background() -> None:
        """Quick mode is a smoke test held under 3 minutes: once the servers are up (their
        start is what needs the CPU), part 5 runs beside the tiny load trials."""
        nonlocal background
        if background is None:
            background = threading.Thread(
                target=lambda: components.update(components_part(cfg.quick, rep, live=False)),
                name="bench-components", daemon=True)
            background.start()

    overlap = "components" in parts and cfg.quick and need_servers
    try:
        if need_servers:
            wl = prepare(cfg, cache, scratch, rep)
            results["workload"] = {
                "model": str(wl.model_dir), "parameters": wl.parameters,
                "random_weights": not cfg.quick, "served_name": wl.served_name,
                "adapters": len(wl.adapters),
                "cold_adapters": len(wl.cold_adapters), "adapter_recipe": wl.recipe,
                "prompt_tokens": cfg.prompt_tokens, "max_tokens": cfg.max_tokens}
            for qi, q in enumerate(cfg.quantizations):
                rep.line(f"[bold]quantization {q}[/bold]")
                results["gateway"][q] = gateway_part(
                    wl, cfg, q, scratch, logs, rep, serve="serve" in parts,
                    swap="swap" in parts and qi == 0, naive="naive" in parts and qi == 0,
                    on_started=start_background if overlap else None)
        if overlap and background is None:  # no server part ran
            start_background()
        if background is not None:
            with rep.status("part 5: waiting for the background benchmarks"):
                background.join()
            results["components"] = components
        elif "components" in parts:
            results["components"] = components_part(cfg.quick, rep)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results["errors"] = collect_errors(results)
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["machine"]["load_average_at_end"] = machine.load_average()
    from loramux.bench import report

    path = report.write(results, out_dir)
    rep.line(f"wrote {path}, {path.with_suffix('.md').name}, {path.with_suffix('.png').name} "
             f"in {results['duration_s']:.0f}s")
    if on_result:
        on_result(results, path)
    return results, path


def collect_errors(results: dict[str, Any]) -> list[str]:
    errors: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("ok") is False and node.get("error"):
                errors.append(f"{where}: {node['error']}")
                return
            for key, value in node.items():
                if key != "trials":
                    walk(value, f"{where}.{key}" if where else str(key))

    walk({"gateway": results.get("gateway", {}), "components": results.get("components", {})},
         "")
    for q, g in results.get("gateway", {}).items():
        for name, info in g.get("servers", {}).items():
            if info.get("error"):
                errors.append(f"gateway.{q}.servers.{name}: {info['error'][:500]}")
    return sorted(set(errors))


def with_overrides(cfg: BenchConfig, **overrides: Any) -> BenchConfig:
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})

