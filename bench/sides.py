"""The servers of a run as sides (process, start figures, failure) and the run's progress lines."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loramux.bench import servers


class Reporter:
    """Progress lines (with elapsed time) and spinners for long waits."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.started = time.monotonic()
        # Seconds by phase, for the report's "where the run's time went" (the bench's own
        # length is a figure people plan around; most of it is the slower peer's trials).
        self.spent: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, phase: str, seconds: float) -> None:
        with self._lock:  # part 5 may run in a background thread in quick mode
            self.spent[phase] = self.spent.get(phase, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the block's wall time towards `name`."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - started)

    def line(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        self.console.print(f"[dim]{elapsed:7.1f}s[/dim] {message}", highlight=False)

    @contextmanager
    def status(self, message: str) -> Iterator[None]:
        self.line(message)
        with self.console.status(message):
            yield

    def progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=self.console, transient=True)


def rounded(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


class Side:
    """One server in the run: its process, its start figures, its failure if any."""

    def __init__(self, name: str, server: Any) -> None:
        self.name, self.server = name, server
        self.error: str | None = None
        self.startup_s: float | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def up(self) -> bool:
        return self.error is None and self.startup_s is not None

    def start(self) -> None:
        try:
            self.server.start()
            self.startup_s = self.server.startup_seconds
        except Exception as exc:  # reported, never raised: the other side still runs
            self.error = f"{self.name} did not start: {str(exc)[-1500:]}"
        except BaseException:  # interrupted while waiting: leave no server behind
            self.server.stop()
            raise

    def stop(self) -> None:
        self.server.stop()

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"startup_s": rounded(self.startup_s), "error": self.error,
                               "log": str(self.server.log)}
        if self.name == "loramux":
            out["engine_s"] = servers.engine_seconds(self.server.log)
        return out


def start(sides: list[Side], parallel: bool, rep: Reporter) -> None:
    names = ", ".join(s.name for s in sides)
    together = " (in parallel)" if parallel and len(sides) > 1 else ""
    with rep.phase("server starts"), rep.status(f"starting {names}{together}"):
        if parallel:
            threads = [threading.Thread(target=s.start) for s in sides]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for s in sides:
                s.start()
    for s in sides:
        if s.error:
            rep.line(f"[red]{s.error.splitlines()[0]}[/red] (log: {s.server.log})")
        else:
            rep.line(f"{s.name} ready in {s.startup_s:.1f}s")
