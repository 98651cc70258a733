"""The tables of a run's results: title, headers and rows, for markdown and the terminal.

Every figure is `median (min-max)` over trials; a side that failed shows `FAILED` and no ratio
is computed against it.
"""

from __future__ import annotations

from typing import Any

Table = tuple[str, list[str], list[list[str]]]  # title, headers, rows
SIDES = (("loramux", "loramux"), ("vllm", "vLLM"))


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


def _pair(row: dict[str, Any], name: str, p50: str, p99: str) -> str:
    side = row.get(name)
    if side is None:
        return "not run"
    if not side.get("ok"):
        return "FAILED"
    return f"{fmt(side.get(p50), 0)} / {fmt(side.get(p99), 0)}"


def _ratio(row: dict[str, Any], key: str) -> str:
    if row.get(key):
        return fmt(row[key], 2)
    return "n/a (failed)" if row.get("ratio_error") else "n/a"


def _gateway_tables(q: str, g: dict[str, Any]) -> list[Table]:
    out: list[Table] = []
    serve = g.get("serve")
    if not serve:
        return out
    rows_by_mix = serve["mixes"]
    out.append((f"1. loramux vs vLLM's OpenAI server, tokens/s and TTFT ({q})",
                ["mix", "loramux tok/s", "vLLM tok/s", "loramux/vLLM",
                 "loramux TTFT p50 / p99 ms", "vLLM TTFT p50 / p99 ms"],
                [[r["label"], _side(r, "loramux", "tokens_per_s"), _side(r, "vllm",
                                                                         "tokens_per_s"),
                  _ratio(r, "ratio_loramux_over_vllm"),
                  _pair(r, "loramux", "ttft_p50_ms", "ttft_p99_ms"),
                  _pair(r, "vllm", "ttft_p50_ms", "ttft_p99_ms")]
                 for r in rows_by_mix.values()]))
    to_base = serve.get("ratio_to_base") or {}
    if to_base:
        out.append((f"2. Many adapters: tokens/s as a ratio to base, same server ({q})",
                    ["mix", "loramux", "vLLM"],
                    [[rows_by_mix[k]["label"], *(fmt(r.get(n), 2) for n, _ in SIDES)]
                     for k, r in to_base.items()]))
    tail_rows = [[r["label"], *(_pair(r, n, a, b) for n, _ in SIDES
                                for a, b in (("ttft_p50_ms", "ttft_p99_ms"),
                                             ("tail_ttft_p50_ms", "tail_ttft_p99_ms"))),
                  _tail_n(r)]
                 for r in rows_by_mix.values() if r["kind"] != "base"]
    if tail_rows:
        out.append((f"2b. TTFT p50 / p99 ms, all requests and those for the least popular 10 % "
                    f"of adapters ({q})",
                    ["mix", "loramux all", "loramux least popular", "vLLM all",
                     "vLLM least popular", "least popular: adapters / requests per trial"],
                    tail_rows))
    if "mixed" in rows_by_mix and "rank16" in rows_by_mix:
        m, r16 = rows_by_mix["mixed"], rows_by_mix["rank16"]
        ratio = serve.get("mixed_over_rank16") or {}
        out.append((f"2c. Mixed ranks {m['k']} adapters (8/16/64) vs the same batch at rank 16, "
                    f"max_lora_rank 64 on both servers ({q})",
                    ["server", "mixed tok/s", "all rank 16 tok/s", "mixed / rank 16"],
                    [[label, _side(m, n, "tokens_per_s"), _side(r16, n, "tokens_per_s"),
                      fmt(ratio.get(n), 2)] for n, label in SIDES]))
    return out


def _tail_n(row: dict[str, Any]) -> str:
    trials = (row.get("loramux") or {}).get("trials") or []
    if not trials or "tail_adapters" not in trials[0]:
        return "n/a"
    return f"{trials[0]['tail_adapters']} / {trials[0]['tail_requests']}"


