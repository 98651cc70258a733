"""``python -m loramux.trainer [train] --base ... --data ...``: the ``loramux train`` command.

This is the entry point ``accelerate launch -m loramux.trainer ...`` runs in every process
(``loramux train --num-processes N`` launches it so); on one process it is the same as
``loramux train``.
"""

from __future__ import annotations

import sys

import typer

from loramux.trainer.cli import HELP_TRAIN, PlainHelp, train_command


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "train":  # `loramux train`'s spelling works too
        del sys.argv[1]
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    app.command(help=HELP_TRAIN, cls=PlainHelp)(train_command)
    app(prog_name="python -m loramux.trainer")


if __name__ == "__main__":
    main()
