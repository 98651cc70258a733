"""The one place a LoramuxError becomes what a shell sees: ``error: <message>`` on stderr and the
exit code its class carries, never a traceback (anything else reaching a command is a bug, and
shows as one).

:class:`ErrorLines` is the click group of ``loramux`` itself (``loramux/cli.py``, the mount
point), so every command under it reports this way, and of the groups that also run on their
own (``python -m loramux.registry.cli``, the tests that invoke ``loramux registry`` directly).
Commands mounted as plain functions call :func:`exit_with` when they run alone. It lives apart
from ``cli.py``, which imports every part, so that each part's CLI may use it.
"""

from __future__ import annotations

from typing import Any, NoReturn

import click
import typer
from typer.core import TyperGroup

from loramux.errors import LoramuxError


def exit_with(exc: LoramuxError, *, say: bool = True) -> NoReturn:
    """One line on stderr (unless ``say`` is False: another process says it), then exit with
    the error's code."""
    if say:
        typer.echo(f"error: {exc}", err=True)  # a class may add lines (DataError)
    raise typer.Exit(exc.exit_code) from None


class ErrorLines(TyperGroup):
    """A command group whose commands' LoramuxErrors end as one line and their exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LoramuxError as exc:
            exit_with(exc)
