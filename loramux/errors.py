"""The root of every error loramux raises on purpose.

Each part (registry, server, trainer) keeps its own small hierarchy under this one root, and every
class carries the HTTP status and the CLI exit code it maps to, so the HTTP apps and the CLI each
translate errors in one handler and agree. This module imports nothing, so every part may use it.
"""

from __future__ import annotations

from typing import ClassVar


class LoramuxError(Exception):
    """Raised on purpose by loramux; anything else reaching the CLI or an app is a bug."""

    status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
