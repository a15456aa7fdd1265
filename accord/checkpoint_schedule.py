"""When the driver writes a checkpoint, and what a checkpoint that cannot be written does.

Two cadences, whichever comes first: every `run.checkpoint_every` updates, and every
`run.checkpoint_every_seconds` of wall time (so slow updates cannot stretch what a SIGKILL, an
OOM kill or a lost node costs). A failed write (CheckpointWriteError: disk full, directory gone,
no permission) leaves the previous checkpoints as they were; it is counted, reported on the
console, retried at the next tick of either cadence, and ends the run only once writes have
failed for `run.checkpoint_failure_tolerance_seconds` without one succeeding.
"""
from __future__ import annotations

from typing import Callable

from learner.checkpoint import CheckpointWriteError


class CheckpointSchedule:
    def __init__(self, run_cfg, save: Callable[[], str], log: Callable[[str], None],
                 updates: int, now: float, newest: str | None = None):
        self.every_updates = run_cfg.checkpoint_every
        self.every_seconds = run_cfg.checkpoint_every_seconds
        self.tolerance = run_cfg.checkpoint_failure_tolerance_seconds
        self._save, self._log = save, log
        self.last_updates, self.last_time = updates, now  # of the last attempt, good or not
        self.failures = 0                       # failed writes in this driver's life
        self.failing_since: float | None = None  # first failure since the last good write
        self.last_error: str | None = None
        self.newest = newest                     # the newest checkpoint on disk

    def due(self, updates: int, now: float) -> bool:
        if updates == self.last_updates:
            return False  # no update since the last attempt: the state on disk is this state
        return (updates - self.last_updates >= self.every_updates
                or now - self.last_time >= self.every_seconds)

    def write(self, updates: int, now: float) -> str | None:
        """Attempt a checkpoint now; its path, or None if it could not be written."""
        self.last_updates, self.last_time = updates, now
        try:
            path = self._save()
        except CheckpointWriteError as exc:
            self.failures += 1
            if self.failing_since is None:
                self.failing_since = now
            self.last_error = str(exc)
            self._log(f"[red]checkpoint failed ({self.failures} so far this run): {exc}; the previous "
                      f"checkpoints are kept (newest: {self.newest or 'none'}); "
                      f"retrying at the next checkpoint tick")
            return None
        if self.failing_since is not None:
            self._log(f"checkpoints are written again ({path}) after {self.failures} failed")
        self.failing_since, self.newest = None, path
        return path

    def rewind(self, updates: int) -> None:
        """The learner went back to a checkpoint at `updates`: count the interval from there."""
        self.last_updates = updates

    def given_up(self, now: float) -> bool:
        """True once writes have kept failing for the tolerated time."""
        return self.failing_since is not None and now - self.failing_since >= self.tolerance

    def metrics(self) -> dict[str, float]:
        return {"checkpoints/failed": float(self.failures)}
