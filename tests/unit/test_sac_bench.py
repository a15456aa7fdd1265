"""Smoke test of the SAC benchmark on small networks (structure only, no timing assertions)."""
import math


def test_sac_bench_runs_quick_and_returns_rows(capsys):
    from bench.sac import main

    rows = main(device="cpu", quick=True)
    assert {r["method"] for r in rows} == {"sac (sum)", "sac + pcgrad (task-split)",
                                           "sac (sum), before", "sac + naive pcgrad loop"}
    assert [r["case"].split()[0] for r in rows] == ["MT10"] * 4 + ["MT50"] * 3
    for r in rows:
        assert r["ms"] > 0 and math.isfinite(r["ratio"])
        if r["method"] == "sac (sum)":
            assert r["ratio"] == 1.0
    assert "ratio vs sum" in capsys.readouterr().out
