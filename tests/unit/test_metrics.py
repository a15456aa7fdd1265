"""accord/metrics.py without Ray: metrics.csv (widening header, resume), TensorBoard, EpisodeTracker."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from accord.metrics import EpisodeTracker, MetricsSink


def read_csv(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


# --- MetricsSink --------------------------------------------------------------------------------


def test_csv_header_widens_and_keeps_old_rows(tmp_path):
    sink = MetricsSink(tmp_path, use_ray=False, tensorboard=False)
    sink.write(1, {"loss/total": 1.5, "fps": 100})
    sink.write(2, {"loss/total": 1.25, "fps": 110})
    sink.write(3, {"loss/total": 1.0, "return/pong": -21})
    header, rows = read_csv(tmp_path / "metrics.csv")
    assert header == ["step", "wall_time", "loss/total", "fps", "return/pong"]
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    del rows[0]["wall_time"]
    assert rows[0] == {"step": "1", "loss/total": "1.5", "fps": "100.0", "return/pong": ""}
    assert rows[2]["fps"] == "" and float(rows[2]["return/pong"]) == -21.0
    assert not (tmp_path / "metrics.tmp").exists()
    sink.close()


def test_rows_with_known_columns_are_appended(tmp_path):
    sink = MetricsSink(tmp_path, use_ray=False, tensorboard=False)
    sink.write(1, {"a": 1.0, "b": 2.0})
    sink.write(2, {"b": 3.0})  # a missing key leaves its cell empty
    sink.write(3, {"a": 4.0, "b": 5.0})
    text = (tmp_path / "metrics.csv").read_text().splitlines()
    assert text[0] == "step,wall_time,a,b"
    assert len(text) == 4
    _, rows = read_csv(tmp_path / "metrics.csv")
    assert [(r["a"], r["b"]) for r in rows] == [("1.0", "2.0"), ("", "3.0"), ("4.0", "5.0")]


def test_tensorboard_event_file_appears_under_tb(tmp_path):
    sink = MetricsSink(tmp_path, use_ray=False)
    sink.write(1, {"loss/total": 1.0})
    sink.write(2, {"loss/total": 0.5, "return/pong": -20.0})
    sink.close()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"loss/total", "return/pong"}
    assert [(e.step, e.value) for e in acc.Scalars("loss/total")] == [(1, 1.0), (2, 0.5)]


def test_a_resumed_sink_appends_to_the_same_csv(tmp_path):
    first = MetricsSink(tmp_path, use_ray=False, tensorboard=False)
    first.write(1, {"a": 1.0})
    first.write(2, {"a": 2.0})
    first.close()

    resumed = MetricsSink(tmp_path, use_ray=False, tensorboard=False)
    resumed.write(3, {"a": 3.0})
    header, rows = read_csv(tmp_path / "metrics.csv")
    assert header == ["step", "wall_time", "a"]
    assert [(r["step"], r["a"]) for r in rows] == [("1", "1.0"), ("2", "2.0"), ("3", "3.0")]

    # A new column after a resume rewrites the file with the old rows kept.
    resumed.write(4, {"a": 4.0, "b": 9.0})
    header, rows = read_csv(tmp_path / "metrics.csv")
    assert header == ["step", "wall_time", "a", "b"]
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["b"] for r in rows] == ["", "", "", "9.0"]
    resumed.close()


def test_values_must_be_numbers(tmp_path):
    sink = MetricsSink(tmp_path, use_ray=False, tensorboard=False)
    with pytest.raises((TypeError, ValueError)):
        sink.write(1, {"a": "fast"})


# --- EpisodeTracker -----------------------------------------------------------------------------


def test_episode_tracker_per_task_means():
    tracker = EpisodeTracker(["pong", "breakout"])
    assert tracker.mean_return("pong") is None
    nan = float("nan")
    tracker.add(np.array([[0, -21.0, 800, nan], [1, 4.0, 300, nan], [0, -19.0, 900, nan]]))
    tracker.add([(1, 6.0, 500, nan)])
    assert tracker.mean_return("pong") == pytest.approx(-20.0)
    assert tracker.mean_return("breakout") == pytest.approx(5.0)
    assert tracker.metrics() == {
        "return/pong": pytest.approx(-20.0), "episode_length/pong": pytest.approx(850.0),
        "episodes/pong": 2.0,
        "return/breakout": pytest.approx(5.0), "episode_length/breakout": pytest.approx(400.0),
        "episodes/breakout": 2.0,
    }


def test_episode_tracker_window_and_tasks_without_episodes():
    tracker = EpisodeTracker(["a", "b"], window=2)
    tracker.add([(0, 1.0, 10, 1.0), (0, 2.0, 10, 0.0), (0, 6.0, 10, 0.0)])
    assert tracker.mean_return("a") == pytest.approx(4.0)  # the oldest fell out of the window
    metrics = tracker.metrics()
    assert metrics["episodes/a"] == 3.0  # the count is over the whole run
    assert metrics["episodes/b"] == 0.0
    assert "return/b" not in metrics and "episode_length/b" not in metrics
    assert metrics["success/a"] == 0.0  # successes share the window
    assert "success/b" not in metrics


def test_last_value_reads_a_resumed_runs_history(tmp_path):
    first = MetricsSink(tmp_path, use_ray=False, tensorboard=False)
    first.write(1, {"learner/restarts": 0.0, "a": 1.0})
    first.write(2, {"learner/restarts": 2.0})
    first.write(3, {"a": 5.0})  # a later row without the key: the newest value is still 2
    first.close()
    resumed = MetricsSink(tmp_path, use_ray=False, tensorboard=False)
    assert resumed.last_value("learner/restarts") == 2.0
    assert resumed.last_value("a") == 5.0
    assert resumed.last_value("never/written") is None
