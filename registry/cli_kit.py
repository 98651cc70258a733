"""The plumbing of ``loramux registry``: its group (errors and push's warnings as one line each),
its ``--registry``/``--token`` (before or after a verb), and :func:`verb`, which hands a
command the opened registry. The verbs themselves live in ``registry/cli.py`` (and, mounted by
``loramux/cli.py``, in ``release/cli.py`` and ``loramux/hub/cli.py``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Annotated, Any

import click
import typer

from loramux import registry as reg
from loramux.cli_errors import ErrorLines
from loramux.registry import render
from loramux.wire import ENV_REGISTRY, ENV_TOKEN

REGISTRY_HELP = f"Folder or http(s):// URL (env {ENV_REGISTRY}, else ~/.loramux/registry)."
TOKEN_HELP = f"Bearer token for a remote registry (env {ENV_TOKEN})."


class _Group(ErrorLines):
    """Errors as one line each (:class:`ErrorLines`); push's warnings as lines too."""

    def invoke(self, ctx: click.Context) -> Any:
        warnings = logging.getLogger("loramux.registry.base")  # push's warnings
        handler = _WarningLine(logging.WARNING)
        warnings.addHandler(handler)
        try:
            return super().invoke(ctx)
        finally:
            warnings.removeHandler(handler)


class _WarningLine(logging.Handler):
    """A library warning (e.g. a push without a base fingerprint) as one line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(f"warning: {record.getMessage()}", err=True)


app = typer.Typer(
    name="registry",
    cls=_Group,
    no_args_is_help=True,
    help="Versioned store of LoRA adapters (a local folder or a registry server).",
)

# Every verb takes these too, so that they may follow it (``push DIR --registry PATH``); there
# they win over the group's (and the environment's).
Location = Annotated[str | None, typer.Option("--registry", metavar="PATH|URL", help=REGISTRY_HELP)]
Token = Annotated[str | None, typer.Option("--token", help=TOKEN_HELP)]


class _State:
    """The group's ``--registry`` and ``--token``; a verb's own (given after it) win."""

    def __init__(self, location: str, token: str | None) -> None:
        self.location = location
        self.token = token
        self.registry: reg.Registry | None = None

    def open(self, location: str | None, token: str | None, *, create: bool) -> reg.Registry:
        if self.registry is None:
            self.registry = reg.open(location or self.location, token=token or self.token,
                                     create=create)
        return self.registry


@app.callback()
def main(
    ctx: typer.Context,
    registry: str | None = typer.Option(None, "--registry", envvar=ENV_REGISTRY,
                                        metavar="PATH|URL", help=REGISTRY_HELP),
    token: str | None = typer.Option(None, "--token", envvar=ENV_TOKEN, help=TOKEN_HELP),
) -> None:
    state = _State(registry or reg.default_location(), token)
    ctx.obj = state
    ctx.call_on_close(lambda: state.registry.close() if state.registry else None)


def verb(name: str | None = None, *, group: typer.Typer | None = app,
         create: bool = False) -> Any:
    """Register a verb that receives the opened registry as its first argument.

    The command gets ``--registry`` and ``--token`` of its own, so that they may follow the
    verb; only ``push`` may create a registry (a typo must not make an empty store). With
    ``group`` None the command is returned unregistered, for a mount point to add to this group
    (release management's verbs: ``loramux/cli.py``).
    """

    def decorate(fn: Callable[..., Any]) -> Any:
        def command(ctx: typer.Context, registry: Location = None, token: Token = None,
                    **options: Any) -> Any:
            state = ctx.find_object(_State)
            assert state is not None
            return fn(state.open(registry, token, create=create), **options)

        ctx, *shared = list(inspect.signature(command, eval_str=True).parameters.values())[:3]
        own = list(inspect.signature(fn, eval_str=True).parameters.values())[1:]
        command.__signature__ = inspect.Signature([ctx, *own, *shared])  # type: ignore[attr-defined]
        command.__doc__, command.__name__ = fn.__doc__, fn.__name__
        return command if group is None else group.command(name)(command)

    return decorate


def emit_json(data: Any) -> None:
    typer.echo(render.as_json(data))
