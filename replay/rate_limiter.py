"""Rate limiting between rollout actors (inserts) and the learner (samples), after Reverb.

Reverb's `SampleToInsertRatio(samples_per_insert, min_size_to_sample, error_buffer)` keeps

    diff = inserted * SPI - sampled                       (counted in transitions)

inside [offset - error_buffer, offset + error_buffer] with offset = SPI * min_size_to_sample:
an insert of n waits while `diff + n * SPI` would exceed the upper bound (actors ran ahead of
the learner), a sample of m waits while `diff - m` would fall below the lower bound (the
learner ran ahead), and inserts are free until the table holds its minimum size.

Choices made here, where Reverb's single-table rule does not fit a per-task table:

- The minimum size is per task (every task holds `replay.learning_starts`). Inserts stay free
  until the last task reaches it: blocking all inserts earlier (as a total-size rule would once
  fast tasks overshoot) could keep a slow task from ever filling, a deadlock.
- The offset is SPI times the inserts counted when sampling became possible (Reverb's
  SPI * min_size_to_sample, with the size the table actually had then), so a burst of early
  inserts from fast tasks is not paid back by a burst of samples.
- `samples_per_insert=None` means no ratio: only the minimum size gates samples.

Deadlock: with inserts of at most n and samples of m, some side can always move iff every diff
in [-tol, tol] (relative to the offset) satisfies diff + n*SPI <= tol or diff - m >= -tol, that
is iff 2*tol >= n*SPI + m. `min_tolerance` is that bound; `check_rate_limit` enforces it.
"""
from __future__ import annotations

import math


def min_tolerance(samples_per_insert: float, insert_chunk: int, sample_batch: int) -> float:
    """Smallest error buffer with which an insert of `insert_chunk` or a sample of
    `sample_batch` transitions can always proceed: (n * SPI + m) / 2."""
    return (insert_chunk * samples_per_insert + sample_batch) / 2.0


def check_rate_limit(samples_per_insert: float | None, tolerance: float, insert_chunk: int,
                     sample_batch: int) -> None:
    """Raise ValueError naming the config field when these settings can deadlock."""
    if insert_chunk < 1 or sample_batch < 1:
        raise ValueError(f"rate limit: insert chunk ({insert_chunk}) and sample batch "
                         f"({sample_batch}) must hold at least one transition")
    if samples_per_insert is None:
        return
    if not (math.isfinite(samples_per_insert) and samples_per_insert > 0):
        raise ValueError(f"replay.samples_per_insert: must be a finite number > 0, got {samples_per_insert}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"replay.tolerance: must be a finite number >= 0, got {tolerance}")
    needed = min_tolerance(samples_per_insert, insert_chunk, sample_batch)
    if tolerance < needed:
        raise ValueError(
            f"replay.tolerance: {tolerance:g} can deadlock with replay.samples_per_insert="
            f"{samples_per_insert:g}, inserts of {insert_chunk} and samples of {sample_batch} "
            f"transitions; it must be at least (insert * samples_per_insert + sample) / 2 = "
            f"{needed:g} (or 0 to pick that), or lower replay.samples_per_insert")


class SampleToInsertRatio:
    """Reverb's SampleToInsertRatio on transition counts (see the module docstring).

    `tolerance` 0 picks `min_tolerance(...)`. With a ratio, inserts larger than `max_insert` or
    samples larger than `max_sample` are refused with ValueError: the deadlock check was made
    for those sizes.
    The caller asks `can_insert` / `can_sample`, then records what it did with `insert` /
    `sample`, and calls `reach_min_size` once the table first holds its minimum size.
    """

    def __init__(self, samples_per_insert: float | None, tolerance: float, max_insert: int,
                 max_sample: int):
        if samples_per_insert is not None and tolerance == 0:
            tolerance = min_tolerance(samples_per_insert, max_insert, max_sample)
        check_rate_limit(samples_per_insert, tolerance, max_insert, max_sample)
        self.samples_per_insert = samples_per_insert
        self.tolerance = float(tolerance)
        self.max_insert = max_insert
        self.max_sample = max_sample
        self.inserted = 0
        self.sampled = 0
        self.inserted_at_min_size: int | None = None  # None: the minimum size is not reached yet

    @property
    def min_size_reached(self) -> bool:
        return self.inserted_at_min_size is not None

    def reach_min_size(self) -> None:
        if self.inserted_at_min_size is None:
            self.inserted_at_min_size = self.inserted

    def diff(self) -> float:
        """inserted * SPI - sampled, relative to the offset; 0 before the minimum size."""
        if self.samples_per_insert is None or self.inserted_at_min_size is None:
            return 0.0
        return (self.inserted - self.inserted_at_min_size) * self.samples_per_insert - self.sampled

    def observed_ratio(self) -> float:
        """Sampled transitions per transition inserted since sampling became possible."""
        if self.inserted_at_min_size is None:
            return 0.0
        return self.sampled / max(self.inserted - self.inserted_at_min_size, 1)

    def can_insert(self, n: int) -> bool:
        if self.samples_per_insert is not None and n > self.max_insert:
            raise ValueError(f"insert of {n} transitions exceeds the {self.max_insert} the rate "
                             f"limiter was sized for (actors.unroll_length * env.envs_per_actor per task)")
        if self.samples_per_insert is None or self.inserted_at_min_size is None:
            return True
        return self.diff() + n * self.samples_per_insert <= self.tolerance

    def can_sample(self, m: int) -> bool:
        if self.samples_per_insert is not None and m > self.max_sample:
            raise ValueError(f"sample of {m} transitions exceeds the {self.max_sample} the rate "
                             f"limiter was sized for (learner.sac.batch_per_task per task)")
        if self.inserted_at_min_size is None:
            return False
        if self.samples_per_insert is None:
            return True
        return self.diff() - m >= -self.tolerance

    def insert(self, n: int) -> None:
        self.inserted += n

    def sample(self, m: int) -> None:
        self.sampled += m
