"""The one place metrics go: the run directory (CSV and TensorBoard) and Ray's metrics
(`ray.util.metrics`, shown in the Ray dashboard's Metrics view and exported to Prometheus).

Keys are slash-separated (`loss/main/pg`, `return/breakout`); in Ray's metrics each quantity is
one metric with labels (`accord_loss{role="main",term="pg"}`, `accord_return{task="breakout"}`),
see accord/metric_names.py.

Every CSV row carries `wall_time`: seconds since the run started, continued across `--resume`
from the last row already in the file, so curves of several sessions join up on one axis
(the time between sessions, while no process ran, is not counted).
TensorBoard events keep their own wall clock and Ray gauges are live, so neither gets it.
"""
from __future__ import annotations

import csv
import math
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Callable

import numpy as np

from accord.metric_names import RayMetric, describe, ray_metric

WALL_TIME = "wall_time"


class EpisodeTracker:
    """Per-task recent episode returns (raw scores), lengths and successes.

    Episodes arrive as rows (task_id, raw score, length, success) where success is NaN for
    envs that have no notion of it (Atari, most gymnasium envs)."""

    def __init__(self, task_names: list[str], window: int = 100):
        self.task_names = task_names
        self.scores = {name: deque(maxlen=window) for name in task_names}
        self.lengths = {name: deque(maxlen=window) for name in task_names}
        self.successes = {name: deque(maxlen=window) for name in task_names}
        self.count = defaultdict(int)

    def add(self, episodes) -> None:
        for task_id, score, length, success in episodes:
            name = self.task_names[int(task_id)]
            self.scores[name].append(float(score))
            self.lengths[name].append(float(length))
            if not np.isnan(success):
                self.successes[name].append(float(success))
            self.count[name] += 1

    def mean_return(self, name: str, min_episodes: int = 1) -> float | None:
        """Mean raw score over the window; None until `min_episodes` have finished."""
        if len(self.scores[name]) < max(min_episodes, 1):
            return None
        return float(np.mean(self.scores[name]))

    def metrics(self) -> dict[str, float]:
        out = {}
        for name in self.task_names:
            if self.scores[name]:
                out[f"return/{name}"] = float(np.mean(self.scores[name]))
                out[f"episode_length/{name}"] = float(np.mean(self.lengths[name]))
            if self.successes[name]:
                out[f"success/{name}"] = float(np.mean(self.successes[name]))
            out[f"episodes/{name}"] = float(self.count[name])
        return out


class MetricsSink:
    """Writes rows of scalar metrics to metrics.csv, TensorBoard and Ray gauges."""

    def __init__(self, run_dir: str | Path, use_ray: bool = True, tensorboard: bool = True,
                 clock: Callable[[], float] = time.monotonic, task: str = "", run: str = ""):
        """`task`: a single-task run's task, the task label of keys that name none. `run`: the
        run's id (its directory's name), a `run` label on every Ray metric, so the series of
        two jobs on one cluster stay apart in Prometheus and Grafana."""
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / "metrics.csv"
        self._columns: list[str] = []
        self._rows: list[dict] = []
        if self.csv_path.exists():  # a resumed run appends to its own history
            with open(self.csv_path, newline="") as fh:
                reader = csv.DictReader(fh)
                self._columns = list(reader.fieldnames or [])
                self._rows = list(reader)
        self._clock = clock
        self._started = clock()
        self._wall_offset = self._last_wall_time()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        self._use_ray = use_ray
        self._task = task
        self._run = run
        self._gauges: dict = {}  # metric name -> Ray Gauge
        self._metric_of: dict[str, RayMetric] = {}  # key -> its metric name and labels

    def _last_wall_time(self) -> float:
        """The wall time the previous session ended at (0 for a new run, or for a CSV written
        before the column existed); a resumed run's clock continues from there."""
        for old in reversed(self._rows):
            cell = old.get(WALL_TIME) or ""
            if cell:
                value = float(cell)
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f"{self.csv_path}: bad {WALL_TIME} {cell!r} in the last row")
                return value
        return 0.0

    def last_value(self, key: str) -> float | None:
        """The newest value of `key` already in metrics.csv (a resumed run's history), if any."""
        for old in reversed(self._rows):
            cell = old.get(key)
            if cell not in (None, ""):
                return float(cell)
        return None

    def wall_time(self) -> float:
        """Seconds since the run started, counting earlier sessions of a resumed run."""
        return self._wall_offset + (self._clock() - self._started)

    def write(self, step: int, row: dict[str, float]) -> None:
        if WALL_TIME in row:
            raise ValueError(f"{WALL_TIME!r} is written by the sink itself; drop it from the row")
        row = {"step": step, WALL_TIME: self.wall_time(), **{k: float(v) for k, v in row.items()}}
        new = [k for k in row if k not in self._columns]
        self._rows.append(row)
        if new:
            # A new column (a task's first episode, say): rewrite once with the wider header.
            self._columns += new
            self._rewrite()
        else:
            with open(self.csv_path, "a", newline="") as fh:
                csv.DictWriter(fh, self._columns).writerow(row)
        if self._tb is not None:
            for key, value in row.items():
                if key not in ("step", WALL_TIME):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._use_ray:
            self._to_ray(row)

    def _rewrite(self) -> None:
        tmp = self.csv_path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, self._columns)
            writer.writeheader()
            writer.writerows(self._rows)
        tmp.replace(self.csv_path)

    def _to_ray(self, row: dict) -> None:
        from ray.util.metrics import Gauge

        for key, value in row.items():
            if key in ("step", WALL_TIME):
                continue
            metric = self._metric_of.get(key)
            if metric is None:
                metric = ray_metric(key, self._task)
                if self._run:
                    metric = RayMetric(metric.name, (("run", self._run), *metric.labels))
                self._metric_of[key] = metric
            gauge = self._gauges.get(metric.name)
            if gauge is None:
                gauge = self._gauges[metric.name] = Gauge(
                    metric.name, description=describe(metric.name), tag_keys=metric.label_names)
            gauge.set(value, tags=metric.tags)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
