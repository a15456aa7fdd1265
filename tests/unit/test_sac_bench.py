"""Smoke test of the SAC benchmark on small networks (structure only, no timing assertions)."""
import math


def test_sac_bench_runs_quick_and_returns_rows(capsys):
    from bench.sac import main

    rows = main(device="cpu", quick=True)
    assert {r["method"] for r in rows} == {"sac (sum)", "sac + pcgrad (task-split)",
                                           "sac (sum), bf16", "sac + pcgrad, bf16",
                                           "sac (sum), before", "sac (sum), plain",
                                           "sac + naive pcgrad loop"}
    assert [r["case"].split()[0] for r in rows] == ["MT10"] * 7 + ["MT50"] * 6
    for r in rows:
        assert r["ms"] > 0 and math.isfinite(r["ratio"])
        if r["method"] == "sac (sum)":
            assert r["ratio"] == 1.0
    out = capsys.readouterr().out
    assert "ratio vs sum" in out and out.count("sum, bf16 now / before") == 2


def test_the_plain_update_is_the_learner_s_arithmetic():
    """The floor is only a floor if it computes what the learner computes: from the same
    weights and seed, three plain updates leave every weight where three learner updates do."""
    import torch

    from bench.sac import _batch, _learner
    from bench.sac_plain import PlainSacUpdate

    learner = _learner(3, "sac (sum)", (16, 16), "cpu")
    plain = PlainSacUpdate(learner)
    batches = [_batch(3, 8) for _ in range(3)]
    for b, batch in enumerate(batches):
        batch["reward"] = batch["reward"] + b        # not the same batch three times
        batch["terminated"][:, ::3] = True           # and ends that cut the bootstrap
    for runner in (learner, plain):
        torch.manual_seed(1)
        for batch in batches:
            runner.step(batch)
    pairs = [(learner.actor, plain.actor), (learner.critic, plain.critic),
             (learner.critic_target, plain.critic_target)]
    for ours, theirs in pairs:
        for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(learner.log_alpha, plain.log_alpha, rtol=1e-5, atol=1e-6)
    assert not torch.equal(learner.log_alpha.detach(), torch.zeros(3))   # the updates moved it
