"""Part `real`: loramux and vLLM's own server on a real pretrained model: base, K = 8, K = 64.

The serve part measures a random-weight Llama sized for many trials; this one measures shapes a
user serves: SmolLM2-135M-Instruct (loramux.bases.packaged: hidden 576, 30 layers, 9 query and
3 KV heads, tied embeddings, a 49 k vocabulary; ~10x the bench model's compute per token). It
is a part of its own, not a second model inside `serve`, because a server holds one base (it
needs a pair of servers of its own), its sizes differ (fewer, shorter requests and fewer trials
keep it near 15 minutes on 2 cores), and `--quick` can keep its workload build while leaving
out its servers (`real_servers`) on a machine too slow for both.

Adapters: random rank-16 ones on every linear layer, written from the real shapes
(loramux.support.adapters: the k/v projections have 3 x 64 = 192 outputs under grouped-query
attention; nothing targets lm_head, which is the tied input embedding). Fairness: serve.py's
rules, by serve.py's code: both servers up, one under load at a time, the order alternating,
both warmed on every adapter, identical request lists, ratios paired trial by trial.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from loramux.bench import mixes, serve, servers, sides, workload
from loramux.bench.config import BenchConfig
from loramux.bench.gateway import Pair, slots_of
from loramux.bench.sides import Reporter

MODEL = "SmolLM2-135M-Instruct"
PHASE = " (real base)"  # tags this part's load trials in the run's time by phase


def adapter_shapes(model_dir: Path) -> dict[str, tuple[int, int]]:
    """Every linear layer an adapter targets, with its (in, out) features, from config.json.

    peft's "all-linear" leaves lm_head out; with tied embeddings it is the embedding matrix
    itself, so an adapter on it would also have to change the input side.
    """
    from loramux.support.adapters import llama_shapes

    shapes = llama_shapes(model_dir)
    if any("lm_head" in name for name in shapes):
        raise ValueError("an adapter must not target the tied lm_head")
    return shapes


def model_facts(model_dir: Path) -> dict[str, Any]:
    """What the report says about the real base: its shapes and parameter count."""
    config = json.loads((model_dir / "config.json").read_text())
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings")
    facts: dict[str, Any] = {k: config.get(k) for k in keys}
    try:
        facts["parameters"] = json.loads((model_dir / "loramux_base.json").read_text())[
            "parameters"]
    except (OSError, ValueError, KeyError):
        facts["parameters"] = None
    return facts


def prepare(rcfg: BenchConfig, cache: Path, scratch: Path, rep: Reporter) -> workload.Workload:
    """The real base (converted once from the packaged GGUF), its adapters, a scratch registry."""
    from loramux.bases.packaged import real_base

    with rep.status(f"real base: {MODEL} (converted from the packaged GGUF on first use)"):
        model_dir = real_base()
    recipe = workload.AdapterRecipe(count=rcfg.adapters, cold=0, mixed_ranks=(),
                                    mixed_per_rank=0)
    adapter_shapes(model_dir)  # refuse before writing anything
    with rep.status(f"real base: {recipe.count} random rank-{recipe.rank} adapters on every "
                    "linear layer (cached after the first run)"):
        folders = workload.build_adapters(model_dir, cache, recipe)
    registry_dir = scratch / "registry-real"
    with rep.status(f"real base: pushing {len(folders)} adapters to a scratch registry"):
        workload.publish(registry_dir, model_dir, folders)
    facts = model_facts(model_dir)
    return workload.Workload(
        model_dir=model_dir, parameters=facts["parameters"] or 0, served_name=model_dir.name,
        adapters=folders, cold_adapters={}, mixed_adapters={}, registry_dir=registry_dir,
        scratch=scratch, recipe=asdict(recipe))


def describe(wl: workload.Workload, rcfg: BenchConfig) -> dict[str, Any]:
    shapes = adapter_shapes(wl.model_dir)
    first = {name.rsplit(".", 1)[-1]: shape for name, shape in shapes.items()
             if name.startswith("model.layers.0.")}
    return {"name": MODEL, "model": str(wl.model_dir), "served_name": wl.served_name,
            "shape": model_facts(wl.model_dir), "parameters": wl.parameters,
            "adapters": len(wl.adapters), "adapter_recipe": wl.recipe,
            "adapter_modules": first, "adapter_layers": len(shapes) // max(1, len(first)),
            "ks": list(rcfg.ks), "requests": rcfg.requests, "prompt_tokens": rcfg.prompt_tokens,
            "max_tokens": rcfg.max_tokens, "concurrency": rcfg.concurrency,
            "trials": rcfg.trials}


def real_part(cfg: BenchConfig, quantization: str, cache: Path, scratch: Path, logs: Path,
              rep: Reporter, on_started: Callable[[], None] | None = None) -> dict[str, Any]:
    """Build the real workload; unless `cfg.real_servers` is off, run its sweep on both sides."""
    from loramux.bases.errors import PackagedBaseMissing

    rcfg = cfg.real()
    out: dict[str, Any] = {"quantization": quantization, "dtype": cfg.dtype}
    try:
        with rep.phase("workload (built or read from the cache)"):
            wl = prepare(rcfg, cache, scratch, rep)
    except PackagedBaseMissing as exc:
        return out | {"ok": False, "error": f"no real base: {exc}"}
    out["workload"] = describe(wl, rcfg)
    rep.line(f"real base: {MODEL} ({wl.parameters / 1e6:.1f} M parameters), "
             f"{len(wl.adapters)} adapters in {wl.registry_dir}")
    if not cfg.real_servers:
        out["skipped"] = "servers not started (real_servers off); the workload was built"
        rep.line(f"real base: {out['skipped']}")
        return out
    limits = rcfg.limits(quantization, servers.loramux_slots(rcfg.max_cpu_loras))
    out["limits"] = asdict(limits)
    pair = Pair(wl, limits, f"real-{quantization}", wl.adapters, scratch, logs)
    trials = serve.Trials()
    try:  # started together in quick mode, as the serve part's pair is
        sides.start(pair.both, parallel=cfg.quick, rep=rep)
        if on_started is not None:
            on_started()
        # Warming only has to make every adapter resident on both sides: one token after a
        # short prompt (64 adapters x the trials' prompts would cost as much as a trial).
        live = serve.warm(pair.both, wl, replace(rcfg, prompt_tokens=8, max_tokens=1),
                          wl.names, rep)
        serve.run_mixes(wl, rcfg, live, mixes.sweep(rcfg), trials, rep, f"real base ({MODEL})",
                        phase=PHASE)
    finally:
        for s in pair.both:
            s.stop()
    out["servers"] = {s.name: s.info() for s in pair.both}
    out["serve"] = serve.summary(trials, slots_of(pair, limits))
    return out
