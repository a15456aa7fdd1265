"""TrainingLoop end to end on plain objects (no Ray): divergence, the stop_return window, the
checkpoint cadences, failed checkpoint writes and the status file each stop leaves."""
from __future__ import annotations

import json

import pytest

from accord import loop as loop_module
from accord.config import ExperimentConfig
from accord.loop import EXIT_DIVERGED, EXIT_FAILED, EXIT_OK, TrainingLoop
from accord.metrics import EpisodeTracker
from learner.algorithm import NonFiniteLossError
from learner.checkpoint import CheckpointWriteError

CHUNK_SECONDS = 1.0  # fake time one learner chunk takes


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Health:
    all_unreachable = False
    weight_fetches = 0

    def poll(self):
        pass

    def metrics(self):
        return {}

    def news(self):
        return []


class FakeRoles:
    """The learner side of RayRoles: each chunk makes `updates_per_chunk` updates and takes
    CHUNK_SECONDS of fake time; `saves` lists the updates of every checkpoint attempt."""

    def __init__(self, clock, updates_per_chunk=2, episodes_per_chunk=(), diverge_at=None,
                 save_fails=lambda updates: False):
        self.clock, self.updates_per_chunk = clock, updates_per_chunk
        self.episodes_per_chunk = list(episodes_per_chunk)
        self.diverge_at, self.save_fails = diverge_at, save_fails
        self.updates, self.saves, self.chunks = 0, [], 0
        self.health = Health()

    def counters(self):
        return {"updates": self.updates, "frames": 100 * self.updates}

    def train(self, max_updates, max_seconds):
        self.clock.now += CHUNK_SECONDS
        self.chunks += 1
        self.updates += min(self.updates_per_chunk, max_updates)
        if self.diverge_at is not None and self.updates >= self.diverge_at:
            raise NonFiniteLossError("10 non-finite losses in a row")
        episodes = self.episodes_per_chunk.pop(0) if self.episodes_per_chunk else []
        return {"counters": self.counters(), "metrics": {}, "episodes": episodes}

    def save(self, run_dir, keep):
        self.saves.append(self.updates)
        if self.save_fails(self.updates):
            raise CheckpointWriteError(f"could not write ckpt_{self.updates:09d}.pt: disk full")
        return f"{run_dir}/checkpoints/ckpt_{self.updates:09d}.pt"

    def service_stats(self):
        return {"queue/depth": 0.0, "queue/capacity": 8.0}

    can_evaluate = False


class Sink:
    def __init__(self):
        self.rows = []

    def write(self, step, row):
        self.rows.append(row)


class Console:
    def __init__(self):
        self.lines = []

    def start(self, total, completed):
        pass

    def update(self, completed, summary):
        pass

    def log(self, message):
        self.lines.append(message)

    def close(self):
        pass


class Stop:
    signal_name = None


def make_cfg(learner: dict | None = None, **run) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "env": {"kind": "gym", "tasks": ["CartPole-v1"]}, "learner": {"model": "mlp", **(learner or {})},
        "run": {"total_frames": 100 * 40, "checkpoint_every": 1000,
                "checkpoint_every_seconds": 1000.0, "log_every": 5.0, **run}})


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(loop_module.time, "monotonic", clock)
    return clock


def run_loop(tmp_path, cfg, roles, stop=None):
    console, sink = Console(), Sink()
    loop = TrainingLoop(cfg, tmp_path, roles, sink, EpisodeTracker(list(cfg.env.tasks), window=5),
                        console, stop or Stop())
    result = loop.run()
    return result, console, sink, json.loads((tmp_path / "status.json").read_text())


def test_divergence_ends_with_exit_code_3_a_checkpoint_and_a_failed_status(tmp_path, clock):
    roles = FakeRoles(clock, diverge_at=6)
    result, console, _, status = run_loop(tmp_path, make_cfg(), roles)
    assert result.exit_code == EXIT_DIVERGED
    assert result.reason == "diverged: 10 non-finite losses in a row"
    assert roles.saves == [6]  # the final checkpoint, at the updates reached
    assert result.checkpoint.endswith("ckpt_000000006.pt")
    assert status["state"] == "failed" and status["reason"].startswith("diverged")
    assert status["exit_code"] == EXIT_DIVERGED and status["checkpoint"] == result.checkpoint


