"""One benchmark run: build the workload, start the servers, drive them, collect every figure.

Parts (any subset): `serve` (1-2: loramux vs vLLM's OpenAI server over uniform, Zipf and
mixed-rank mixes; tokens/s against base), `swap` (3: cold adapter vs warm vs base reload),
`naive` (4: transformers + peft loop), `real` (R: base / K = 8 / K = 64 on a real pretrained
model), `components` (5: the registry's and the trainer's own benchmarks). What each part does
and its fairness rules are in its own module. Every server and loop computes in one dtype,
resolved once here and recorded (`dtype`), so runs on machines with and without bf16
instructions are never mixed silently.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from loramux.bench import machine, workload
from loramux.bench.components import components_part
from loramux.bench.config import PARTS, BenchConfig, resolved
from loramux.bench.gateway import gateway_part
from loramux.bench.real import real_part
from loramux.bench.sides import Reporter

RESULTS_DIR = workload.REPO / "bench" / "results"



def prepare(cfg: BenchConfig, cache: Path, scratch: Path, rep: Reporter) -> workload.Workload:
    if cfg.quick:
        with rep.status("workload: the demo base model (quick mode)"):
            model_dir = workload.demo_base()
        parameters = workload.demo_parameters(model_dir)
    else:
        with rep.status("workload: random-weight Llama (cached after the first run)"):
            model_dir, parameters = workload.build_model(cache)
    recipe = workload.AdapterRecipe(count=cfg.adapters, cold=cfg.cold,
                                    mixed_ranks=cfg.mixed_ranks,
                                    mixed_per_rank=cfg.mixed_per_rank)
    with rep.status(f"workload: {cfg.adapters} + {cfg.cold} random rank-{recipe.rank} adapters "
                    f"and {cfg.mixed_adapters} of ranks {list(cfg.mixed_ranks)} (cached after "
                    "the first run)"):
        folders = workload.build_adapters(model_dir, cache, recipe)
    load_names, cold_names, mixed_names = workload.adapter_names(recipe)
    registry_dir = scratch / "registry"
    with rep.status(f"workload: pushing {len(folders)} adapters to a scratch registry"):
        workload.publish(registry_dir, model_dir, folders)
    rep.line(f"workload: {model_dir.name} ({parameters / 1e6:.1f} M parameters), "
             f"{len(folders)} adapters in {registry_dir}")
    return workload.Workload(
        model_dir=model_dir, parameters=parameters, served_name=model_dir.name,
        adapters={n: folders[n] for n in load_names},
        cold_adapters={n: folders[n] for n in cold_names},
        mixed_adapters={n: folders[n] for n in mixed_names}, registry_dir=registry_dir,
        scratch=scratch, recipe=asdict(recipe))


def run(cfg: BenchConfig, parts: tuple[str, ...] = PARTS, out_dir: Path = RESULTS_DIR,
        cache: Path = workload.DEFAULT_CACHE, command: str = "",
        console: Console | None = None,
        on_result: Callable[[dict[str, Any], Path], None] | None = None) -> tuple[dict, Path]:
    """Run the asked parts; returns the results and the path of the JSON written."""
    cfg.check()
    cfg = resolved(cfg)
    rep = Reporter(console)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = out_dir / f"{stamp}-logs"
    results: dict[str, Any] = {
        "schema": "loramux-bench/2", "timestamp": stamp, "command": command,
        "quick": cfg.quick, "parts": list(parts), "config": asdict(cfg), "dtype": cfg.dtype,
        "machine": machine.facts(), "gateway": {}, "errors": []}
    started = time.monotonic()
    need_servers = any(p in parts for p in ("serve", "swap", "naive"))
    need_real = "real" in parts
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
                target=lambda: components.update(components_part(cfg.quick, rep, live=False,
                                                                 dtype=cfg.dtype)),
                name="bench-components", daemon=True)
            background.start()

    overlap = "components" in parts and cfg.quick and (need_servers or need_real)
    try:
        if need_servers:
            with rep.phase("workload (built or read from the cache)"):
                wl = prepare(cfg, cache, scratch, rep)
            results["workload"] = {
                "model": str(wl.model_dir), "parameters": wl.parameters,
                "random_weights": not cfg.quick, "served_name": wl.served_name,
                "adapters": len(wl.adapters), "cold_adapters": len(wl.cold_adapters),
                "mixed_adapters": len(wl.mixed_adapters), "adapter_recipe": wl.recipe,
                "prompt_tokens": cfg.prompt_tokens, "max_tokens": cfg.max_tokens}
            for qi, q in enumerate(cfg.quantizations):
                rep.line(f"[bold]quantization {q}[/bold]")
                results["gateway"][q] = gateway_part(
                    wl, cfg, q, scratch, logs, rep, serve_on="serve" in parts,
                    swap="swap" in parts and qi == 0, naive_on="naive" in parts and qi == 0,
                    on_started=start_background if overlap else None)
        if need_real:
            rep.line(f"[bold]real base ({cfg.quantizations[0]})[/bold]")
            results["real"] = real_part(cfg, cfg.quantizations[0], cache, scratch, logs, rep,
                                        on_started=start_background if overlap else None)
        if overlap and background is None:  # no server part ran
            start_background()
        if background is not None:
            with rep.status("part 5: waiting for the background benchmarks"):
                background.join()
            results["components"] = components
        elif "components" in parts:
            results["components"] = components_part(cfg.quick, rep, dtype=cfg.dtype)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results["errors"] = collect_errors(results)
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["time_s"] = time_spent(rep.spent, results["duration_s"])
    results["machine"]["load_average_at_end"] = machine.load_average()
    from loramux.bench import report

    path = report.write(results, out_dir)
    rep.line(f"wrote {path}, {path.with_suffix('.md').name}, {path.with_suffix('.png').name} "
             f"in {results['duration_s']:.0f}s")
    if on_result:
        on_result(results, path)
    return results, path


def time_spent(spent: dict[str, float], duration_s: float) -> dict[str, float]:
    """Seconds by phase, largest first, and the rest of the run as "other" (part 5 overlaps
    the load trials in quick mode, so there the phases can add up to more than the run)."""
    out = {k: round(v, 1) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
    out["other"] = round(max(0.0, duration_s - sum(spent.values())), 1)
    return out


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

    walk({"gateway": results.get("gateway", {}), "real": results.get("real", {}),
          "components": results.get("components", {})}, "")
    groups = [(f"gateway.{q}", g) for q, g in results.get("gateway", {}).items()]
    groups.append(("real", results.get("real") or {}))
    for where, g in groups:
        for group in ("servers", "servers_mixed_rank"):
            for name, info in g.get(group, {}).items():
                if isinstance(info, dict) and info.get("error"):
                    errors.append(f"{where}.{group}.{name}: {info['error'][:500]}")
    return sorted(set(errors))

