"""``loramux train`` as a plain typer function (``loramux/cli.py`` mounts it).

Run ``python -m loramux.trainer.cli train ...`` standalone. Nothing heavy is imported at module
level, so ``loramux --help`` stays fast. Every LoramuxError becomes one ``error: ...`` message on
stderr and its exit code (2 for bad options or data, 130 for an interrupted run), in
``report_errors`` (said by one rank only, through ``loramux.cli_errors``): no tracebacks for user
mistakes.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import typer
from pydantic.fields import FieldInfo
from typer.core import TyperCommand

from loramux.cli_errors import exit_with
from loramux.errors import LoramuxError
from loramux.trainer.config import TrainConfig

HELP_TRAIN = (
    "QLoRA-train a LoRA adapter on a chat, prompt/completion or Alpaca file, save it with its "
    "report, and optionally publish it to the registry. Options come from --config (YAML) and "
    "are overridden by flags; the resolved configuration is saved next to the adapter."
)


@contextlib.contextmanager
def report_errors() -> Iterator[None]:
    """Training's errors as a message and an exit code (``exit_code``), from one rank."""
    try:
        yield
    except LoramuxError as exc:
        from loramux.trainer import distributed

        exit_with(exc, say=not distributed.launched() or distributed.is_main())
    except KeyboardInterrupt:
        typer.echo("error: interrupted; nothing was published", err=True)
        raise typer.Exit(130) from None


# Flags spelled otherwise than --field-name (every spelling here keeps working).
FLAG_NAMES: dict[str, tuple[str, ...]] = {
    "r": ("--r", "--lora-r"),
    "use_rslora": ("--rslora",),
    "gradient_accumulation_steps": ("--grad-accum", "--gradient-accumulation-steps"),
    "learning_rate": ("--lr", "--learning-rate"),
    "early_stopping_patience": ("--early-stopping-patience", "--patience"),
    "labels": ("--label",),
    "evaluate": ("--evaluate", " /--no-eval"),  # --no-eval is the short opt-out
}
# Switches that only turn something on (no --no-resume); other booleans get --x/--no-x.
ON_SWITCHES = {"resume", "overwrite", "keep_checkpoints", "skip_bad_records", "force"}
SCALARS = (bool, int, float, str, Path)


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


def _cli_type(annotation: Any) -> tuple[type, str | None]:
    """The flag's Python type and metavar for a TrainConfig field's annotation.

    Values are only parsed into plain types here; TrainConfig validates them (ranges, choices),
    so a bad value gets the same message from a flag as from the YAML file.
    """
    if annotation in SCALARS:
        return annotation, None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        choices = "|".join(map(str, args))
        return str, choices if len(choices) <= 20 else "NAME"
    if origin is dict:
        return list[str], "K=V"
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:
        return _cli_type(options[0])
    return str, None  # e.g. target_modules: "all-linear" or "a,b,c"


def _default_text(value: Any) -> str | None:
    if value is None or value == "" or value == {}:
        return None
    return str(value).lower() if isinstance(value, bool) else str(value)


def _flag(name: str, field: FieldInfo) -> inspect.Parameter:
    """One typer option for one TrainConfig field: its help text and default are the field's."""
    kind, metavar = _cli_type(field.annotation)
    names = FLAG_NAMES.get(name, ("--" + name.replace("_", "-"),))
    if kind is bool and name not in ON_SWITCHES:
        names = (f"{names[0]}/--no-{names[0].removeprefix('--')}", *names[1:])
    help_text = field.description or ""
    default = None if field.is_required() else _default_text(field.get_default(
        call_default_factory=True))
    if default is not None and name not in ON_SWITCHES:
        help_text = f"{help_text} [{default}]"
    option = typer.Option(None, *names, help=help_text, metavar=metavar, show_default=False)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=kind | None)


def _with_config_flags(command: Callable[..., None]) -> Callable[..., None]:
    """``command(config, dry_run, overrides)`` as a typer command with one flag per field.

    Typer reads a function's signature, so the wrapper gets one built from TrainConfig's fields:
    a new field is a new flag, with the field's own default and help text.
    """
    fixed = [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                          default=typer.Option(None, "--config", "-c",
                                               help="YAML file of options (flags win).")),
        inspect.Parameter("dry_run", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--dry-run", help="Check options and "
                                               "data, then exit.")),
    ]
    fields = [_flag(n, f) for n, f in TrainConfig.model_fields.items()]

    @functools.wraps(command)
    def wrapper(*, config: Path | None, dry_run: bool, **values: Any) -> None:
        values["labels"] = _labels(values.get("labels"))
        command(config, dry_run, values)

    params = [*fields, *fixed]
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
    return wrapper


