"""`make demo` end to end: train two task adapters, publish them, serve both from one base.

The point to show a newcomer is the product's promise, measured rather than told: one NF4 base
loaded once, adapters chosen per request (mixed in the same batch), each adapter good at its own
task and no better than the base at the other one, and an alias repointed in the registry taking
effect on the running server within seconds, with no restart and no base reload. Then the safe
way to roll out (rollout.py): a promotion gated by an eval run on that same server, a bad
retrain refused by the gate, the same retrain as a canary rolled back on its eval score, and the
registry's and the server's web pages.

Everything expensive is cached under .cache/ (the base by its recipe, the adapters by their
training recipe, shared with the tests), so a second run only starts the server and queries it.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from loramux import wire

SERVED_NAME = "demo-base"
ALIAS_NAME, ALIAS = "assistant", "prod"


@dataclass(frozen=True)
class Paths:
    """Where the demo keeps its artefacts (all under one cache folder)."""

    data: Path
    adapters: Path
    registry: Path
    server_cache: Path
    server_log: Path
    registry_log: Path

    @classmethod
    def under(cls, cache: Path) -> Paths:
        names = ("demo-data", "trainer-demo", "demo-registry", "demo-server-cache",
                 "demo-server.log", "demo-registry.log")
        return cls(*(cache / name for name in names))


def _publish(adapters: dict[str, Path], paths: Paths, console: Console) -> None:
    """A fresh scratch registry: each task under its own name, plus `assistant` with two versions
    (v1 = codeword, v2 = caps) and `assistant:prod` on v1, for the hot-swap step."""
    from loramux.trainer.publish import publish_trained

    shutil.rmtree(paths.registry, ignore_errors=True)
    refs = [publish_trained(folder, task, paths.registry).ref for task, folder in adapters.items()]
    refs.append(publish_trained(adapters["codeword"], ALIAS_NAME, paths.registry,
                                alias=ALIAS).ref + f" (alias {ALIAS})")
    refs.append(publish_trained(adapters["caps"], ALIAS_NAME, paths.registry).ref)
    console.print(f"published to {paths.registry}: " + ", ".join(refs))


def _ask(client, model: str, messages: list[dict[str, str]]) -> str:
    reply = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                           max_tokens=8)
    return reply.choices[0].message.content or ""


def _exact_match(client, eval_files: dict[str, Path], models: list[str], console: Console):
    """Every eval prompt of every task against every model, all in flight at once, so the engine
    batches requests for different adapters together."""
    from loramux.demo.tasks import load_eval, normalize

    jobs = [(task, model, item) for task, path in eval_files.items() for item in load_eval(path)
            for model in models]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda job: _ask(client, job[1], job[2].messages), jobs))
    wall = time.monotonic() - started
    hits: dict[tuple[str, str], list[int]] = {}
    for (task, model, item), answer in zip(jobs, answers, strict=True):
        cell = hits.setdefault((task, model), [0, 0])
        cell[0] += normalize(answer) == normalize(item.expected)
        cell[1] += 1
    table = Table(title=f"exact match through the server ({len(jobs)} requests, greedy, "
                        f"{len(jobs) / wall:.1f} req/s)")
    table.add_column("eval set")
    for model in models:
        table.add_column(f"model={model}", justify="right")
    for task in eval_files:
        table.add_row(task, *(f"{hits[task, m][0] / hits[task, m][1]:.0%} "
                              f"({hits[task, m][0]}/{hits[task, m][1]})" for m in models))
    console.print(table)
    return hits


def _metric(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _hot_swap(client, url: str, paths: Paths, probes: dict[str, list[dict[str, str]]],
              console: Console) -> float:
    """Repoint `assistant:prod` from v1 to v2 in the registry while the server runs; returns the
    seconds until the server answered with the new version."""
    import loramux.registry as reg

    model = f"{ALIAS_NAME}:{ALIAS}"
    table = Table(title=f"hot swap: model={model}")
    for column in ("when", *probes):
        table.add_column(column)
    before = {task: _ask(client, model, messages) for task, messages in probes.items()}
    table.add_row(f"{ALIAS} -> {ALIAS_NAME}@1 (codeword)", *before.values())

    registry = reg.open(paths.registry)
    try:
        registry.alias_set(ALIAS_NAME, ALIAS, 2)
    finally:
        registry.close()
    moved = time.monotonic()
    probe_task = "caps"
    while True:
        answer = _ask(client, model, probes[probe_task])
        if answer != before[probe_task] or time.monotonic() - moved > 30:
            break
        time.sleep(0.25)
    seconds = time.monotonic() - moved
    after = {task: _ask(client, model, messages) for task, messages in probes.items()}
    table.add_row(f"{ALIAS} -> {ALIAS_NAME}@2 (caps), {seconds:.1f}s later", *after.values())
    pinned = {task: _ask(client, f"{ALIAS_NAME}@1", m) for task, m in probes.items()}
    table.add_row(f"model={ALIAS_NAME}@1 (a pinned version)", *pinned.values())
    plain = {task: _ask(client, SERVED_NAME, m) for task, m in probes.items()}
    table.add_row(f"model={SERVED_NAME} (no adapter)", *plain.values())
    console.print(table)
    return seconds


def run_tour(base: Path, cache: Path, console: Console | None = None) -> None:
    """Train (or reuse) the demo adapters, publish them, serve them and show what they do."""
    from openai import OpenAI

    from loramux.demo import rollout
    from loramux.demo.tasks import load_eval, write_demo_data
    from loramux.demo.trained import cached_demo_adapters
    from loramux.support.launch import ServerProcess

    console = console or Console()
    paths = Paths.under(cache)

    console.rule("[bold]2. demo tasks and QLoRA adapters")
    data = write_demo_data(paths.data)
    adapters = cached_demo_adapters(base, data, paths.adapters, progress=True)
    for task, folder in adapters.items():
        console.print(f"{task}: adapter in {folder}")

    console.rule("[bold]3. registry")
    _publish(adapters, paths, console)

    console.rule("[bold]4. one server, one NF4 base, adapters per request")
    args = ["--base", str(base), "--registry", str(paths.registry), "--served-name", SERVED_NAME,
            "--max-model-len", "512", "--cache-dir", str(paths.server_cache)]
    with console.status("starting `loramux serve` (vLLM engine, NF4 base)…"):
        server = ServerProcess(args, log=paths.server_log)
        url = server.start()
    try:
        console.print(f"server ready at {url} in {server.startup_seconds:.0f}s "
                      f"(log: {paths.server_log})")
        client = OpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0, timeout=120)
        eval_files = {task: folder / "eval.jsonl" for task, folder in data.items()}
        _exact_match(client, eval_files, [SERVED_NAME, *adapters], console)

        console.rule("[bold]5. roll out a new version by moving an alias")
        probes = {task: load_eval(path)[0].messages for task, path in eval_files.items()}
        for task, messages in probes.items():
            console.print(f"{task} probe: {messages[-1]['content']!r}")
        _hot_swap(client, url, paths, probes, console)
        loads = _metric(url, wire.BASE_MODEL_LOADS)
        adapter_loads = _metric(url, wire.ADAPTER_LOADS)
        console.print(f"base model loads: {loads:.0f}; adapter loads: {adapter_loads:.0f} "
                      "(from /metrics; assistant@1 has codeword@1's digest and assistant@2 "
                      "caps@1's, and the digest is the adapter's identity, so each loaded once)")
        console.rule("[bold]6. promote through an eval gate")
        rollout.gate_and_canary(client, url, paths.registry, adapters, eval_files["codeword"],
                                console)
        console.print(
            "\nTry it yourself while a server runs (`loramux serve --base "
            f"{base} --registry {paths.registry} --served-name {SERVED_NAME}`):\n"
            "  curl localhost:8000/v1/chat/completions -H 'content-type: application/json' -d "
            "'{\"model\": \"codeword@1\", \"messages\": [{\"role\": \"user\", \"content\": "
            "\"What is the code word for the fox?\"}]}'")
        rollout.pages(url, paths.registry, paths.registry_log, console)
    finally:
        server.stop()
