"""Smoke test of the combiner benchmark on tiny models (structure only, no timing assertions)."""
import math

import pytest

pytest.importorskip("models.torsos", reason="the benchmark CNN lives in models.torsos")


def test_bench_runs_on_tiny_sizes_and_returns_rows(capsys):
    from bench.combiners import main

    rows = main(device="cpu", repeats=1, quick=True, tiny=True)
    assert {r["combiner"] for r in rows} >= {"plain", "sum", "pcgrad", "naive pcgrad loop",
                                             "cosine_gate every=1", "cosine_gate every=8",
                                             "olaux"}
    assert len({r["case"] for r in rows}) == 4
    for r in rows:
        assert set(r) >= {"case", "combiner", "ms", "ratio", "goal"}
        assert r["ms"] > 0 and math.isfinite(r["ratio"])
        if r["combiner"] == "plain":
            assert r["ratio"] == 1.0
    assert "ratio vs plain" in capsys.readouterr().out
