"""``loramux base …``: import a GGUF checkpoint as a transformers folder; the packaged real base.

Slow steps show one status line on stderr; ``loramux base real`` prints only the folder on stdout,
so ``$(loramux base real)`` works in scripts. Errors go through the trainer's ``report_errors``
(one ``error: …`` line and the error's exit code), as every other loramux command does.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console

from loramux.trainer.cli import report_errors

app = typer.Typer(help="Real pretrained base models: GGUF files as transformers folders.",
                  no_args_is_help=True)
status_console = Console(stderr=True)


class DType(StrEnum):
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


def _status(action: str) -> tuple[AbstractContextManager, Callable[[str], None]]:
    """A rich status line and the progress callback that updates it."""
    status = status_console.status(action)

    def progress(step: str) -> None:
        status.update(f"{action}: {step}")

    return status, progress


@app.command("import")
def import_command(
    gguf_file: Path = typer.Argument(..., metavar="FILE.gguf", help="The GGUF checkpoint."),
    out: Path = typer.Option(..., "--out", metavar="DIR",
                             help="Folder to write (created; must not hold "
                             "anything but an earlier import of the same file)."),
    dtype: DType = typer.Option(DType.bfloat16, "--dtype", help="Weight dtype in the folder."),
    force: bool = typer.Option(False, "--force", help="Replace whatever DIR holds."),
) -> None:
    """Convert a GGUF file into safetensors, tokenizer, chat template and generation config."""
    from loramux.bases.convert import import_gguf
    from loramux.bases.errors import ImportInterrupted

    with report_errors():
        status, progress = _status(f"importing {gguf_file.name}")
        try:
            with status:
                result = import_gguf(gguf_file, out, dtype=dtype.value, force=force,
                                     progress=progress)
        except KeyboardInterrupt:
            raise ImportInterrupted(f"interrupted; {out} was left as it was") from None
    record = result.provenance
    if result.already_current:
        typer.echo(f"{out} is already an import of {gguf_file.name} "
                   f"(sha256 {record.source.sha256[:12]}, {record.dtype}); nothing to do")
        return
    ends = ", ".join(f"{i} {t}" for i, t in zip(record.eos_token_ids, record.eos_tokens,
                                                  strict=True))
    typer.echo(f"imported {gguf_file.name} into {out} in {record.seconds:.1f}s: "
               f"{record.source.architecture}, {record.parameters:,} parameters, {record.dtype}, "
               f"tied embeddings {'yes' if record.tie_word_embeddings else 'no'}, "
               f"end ids {ends or 'none'}")


@app.command("real")
def real_command(
    out: Path | None = typer.Option(None, "--out", help="Folder for the converted model.",
                                    show_default="the project's .cache/real-base"),
) -> None:
    """Print the folder of the packaged real base (SmolLM2-135M-Instruct), converting it once."""
    from loramux.bases.errors import ImportInterrupted
    from loramux.bases.packaged import real_base

    with report_errors():
        status, progress = _status("converting the packaged SmolLM2-135M-Instruct")
        try:
            with status:
                folder = real_base(out, progress=progress)
        except KeyboardInterrupt:
            raise ImportInterrupted("interrupted; nothing was replaced") from None
    typer.echo(str(folder))
