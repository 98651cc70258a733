"""Errors from importing a base model: one readable line each, before anything is written.

Every class but ``ConversionFailed`` is the user's to fix (a wrong file, a folder in the way, a
package not installed), so it maps to exit code 2 like a usage error.
"""

from __future__ import annotations

from typing import ClassVar

from loramux.errors import LoramuxError


class BaseImportError(LoramuxError):
    """Base class; the CLI prints ``error: <message>`` and exits with ``exit_code``."""

    status: ClassVar[int] = 400
    exit_code: ClassVar[int] = 2


class NotGGUF(BaseImportError):
    """The file is missing, unreadable, or not a GGUF file."""


class UnsupportedArchitecture(BaseImportError):
    """A GGUF whose architecture loramux has not converted and served end to end."""


class DestinationInUse(BaseImportError):
    """The output folder holds something other than an earlier import of the same file."""

    status: ClassVar[int] = 409


class PackagedBaseMissing(BaseImportError):
    """The package that ships the real base model is not installed."""

    status: ClassVar[int] = 404


class ConversionFailed(BaseImportError):
    """The converted folder did not reproduce the GGUF model; nothing was written."""

    status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1


class ImportInterrupted(BaseImportError):
    """Stopped by the user; the output folder was left as it was."""

    exit_code: ClassVar[int] = 130