def _swap_table(q: str, g: dict[str, Any]) -> Table | None:
    swap, reload = g.get("swap") or {}, g.get("reload") or {}
    if not swap:
        return None
    names = [n for n, _ in SIDES if n in swap]
    rows: list[list[str]] = []
    for key, label in (("cold_ttft_ms", "never-loaded adapter, TTFT ms"),
                       ("warm_ttft_ms", "same adapter warm, TTFT ms"),
                       ("cold_minus_warm_ms", "cold - warm, ms"),
                       ("fetch_ms", "  loramux: registry fetch into the cache, ms"),
                       ("engine_load_ms", "  loramux: engine add_lora, ms"),
                       ("base_ttft_ms", "base model TTFT ms")):
        rows.append([label, *(fmt(swap[n].get(key), 1) if swap[n].get("ok") else "FAILED"
                              for n in names)])
    for key, label in (("reload_engine_s", "base reload: engine start, s"),
                       ("restart_to_ready_s", "base reload: server restart to /ready, s")):
        rows.append([label, fmt(reload.get(key), 1), *[""] * (len(names) - 1)])
    for key, label in (("ratio_reload_over_cold_swap", "engine reload / cold swap"),
                       ("ratio_restart_over_cold_swap", "restart / cold swap")):
        value = reload.get(key)
        rows.append([label, f"{value:.0f}x" if value else "n/a", *[""] * (len(names) - 1)])
    peer = g.get("servers", {}).get("vllm", {}).get("startup_s")
    if peer and "vllm" in names:
        rows.append(["server start to ready (all adapters static for vLLM), s", "",
                     f"{peer:.1f}"])
    return (f"3. Hot swap vs reload, one request at a time on an idle server ({q})",
            ["measure", *(label for n, label in SIDES if n in names)], rows)


def _naive_table(q: str, g: dict[str, Any]) -> Table | None:
    naive = g.get("naive")
    if not naive:
        return None
    serve_rows = (g.get("serve") or {}).get("mixes", {})
    rows = []
    for key, r in naive["per_k"].items():
        n = r["naive"]
        rows.append([key, fmt(n.get("tokens_per_s"), 1) if n.get("ok") else "FAILED",
                     _side(serve_rows.get(key, {}), "loramux", "tokens_per_s"),
                     _ratio(r, "ratio_loramux_over_naive"),
                     fmt(n.get("ttft_p50_ms"), 0) if n.get("ok") else "FAILED"])
    return (f"4. Naive transformers + peft loop, one request at a time ({q}, "
            f"{naive['requests']} requests per K)",
            ["K", "naive tok/s", "loramux tok/s", "loramux/naive", "naive TTFT p50 ms"], rows)


def _real_table(real: dict[str, Any]) -> Table:
    """The real base's sweep: both sides, their ratio, each over its own base, TTFT."""
    wl = real.get("workload") or {}
    title = (f"R. Real base {wl.get('name', '')}: loramux vs vLLM's OpenAI server "
             f"({real.get('quantization')}, {real.get('dtype')})")
    serve = real.get("serve")
    if not serve:
        why = real.get("skipped") or real.get("error") or "not run"
        return title, ["measure", "value"], [["not measured", why]]
    to_base = serve.get("ratio_to_base") or {}

    def over_base(key: str, name: str) -> str:
        return "1.00" if key == "base" else fmt((to_base.get(key) or {}).get(name), 2)

    return (title, ["mix", "loramux tok/s", "vLLM tok/s", "loramux/vLLM", "loramux ÷ base",
                    "vLLM ÷ base", "loramux TTFT p50 / p99 ms", "vLLM TTFT p50 / p99 ms"],
            [[r["label"], _side(r, "loramux", "tokens_per_s"), _side(r, "vllm", "tokens_per_s"),
              _ratio(r, "ratio_loramux_over_vllm"), over_base(key, "loramux"),
              over_base(key, "vllm"), _pair(r, "loramux", "ttft_p50_ms", "ttft_p99_ms"),
              _pair(r, "vllm", "ttft_p50_ms", "ttft_p99_ms")]
             for key, r in serve["mixes"].items()])


def tables(results: dict[str, Any]) -> list[Table]:
    out: list[Table] = []
    gateway = results.get("gateway", {})
    for q, g in gateway.items():
        out += _gateway_tables(q, g)
    for q, g in gateway.items():
        out += [t for t in (_swap_table(q, g), _naive_table(q, g)) if t]
    if results.get("real"):
        out.append(_real_table(results["real"]))
    comps = results.get("components")
    if comps:
        out.append(("5. Registry and trainer", ["measure", "value"], _component_rows(comps)))
    return out


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
