"""accord/plot.py and `accord plot`, on metrics.csv files written by MetricsSink; wall_time."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from accord.cli import app
from accord.metrics import MetricsSink
from accord.plot import build_figures, load_run, plot_runs


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_run(run_dir, rows, clock=None, seconds_per_row=2.0):
    """Writes ``rows`` (step -> metrics) through MetricsSink, advancing a fake clock per row."""
    clock = clock or FakeClock()
    run_dir.mkdir(parents=True, exist_ok=True)
    sink = MetricsSink(run_dir, use_ray=False, tensorboard=False, clock=clock)
    for step, row in rows:
        clock.now += seconds_per_row
        sink.write(step, row)
    sink.close()
    return run_dir


def single_task_rows():
    return [(i, {"frames": 1000.0 * i, "return/pong": -21.0 + i, "loss/total": 2.0 / i,
                 "loss/main/pg": 0.5 / i, "loss/stats/rho_mean": 1.0}) for i in range(1, 6)]


def multi_task_rows():
    rows = []
    for i in range(1, 5):
        row = {"frames": 500.0 * i, "loss/total": 3.0 / i, "combiner/pcgrad/conflicts": float(i % 2),
               "combiner/cos/aux/distill": 0.1 * i, "combiner/gate/aux/distill": 1.0,
               "combiner/cos_now/aux/distill/torso.0": 0.2 * i, "combiner/w/aux/distill": 1.0 + i}
        if i >= 2:  # a task's return appears with its first finished episode
            row["return/a"] = 10.0 * i
        row["success/b"] = 0.25 * (i - 1)
        if i == 4:
            row["eval/success/b"] = 0.5
            row["eval/success_mean"] = 0.5
        rows.append((i, row))
    return rows


def lines_by_label(ax):
    return {line.get_label(): (line.get_xdata(), line.get_ydata()) for line in ax.get_lines()}


def axis_for(fig, key):
    matches = [ax for ax in fig.axes if ax.get_visible() and ax.get_title() == key]
    assert len(matches) == 1, f"{key}: {[ax.get_title() for ax in fig.axes]}"
    return matches[0]


def test_wall_time_grows_and_continues_after_resume(tmp_path):
    clock = FakeClock(500.0)
    write_run(tmp_path, [(1, {"a": 1.0}), (2, {"a": 2.0})], clock=clock, seconds_per_row=3.0)
    # A resumed session in a new process: its own clock starts anywhere (here far lower).
    resumed_clock = FakeClock(7.0)
    write_run(tmp_path, [(3, {"a": 3.0}), (4, {"a": 4.0})], clock=resumed_clock, seconds_per_row=5.0)
    with open(tmp_path / "metrics.csv", newline="") as fh:
        wall = [float(r["wall_time"]) for r in csv.DictReader(fh)]
    assert wall == [3.0, 6.0, 11.0, 16.0]


def test_wall_time_is_written_by_the_sink_only(tmp_path):
    sink = MetricsSink(tmp_path, use_ray=False, tensorboard=False)
    with pytest.raises(ValueError, match="wall_time"):
        sink.write(1, {"wall_time": 3.0})


def test_figures_hold_each_runs_points(tmp_path):
    one = load_run(write_run(tmp_path / "run-one", single_task_rows()))
    two = load_run(write_run(tmp_path / "run-two", multi_task_rows()))
    figures = build_figures([one, two])
    assert set(figures) == {"returns_vs_frames.png", "returns_vs_wall_time.png", "success.png",
                            "losses.png", "combiner_cosines.png", "combiner_weights.png",
                            "combiner_conflicts.png"}

    pong = lines_by_label(axis_for(figures["returns_vs_frames.png"], "return/pong"))
    assert set(pong) == {"run-one"}  # run-two has no pong: no line, no error
    np.testing.assert_allclose(pong["run-one"][0], [1000, 2000, 3000, 4000, 5000])
    np.testing.assert_allclose(pong["run-one"][1], [-20, -19, -18, -17, -16])
    task_a = lines_by_label(axis_for(figures["returns_vs_frames.png"], "return/a"))
    np.testing.assert_allclose(task_a["run-two"][0], [1000, 1500, 2000])  # rows before the first episode skipped

    by_wall = lines_by_label(axis_for(figures["returns_vs_wall_time.png"], "return/pong"))
    np.testing.assert_allclose(by_wall["run-one"][0], [2, 4, 6, 8, 10])

    total = lines_by_label(axis_for(figures["losses.png"], "loss/total"))
    assert set(total) == {"run-one", "run-two"}
    np.testing.assert_allclose(total["run-two"][1], [3.0, 1.5, 1.0, 0.75])
    assert "loss/stats/rho_mean" not in [ax.get_title() for ax in figures["losses.png"].axes]

    cos_titles = {ax.get_title() for ax in figures["combiner_cosines.png"].axes if ax.get_visible()}
    assert cos_titles == {"combiner/cos/aux/distill", "combiner/gate/aux/distill",
                          "combiner/cos_now/aux/distill/torso.0"}
    weights = lines_by_label(axis_for(figures["combiner_weights.png"], "combiner/w/aux/distill"))
    np.testing.assert_allclose(weights["run-two"][1], [2, 3, 4, 5])
    conflicts = lines_by_label(axis_for(figures["combiner_conflicts.png"], "combiner/pcgrad/conflicts"))
    np.testing.assert_allclose(conflicts["run-two"][1], [1, 0, 1, 0])
    eval_mean = lines_by_label(axis_for(figures["success.png"], "eval/success_mean"))
    np.testing.assert_allclose(eval_mean["run-two"][0], [2000])


def test_a_run_without_combiner_or_success_gets_no_such_figures(tmp_path):
    run = load_run(write_run(tmp_path / "plain", single_task_rows()))
    assert set(build_figures([run])) == {"returns_vs_frames.png", "returns_vs_wall_time.png", "losses.png"}


def test_plot_runs_writes_valid_pngs(tmp_path):
    from PIL import Image

    runs = [write_run(tmp_path / "run-one", single_task_rows()),
            write_run(tmp_path / "run-two", multi_task_rows())]
    written = plot_runs(runs, tmp_path / "out")
    assert {p.name for p in written} == {p.name for p in (tmp_path / "out").iterdir()}
    assert len(written) == 7
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG"
            pixels = np.asarray(image.convert("L"))
        assert pixels.min() < 128 < pixels.max()  # something was drawn on the white page


def test_cli_plot_and_its_errors(tmp_path):
    run = write_run(tmp_path / "run-one", single_task_rows())
    runner = CliRunner()
    result = runner.invoke(app, ["plot", str(run)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / "plots").iterdir()) == [
        "losses.png", "returns_vs_frames.png", "returns_vs_wall_time.png"]

    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["plot", str(run), str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "empty has no metrics.csv" in result.output