def test_a_few_lucky_first_episodes_do_not_stop_the_run(tmp_path, clock):
    # Window 5: four episodes at 500 are not a full window; the run ends only with the fifth.
    lucky = [[(0, 500.0, 500, float("nan"))]] * 4
    roles = FakeRoles(clock, episodes_per_chunk=[*lucky, [], [], [(0, 500.0, 500, float("nan"))]])
    result, _, _, status = run_loop(tmp_path, make_cfg(stop_return=400.0), roles)
    assert roles.chunks == 7
    assert result.exit_code == EXIT_OK and result.reason == "every task reached mean return 400.0"
    assert status["state"] == "finished"


def test_a_full_window_below_the_target_does_not_stop_the_run(tmp_path, clock):
    episodes = [[(0, 450.0, 450, float("nan"))]] * 4 + [[(0, 10.0, 10, float("nan"))]] * 30
    roles = FakeRoles(clock, episodes_per_chunk=episodes)
    result, *_ = run_loop(tmp_path, make_cfg(stop_return=400.0), roles)
    assert result.reason == "finished" and roles.updates == 40  # ran to total_frames


def test_checkpoints_every_n_updates(tmp_path, clock):
    roles = FakeRoles(clock, updates_per_chunk=2)
    result, _, _, status = run_loop(tmp_path, make_cfg(checkpoint_every=6), roles)
    # Chunks are capped at checkpoint_every updates; a checkpoint once 6 more are done, one at the end.
    assert roles.saves == [6, 12, 18, 24, 30, 36, 40]
    assert status["state"] == "finished" and status["checkpoint"].endswith("ckpt_000000040.pt")


def test_checkpoints_every_n_seconds_however_few_updates(tmp_path, clock):
    # One update per 1 s chunk, update cadence out of reach: the 5 s clock alone decides.
    roles = FakeRoles(clock, updates_per_chunk=1)
    run_loop(tmp_path, make_cfg(checkpoint_every_seconds=5.0, total_frames=100 * 17), roles)
    assert roles.saves == [5, 10, 15, 17]


def test_a_failed_write_is_counted_reported_and_training_goes_on(tmp_path, clock):
    roles = FakeRoles(clock, updates_per_chunk=1, save_fails=lambda u: 5 <= u <= 10)
    result, console, sink, status = run_loop(
        tmp_path, make_cfg(checkpoint_every_seconds=5.0, total_frames=100 * 22, log_every=1.0,
                           checkpoint_failure_tolerance_seconds=60.0), roles)
    assert roles.saves == [5, 10, 15, 20, 22]
    assert result.exit_code == EXIT_OK and result.checkpoint.endswith("ckpt_000000022.pt")
    failed = [line for line in console.lines if "checkpoint failed" in line]
    assert len(failed) == 2 and "disk full" in failed[0] and "(2 so far" in failed[1]
    assert any("written again" in line for line in console.lines)
    assert max(row["checkpoints/failed"] for row in sink.rows) == 2
    assert status["checkpoint_failures"] == 2 and status["state"] == "finished"


def test_writes_failing_past_the_tolerance_stop_the_run(tmp_path, clock):
    roles = FakeRoles(clock, updates_per_chunk=1, save_fails=lambda u: u >= 5)
    result, console, _, status = run_loop(
        tmp_path, make_cfg(checkpoint_every_seconds=5.0, checkpoint_failure_tolerance_seconds=12.0),
        roles)
    # Fails at 5 s, 10 s, 15 s; 15 - 5 >= 12 is not yet, 20 - 5 is: stop after the fourth.
    assert roles.saves == [5, 10, 15, 20, 20]  # the last is the final attempt
    assert result.exit_code == EXIT_FAILED
    assert result.reason.startswith("no checkpoint could be written for 15 s (4 failed")
    assert status["state"] == "failed" and status["checkpoint_failures"] == 5
    assert "disk full" in status["last_checkpoint_error"]
    assert any("resume with" in line for line in console.lines)


