"""Smoke tests of the combiner benchmark on tiny sizes (structure only, no timing assertions),
and of how its IMPALA case builds the learners it compares."""
import math

import numpy as np
import pytest

pytest.importorskip("models.torsos", reason="the benchmark CNN lives in models.torsos")

LEARNER_ROWS = {"plain", "plain, bf16", "cosine_gate every=1", "cosine_gate every=8", "olaux", "olaux forward"}


def test_bench_runs_on_tiny_sizes_and_returns_rows(capsys):
    from bench.combiners import main

    rows = main(device="cpu", repeats=1, quick=True, tiny=True)
    assert {r["combiner"] for r in rows} >= {"plain", "sum", "pcgrad", "naive pcgrad loop",
                                             "cosine_gate every=1", "cosine_gate every=8",
                                             "olaux"}
    assert len({r["case"] for r in rows}) == 5
    for r in rows:
        assert set(r) >= {"case", "combiner", "ms", "ratio", "goal"}
        assert r["ms"] > 0 and math.isfinite(r["ratio"])
        if r["combiner"] == "plain":
            assert r["ratio"] == 1.0
    learner_rows = {r["combiner"]: r for r in rows if r["case"].startswith("impala learner")}
    assert set(learner_rows) == LEARNER_ROWS
    for name, r in learner_rows.items():
        assert r["ratio"] > 0 and math.isfinite(r["ratio"]), name
        assert (r["goal"] is None) == name.startswith("plain"), name
    out = capsys.readouterr().out
    assert "ratio vs plain" in out and "impala learner" in out


def test_impala_case_builds_one_learner_per_method_from_the_same_weights():
    import torch

    from bench.aux_learner import SELF_SUPERVISED, impala_case
    from combiners import CosineGate, OLAux

    learners = dict(impala_case(T=2, B=2, device="cpu"))
    assert set(learners) == LEARNER_ROWS
    plain = learners["plain"]
    # The baseline sums V-trace and the four aux terms: one backward through Sum.
    assert plain.layout == "tasks" and type(plain.combiner).__name__ == "Sum"
    assert isinstance(learners["cosine_gate every=1"].combiner, CosineGate)
    assert learners["cosine_gate every=1"].combiner.every == 1
    assert learners["cosine_gate every=8"].combiner.every == 8
    assert isinstance(learners["olaux"].combiner, OLAux)
    forward = learners["olaux forward"]
    assert isinstance(forward.combiner, OLAux) and forward.lcfg.combiner.strategy == "forward"
    assert learners["olaux"].lcfg.combiner.strategy == "batched"
    for name, learner in learners.items():
        assert list(learner.aux) == list(SELF_SUPERVISED), name
        if not name.startswith("plain"):
            assert learner.layout == "main_aux", name
        assert learner.lcfg.bf16 == (name == "plain, bf16"), name
        for (key, a), b in zip(plain.state_dict()["model"].items(),
                               learner.state_dict()["model"].values()):
            assert torch.equal(a, b), f"{name}: {key} differs from the baseline's"
        for a, b in zip(plain.aux.parameters(), learner.aux.parameters()):
            assert torch.equal(a, b), f"{name}: aux heads differ from the baseline's"
    assert len({id(learner) for learner in learners.values()}) == len(learners)


def test_a_skipped_update_makes_the_learner_case_refuse_its_times():
    from bench.aux_learner import _check_no_skipped_steps, atari_batch, impala_case

    learners = impala_case(T=2, B=2, device="cpu")[:2]
    batch = atari_batch(T=2, B=2)
    _check_no_skipped_steps(learners)
    batch["rewards"] = np.full_like(batch["rewards"], np.nan)
    learners[1][1].update(batch)
    with pytest.raises(RuntimeError, match="cosine_gate every=1"):
        _check_no_skipped_steps(learners)


def test_each_timed_step_updates_its_own_learner():
    from bench.aux_learner import _learner_steps, atari_batch, impala_case

    learners = impala_case(T=2, B=2, device="cpu")
    for name, step in _learner_steps(learners, atari_batch(T=2, B=2)):
        assert "loss/total" in step(), f"{name}: the update was skipped"
    assert {name: learner.updates for name, learner in learners} == \
        {name: 1 for name, _ in learners}
