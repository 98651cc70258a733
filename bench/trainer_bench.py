"""Benchmark: ``loramux train`` vs a hand-written transformers + peft + bitsandbytes loop.

Same base (the demo model), data (the codeword demo task), and settings (NF4 + double quant,
one compute dtype for both, LoRA r=16 on all linear layers, gradient checkpointing, AdamW,
batch 16, cosine schedule with warmup, gradient clipping); each side runs in its own subprocess
so that peak RSS is its own. Reported: tokens/s (non-padding input tokens over the training
loop's wall time) and the process's peak RSS, side by side, and their ratios, as medians of 3
trials that alternate the sides (300 steps each, so that start-up does not decide the ratio);
start-up (imports, model load, data preparation, saving: the process's wall time outside the
loop) is reported on its own.

The compute dtype is loramux.hardware's `fast_dtype` (what the trainer's `compute_dtype: auto`
picks), given to both sides explicitly: bf16 where the CPU has bf16 instructions, else fp32,
where the plain loop runs without autocast (bf16 there would be ~20x slower, and the ratio
would measure the dtype, not the trainer).

    loramux bench trainer [--quick]      (python -m loramux.bench.trainer_bench --worker ... is
                                         how each side runs in its own process)

No GPU is used here; on a CUDA machine both sides run unchanged on the GPU (the trainer then
uses paged 8-bit AdamW, the plain loop bitsandbytes' PagedAdamW8bit).
"""

from __future__ import annotations

import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STEPS = {"quick": 20, "full": 300}
TRIALS = {"quick": 1, "full": 3}
SETTINGS: dict[str, Any] = {
    "batch_size": 16, "learning_rate": 2e-3, "r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
    "warmup_ratio": 0.05, "max_seq_length": 128, "seed": 42, "threads": 2,
}


def _loramux_worker(base: str, data: str, out: str, steps: int, dtype: str) -> dict[str, Any]:
    from loramux.trainer.api import train
    from loramux.trainer.callbacks import peak_rss_bytes

    result = train({"base": base, "data": data, "out": out, "max_steps": steps,
                    "save_steps": 10 * steps, "logging_steps": 10, "progress": False,
                    "compute_dtype": dtype,
                    # the plain loop evaluates nothing: neither does this side (no auto eval)
                    "evaluate": False, **SETTINGS})
    m = result.metrics
    return {"tokens": m["tokens_seen"], "seconds": m["train_seconds"],
            "tokens_per_second": m["tokens_per_second"], "peak_rss_bytes": peak_rss_bytes(),
            "final_loss": m["train_loss_last"], "steps": m["steps"], "dtype": dtype}


