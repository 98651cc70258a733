"""Reading the adapter folder a push starts from: regular files inside it, nothing else.

A symlink would store some other file's bytes (``~/.ssh/id_rsa`` under ``adapter_config.json``'s
neighbour), and opening a FIFO or a device blocks or never ends, so both are refused by name
while the folder is scanned. Files are opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked once
more on the open descriptor, so one swapped in after the scan is refused too instead of hanging.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from loramux.registry.errors import InvalidAdapter


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _refuse(path: Path, kind: str) -> InvalidAdapter:
    return InvalidAdapter(f"{path} is {kind}: an adapter folder may hold regular files only "
                          "(copy the real file in place of a link)")


def check_entry(path: Path, *, folder: bool = False) -> None:
    """Refuse ``path`` unless it is a regular file (a real folder, with ``folder``); it is
    looked at itself (lstat), never through a link."""
    mode = os.lstat(path).st_mode
    if folder and stat.S_ISDIR(mode):
        return
    if (kind := _kind(mode)) is not None:
        raise _refuse(path, kind)


def open_regular(path: Path | str) -> int:
    """A read-only descriptor of the regular file ``path`` (not a link, FIFO or device)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if os.path.islink(path):
            raise _refuse(Path(path), "a symlink") from None
        raise InvalidAdapter(f"cannot read {path}: {exc.strerror}") from None
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise _refuse(Path(path), kind)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
