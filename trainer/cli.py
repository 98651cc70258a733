"""``loramux train`` and ``loramux demo data`` (and ``demo adapters``) as plain typer functions.

``loramux/cli.py`` mounts them; run ``python -m loramux.trainer.cli train ...`` standalone.
Nothing heavy is imported at module level, so ``loramux --help`` stays fast. Every TrainerError
becomes one ``error: ...`` message on stderr and its exit code (2 for bad options or data,
130 for an interrupted run), in ``_errors`` and nowhere else: no tracebacks for user mistakes.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from loramux.trainer.errors import TrainerError

HELP_TRAIN = (
    "QLoRA-train a LoRA adapter on a chat, prompt/completion or Alpaca file, save it with its "
    "report, and optionally publish it to the registry. Options come from --config (YAML) and "
    "are overridden by flags; the resolved configuration is saved next to the adapter."
)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """The one place TrainerErrors become a message and an exit code."""
    try:
        yield
    except TrainerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted; nothing was published", err=True)
        raise typer.Exit(130) from None


def _labels(values: list[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    labels = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--label {item!r}: expected key=value")
        labels[key] = value
    return labels


def train_command(
    base: str | None = typer.Option(None, "--base", help="Base model folder or hub id."),
    data: Path | None = typer.Option(None, "--data", help="Training data (.jsonl/.json/.csv/"
                                     ".parquet): chat, prompt/completion or Alpaca records."),
    eval: Path | None = typer.Option(None, "--eval", help="Eval data, same formats."),
    eval_split: float | None = typer.Option(None, "--eval-split",
                                            help="Hold out this share of --data for eval."),
    out: Path | None = typer.Option(None, "--out", help="Output folder for the adapter."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML file of options."),
    name: str | None = typer.Option(None, "--name", help="Adapter name in the registry."),
    publish: bool | None = typer.Option(None, "--publish/--no-publish",
                                        help="Push the adapter to the registry when done."),
    registry: str | None = typer.Option(None, "--registry", help="Registry folder or URL."),
    alias: str | None = typer.Option(None, "--alias", help="Move this alias to the new version."),
    description: str | None = typer.Option(None, "--description"),
    label: list[str] | None = typer.Option(None, "--label", help="key=value (repeatable)."),
    resume: bool | None = typer.Option(None, "--resume", help="Continue from the last checkpoint"
                                       " in --out."),
    overwrite: bool | None = typer.Option(None, "--overwrite", help="Start over, deleting an "
                                          "earlier run's checkpoints in --out."),
    quantize: bool | None = typer.Option(None, "--quantize/--no-quantize",
                                         help="NF4 + double-quant base (QLoRA) or plain LoRA."),
    data_format: str | None = typer.Option(None, "--format",
                                           help="auto|chat|prompt_completion|alpaca"),
    prompt_template: str | None = typer.Option(None, "--prompt-template", help="For non-chat "
                                               "data, e.g. '### Q:\\n{prompt}\\n### A:\\n'."),
    skip_bad_records: bool | None = typer.Option(None, "--skip-bad-records",
                                                 help="Skip invalid records (and count them)."),
    max_seq_length: int | None = typer.Option(None, "--max-seq-length", help="Token cut-off."),
    packing: bool | None = typer.Option(None, "--packing/--no-packing"),
    r: int | None = typer.Option(None, "--r", "--lora-r", help="LoRA rank."),
    lora_alpha: float | None = typer.Option(None, "--lora-alpha"),
    lora_dropout: float | None = typer.Option(None, "--lora-dropout"),
    bias: str | None = typer.Option(None, "--bias", help="none|all|lora_only"),
    target_modules: str | None = typer.Option(None, "--target-modules",
                                              help="all-linear or comma-separated names."),
    use_rslora: bool | None = typer.Option(None, "--rslora/--no-rslora"),
    epochs: float | None = typer.Option(None, "--epochs"),
    max_steps: int | None = typer.Option(None, "--max-steps"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    gradient_accumulation_steps: int | None = typer.Option(None, "--grad-accum",
                                                           "--gradient-accumulation-steps"),
    learning_rate: float | None = typer.Option(None, "--lr", "--learning-rate"),
    lr_scheduler: str | None = typer.Option(None, "--lr-scheduler"),
    warmup_ratio: float | None = typer.Option(None, "--warmup-ratio"),
    warmup_steps: int | None = typer.Option(None, "--warmup-steps"),
    weight_decay: float | None = typer.Option(None, "--weight-decay"),
    optimizer: str | None = typer.Option(None, "--optimizer", help="auto|adamw_torch|"
                                         "paged_adamw_8bit|..."),
    gradient_checkpointing: bool | None = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing"),
    seed: int | None = typer.Option(None, "--seed"),
    eval_steps: int | None = typer.Option(None, "--eval-steps"),
    early_stopping_patience: int | None = typer.Option(None, "--early-stopping-patience",
                                                       "--patience"),
    save_steps: int | None = typer.Option(None, "--save-steps"),
    logging_steps: int | None = typer.Option(None, "--logging-steps"),
    device: str | None = typer.Option(None, "--device", help="auto|cpu|cuda"),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check options and data, print the "
                                 "resolved config, and exit without training."),
) -> None:
    """QLoRA fine-tuning from a data file to a saved (and optionally published) adapter."""
    overrides: dict[str, Any] = {
        "base": base, "data": data, "eval": eval, "eval_split": eval_split, "out": out,
        "name": name, "publish": publish, "registry": registry, "alias": alias,
        "description": description, "labels": _labels(label), "resume": resume,
        "overwrite": overwrite, "quantize": quantize, "format": data_format,
        "prompt_template": prompt_template, "skip_bad_records": skip_bad_records,
        "max_seq_length": max_seq_length, "packing": packing, "r": r, "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout, "bias": bias, "target_modules": target_modules,
        "use_rslora": use_rslora, "epochs": epochs, "max_steps": max_steps,
        "batch_size": batch_size, "gradient_accumulation_steps": gradient_accumulation_steps,
        "learning_rate": learning_rate, "lr_scheduler": lr_scheduler,
        "warmup_ratio": warmup_ratio, "warmup_steps": warmup_steps, "weight_decay": weight_decay,
        "optimizer": optimizer, "gradient_checkpointing": gradient_checkpointing, "seed": seed,
        "eval_steps": eval_steps, "early_stopping_patience": early_stopping_patience,
        "save_steps": save_steps, "logging_steps": logging_steps, "device": device,
        "threads": threads, "progress": progress,
    }
    from rich.console import Console

    console = Console(stderr=False)
    with _errors():
        from loramux.trainer.config import build_config

        cfg = build_config(config, overrides)
        if dry_run:
            from loramux.trainer.api import prepare_data
            from loramux.trainer.publish import check_options

            check_options(cfg)
            data_ = prepare_data(cfg)
            console.print(cfg.to_yaml(), markup=False, highlight=False)
            console.print(f"data ok: {len(data_.train)} train / {len(data_.eval)} eval "
                          f"{data_.kind} examples, {len(data_.skipped)} skipped "
                          "(token lengths are checked when the tokenizer loads)")
            return
        from loramux.trainer.api import train
        from loramux.trainer.report import summary_table

        console.print(f"training [bold]{cfg.out}[/] from {cfg.data} on {cfg.base} "
                      f"({'QLoRA NF4' if cfg.quantize else 'LoRA'}, r={cfg.r})")
        result = train(cfg, console=console)
        console.print(summary_table(result.report))
        if result.skipped:
            console.print(f"[yellow]skipped {len(result.skipped)} bad records[/] "
                          f"(listed in {result.report_path.name})")
        console.print(f"adapter: {result.adapter_dir}")
        console.print(f"report: {result.report_path}  loss curve: {result.loss_curve_path}  "
                      f"config: {result.config_path}")
        if result.reference:
            suffix = f" (alias {cfg.alias})" if cfg.alias else ""
            console.print(f"published [bold green]{result.reference}[/]{suffix}")
            print(result.reference, file=sys.stderr if console.is_terminal else sys.stdout)


def demo_data_command(
    out: Path = typer.Option(Path("demo-data"), "--out", help="Folder for <task>/train.jsonl "
                             "and <task>/eval.jsonl."),
) -> None:
    """Write the synthetic demo tasks (chat JSONL) whose answers can be checked exactly."""
    from rich.console import Console
    from rich.table import Table

    from loramux.trainer.demo_tasks import build_tasks, write_demo_data

    folders = write_demo_data(out)
    tasks = build_tasks()
    table = Table(title=f"demo tasks in {out}")
    for column in ("task", "what", "train", "eval", "folder"):
        table.add_column(column)
    for name, folder in folders.items():
        task = tasks[name]
        table.add_row(name, task.description, str(len(task.train)), str(len(task.eval)),
                      str(folder))
    Console().print(table)


def demo_adapters_command(
    base: Path = typer.Option(Path(".cache/demo-base"), "--base", help="Demo base model."),
    data: Path = typer.Option(Path("demo-data"), "--data", help="Where demo data is written."),
    out: Path = typer.Option(Path("demo-adapters"), "--out", help="Folder for <task>/ adapters."),
    publish: bool = typer.Option(False, "--publish/--no-publish"),
    registry: str | None = typer.Option(None, "--registry"),
    alias: str | None = typer.Option(None, "--alias"),
) -> None:
    """Train one adapter per demo task (QLoRA) and print the exact-match table."""
    from rich.console import Console
    from rich.table import Table

    from loramux.trainer.demo_tasks import exact_match_table, train_demo_adapter, write_demo_data
    from loramux.trainer.report import summary_table

    console = Console()
    with _errors():
        folders = write_demo_data(data)
        adapters = {}
        for task, folder in folders.items():
            console.print(f"[bold]{task}[/]: training {out / task}")
            result = train_demo_adapter(base, folder, out / task, overwrite=True,
                                        publish=publish, name=task if publish else None,
                                        registry=registry, alias=alias if publish else None)
            console.print(summary_table(result.report))
            if result.reference:
                console.print(f"published [bold green]{result.reference}[/]")
            adapters[task] = result.adapter_dir
        table = exact_match_table(base, adapters, {t: f / "eval.jsonl" for t, f in folders.items()})
        grid = Table(title="exact match on held-out prompts (greedy, transformers + peft, NF4)")
        grid.add_column("eval set")
        for column in ["base", *adapters]:
            grid.add_column(column if column == "base" else f"{column} adapter", justify="right")
        for task, row in table.items():
            grid.add_row(task, *(f"{row[k].score:.0%} ({row[k].correct}/{row[k].total})"
                                 for k in ["base", *adapters]))
        console.print(grid)


def _standalone() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    app.command("train", help=HELP_TRAIN)(train_command)
    demo = typer.Typer(no_args_is_help=True, help="Demo tasks.")
    demo.command("data")(demo_data_command)
    demo.command("adapters")(demo_adapters_command)
    app.add_typer(demo, name="demo")
    return app


if __name__ == "__main__":
    _standalone()()
