"""`loramux serve`: the OpenAI-compatible server, base loaded once, adapters per request.

Its flags are generated from `ServerSettings`' fields (name, type, default, help), so a new
setting is a new flag and a new `LORAMUX_<FIELD>` variable with no second list to keep in step.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

import typer

from loramux.cli_errors import exit_with
from loramux.errors import LoramuxError
from loramux.server.settings import ServerSettings, flag_name


def _flag_type(annotation: Any) -> Any:
    """The type typer parses a flag as: `X | None` → X (None stays "not given"), no metadata."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _flag_type(inner)
    if origin is typing.Annotated:
        return typing.get_args(annotation)[0]
    return annotation


def _parameters() -> list[inspect.Parameter]:
    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]
    for name, info in ServerSettings.model_fields.items():
        required = info.is_required()
        default = ... if required else info.get_default(call_default_factory=True)
        kind = _flag_type(info.annotation)
        option = typer.Option(default, flag_name(name), help=info.description,
                              show_default=default not in (None, [], ...),
                              metavar="<str>" if kind == list[str] else
                              ("" if kind is bool else None))  # a switch takes no value
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=kind))
    return params


def serve_command(ctx: typer.Context, **values: Any) -> None:
    """Serve the base model and every registry adapter through one OpenAI-compatible API.

    Every flag can also be set in the environment as LORAMUX_<FLAG> (e.g. LORAMUX_REGISTRY,
    LORAMUX_API_KEYS); a flag given on the command line wins. Without --api-keys the server is
    open, so it listens on loopback only unless --insecure-no-auth is given.
    """
    import asyncio

    import uvicorn

    from loramux.server.app import create_app
    from loramux.server.logs import configure_logging
    from loramux.server.runtime import Runtime
    from loramux.web.serving import uvicorn_config

    # Only flags typed on the command line beat the environment (typer vendors its own click,
    # so the source is compared by name).
    given = {name: value for name, value in values.items()
             if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"}
    try:
        settings = ServerSettings.from_sources(given)
        configure_logging(settings.log_level)
        runtime = Runtime(settings)  # reads the keys file first: a bad one fails in a second
    except LoramuxError as exc:  # one line and the class's exit code, as the other commands do
        exit_with(exc)
    app = create_app(runtime)  # its lifespan pins adapters at start and closes the engine at exit
    config = uvicorn_config(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level, limits=settings.connection_limits(),
                            timeout_graceful_shutdown=5, log_config=None)
    asyncio.run(uvicorn.Server(config).serve())


serve_command.__signature__ = inspect.Signature(_parameters())  # type: ignore[attr-defined]
serve_command.__annotations__ = {}

if __name__ == "__main__":
    typer.run(serve_command)