def test_a_stop_signal_ends_interrupted_with_a_checkpoint(tmp_path, clock):
    stop = Stop()

    class Roles(FakeRoles):
        def train(self, max_updates, max_seconds):
            out = super().train(max_updates, max_seconds)
            if self.chunks == 3:
                stop.signal_name = "SIGHUP"
            return out

    roles = Roles(clock)
    result, console, _, status = run_loop(tmp_path, make_cfg(), roles, stop=stop)
    assert result.exit_code == EXIT_OK and result.reason == "interrupted by SIGHUP"
    assert roles.saves == [6]
    assert status["state"] == "interrupted" and status["updates"] == 6
    assert f"resume with: accord train --resume {tmp_path}" in console.lines[-1]


def test_a_stop_whose_final_checkpoint_fails_is_a_failure(tmp_path, clock):
    stop = Stop()
    stop.signal_name = "SIGTERM"
    roles = FakeRoles(clock, save_fails=lambda u: True)
    result, _, _, status = run_loop(tmp_path, make_cfg(), roles, stop=stop)
    assert result.exit_code == EXIT_FAILED
    assert result.reason == "interrupted by SIGTERM; the final checkpoint could not be written"
    assert status["state"] == "failed" and status["checkpoint_failures"] == 1


class DyingLearnerRoles(FakeRoles):
    """A learner whose process dies in the chunks listed in `deaths`; Ray's restart goes back to
    the last checkpoint attempt that succeeded (or update 0)."""

    def __init__(self, clock, deaths, **kwargs):
        super().__init__(clock, **kwargs)
        self.deaths, self.saved = set(deaths), 0

    def train(self, max_updates, max_seconds):
        if self.chunks + 1 in self.deaths:
            self.chunks += 1
            self.clock.now += CHUNK_SECONDS
            raise loop_module.LearnerLost("The actor died unexpectedly before finishing this task.")
        return super().train(max_updates, max_seconds)

    def save(self, run_dir, keep):
        path = super().save(run_dir, keep)
        self.saved = self.updates
        return path

    def restarted_learner(self):
        self.updates = self.saved
        return {"checkpoint": f"ckpt_{self.saved:09d}.pt", **self.counters()}


def test_a_dead_learner_restarts_from_its_checkpoint_and_the_rows_count_it(tmp_path, clock):
    roles = DyingLearnerRoles(clock, deaths={6}, updates_per_chunk=2)
    cfg = make_cfg(checkpoint_every=4, log_every=1.0)
    result, console, sink, status = run_loop(tmp_path, cfg, roles)
    assert result.exit_code == EXIT_OK and status["state"] == "finished"
    # Chunks 1-5 reached update 10, the checkpoint of update 8 was the newest: 2 updates lost.
    restart = next(line for line in console.lines if "the learner restarted" in line)
    assert "(1 of learner.max_restarts 3) from ckpt_000000008.pt at update 8;" in restart
    assert "(the driver had seen update 10: 2 lost at least)" in restart
    assert sink.rows[-1]["learner/restarts"] == 1.0 and sink.rows[-1]["learner/updates_lost"] == 2.0
    assert sink.rows[0]["learner/restarts"] == 0.0
    assert roles.updates == 40  # it trained on to the end


def test_a_learner_dead_past_max_restarts_stops_the_run_with_the_resume_command(tmp_path, clock):
    roles = DyingLearnerRoles(clock, deaths={3, 5}, updates_per_chunk=2)
    cfg = make_cfg(learner={"max_restarts": 1}, checkpoint_every=2)
    result, console, sink, status = run_loop(tmp_path, cfg, roles)
    assert result.exit_code == EXIT_FAILED and status["state"] == "failed"
    assert "is not coming back after 1 restarts (learner.max_restarts: 1)" in result.reason
    assert console.lines[-1] == f"resume with: accord train --resume {tmp_path}"
    assert roles.saves == [2, 4, 6]  # none after the second death: that learner is gone


def test_after_a_restart_to_an_older_checkpoint_the_next_one_is_due_an_interval_from_it(tmp_path, clock):
    """The newest checkpoint (update 8) did not load, so the learner went back to update 4:
    the next checkpoint is due 4 updates from there, at 8 again, not at 12 (the driver's last
    write), which would leave 8 updates unsaved."""

    class Roles(DyingLearnerRoles):
        def restarted_learner(self):
            self.updates = 4
            return {"checkpoint": "ckpt_000000004.pt", **self.counters()}

    roles = Roles(clock, deaths={6}, updates_per_chunk=2)
    run_loop(tmp_path, make_cfg(checkpoint_every=4), roles)
    assert roles.saves[:5] == [4, 8, 8, 12, 16]