class PlainHelp(TyperCommand):
    """Click's two-column help: one line per option at 80 columns. Rich's four-column panel
    squeezes ~50 options' help into a column a few words wide."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.rich_markup_mode = None
        super().format_help(ctx, formatter)


def add_train_command(app: typer.Typer) -> None:
    """Mount ``train`` on ``app`` (the ``loramux`` group, or the standalone one)."""
    app.command("train", help=HELP_TRAIN, cls=PlainHelp)(train_command)


@_with_config_flags
def train_command(config: Path | None, dry_run: bool, overrides: dict[str, Any]) -> None:
    """QLoRA fine-tuning from a data file to a saved (and optionally published) adapter."""
    from rich.console import Console

    console = Console(stderr=False)
    with report_errors():
        from loramux.trainer.config import build_config

        cfg = build_config(config, overrides)
        from loramux.trainer.api import prepare_data, train
        from loramux.trainer.publish import check_options

        check_options(cfg)
        data = prepare_data(cfg)  # before the banner: a data error is the first thing shown
        if dry_run:
            console.print(cfg.to_yaml(), markup=False, highlight=False)
            console.print(f"data ok: {len(data.train)} train / {len(data.eval)} eval "
                          f"{data.kind} examples, {len(data.skipped)} skipped "
                          "(token lengths are checked when the tokenizer loads)")
            console.print(data.eval_note, markup=False, highlight=False)
            return
        from loramux.trainer import distributed
        from loramux.trainer.errors import PublishRefused

        if distributed.needs_launch(cfg):  # re-run in N processes under accelerate launch
            raise typer.Exit(_launch(console, cfg))
        quiet = distributed.launched() and not distributed.is_main()
        if not quiet:
            console.print(f"training [bold]{cfg.out}[/] from {cfg.data} on {cfg.base} "
                          f"({'QLoRA NF4' if cfg.quantize else 'LoRA'}, r={cfg.r})")
            console.print(data.eval_note, markup=False, highlight=False)
        try:
            result = train(cfg, console=console, data=data)
        except PublishRefused as exc:
            if exc.result is not None:
                _print_outcome(console, exc.result)
            raise
        if not quiet:
            _print_outcome(console, result)


def _launch(console: Any, cfg: Any) -> int:
    """Train under ``accelerate launch``; the exit code says what the main process said."""
    from loramux.trainer.distributed import launch

    how = f"--config_file {cfg.accelerate_config}" if cfg.accelerate_config else "DDP"
    console.print(f"launching {cfg.num_processes} processes with accelerate ({how})",
                  markup=False, highlight=False)
    return launch(cfg, sys.stderr)  # the failing rank's exit code: 3 for a refused publish


def _print_outcome(console: Any, result: Any) -> None:
    """The summary table, where the files are, what was published; the verdict is the last line,
    then ``--gate-eval``'s outcome (exit ``exit_code`` when the alias stayed where it was)."""
    from loramux.trainer.report import summary_table

    console.print(summary_table(result.report))
    if result.skipped:
        console.print(f"[yellow]skipped {len(result.skipped)} bad records[/] "
                      f"(listed in {result.report_path.name})")
    console.print(f"adapter: {result.adapter_dir}")
    if result.config.keep_checkpoints:
        from loramux.trainer.checkpoints import checkpoint_dir

        console.print(f"checkpoints: {checkpoint_dir(result.adapter_dir)} (--keep-checkpoints)")
    console.print(f"report: {result.report_path}  loss curve: {result.loss_curve_path}  "
                  f"config: {result.config_path}")
    gate = result.report.get("gate") if result.reference else None
    if result.reference:
        moved = result.config.alias and (gate is None or gate["passed"])
        suffix = f" (alias {result.config.alias})" if moved else ""
        console.print(f"published [bold green]{result.reference}[/]{suffix}")
        print(result.reference, file=sys.stderr if console.is_terminal else sys.stdout)
    verdict = result.report.get("verdict") or {}
    from rich.text import Text

    style = "green" if verdict.get("learned") else "yellow"
    console.print(Text(verdict.get("line", ""), style=style))
    if gate is not None and gate["passed"]:
        console.print(Text(gate["line"], style="green"))
    elif gate is not None:  # published, but the alias stays: one line and the gate's code
        typer.echo(f"error: {gate['line']}", err=True)
        raise typer.Exit(gate["exit_code"])


def _standalone() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    add_train_command(app)

    @app.callback()
    def _group() -> None:
        """The trainer's commands on their own (``loramux train`` is the same command)."""

    return app


if __name__ == "__main__":
    _standalone()()
