"""Training-time callbacks: a progress bar (step, loss, tokens/s) and resource tracking."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

from transformers import TrainerCallback


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class Meter(TrainerCallback):
    """Wall time and tokens of this session (a resumed run counts from where it resumed)."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.ended: float | None = None
        self.tokens_at_start = 0
        self.tokens_at_end = 0
        self.step_at_start = 0
        self.last_loss: float | None = None
        self.last_eval_loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        self.tokens_at_start = state.num_input_tokens_seen
        self.step_at_start = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        self.tokens_at_end = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.last_loss = float(logs["loss"])
        if "eval_loss" in logs:
            self.last_eval_loss = float(logs["eval_loss"])

    def on_train_end(self, args, state, control, **kwargs):
        self.ended = time.perf_counter()
        self.tokens_at_end = state.num_input_tokens_seen

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended or time.perf_counter()) - self.started

    @property
    def tokens(self) -> int:
        return max(0, self.tokens_at_end - self.tokens_at_start)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class RichProgress(TrainerCallback):
    """One bar: step/total, loss, eval loss, tokens/s, elapsed and remaining time."""

    def __init__(self, meter: Meter, console: Any = None, enabled: bool = True) -> None:
        self.meter = meter
        self.console = console
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("eval {task.fields[eval]}"),
            TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps,
                                           completed=state.global_step, loss="-", eval="-",
                                           tps="-")

    def _refresh(self, state) -> None:
        if self.progress is None:
            return
        loss = self.meter.last_loss
        evl = self.meter.last_eval_loss
        elapsed = self.meter.seconds
        tokens = state.num_input_tokens_seen - self.meter.tokens_at_start
        self.progress.update(
            self.task, completed=state.global_step,
            loss=f"{loss:.3f}" if loss is not None else "-",
            eval=f"{evl:.3f}" if evl is not None else "-",
            tps=f"{tokens / elapsed:,.0f}" if elapsed > 0 else "-",
        )

    def on_step_end(self, args, state, control, **kwargs):
        self._refresh(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._refresh(state)

    def on_train_end(self, args, state, control, **kwargs):
        self.close(state)

    def close(self, state=None) -> None:
        if self.progress is not None:
            if state is not None:
                self._refresh(state)
            self.progress.stop()
            self.progress = None
