"""`accord plot`: PNG figures from the metrics.csv of one or more run directories.

Each figure overlays the runs (legend: the run directory's name), one panel per quantity:

    returns_vs_frames.png     return/<task> against frames
    returns_vs_wall_time.png  return/<task> against wall_time (seconds since the run started)
    success.png               success/<task>, eval/success/<task>, eval/success_mean
    losses.png                loss terms (loss/..., without the loss/.../stats/ diagnostics)
    combiner_cosines.png      combiner cosines and gates, per aux term and layer
    combiner_weights.png      OL-AUX weights (combiner/.../w/<term>)
    combiner_conflicts.png    PCGrad conflicts

A figure none of the runs has a quantity for is not drawn. Metrics are sparse (a task's return
appears after its first episode, eval rows every so often), so each line joins only the rows
where that quantity was written.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from accord.errors import UserError


@dataclass(frozen=True)
class Run:
    name: str  # the legend label
    columns: dict[str, np.ndarray]  # float64 per column, NaN where a row left it empty


@dataclass(frozen=True)
class FigureSpec:
    filename: str
    title: str
    x: str
    selects: Callable[[str], bool]


def _combiner(pattern: str) -> Callable[[str], bool]:
    regex = re.compile(pattern)
    return lambda key: key.startswith("combiner/") and regex.search(key[len("combiner/"):]) is not None


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("returns_vs_frames.png", "Episode return", "frames", lambda k: k.startswith("return/")),
    FigureSpec("returns_vs_wall_time.png", "Episode return", "wall_time", lambda k: k.startswith("return/")),
    FigureSpec("success.png", "Success rate", "frames",
               lambda k: k.startswith(("success/", "eval/success/")) or k == "eval/success_mean"),
    FigureSpec("losses.png", "Loss terms", "frames",
               lambda k: k.startswith("loss/") and "/stats/" not in k and not k.startswith("loss/stats/")),
    FigureSpec("combiner_cosines.png", "Combiner cosines and gates", "frames",
               _combiner(r"cos|(^|/)gate(/|$)")),
    FigureSpec("combiner_weights.png", "OL-AUX weights", "frames", _combiner(r"(^|/)(w|weight|weights)/")),
    FigureSpec("combiner_conflicts.png", "PCGrad conflicts", "frames", _combiner(r"conflicts$")),
)


def _cell(text: str | None) -> float:
    return float(text) if text not in (None, "") else math.nan


def load_run(run_dir: str | Path) -> Run:
    """The run's metrics.csv as float columns; `UserError` when there is none or it is not
    numbers."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.csv"
    if not run_dir.is_dir():
        raise UserError(f"no such run directory {run_dir}")
    if not path.is_file():
        raise UserError(f"{run_dir} has no metrics.csv (is it a run directory?)")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    try:
        columns = {f: np.array([_cell(row.get(f)) for row in rows], dtype=np.float64) for f in fields}
    except ValueError as exc:
        raise UserError(f"{path}: a cell is not a number ({exc})") from None
    if "frames" not in columns and "step" in columns:
        columns["frames"] = columns["step"]  # older or partial runs: fall back to the update step
    return Run(run_dir.resolve().name, columns)


def _labels(run_dirs: list[Path]) -> list[str]:
    names = [Path(d).resolve().name for d in run_dirs]
    # Two runs with one directory name (say the same run under two roots) need their full path.
    return [str(Path(d).resolve()) if names.count(n) > 1 else n for d, n in zip(run_dirs, names)]


def build_figures(runs: list[Run]) -> dict[str, "matplotlib.figure.Figure"]:  # noqa: F821
    """filename -> Figure for every spec at least one run has data for; nothing is saved."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    figures = {}
    for spec in FIGURES:
        keys = sorted({k for run in runs for k in run.columns if spec.selects(k)})
        keys = [k for k in keys if any(_points(run, spec.x, k)[0].size for run in runs)]
        if not keys:
            continue
        ncols = min(3, len(keys))
        nrows = math.ceil(len(keys) / ncols)
        fig = Figure(figsize=(5.0 * ncols, 3.4 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, key in zip(axes, keys):
            for run in runs:
                x, y = _points(run, spec.x, key)
                if x.size:
                    ax.plot(x, y, marker="." if x.size < 30 else None, label=run.name)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("wall time (s)" if spec.x == "wall_time" else spec.x)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in axes[len(keys):]:
            ax.set_visible(False)
        fig.suptitle(spec.title)
        figures[spec.filename] = fig
    return figures


def _points(run: Run, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    if x_key not in run.columns or y_key not in run.columns:
        return np.empty(0), np.empty(0)
    x, y = run.columns[x_key], run.columns[y_key]
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def plot_runs(run_dirs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Writes the figures of ``run_dirs`` overlaid into ``out_dir``; returns the PNG paths.
    `UserError`, with nothing written, when a run cannot be read, holds nothing to draw yet,
    or ``out_dir`` cannot be created."""
    if not run_dirs:
        raise UserError("give at least one run directory")
    run_dirs = [Path(d) for d in run_dirs]
    runs = [load_run(d) for d in run_dirs]
    runs = [Run(label, run.columns) for label, run in zip(_labels(run_dirs), runs)]
    figures = build_figures(runs)
    if not figures:
        raise UserError(f"nothing to plot: no metric rows yet in the metrics.csv of "
                        f"{', '.join(str(d) for d in run_dirs)}")
    out_dir = Path(out_dir)
    written = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for filename, fig in figures.items():
            fig.savefig(out_dir / filename, dpi=100)
            written.append(out_dir / filename)
    except OSError as exc:  # EACCES, EROFS, ENOSPC, a file where the directory should be
        raise UserError(f"--out: cannot write the plots to {out_dir} "
                        f"({type(exc).__name__}: {exc.strerror or exc})") from None
    return written
