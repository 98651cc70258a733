"""Release errors: what deciding on the serving stack can fail with, beside the registry's own.

Under :class:`loramux.errors.LoramuxError`, so the CLI reports them as every other part's (one
line, the class's exit code). Bad input (an eval file, a scorer, a threshold) is the registry's
``InvalidRequest`` (exit 5), as before release management had its own part; a gate that failed is
the registry's ``GateFailed`` (exit 10): the registry raises it too, when a promotion cites a
failed evaluation.
"""

from __future__ import annotations

from typing import ClassVar

from loramux.errors import LoramuxError


class ReleaseError(LoramuxError):
    """Base of the errors release management raises on purpose."""


class EvalError(ReleaseError):
    """The serving stack could not run the eval set (unreachable, refused, or answered with
    another adapter than the registry names)."""

    status: ClassVar[int] = 502
    exit_code: ClassVar[int] = 11
