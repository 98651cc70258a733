"""`loramux demo …`: the offline demo, from an empty machine to answers from a served model."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loramux.demo.paths import default_base, default_cache
from loramux.trainer.cli import report_errors

app = typer.Typer(
    help="Offline demo: a tiny chat base model, two task adapters, one server.",
    no_args_is_help=True,
)
console = Console()

DEFAULT_BASE = default_base()
OUT_OPTION = typer.Option(DEFAULT_BASE, "--out", help="Folder for the model (reused if current).",
                          show_default="the project's .cache/demo-base")


def _build_with_progress(out: Path, force: bool):
    from loramux.demo.base_model import DemoRecipe, build, is_built

    recipe = DemoRecipe()
    if is_built(out, recipe) and not force:
        console.print(f"[green]demo base model is current[/] at {out}")
        return build(out, recipe)
    columns = (TextColumn("[bold]pretraining demo base"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TextColumn("loss {task.fields[loss]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("pretrain", total=recipe.steps, loss="-")

        def progress(step: int, loss: float) -> None:
            bar.update(task, completed=step, loss=f"{loss:.3f}")

        result = build(out, recipe, force=force, progress=progress)
    console.print(f"[green]built[/] {out} in {result.seconds:.1f}s "
                  f"(final loss {result.final_loss:.3f})")
    return result


@app.command("base")
def base(out: Path = OUT_OPTION, force: bool = typer.Option(False, help="Rebuild even if current."),
         footprint: bool = typer.Option(True, help="Also measure the NF4-resident size.")) -> None:
    """Build the demo base model (tokenizer, chat template, pretrained Llama weights)."""
    result = _build_with_progress(out, force)
    table = Table(title="demo base model")
    table.add_column("fact")
    table.add_column("value", justify="right")
    table.add_row("path", str(result.path))
    table.add_row("parameters", f"{result.parameters:,}")
    table.add_row("bytes on disk", f"{result.bytes_on_disk:,}")
    if footprint:
        from loramux.demo.footprint import nf4_resident_bytes

        table.add_row("bytes resident in NF4", f"{nf4_resident_bytes(result.path):,}")
    console.print(table)


@app.command("smoke")
def smoke(model: Path = typer.Option(DEFAULT_BASE, "--model", help="Model folder to query.",
                                     show_default="the project's .cache/demo-base"),
          quantization: str = typer.Option("bitsandbytes", help="bitsandbytes (NF4) or none."),
          ) -> None:
    """Query a model through vLLM (LoRA enabled) with its chat template."""
    from loramux.demo.smoke import SMOKE_PROMPTS, chat, make_llm

    if not (model / "config.json").is_file():
        typer.echo(f"error: {model} holds no model; run `loramux demo base --out {model}`",
                   err=True)
        raise typer.Exit(2)
    started = time.perf_counter()
    llm = make_llm(model, quantization)
    console.print(f"vLLM engine up in {time.perf_counter() - started:.1f}s ({quantization})")
    table = Table(title=f"vLLM answers ({quantization}, enable_lora=True)")
    for column in ("prompt", "answer", "finish", "tokens"):
        table.add_column(column)
    for answer in chat(llm, SMOKE_PROMPTS):
        table.add_row(answer.prompt, answer.text, str(answer.finish_reason), str(answer.tokens))
    console.print(table)


@app.command("run")
def run(base_dir: Path = OUT_OPTION,
        cache: Path = typer.Option(default_cache(), help="Where data, adapters, the scratch "
                                   "registry and the server log go (reused across runs).",
                                   show_default="the project's .cache"),
        ) -> None:
    """The whole demo: base model, two QLoRA adapters, registry, one server, alias hot swap."""
    from loramux.demo.tour import run_tour

    logging.basicConfig(level=logging.WARNING)
    # bitsandbytes warns on every load that an optional CPU kernel package is absent.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    console.rule("[bold]1. demo base model")
    base(out=base_dir, force=False, footprint=True)
    run_tour(base_dir.resolve(), cache.resolve(), console)


@app.command("real")
def real(cache: Path = typer.Option(default_cache(), help="Where the converted base, data, "
                                    "adapter, scratch registry and server log go (reused).",
                                    show_default="the project's .cache"),
         ) -> None:
    """The tour on a real pretrained chat model (SmolLM2-135M-Instruct from its GGUF): one
    adapter trained on a task the base cannot do, served beside it, answers before and after."""
    from loramux.demo.real_tour import run_real_tour

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    with report_errors():
        run_real_tour(cache.resolve(), console)


@app.command("data")
def data(out: Path = typer.Option(Path("demo-data"), "--out",
                                  help="Folder for <task>/train.jsonl and <task>/eval.jsonl."),
         ) -> None:
    """Write the synthetic demo tasks (chat JSONL) whose answers can be checked exactly."""
    from loramux.demo.tasks import build_tasks, write_demo_data

    folders = write_demo_data(out)
    tasks = build_tasks()
    table = Table(title=f"demo tasks in {out}")
    for column in ("task", "what", "train", "eval", "folder"):
        table.add_column(column)
    for name, folder in folders.items():
        task = tasks[name]
        table.add_row(name, task.description, str(len(task.train)), str(len(task.eval)),
                      str(folder))
    console.print(table)


@app.command("adapters")
def adapters(
    base: Path = typer.Option(DEFAULT_BASE, "--base", help="Demo base model.",
                              show_default="the project's .cache/demo-base"),
    data_dir: Path = typer.Option(Path("demo-data"), "--data", help="Where demo data is written."),
    out: Path = typer.Option(Path("demo-adapters"), "--out", help="Folder for <task>/ adapters."),
    publish: bool = typer.Option(False, "--publish/--no-publish"),
    registry: str | None = typer.Option(None, "--registry"),
    alias: str | None = typer.Option(None, "--alias"),
) -> None:
    """Train one adapter per demo task (QLoRA) and print the exact-match table."""
    from loramux.demo.tasks import DEMO_TRAIN_SETTINGS, exact_match_table, write_demo_data
    from loramux.demo.trained import train_adapter
    from loramux.trainer.report import summary_table

    with report_errors():
        folders = write_demo_data(data_dir)
        trained = {}
        for task, folder in folders.items():
            console.print(f"[bold]{task}[/]: training {out / task}")
            result = train_adapter(base, folder, out / task, DEMO_TRAIN_SETTINGS,
                                   overwrite=True, publish=publish,
                                   name=task if publish else None, registry=registry,
                                   alias=alias if publish else None)
            console.print(summary_table(result.report))
            if result.reference:
                console.print(f"published [bold green]{result.reference}[/]")
            trained[task] = result.adapter_dir
        evals = {t: f / "eval.jsonl" for t, f in folders.items()}
        table = exact_match_table(base, trained, evals)
        grid = Table(title="exact match on held-out prompts (greedy, transformers + peft, NF4)")
        grid.add_column("eval set")
        for column in ["base", *trained]:
            grid.add_column(column if column == "base" else f"{column} adapter", justify="right")
        for task, row in table.items():
            grid.add_row(task, *(f"{row[k].score:.0%} ({row[k].correct}/{row[k].total})"
                                 for k in ["base", *trained]))
        console.print(grid)
