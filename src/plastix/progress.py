"""The progress display of ``plastix train``: a rich bar on a terminal, plain periodic lines otherwise.

Piped into a file or a log (``plastix train ... | tee log``, the sweep runner's logs), a bar is redrawn at a
fixed width and its columns get cut (``1638… steps``); there each report is one full line instead, at most
every ``every_s`` seconds, and always the last.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, TextIO


def _duration(seconds: float) -> str:
    """``3725`` -> ``1:02:05``; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class TrainProgress:
    """Progress of a run over env steps per seed, with steps/s and the latest return; silent if ``quiet``.

    Args:
      title: what is trained (``"HalfCheetah-v4 seeds 0,1"``).
      total_steps, done_steps: env steps per seed of the whole run and already done (a resumed run).
      quiet: print nothing.
      stream: where to write (default: ``sys.stdout`` when entered); a bar only if it is a terminal.
      every_s: plain lines: the least seconds between two lines.
      clock: seconds, for the lines' ETA and spacing (tests pass a fake one).
      unit: env steps per seed in one unit of ``advance`` (the trainer advances in updates: the batch).
    """

    def __init__(self, title: str, total_steps: int, done_steps: int = 0, quiet: bool = False,
                 stream: TextIO | None = None, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 unit: int = 1):
        self.title, self.total, self.done, self.quiet, self.unit = title, total_steps, done_steps, quiet, unit
        self.stream, self.every_s, self.clock = stream, every_s, clock
        self.bar = None

    def __enter__(self):
        if self.quiet:
            return self
        self.stream = self.stream or sys.stdout
        self.start_time, self.start_steps, self.last_line = self.clock(), self.done, -math.inf
        if self.stream.isatty():
            self._start_bar()
        return self

    def _start_bar(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps  {task.fields[sps]:>8.0f} steps/s  return {task.fields[ret]:>9.1f}"),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
        )
        self.bar.start()
        self.task = self.bar.add_task(self.title, total=self.total, completed=self.done, sps=0.0, ret=float("nan"))

    def advance(self, done_units: int, sps: float, ret: float) -> None:
        """``done_units`` x ``unit`` env steps per seed are done; ``sps``: env steps per second of the process."""
        self.done = done_steps = done_units * self.unit
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=done_steps, sps=sps, ret=ret)
            return
        now = self.clock()
        if now - self.last_line >= self.every_s or done_steps >= self.total:
            self.last_line = now
            print(self.line(sps, ret, now), file=self.stream, flush=True)

    def line(self, sps: float, ret: float, now: float) -> str:
        """One plain report: ``title: 16,384/1,000,000 steps (1.6%)  2,345 steps/s  return -12.3  ETA 0:05:10``
        (the ETA from the per-seed steps made since this display started)."""
        rate = (self.done - self.start_steps) / max(now - self.start_time, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        return (f"{self.title}: {self.done:,}/{self.total:,} steps ({100 * self.done / max(self.total, 1):.1f}%)  "
                f"{sps:,.0f} steps/s  return {ret:.1f}  ETA {_duration(eta)}")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
