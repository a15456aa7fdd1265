"""bench/pendulum_loop.py at its smallest: it steps the real Pendulum-v1, updates the real SAC
learner `updates_per_step` times per env step from the end of the warm-up, and evaluates on its
cadence."""
import bench.pendulum_loop as loop


def test_the_loop_updates_at_the_config_s_ratio_and_evaluates_on_its_cadence(capsys, monkeypatch):
    inserted = []
    real_step = loop.SacLearner.step

    def counting_step(self, batch):
        inserted.append(int(batch["inserted"]))
        real_step(self, batch)

    monkeypatch.setattr(loop.SacLearner, "step", counting_step)
    assert loop.run(seed=0, refresh_every=7, eval_every=150, max_steps=300) is None  # far from -200
    # from the 100th stored transition, learner.sac.updates_per_step (1.5) updates each: one,
    # then two with the half carried over, and so on
    assert inserted == [step for i, step in enumerate(range(100, 301)) for _ in range(1 + i % 2)]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("env steps")]
    assert [line.split(":")[0] for line in lines] == ["env steps 150", "env steps 300"]
