"""What TrainingLoop reports while it runs (no Ray): each metric row's counters and rates, the
console's progress line, the status file between checkpoints, where checkpoints are written, a
resumed run's newest checkpoint, and evaluations that finish at once."""
from __future__ import annotations

import json

import pytest

from accord import loop as loop_module
from accord.config import ExperimentConfig
from accord.loop import EXIT_FAILED, EXIT_OK, TrainingLoop
from accord.metrics import EpisodeTracker
from tests.unit.test_loop_stops import (CHUNK_SECONDS, Clock, Console, EvaluatingRoles, FakeRoles,
                                        Sink, Stop, make_cfg, run_loop)


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(loop_module.time, "monotonic", clock)
    return clock


class ProgressConsole(Console):
    """Keeps what the progress bar is given: its start and every (completed, summary)."""

    def __init__(self):
        super().__init__()
        self.started, self.updates = None, []

    def start(self, total, completed):
        self.started = (total, completed)

    def update(self, completed, summary):
        self.updates.append((completed, summary))


class SinkWithSteps(Sink):
    def __init__(self):
        super().__init__()
        self.steps = []

    def write(self, step, row):
        self.steps.append(step)
        super().write(step, row)


def run_with(tmp_path, cfg, roles, console=None, sink=None):
    console, sink = console or ProgressConsole(), sink or SinkWithSteps()
    loop = TrainingLoop(cfg, tmp_path, roles, sink, EpisodeTracker(list(cfg.env.tasks), window=5),
                        console, Stop())
    return loop.run(), console, sink


def test_each_row_counts_frames_and_updates_and_their_rates_over_the_interval(tmp_path, clock):
    roles = FakeRoles(clock, updates_per_chunk=3)  # 3 updates and 300 frames per 1 s chunk
    result, _, sink = run_with(tmp_path, make_cfg(log_every=2.0, total_frames=100 * 12), roles)
    assert result.exit_code == EXIT_OK
    assert [(row["frames"], row["updates"]) for row in sink.rows] == [(600, 6), (1200, 12)]
    assert sink.steps == [600, 1200]  # the sink's step is the frame count
    first = sink.rows[0]
    assert first["fps"] == pytest.approx(600 / (2 * CHUNK_SECONDS))
    assert first["updates_per_s"] == pytest.approx(6 / (2 * CHUNK_SECONDS))
    assert first["run/status_write_failures"] == 0.0


def test_the_progress_line_has_the_rates_the_queue_fill_and_the_lag(tmp_path, clock):
    class Roles(FakeRoles):
        def train(self, max_updates, max_seconds):
            out = super().train(max_updates, max_seconds)
            out["metrics"] = {"learner/lag_mean": 2.5}
            return out

    console = ProgressConsole()
    run_with(tmp_path, make_cfg(log_every=2.0, total_frames=100 * 8), Roles(clock), console=console)
    assert console.started == (800, 0)
    completed, summary = console.updates[0]
    assert completed == 400
    assert summary == "200 fps | 2.0 upd/s | queue 0/8 | lag 2.5 | return CartPole-v1 -"


def test_the_progress_line_of_a_replay_shows_its_size_and_no_lag_before_one_is_measured(tmp_path, clock):
    class Roles(FakeRoles):
        def service_stats(self):
            return {"replay/size": 12345.0}

    console = ProgressConsole()
    run_with(tmp_path, make_cfg(log_every=2.0, total_frames=100 * 4), Roles(clock), console=console)
    assert console.updates[0][1] == "200 fps | 2.0 upd/s | replay 12,345 | lag 0.0 | return CartPole-v1 -"


def test_a_replay_without_a_size_yet_shows_zero(tmp_path, clock):
    class Roles(FakeRoles):
        def service_stats(self):
            return {}

    console = ProgressConsole()
    run_with(tmp_path, make_cfg(log_every=2.0, total_frames=100 * 4), Roles(clock), console=console)
    assert " | replay 0 | " in console.updates[0][1]