class StoppedWhileDyingRoles(FakeRoles):
    """The stop signal reaches Ray's processes too: the learner dies in the chunk during which
    the driver hears the signal (`in_chunk`), or in the call for its counters after it."""

    def __init__(self, clock, stop, in_chunk=True):
        super().__init__(clock)
        self.stop, self.in_chunk, self.restarts = stop, in_chunk, 0

    def train(self, max_updates, max_seconds):
        out = super().train(max_updates, max_seconds)
        if self.chunks == 3:
            self.stop.signal_name = "SIGTERM"
            self.dead = True
            if self.in_chunk:
                raise loop_module.LearnerLost("The actor died unexpectedly before finishing this task.")
        return out

    def counters(self):
        if getattr(self, "dead", False):
            raise loop_module.LearnerLost("The actor died unexpectedly before finishing this task.")
        return super().counters()

    def restarted_learner(self):
        self.restarts += 1  # a stopping run must not wait for a restart
        raise AssertionError("waited for a restart while stopping")


@pytest.mark.parametrize("in_chunk", [True, False], ids=["in its chunk", "after its chunk"])
def test_a_learner_dying_with_the_stop_signal_fails_the_run_without_a_checkpoint(tmp_path, clock, in_chunk):
    stop = Stop()
    roles = StoppedWhileDyingRoles(clock, stop, in_chunk=in_chunk)
    result, console, _, status = run_loop(tmp_path, make_cfg(), roles, stop=stop)
    assert result.exit_code == EXIT_FAILED and status["state"] == "failed"
    assert result.reason.startswith("interrupted by SIGTERM; the learner died before the final checkpoint (")
    assert result.reason.count("the learner died") == 1  # said once, not again by the final counters call
    assert roles.saves == [] and roles.restarts == 0
    assert console.lines[-1] == f"resume with: accord train --resume {tmp_path}"


class EvaluatingRoles(FakeRoles):
    """An evaluator whose evaluation `i` (from 1) finishes at the second poll of it, with success
    rate i; the final wait (a timeout > 0) gets it at once, or never with `final_finishes` off."""

    can_evaluate = True

    def __init__(self, clock, final_finishes=True, **kwargs):
        super().__init__(clock, **kwargs)
        self.final_finishes, self.started, self.timeouts = final_finishes, [], []

    def start_evaluation(self):
        self.started.append(self.updates)
        return {"id": len(self.started), "polls": 0}

    def evaluation_result(self, pending, timeout):
        self.timeouts.append(timeout)
        pending["polls"] += 1
        finished = self.final_finishes if timeout > 0 else pending["polls"] >= 2
        return {"eval/success_mean": float(pending["id"])} if finished else None


def test_evaluations_start_every_eval_every_updates_one_at_a_time_each_in_one_row(tmp_path, clock):
    roles = EvaluatingRoles(clock)
    result, console, sink, _ = run_loop(tmp_path, make_cfg(eval_every=4, log_every=1.0, total_frames=100 * 12),
                                        roles)
    assert roles.started == [4, 8, 12]  # the one started at 4 finished at 8, and so on
    assert roles.timeouts == [0, 0, 0, 0, 600]  # polls never wait; the end waits for the last one
    assert [(row["updates"], row.get("eval/success_mean")) for row in sink.rows] == [
        (2, None), (4, None), (6, None), (8, 1.0), (10, None), (12, 2.0), (12, 3.0)]
    assert result.exit_code == EXIT_OK
    assert console.lines[-1] == "evaluation: mean success rate 3.00 over 1 tasks"


def test_the_end_of_a_run_is_evaluated_and_a_final_evaluation_that_never_ends_is_skipped(tmp_path, clock):
    roles = EvaluatingRoles(clock, final_finishes=False)
    result, console, sink, _ = run_loop(tmp_path, make_cfg(eval_every=100, total_frames=100 * 6), roles)
    assert roles.started == [6] and roles.timeouts == [600]  # none due in the run: one at its end
    assert "[yellow]the final evaluation did not finish within 600 s; skipped" in console.lines
    assert not any(line.startswith("evaluation:") for line in console.lines)
    assert "eval/success_mean" not in sink.rows[-1] and result.exit_code == EXIT_OK


