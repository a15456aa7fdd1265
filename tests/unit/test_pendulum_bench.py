"""The Pendulum bench's bookkeeping on made-up data: the SB3 process's lines, accord's metric
rows, the first evaluation at -200 and the ratios (no training, no timing)."""
import pytest

import bench.pendulum as bench
from bench.pendulum import (Evaluation, Side, accord_eval_every, accord_evaluations, csv_rows,
                            first_reaching, parse_sb3_line, ratio, steps_at_update)


def test_sb3_lines_parse_and_other_output_is_ignored():
    assert parse_sb3_line("sb3-eval steps=4000 updates=3900 return=-170.250\n") == (4000, 3900, -170.25)
    assert parse_sb3_line("Eval num_timesteps=4000, episode_reward=-170.25 +/- 3.1") is None
    assert parse_sb3_line("sb3-done steps=4000") is None
    assert parse_sb3_line("") is None


def test_first_reaching_is_the_earliest_evaluation_at_or_above_the_target():
    evals = [Evaluation(500, 5.0, -1200.0), Evaluation(1000, 9.0, -200.0),
             Evaluation(1500, 13.0, -150.0)]
    assert first_reaching(evals, -200.0) == evals[1]
    assert first_reaching(evals[:1], -200.0) is None
    assert first_reaching([], -200.0) is None


def test_a_row_still_being_written_is_left_out():
    text = "frames,updates\n100,0\n600,500\n11"
    assert csv_rows(text) == [{"frames": "100", "updates": "0"}, {"frames": "600", "updates": "500"}]
    assert len(csv_rows(text + "00,1000\n")) == 3


ROWS = [  # a run's rows: the evaluation of update 500's policy arrives in a later row
    {"wall_time": "1.0", "frames": "160", "updates": "0", "eval/return/Pendulum-v1": "", "eval/version": ""},
    {"wall_time": "2.0", "frames": "480", "updates": "300", "eval/return/Pendulum-v1": "", "eval/version": ""},
    {"wall_time": "3.0", "frames": "800", "updates": "700", "eval/return/Pendulum-v1": "", "eval/version": ""},
    {"wall_time": "4.0", "frames": "1120", "updates": "1000", "eval/return/Pendulum-v1": "-180.5", "eval/version": "500"},
]


def test_an_evaluation_counts_the_env_steps_at_its_policy_and_the_process_clock():
    (e,) = accord_evaluations(ROWS, clock_zero=12.5)
    assert e.steps == pytest.approx(480 + (800 - 480) * 200 / 400)  # between updates 300 and 700
    assert e.seconds == pytest.approx(16.5) and e.mean_return == -180.5 and e.updates == 500


def test_steps_at_update_never_underestimates_outside_the_rows():
    assert steps_at_update(ROWS, 0) == 160
    assert steps_at_update(ROWS, 5000) == 1120
    assert accord_evaluations([{"wall_time": "1", "frames": "0", "updates": "0"}], 0.0) == []


def test_ratios_and_lower_bounds_when_a_side_does_not_reach():
    sb3 = Side("SB3 SAC", [Evaluation(4000, 40.0, -170.0)], 4000, 40.0)
    accord = Side("accord SAC", [Evaluation(5000, 100.0, -190.0)], 5000, 110.0)
    assert ratio(accord, sb3, "steps") == "1.25" and ratio(accord, sb3, "seconds") == "2.50"
    short = Side("accord SAC", [Evaluation(2000, 60.0, -900.0)], 3000, 300.0)
    assert ratio(short, sb3, "steps") == "> 0.75" and ratio(short, sb3, "seconds") == "> 7.50"
    unreached = Side("SB3 SAC", [Evaluation(4000, 40.0, -400.0)], 4000, 40.0)
    assert ratio(accord, unreached, "steps") == "-"


def test_accord_is_evaluated_on_sb3_s_grid_of_env_steps_at_its_own_updates_per_step(tmp_path, monkeypatch):
    # configs/pendulum_defaults.yaml: 1.5 updates per env step, so every 500 env steps is every
    # 750 updates (SB3, one update per env step, is evaluated every 500 updates).
    assert accord_eval_every(500) == 750
    config = tmp_path / "pendulum.yaml"
    config.write_text("env: {kind: gym, tasks: [Pendulum-v1]}\nlearner: {algorithm: sac, "
                      "sac: {updates_per_step: 2.5}}\n")
    monkeypatch.setattr(bench, "CONFIG", config)
    assert accord_eval_every(500) == 1250
    with pytest.raises(ValueError, match="whole number of updates"):
        accord_eval_every(301)
    config.write_text("env: {kind: gym, tasks: [Pendulum-v1]}\nlearner: {algorithm: sac}\n"
                      "replay: {samples_per_insert: 100}\n")
    with pytest.raises(ValueError, match="samples_per_insert auto"):
        accord_eval_every(500)


def test_accord_s_overrides_reach_its_command_and_its_grid_and_the_bench_keeps_run():
    sets = ("learner.bf16=true", "learner.sac.updates_per_step=2.5", "run.seed=7")
    cmd = bench.accord_command("/tmp/r", 500, 60.0, 1000, 3, sets)
    pairs = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--set"]
    assert pairs[:3] == list(sets)
    # the grid follows the override (2.5 updates per env step), and the bench's run.* come last
    assert "run.eval_every=1250" in pairs and pairs.index("run.seed=3") > pairs.index("run.seed=7")
    from accord.config import load_config

    cfg = load_config(bench.CONFIG, pairs)
    assert cfg.learner.bf16 and cfg.run.seed == 3 and cfg.run.eval_every == 1250
