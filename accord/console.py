"""Console output: a live progress bar on a terminal, one line per log tick elsewhere
(`ray job logs`, CI, files)."""
from __future__ import annotations

import sys

from rich.console import Console as RichConsole
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class Console:
    def __init__(self, enabled: bool = True):
        tty = sys.stdout.isatty()
        # Off a terminal, lines stay whole so paths and commands can be copied from the log.
        self.rich = RichConsole(stderr=False, soft_wrap=not tty)
        self.live = enabled and tty
        self.enabled = enabled
        self._progress = None
        self._task = None

    def start(self, total: int, completed: int) -> None:
        if not self.live:
            return
        self._progress = Progress(
            TextColumn("[bold]frames"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
            TimeElapsedColumn(), TextColumn("{task.description}"), console=self.rich, transient=False)
        self._task = self._progress.add_task("", total=total, completed=completed)
        self._progress.start()

    def update(self, completed: int, summary: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, description=summary)
        elif self.enabled:
            self.log(f"frames {completed:,} | {summary}")

    def log(self, message: str) -> None:
        try:
            if self._progress is not None:
                self._progress.console.log(message)
            else:
                self.rich.print(message, highlight=False)
        except OSError:
            # A closed stdout (`accord train | tee` after Ctrl-C) must not cost the checkpoint;
            # the run directory keeps every metric anyway.
            self.enabled, self._progress = False, None

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
