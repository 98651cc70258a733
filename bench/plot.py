"""The run's figure: tokens/s by mix, tokens/s as a ratio to base against K, hot swap vs
reload; loramux and vLLM's server side by side, median with min-max bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STYLES = {"loramux": ("-", "o", "tab:blue"), "vllm": ("--", "s", "tab:orange"),
          "naive": (":", "^", "tab:gray")}


def _bars(s: dict[str, Any] | None) -> tuple[float, float, float] | None:
    if not s or s.get("median") is None:
        return None
    return s["median"], s["median"] - s["min"], s["max"] - s["median"]


def _throughput(ax, results: dict[str, Any]) -> None:
    for q, g in results.get("gateway", {}).items():
        rows = (g.get("serve") or {}).get("mixes", {})
        naive = (g.get("naive") or {}).get("per_k", {})
        keys = list(rows)
        for name in ("loramux", "vllm", "naive"):
            xs, ys, lo, hi = [], [], [], []
            for i, key in enumerate(keys):
                side = (naive.get(key) or {}).get("naive") if name == "naive" else (
                    rows[key].get(name))
                b = _bars(side.get("tokens_per_s")) if side and side.get("ok") else None
                if b:
                    xs.append(i)
                    ys.append(b[0])
                    lo.append(b[1])
                    hi.append(b[2])
            if xs:
                _, marker, color = STYLES[name]
                ax.errorbar(xs, ys, yerr=[lo, hi], linestyle="none", marker=marker, capsize=3,
                            color=color, label=f"{name} ({q})")
        if keys:
            ax.set_xticks(range(len(keys)), [rows[k]["label"].replace(" ", "\n", 1)
                                             for k in keys], fontsize=7)
    ax.set_ylabel("output tokens/s")
    ax.set_title("Throughput by mix")
    ax.set_ylim(bottom=0)


def _ratio_to_base(ax, results: dict[str, Any]) -> None:
    for q, g in results.get("gateway", {}).items():
        serve = g.get("serve") or {}
        to_base, rows = serve.get("ratio_to_base") or {}, serve.get("mixes", {})
        for name in ("loramux", "vllm"):
            ls, marker, color = STYLES[name]
            points = [(rows[k]["k"], _bars(r.get(name))) for k, r in to_base.items()
                      if rows[k]["kind"] == "uniform"]
            points = [(k, b) for k, b in points if b]
            if points:
                ax.errorbar([k for k, _ in points], [b[0] for _, b in points],
                            yerr=[[b[1] for _, b in points], [b[2] for _, b in points]],
                            linestyle=ls, marker=marker, capsize=3, color=color,
                            label=f"{name}, uniform K ({q})")
            z = _bars((to_base.get("zipf") or {}).get(name))
            if z:
                ax.errorbar([rows["zipf"]["k"]], [z[0]], yerr=[[z[1]], [z[2]]], marker="*",
                            markersize=11, linestyle="none", capsize=3, color=color,
                            label=f"{name}, Zipf over {rows['zipf']['k']} ({q})")
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    ax.set_xscale("log", base=2)
    ks = sorted({r["k"] for g in results.get("gateway", {}).values()
                 for key, r in ((g.get("serve") or {}).get("mixes") or {}).items()
                 if key in ((g.get("serve") or {}).get("ratio_to_base") or {})})
    if ks:
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
    ax.set_xlabel("distinct adapters K (log scale)")
    ax.set_ylabel("tokens/s ÷ base tokens/s")
    ax.set_title("Cost of many adapters (1.0 = base speed)")
    ax.set_ylim(bottom=0)


def _swap(ax, results: dict[str, Any]) -> None:
    labels, values, errs, colors = [], [], [], []
    for g in results.get("gateway", {}).values():
        swap, reload = g.get("swap") or {}, g.get("reload") or {}
        for name in ("loramux", "vllm"):
            side = swap.get(name) or {}
            for key, label in (("cold_ttft_ms", "cold\nTTFT"), ("warm_ttft_ms", "warm\nTTFT")):
                b = _bars(side.get(key)) if side.get("ok") else None
                if b:
                    labels.append(f"{label}\n{name}")
                    values.append(b[0] / 1e3)
                    errs.append((b[1] / 1e3, b[2] / 1e3))
                    colors.append(STYLES[name][2])
        for key, label in (("reload_engine_s", "base reload\n(engine)"),
                           ("restart_to_ready_s", "server\nrestart")):
            b = _bars(reload.get(key))
            if b:
                labels.append(label)
                values.append(b[0])
                errs.append((b[1], b[2]))
                colors.append("tab:red")
        break  # the first quantization only: the swap part runs once
    if not values:
        ax.text(0.5, 0.5, "hot swap not measured", ha="center", va="center")
        return
    bars = ax.bar(range(len(values)), values, yerr=list(zip(*errs, strict=True)), capsize=3,
                  color=colors)
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_yscale("log")
    for bar, value, err in zip(bars, values, errs, strict=True):
        ax.annotate(f"{value * 1e3:.0f} ms" if value < 1 else f"{value:.1f} s",
                    (bar.get_x() + bar.get_width() / 2, value + err[1]), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7)
    ax.set_ylim(top=max(v + e[1] for v, e in zip(values, errs, strict=True)) * 3)
    ax.set_ylabel("seconds (log)")
    ax.set_title("Hot swap vs reload")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for draw, ax in zip((_throughput, _ratio_to_base, _swap), axes, strict=True):
        draw(ax, results)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    title = f"loramux bench {results['timestamp']}" + (" (quick)" if results["quick"] else "")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
