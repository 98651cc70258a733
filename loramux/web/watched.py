"""A secrets file (the server's API keys, the registry's tokens) parsed once and re-read when it
changes, for both servers: one behaviour for both files.

Checked on use (a ``stat``, no thread): a change of modification time, size or inode (a
Kubernetes secret swaps a symlink) re-reads it. A change that does not parse is refused: the
error is logged once per bad version of the file, with its ``file:line``, and the previous
secrets stay in force, so a typo never locks everyone out or lets anyone in.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from loramux.errors import LoramuxError

T = TypeVar("T")
# The rules both files share: a secret shorter than this is refused (guessable); `#` starts a
# comment at the start of a line or after whitespace, so a `#` inside a secret is an error
# rather than a cut that would drop the rest of the line (its scope).
MIN_SECRET_CHARS = 10
COMMENT_RE = re.compile(r"(^|\s)#.*$")
Stamp = tuple[int, int, int]
log = logging.getLogger(__name__)


def stamp(path: Path) -> Stamp:
    """What changes when the file is edited or replaced; a missing file has its own stamp, so
    its absence is logged once too."""
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class WatchedFile(Generic[T]):
    """``parse(text, previous)`` of the file at ``path``, kept current by :meth:`current`.

    ``parse`` raises ``error`` (with ``file:line``) on bad text; ``read`` raises it too for an
    unreadable file. The first read raises, so a server does not start on a bad file."""

    def __init__(self, path: Path, parse: Callable[[str, T | None], T], *,
                 error: type[LoramuxError], what: str) -> None:
        self.path = path
        self._parse = parse
        self._error = error
        self._what = what
        self._stamp: Stamp | None = stamp(path)
        self._bad: Stamp | None = None
        self._value: T = parse(self.read(), None)

    def read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise self._error(f"{self.path} is not UTF-8 text: {exc}") from None
        except OSError as exc:
            raise self._error(f"cannot read {self._what} file {self.path}: "
                              f"{exc.strerror or exc}") from None

    def current(self) -> T:
        now = stamp(self.path)
        if now in (self._stamp, self._bad):
            return self._value
        try:
            value = self._parse(self.read(), self._value)
        except self._error as exc:
            self._bad = now
            log.error("%s file %s not reloaded, the previous ones stay in force: %s",
                      self._what, self.path, exc)
            return self._value
        self._value, self._stamp, self._bad = value, now, None
        log.info("%s reloaded from %s", self._what, self.path)
        return value