def test_a_resumed_run_starts_at_its_counters_and_keeps_its_newest_checkpoint_if_no_new_one_is_written(
        tmp_path, clock):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for step in (4, 8):
        (checkpoints / f"ckpt_{step:09d}.pt").write_bytes(b"")

    class Roles(FakeRoles):
        def __init__(self, clock):
            super().__init__(clock, save_fails=lambda updates: True)
            self.updates = 8  # where the resumed learner stands

    console = ProgressConsole()
    result, console, _ = run_with(tmp_path, make_cfg(total_frames=100 * 12), Roles(clock), console=console)
    assert console.started == (1200, 800)
    # Every write in this run failed: the newest checkpoint is still the resumed one.
    assert result.exit_code == EXIT_FAILED
    assert result.checkpoint == str(checkpoints / "ckpt_000000008.pt")
    assert json.loads((tmp_path / "status.json").read_text())["checkpoint"] == result.checkpoint


def test_checkpoints_go_to_the_run_directory_keeping_the_configured_number(tmp_path, clock):
    class Roles(FakeRoles):
        def save(self, run_dir, keep):
            self.saved_to = (run_dir, keep)
            return super().save(run_dir, keep)

    roles = Roles(clock)
    run_with(tmp_path, make_cfg(keep_checkpoints=7, total_frames=100 * 4), roles)
    assert roles.saved_to == (str(tmp_path), 7)


def test_between_checkpoints_the_status_file_says_training(tmp_path, clock):
    class Roles(FakeRoles):
        seen = None

        def train(self, max_updates, max_seconds):
            if self.saves and self.seen is None:  # the first chunk after the first checkpoint
                self.seen = json.loads((tmp_path / "status.json").read_text())
            return super().train(max_updates, max_seconds)

    roles = Roles(clock)
    run_with(tmp_path, make_cfg(checkpoint_every=4, total_frames=100 * 12), roles)
    assert roles.seen["state"] == "running" and roles.seen["reason"] == "training"
    assert roles.seen["updates"] == 4


def test_the_counters_after_a_learner_restart_are_only_the_counters(tmp_path, clock):
    class Roles(FakeRoles):
        def restarted_learner(self):
            return {"checkpoint": "ckpt_000000004.pt", "corrupt_skipped": 1, "updates": 4, "frames": 400}

    loop = TrainingLoop(make_cfg(), tmp_path, Roles(clock), Sink(), EpisodeTracker(["CartPole-v1"]),
                        Console(), Stop())
    loop.checkpoints = loop_module.CheckpointSchedule(loop.cfg.run, loop._save, print, 0, clock())
    counters = loop._learner_restarted(loop_module.LearnerLost("died"), {"updates": 6, "frames": 600})
    assert counters == {"updates": 4, "frames": 400}


class PromptEvaluatingRoles(EvaluatingRoles):
    """Evaluations that have finished by the first poll."""

    def evaluation_result(self, pending, timeout):
        self.timeouts.append(timeout)
        return {"eval/success_mean": float(pending["id"])}


def test_an_evaluation_that_finishes_at_once_is_followed_by_the_next_only_eval_every_updates_later(
        tmp_path, clock):
    roles = PromptEvaluatingRoles(clock, updates_per_chunk=2)
    run_with(tmp_path, make_cfg(eval_every=4, total_frames=100 * 12), roles)
    assert roles.started == [4, 8, 12]  # the one of update 12 is the end's, collected at the end


def test_a_chunk_ends_where_the_next_evaluation_is_due_so_that_it_plays_that_update(tmp_path, clock):
    roles = PromptEvaluatingRoles(clock, updates_per_chunk=3)  # chunks of 3 would pass 4 at 6
    run_with(tmp_path, make_cfg(eval_every=4, total_frames=100 * 12), roles)
    assert roles.started == [4, 8, 12]


def test_past_the_due_update_with_an_evaluation_still_playing_chunks_keep_their_length(tmp_path, clock):
    roles = EvaluatingRoles(clock, updates_per_chunk=3)  # each evaluation is back two chunks later
    run_with(tmp_path, make_cfg(eval_every=2, total_frames=100 * 12), roles)
    # 0-2 (due: the first starts), 2-4 (due again, the first still playing), 4-7 (full length;
    # the first is back, the second starts), 7-9, 9-12: five chunks, none of one update.
    assert roles.started == [2, 7, 12] and roles.chunks == 5


