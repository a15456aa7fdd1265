"""bench/pendulum_loop.py at its smallest: it steps the real Pendulum-v1, updates the real SAC
learner once per env step from the end of the warm-up, and evaluates on its cadence."""
import bench.pendulum_loop as loop


def test_the_loop_updates_once_per_env_step_and_evaluates_on_its_cadence(capsys, monkeypatch):
    inserted = []
    real_step = loop.SacLearner.step

    def counting_step(self, batch):
        inserted.append(int(batch["inserted"]))
        real_step(self, batch)

    monkeypatch.setattr(loop.SacLearner, "step", counting_step)
    assert loop.run(seed=0, refresh_every=7, eval_every=150, max_steps=300) is None  # far from -200
    assert inserted == list(range(100, 301))  # from the 100th stored transition, one update each
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("env steps")]
    assert [line.split(":")[0] for line in lines] == ["env steps 150", "env steps 300"]