def _plain_worker(base: str, data: str, out: str, steps: int, dtype: str) -> dict[str, Any]:
    """The loop a user would write by hand with the same libraries and settings."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    from loramux.trainer.callbacks import peak_rss_bytes
    from loramux.trainer.model import quantization_config

    torch.set_num_threads(SETTINGS["threads"])
    torch.manual_seed(SETTINGS["seed"])
    tokenizer = AutoTokenizer.from_pretrained(base)
    compute = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=compute, quantization_config=quantization_config(compute_dtype=dtype))
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(
        r=SETTINGS["r"], lora_alpha=SETTINGS["lora_alpha"], lora_dropout=0.0,
        target_modules="all-linear", task_type="CAUSAL_LM"))
    for param in model.parameters():  # QLoRA: adapter weights in the compute dtype, like TRL
        if param.requires_grad:
            param.data = param.data.to(compute)

    examples = []
    for line in Path(data).read_text().splitlines():
        enc = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=True,
                                            return_dict=True, return_assistant_tokens_mask=True)
        ids = enc["input_ids"][: SETTINGS["max_seq_length"]]
        mask = enc["assistant_masks"][: SETTINGS["max_seq_length"]]
        examples.append((ids, [t if m else -100 for t, m in zip(ids, mask, strict=True)]))

    bs = SETTINGS["batch_size"]
    rng = random.Random(SETTINGS["seed"])

    def batches():
        while True:
            order = list(range(len(examples)))
            rng.shuffle(order)
            for i in range(0, len(order) - bs + 1, bs):
                yield [examples[j] for j in order[i:i + bs]]

    params = [p for p in model.parameters() if p.requires_grad]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(params, lr=SETTINGS["learning_rate"])
    else:
        optimizer = torch.optim.AdamW(params, lr=SETTINGS["learning_rate"], weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, math.ceil(SETTINGS["warmup_ratio"] * steps), steps)
    model.train()
    tokens = 0
    loss_value = float("nan")
    started = time.perf_counter()
    for _, batch in zip(range(steps), batches(), strict=False):
        width = max(len(ids) for ids, _ in batch)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        input_ids, labels, attention = (t.to(model.device) for t in (input_ids, labels,
                                                                       attention))
        with torch.autocast(device, dtype=compute, enabled=dtype != "float32"):
            loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(attention.sum())
        loss_value = loss.item()
    seconds = time.perf_counter() - started
    model.save_pretrained(out)
    return {"tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_second": round(tokens / seconds, 1), "peak_rss_bytes": peak_rss_bytes(),
            "final_loss": loss_value, "steps": steps, "dtype": dtype}


WORKERS = {"loramux": _loramux_worker, "plain": _plain_worker}


def _spawn(kind: str, base: Path, data: Path, out: Path, steps: int,
           dtype: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "loramux.bench.trainer_bench", "--worker", kind, str(base),
           str(data), str(out), str(steps), dtype]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = round(wall, 2)
    result["startup_seconds"] = round(wall - result["seconds"], 2)
    return result


def _median_side(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The trial with the median tokens/s, with peak RSS and start-up replaced by their own
    medians over the trials."""
    ordered = sorted(trials, key=lambda t: t["tokens_per_second"])
    side = dict(ordered[len(ordered) // 2])
    for key in ("peak_rss_bytes", "startup_seconds"):
        side[key] = statistics.median(t[key] for t in trials)
    return side


def run(quick: bool = False, base: Path | str | None = None,
        dtype: str | None = None) -> dict[str, Any]:
    """Run both sides, alternating, and return their median figures and ratios;
    `base` defaults to the demo base model (built on first use), `dtype` to this machine's
    fast one (loramux.hardware)."""
    from loramux.bench.workload import demo_base
    from loramux.demo.tasks import write_demo_data
    from loramux.hardware import fast_dtype

    mode = "quick" if quick else "full"
    steps, trials = STEPS[mode], TRIALS[mode]
    base = demo_base() if base is None else Path(base)
    dtype = dtype or fast_dtype("cpu")
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"{base} holds no model; run `loramux demo base` first")
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "loramux": []}
    with tempfile.TemporaryDirectory(prefix="loramux-train-bench-") as tmp:
        data = write_demo_data(Path(tmp) / "data")["codeword"] / "train.jsonl"
        for trial in range(trials):  # alternate, so drift on the machine hits both sides
            for kind in ("plain", "loramux") if trial % 2 == 0 else ("loramux", "plain"):
                runs[kind].append(_spawn(kind, base, data, Path(tmp) / f"{kind}-{trial}",
                                         steps, dtype))
    ours, plain = _median_side(runs["loramux"]), _median_side(runs["plain"])
    return {
        "steps": steps, "trials": trials, "settings": SETTINGS, "device": "cpu",
        "dtype": dtype,
        "loramux": ours, "plain": plain, "runs": runs,
        "tokens_per_second_ratio": round(ours["tokens_per_second"] / plain["tokens_per_second"],
                                         3),
        "peak_rss_ratio": round(ours["peak_rss_bytes"] / plain["peak_rss_bytes"], 3),
        "gpu": "skipped: no GPU lent to this machine",
    }


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    ours, plain = result["loramux"], result["plain"]
    table = Table(title=f"QLoRA training on the demo base, {result['steps']} steps, batch "
                        f"{result['settings']['batch_size']}, CPU, "
                        f"{result.get('dtype', 'bfloat16')}, median of "
                        f"{result.get('trials', 1)}")
    for column in ("metric", "loramux train", "plain loop", "ratio"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    table.add_row("tokens/s", f"{ours['tokens_per_second']:,.0f}",
                  f"{plain['tokens_per_second']:,.0f}", f"{result['tokens_per_second_ratio']:.2f}")
    table.add_row("peak RSS", f"{ours['peak_rss_bytes'] / 2**20:,.0f} MiB",
                  f"{plain['peak_rss_bytes'] / 2**20:,.0f} MiB", f"{result['peak_rss_ratio']:.2f}")
    table.add_row("loop seconds", f"{ours['seconds']:.1f}", f"{plain['seconds']:.1f}", "")
    table.add_row("start-up and save seconds", f"{ours['startup_seconds']:.1f}",
                  f"{plain['startup_seconds']:.1f}", "")
    table.add_row("tokens", f"{ours['tokens']:,}", f"{plain['tokens']:,}", "")
    table.add_row("final loss", f"{ours['final_loss']:.3f}", f"{plain['final_loss']:.3f}", "")
    console = Console()
    console.print(table)
    console.print(f"GPU: {result['gpu']}")


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--worker":
        kind, base, data, out, steps, dtype = argv[1:7]
        result = WORKERS[kind](base, data, out, int(steps), dtype)
        print(json.dumps(result))
        return
    result = run(quick="--quick" in argv)
    print_table(result)
    if "--json" in argv:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