def test_no_evaluation_without_eval_every(tmp_path, clock):
    roles = EvaluatingRoles(clock)
    run_loop(tmp_path, make_cfg(eval_every=0, total_frames=100 * 6), roles)
    assert roles.started == [] and roles.timeouts == []


def test_each_restart_is_counted_with_the_updates_it_lost_and_the_run_goes_on(tmp_path, clock):
    """Two deaths in one run: the first before any checkpoint (back to the initial weights,
    every update seen lost), the second right after a checkpoint (nothing lost)."""

    class Roles(DyingLearnerRoles):
        def train(self, max_updates, max_seconds):
            if self.chunks + 1 == 8:
                self.saved = self.updates  # a checkpoint written just before this death
            return super().train(max_updates, max_seconds)

        def restarted_learner(self):
            self.updates = self.saved
            checkpoint = f"ckpt_{self.saved:09d}.pt" if self.saved else None
            return {"checkpoint": checkpoint, "corrupt_skipped": 0, **self.counters()}

    roles = Roles(clock, deaths={3, 8}, updates_per_chunk=2)
    result, console, sink, _ = run_loop(tmp_path, make_cfg(log_every=1.0), roles)
    restarts = [line for line in console.lines if "the learner restarted" in line]
    assert restarts[0].startswith("the learner restarted (1 of learner.max_restarts 3) from its initial "
                                  "weights at update 0; the updates past it are lost (the driver had seen "
                                  "update 4: 4 lost at least), and the actors resync")
    assert "(2 of learner.max_restarts 3) from ckpt_000000008.pt at update 8;" in restarts[1]
    assert "(the driver had seen update 8: 0 lost at least)" in restarts[1]
    assert [(row["learner/restarts"], row["learner/updates_lost"]) for row in sink.rows][-1] == (2.0, 4.0)
    assert result.exit_code == EXIT_OK and set(result.counters) == {"updates", "frames"}


def test_a_learner_dead_past_its_restarts_names_why_it_died(tmp_path, clock):
    roles = DyingLearnerRoles(clock, deaths={2}, updates_per_chunk=2)
    result, *_ = run_loop(tmp_path, make_cfg(learner={"max_restarts": 0}), roles)
    assert result.reason == ("the learner died (The actor died unexpectedly before finishing this task.) "
                             "and is not coming back after 0 restarts (learner.max_restarts: 0); its "
                             "newest checkpoint holds the run")


def test_a_mean_return_at_the_target_stops_the_run(tmp_path, clock):
    at_target = [[(0, 400.0, 400, float("nan"))]] * 5
    roles = FakeRoles(clock, episodes_per_chunk=at_target)
    result, *_ = run_loop(tmp_path, make_cfg(stop_return=400.0), roles)
    assert result.reason == "every task reached mean return 400.0" and roles.chunks == 5


def test_a_dead_service_ends_the_run_with_a_checkpoint_and_rows_without_its_stats(tmp_path, clock):
    class Roles(FakeRoles):
        dead = False

        def train(self, max_updates, max_seconds):
            if self.chunks == 6:
                self.dead = True
                raise loop_module.ServiceLost("The actor died unexpectedly before finishing this task.")
            return super().train(max_updates, max_seconds)

        def service_stats(self):
            if self.dead:
                raise AssertionError("asked a dead service for its stats")
            return super().service_stats()

    roles = Roles(clock)
    result, console, sink, status = run_loop(tmp_path, make_cfg(log_every=5.0), roles)
    assert result.exit_code == EXIT_FAILED and status["state"] == "failed"
    assert result.reason == ("a service actor died (The actor died unexpectedly before finishing this "
                             "task.); nothing is left to train on")
    assert roles.saves == [12]  # the learner lives: its final checkpoint
    # A row at 5 s with the queue's stats; the final row (update 12) without them.
    assert [(row["updates"], "queue/depth" in row) for row in sink.rows] == [(10, True), (12, False)]