def test_a_run_stopped_before_its_first_chunk_still_logs_its_final_evaluation(tmp_path, clock):
    stop = Stop()
    stop.signal_name = "SIGINT"
    roles = PromptEvaluatingRoles(clock)
    sink = SinkWithSteps()
    loop = TrainingLoop(make_cfg(eval_every=4), tmp_path, roles, sink,
                        EpisodeTracker(["CartPole-v1"], window=5), ProgressConsole(), stop)
    result = loop.run()
    assert result.reason == "interrupted by SIGINT" and roles.chunks == 0
    assert [row["eval/success_mean"] for row in sink.rows] == [1.0]


def test_the_second_row_and_the_final_one_measure_only_their_own_interval(tmp_path, clock):
    roles = FakeRoles(clock, updates_per_chunk=3)  # rows at 2 s (6 updates), 4 s (12), the end (15)
    sink = run_with(tmp_path, make_cfg(log_every=2.0, total_frames=100 * 15), roles)[2]
    assert [row["updates"] for row in sink.rows] == [6, 12, 15]
    assert sink.rows[1]["fps"] == pytest.approx(600 / 2.0)
    assert sink.rows[1]["updates_per_s"] == pytest.approx(6 / 2.0)
    assert sink.rows[2]["fps"] == pytest.approx(300 / 1.0)  # the last chunk, one second
    assert sink.rows[2]["updates_per_s"] == pytest.approx(3 / 1.0)


def test_a_resumed_run_with_several_checkpoints_keeps_the_newest(tmp_path, clock):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for step in (2, 4, 8):
        (checkpoints / f"ckpt_{step:09d}.pt").write_bytes(b"")
    roles = FakeRoles(clock, save_fails=lambda updates: True)
    result, *_ = run_with(tmp_path, make_cfg(total_frames=100 * 4), roles)
    assert result.checkpoint == str(checkpoints / "ckpt_000000008.pt")


def test_the_result_names_the_run_directory_and_the_returns(tmp_path, clock):
    roles = FakeRoles(clock, episodes_per_chunk=[[(0, 20.0, 20, float("nan"))]])
    result, console, _ = run_with(tmp_path, make_cfg(total_frames=100 * 4), roles)
    assert result.run_dir == tmp_path
    assert result.returns == {"CartPole-v1": 20.0}
    assert "returns CartPole-v1 20.0" in console.lines[-1]


def test_returns_are_listed_per_task_with_a_dash_for_none_yet():
    assert loop_module._fmt_returns({"a": 1.25, "b": None}) == "a 1.2, b -"


def test_the_status_file_counts_frames_and_each_failed_write_is_reported(tmp_path, clock, monkeypatch):
    writes = []

    def write_status(run_dir, state, reason, **facts):
        writes.append(facts)
        if len(writes) in (1, 2):
            raise OSError("read-only file system")

    monkeypatch.setattr(loop_module, "write_status", write_status)
    roles = FakeRoles(clock, updates_per_chunk=2)
    _, console, sink = run_with(tmp_path, make_cfg(checkpoint_every=2, log_every=3.0, total_frames=100 * 8), roles)
    assert writes[0]["frames"] == 200 and writes[-1]["frames"] == 800 and writes[-1]["updates"] == 8
    failed = [line for line in console.lines if "status.json" in line]
    assert len(failed) == 2 and "(1 failed so far): read-only file system" in failed[0]
    assert "(2 failed so far)" in failed[1]
    assert sink.rows[-1]["run/status_write_failures"] == 2.0


