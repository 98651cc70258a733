"""`loramux demo …`: the offline demo, from an empty machine to answers from a served model."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    help="Offline demo: a tiny chat base model, two task adapters, one server.",
    no_args_is_help=True,
)
console = Console()

DEFAULT_BASE = Path(".cache/demo-base")
OUT_OPTION = typer.Option(DEFAULT_BASE, "--out", help="Folder for the model (reused if current).")


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
def smoke(model: Path = typer.Option(DEFAULT_BASE, "--model", help="Model folder to query."),
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
        cache: Path = typer.Option(Path(".cache"), help="Where data, adapters, the scratch "
                                   "registry and the server log go (reused across runs)."),
        ) -> None:
    """The whole demo: base model, two QLoRA adapters, registry, one server, alias hot swap."""
    from loramux.demo.tour import run_tour

    logging.basicConfig(level=logging.WARNING)
    # bitsandbytes warns on every load that an optional CPU kernel package is absent.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    console.rule("[bold]1. demo base model")
    base(out=base_dir, force=False, footprint=True)
    run_tour(base_dir.resolve(), cache.resolve(), console)
