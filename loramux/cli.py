"""The `loramux` console script: the one mount point of every part's commands.

Each part's commands live beside its code; this module only mounts them, so `loramux registry …`
never imports torch or vLLM. Release management's commands keep the names they always had:
`loramux registry promote` and `loramux registry rollout status` join the registry's verbs, and
`loramux rollout watch` is its own group. Every LoramuxError, from any of them, ends as one
`error: …` line and the exit code of its class (`loramux.cli_errors.ErrorLines`).
"""

from __future__ import annotations

import typer

from loramux import __version__
from loramux.bases.cli import app as base_app
from loramux.bench.cli import app as bench_app
from loramux.cli_errors import ErrorLines
from loramux.demo.cli import app as demo_app
from loramux.hub import cli as hub_cli
from loramux.registry.cli import app as registry_app
from loramux.release import cli as release_cli
from loramux.server.cli import serve_command
from loramux.trainer.cli import add_train_command

app = typer.Typer(
    cls=ErrorLines,
    help="loramux: one quantized base model, many LoRA adapters, one OpenAI-compatible server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
registry_app.command("promote")(release_cli.promote_command)
registry_app.add_typer(release_cli.status_app, name="rollout")
registry_app.command("import")(hub_cli.import_command)
registry_app.command("export")(hub_cli.export_command)
app.add_typer(registry_app, name="registry", help="Versioned, content-addressed adapter store.")
app.add_typer(demo_app, name="demo")
app.add_typer(base_app, name="base", help="Real base models: import a GGUF file as a "
              "transformers folder; the packaged SmolLM2-135M-Instruct.")
add_train_command(app)
app.add_typer(bench_app, name="bench")
app.add_typer(release_cli.watch_app, name="rollout",
              help="Watch a weighted canary; roll it back.")
app.command("serve", help="OpenAI-compatible server: one base model, adapters per request.")(
    serve_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"loramux {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Train QLoRA adapters, version them in a registry, serve them all from one base model."""


if __name__ == "__main__":
    app()
