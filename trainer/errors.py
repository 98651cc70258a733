"""Errors the trainer reports to people: one readable line each, raised before training starts."""

from __future__ import annotations

from typing import Any, ClassVar

from loramux.errors import LoramuxError


class TrainerError(LoramuxError):
    """Base class; the CLI prints ``error: <message>`` and exits with ``exit_code``.

    Every trainer error is the user's to fix (options, data, model) before training starts, so
    the status an HTTP caller would see is 400 and the exit code 2, like a usage error.
    """

    status: ClassVar[int] = 400
    exit_code: ClassVar[int] = 2


class ConfigError(TrainerError):
    """A bad option: unknown key, wrong type, out of range, or options that contradict."""


class DataError(TrainerError):
    """Bad training or eval data; ``problems`` holds one ``file:line: what`` line each."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        super().__init__(message)

    def __str__(self) -> str:
        message = super().__str__()
        if not self.problems:
            return message
        shown = self.problems[:20]
        more = len(self.problems) - len(shown)
        lines = [message, *(f"  {p}" for p in shown)]
        if more:
            lines.append(f"  ... and {more} more")
        return "\n".join(lines)


class ModelError(TrainerError):
    """The base model cannot be loaded, or does not fit the data (e.g. no chat template)."""


class PublishError(TrainerError):
    """Training finished but the adapter could not be pushed to the registry."""


class TrainingInterrupted(TrainerError):
    """Stopped by the user (Ctrl-C); the last checkpoint can be resumed, nothing was published."""

    exit_code: ClassVar[int] = 130


class PublishRefused(PublishError):
    """``--publish`` without ``--force`` on an adapter no better than the base on the eval set.

    The run finished and the adapter is saved; ``result`` is its TrainResult. Exit code 3 tells
    a script "trained, not published" apart from bad options (2).
    """

    status: ClassVar[int] = 422
    exit_code: ClassVar[int] = 3

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result
