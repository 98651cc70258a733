"""What a run leaves next to the adapter: training_report.json, loss_curve.png, a summary table."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

REPORT_FILE = "training_report.json"
CURVE_FILE = "loss_curve.png"
LIBRARIES = ("loramux", "torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate",
             "datasets")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def loss_points(log_history: list[dict[str, Any]]) -> tuple[list[tuple[int, float]],
                                                             list[tuple[int, float]]]:
    """(step, train loss) and (step, eval loss) pairs from the trainer's log history."""
    train = [(int(h["step"]), float(h["loss"])) for h in log_history
             if "loss" in h and "step" in h]
    evals = [(int(h["step"]), float(h["eval_loss"])) for h in log_history
             if "eval_loss" in h and "step" in h]
    return train, evals


def plot_loss_curve(log_history: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = loss_points(log_history)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals, strict=True), label="eval loss", color="tab:orange", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n",
                    encoding="utf-8")
    return path


def read_report(path: Path) -> dict[str, Any] | None:
    """A run's report, or None when there is none (yet)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def build_report(config, data, runtime, trainer, meter, result, out: Path, *,
                 peak: tuple[int, str], started_step: int, eval_loss: float | None,
                 ) -> dict[str, Any]:
    """training_report.json's content (without the verdict): metrics, data, runtime, versions.

    ``trainer.state`` is the same on every rank (losses and token counts are gathered), so the
    main process's report describes the whole distributed run.
    """
    import torch

    state = trainer.state
    history = state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    stopped_early = (config.max_steps or 0) > state.global_step or (
        config.max_steps is None and state.epoch is not None
        and state.epoch < config.epochs - 1e-6)
    metrics: dict[str, Any] = {
        "train_loss": float(result.training_loss),
        "train_loss_last": float(train_losses[-1]) if train_losses else None,
        "eval_loss": float(eval_loss) if eval_loss is not None else None,
        "best_eval_loss": state.best_metric,
        "steps": state.global_step,
        "resumed_at_step": started_step or None,
        "epochs": state.epoch,
        "tokens_seen": meter.tokens,
        "tokens_seen_total": state.num_input_tokens_seen,
        "train_seconds": round(meter.seconds, 3),
        "tokens_per_second": round(meter.tokens_per_second, 1),
        "peak_memory_bytes": peak[0],
        "peak_memory_kind": peak[1],
        "stopped_early": bool(config.early_stopping_patience and stopped_early),
    }
    return {
        "adapter_dir": str(out),
        "base": config.base,
        "metrics": metrics,
        "data": {
            "kind": data.kind,
            # who found the assistant's tokens: TRL (template markers) or loramux.trainer.chat_masks
            "assistant_masks": None if data.kind != "chat" else
            "trl" if data.chat_tokens is None else "loramux",
            "train_file": str(config.data),
            "train_digest": data.train_file.digest,
            "eval_file": str(data.eval_path) if data.eval_path else None,
            "eval_digest": data.eval_file.digest if data.eval_file else None,
            "eval_split": config.eval_split,
            "records_read": data.train_file.records_read
            + (data.eval_file.records_read if data.eval_file else 0),
            "train_examples": len(data.train),
            "eval_examples": len(data.eval),
            "train_tokens_per_epoch": data.train_tokens,
            "skipped_records": len(data.skipped),
            "skipped": data.skipped[:100],
        },
        "runtime": runtime.describe() | {"quantization": "nf4+dq" if config.quantize else "none",
                                         "threads": torch.get_num_threads()},
        "hyperparameters": config.hyperparameters(),
        "library_versions": library_versions(),
        "log_history": history,
    }


def _fmt_bytes(n: int | None) -> str:
    if not n:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def summary_table(report: dict[str, Any]):
    """A rich table of the run's headline numbers."""
    from rich.table import Table

    m = report["metrics"]
    table = Table(title=f"training summary: {report.get('adapter_dir', '')}")
    table.add_column("metric")
    table.add_column("value", justify="right")

    def num(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    rows = [
        ("train loss (last logged)", num(m.get("train_loss_last"), ".4f")),
        ("train loss (run mean)", num(m.get("train_loss"), ".4f")),
        ("eval loss", num(m.get("eval_loss"), ".4f")),
        ("steps", f"{m.get('steps', 0)}" + (f" (resumed at {m['resumed_at_step']})"
                                            if m.get("resumed_at_step") else "")),
        ("epochs", num(m.get("epochs"), ".2f")),
        ("tokens seen", num(m.get("tokens_seen"), ",")),
        ("wall time", f"{m.get('train_seconds', 0):.1f} s"),
        ("tokens/s", num(m.get("tokens_per_second"), ",.0f")),
        ("peak memory", f"{_fmt_bytes(m.get('peak_memory_bytes'))} ({m.get('peak_memory_kind')})"),
        ("records used / skipped", f"{report['data']['train_examples']} / "
                                   f"{report['data']['skipped_records']}"),
    ]
    verdict = report.get("verdict") or {}
    if verdict.get("eval_loss_before") is not None:
        rows.insert(3, ("eval loss: base → adapter", f"{verdict['eval_loss_before']:.4f} → "
                                                     f"{verdict['eval_loss_after']:.4f}"))
    if verdict.get("exact_match_before") is not None:
        rows.insert(4, (f"exact match ({verdict['exact_match_total']} prompts)",
                        f"{verdict['exact_match_before']:.0%} → "
                        f"{verdict['exact_match_after']:.0%}"))
    if m.get("stopped_early"):
        rows.append(("stopped early", "yes (eval loss stopped improving)"))
    for key, value in rows:
        table.add_row(key, value)
    return table