def test_a_dead_service_of_a_sac_run_with_a_redis_replay_says_the_replay_is_kept(tmp_path, clock):
    class Roles(FakeRoles):
        def train(self, max_updates, max_seconds):
            raise loop_module.ServiceLost("replay shard 0 died")

    sac = ExperimentConfig.model_validate({
        "env": {"kind": "gym", "tasks": ["Pendulum-v1"]}, "learner": {"algorithm": "sac"},
        "replay": {"backend": "redis"}, "run": {"total_frames": 4000}})
    result, *_ = run_with(tmp_path, sac, Roles(clock))
    assert result.reason == ("a service actor died (replay shard 0 died); nothing is left to train on; "
                             "the replay is kept in Redis for --resume")
    memory = sac.model_copy(update={"replay": sac.replay.model_copy(update={"backend": "memory"})})
    result, *_ = run_with(tmp_path / "memory", memory, Roles(clock))
    assert result.reason.endswith("nothing is left to train on")


def test_the_time_limit_ends_the_run_once_max_seconds_have_passed(tmp_path, clock):
    roles = FakeRoles(clock)  # each chunk takes CHUNK_SECONDS = 1 s of fake time
    result, *_ = run_with(tmp_path, make_cfg(max_seconds=5.0), roles)
    assert result.reason == "time limit" and result.exit_code == EXIT_OK
    assert roles.chunks == 5  # at 5 s exactly the limit is reached: no sixth chunk


@pytest.mark.parametrize("log_every, chunk_seconds", [(0.5, 0.5), (5.0, 1.0)])
def test_a_learner_chunk_lasts_a_second_or_a_log_interval_if_shorter(tmp_path, clock, log_every, chunk_seconds):
    class Roles(FakeRoles):
        asked = []

        def train(self, max_updates, max_seconds):
            self.asked.append((max_updates, max_seconds))
            return super().train(max_updates, max_seconds)

    roles = Roles(clock)
    run_with(tmp_path, make_cfg(log_every=log_every, checkpoint_every=7, total_frames=100 * 4), roles)
    assert set(roles.asked) == {(7, chunk_seconds)}


def test_the_status_file_records_the_learners_chunks_and_the_late_ones(tmp_path, clock):
    class Roles(FakeRoles):
        def counters(self):
            return {**super().counters(), "chunks": self.chunks, "late_chunks": 1}

    run_with(tmp_path, make_cfg(total_frames=100 * 6), Roles(clock))
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["learner_chunks"] == 3 and status["late_chunks"] == 1


def test_each_row_counts_the_weights_the_fleet_fetched_per_second(tmp_path, clock):
    class FetchingHealth(type(FakeRoles(clock).health)):
        weight_fetches = 0

        def poll(self):
            self.weight_fetches += 4  # four fetches between two rows

    class Roles(FakeRoles):
        def __init__(self, clock):
            super().__init__(clock)
            self.health = FetchingHealth()

        def counters(self):
            return {**super().counters(), "publish_bytes": 1000}

    sink = run_with(tmp_path, make_cfg(log_every=2.0, total_frames=100 * 8), Roles(clock))[2]
    assert [row["weights/fleet_bytes_per_s"] for row in sink.rows] == [4 * 1000 / 2.0] * 2


def test_a_fleet_silent_for_the_grace_period_ends_the_run_as_failed(tmp_path, clock):
    roles = FakeRoles(clock)
    roles.health.all_unreachable = True  # every actor answered once and then went silent
    result, *_ = run_with(tmp_path, make_cfg(total_frames=10**9), roles)
    assert result.exit_code == EXIT_FAILED
    assert result.reason == (f"no rollout actor has answered for {loop_module.FLEET_DEAD_SECONDS:.0f} s "
                             f"(restarts used up? see the actor tracebacks above)")
    assert roles.chunks == loop_module.FLEET_DEAD_SECONDS / CHUNK_SECONDS


def test_news_of_the_fleet_reaches_the_console_with_each_row(tmp_path, clock):
    roles = FakeRoles(clock)
    roles.health.news = lambda: ["the fleet shrinks to 1 of 2 rollout actors"]
    _, console, _ = run_with(tmp_path, make_cfg(log_every=2.0, total_frames=100 * 4), roles)
    assert "[yellow]the fleet shrinks to 1 of 2 rollout actors" in console.lines
