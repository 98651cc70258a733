"""The store's lock on one machine: shared for writers, exclusive for ``gc``.

A shared index (PostgreSQL) brings a lock every server sees (``index.postgres``); without one,
this file lock covers the processes of one machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class StoreLock:
    """flock on ``locks/gc.lock``: shared for writers, exclusive for gc.

    flock belongs to the open file description, so each holder opens its own descriptor; that
    makes it work between threads as well as processes, and the kernel drops it on SIGKILL.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _held(self, mode: int) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def shared(self) -> contextlib.AbstractContextManager[None]:
        return self._held(fcntl.LOCK_SH)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        return self._held(fcntl.LOCK_EX)
