"""`ImpalaLearner.step` as a device program: no host read inside a step with any combiner (and
none inside the combiners' own paths), a chunk's metrics equal to the mean of its updates', a
non-finite batch skipped and counted on the device, and exact resume."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from accord.config import config_from_dict
from combiners import CosineGate, Layout, OLAux, PCGrad, Sum, apply_combined
from envs import EnvSpec
from learner.impala.learner import ImpalaLearner
from tests.support.host_reads import count_host_reads
from tests.unit.impala_reference import hand_made_batch

SPEC = EnvSpec((4,), np.dtype(np.float32), num_actions=2)
TASKS = ["CartPole-v1", "Acrobot-v1"]
AUX = {"reward": {"hidden": 8, "weight": 0.7}}

# (name, tasks, learner settings): every combiner as configs/ and the learner set it up.
CASES = [
    ("plain", TASKS[:1], {}),
    ("sum", TASKS, {"combiner": {"name": "sum"}}),
    ("pcgrad", TASKS, {"combiner": {"name": "pcgrad", "options": {"seed": 0}}}),
    ("cosine every=1", TASKS[:1], {"aux": AUX, "combiner": {"name": "cosine_gate"}}),
    ("cosine every=8", TASKS[:1], {"aux": AUX, "combiner": {"name": "cosine_gate",
                                                             "options": {"every": 8}}}),
    ("olaux batched", TASKS[:1], {"aux": AUX, "combiner": {"name": "olaux",
                                                            "strategy": "batched"}}),
    ("olaux forward", TASKS[:1], {"aux": AUX, "combiner": {"name": "olaux",
                                                            "strategy": "forward"}}),
]
IDS = [case[0] for case in CASES]
TASK_IDS = {1: (0, 0, 0, 0), 2: (0, 1, 1, 0)}


def make_learner(tasks, settings: dict, seed: int = 0, max_nonfinite_run: int = 5):
    cfg = config_from_dict({
        "env": {"kind": "gym", "tasks": list(tasks), "envs_per_actor": 4},
        "actors": {"num_actors": len(tasks), "unroll_length": 4},
        "learner": {"model": "mlp", "batch_size": 4, "lr_decay": False, "lr": 1e-3,
                    "max_grad_norm": 40.0, "discount": 0.9,
                    "max_nonfinite_run": max_nonfinite_run, **settings},
    })
    torch.manual_seed(seed)
    return ImpalaLearner(cfg, SPEC, device="cpu")


def batch(tasks, seed: int) -> dict:
    return hand_made_batch(task_id=TASK_IDS[len(tasks)], seed=seed)


def nan_batch(tasks, seed: int) -> dict:
    out = batch(tasks, seed)
    out["rewards"][1, 0] = np.nan
    return out


@pytest.mark.parametrize("name,tasks,settings", CASES, ids=IDS)
def test_a_step_reads_nothing_back_from_the_device(name, tasks, settings):
    learner = make_learner(tasks, settings)
    learner.update(batch(tasks, 0))        # warm-up: metric names met, state made
    with count_host_reads() as reads:
        for i in range(9):                 # every=8: held updates and a measuring one
            learner.step(batch(tasks, 1 + i))
    assert reads == [], reads
    metrics = learner.read_metrics()
    assert learner.updates == 10 and math.isfinite(metrics["loss/total"])


def _gradients(K=3, P=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(K, P, generator=gen, dtype=torch.float64), \
        torch.rand(K, generator=gen, dtype=torch.float64) + 0.1


@pytest.mark.parametrize("combiner", [Sum(), PCGrad(seed=0), CosineGate(every=1),
                                      CosineGate(every=2), OLAux(horizon=2)],
                         ids=["sum", "pcgrad", "cosine every=1", "cosine every=2", "olaux"])
def test_the_combiners_own_paths_read_nothing_back(combiner):
    layout = Layout([("a", 0, 4), ("b", 4, 10)])
    G, L = _gradients()
    combiner.combine(G, L, layout)          # warm-up: the state is made on the device
    with count_host_reads() as reads:
        for step in range(4):
            G, L = _gradients(seed=1 + step)
            w = combiner.fixed_weights(3)
            if w is None:
                combiner.combine(G, L, layout)
            else:
                combiner.record_fixed(L)
        # And through apply_combined, with a head per term and device weights.
        x = torch.randn(5, 3)
        torso, heads = torch.nn.Linear(3, 4), [torch.nn.Linear(4, 1) for _ in range(3)]
        z = torso(x)
        losses = {f"t{k}": heads[k](z).pow(2).mean() for k in range(3)}
        apply_combined(combiner, losses, list(torso.named_parameters()),
                       {f"t{k}": list(heads[k].parameters()) for k in range(3)})
    assert reads == [], reads
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0
               for v in combiner.combine(G, L, layout)[1].values())


@pytest.mark.parametrize("name,tasks,settings", [CASES[2], CASES[4]], ids=["pcgrad", "every=8"])
def test_a_chunks_metrics_are_the_mean_of_its_updates(name, tasks, settings):
    chunked, single = make_learner(tasks, settings), make_learner(tasks, settings)
    per_update = []
    for i in range(3):
        chunked.step(batch(tasks, i))
        per_update.append(single.update(batch(tasks, i)))
    chunk = chunked.read_metrics()
    assert chunked.updates == single.updates == 3
    keys = set().union(*per_update)
    assert set(chunk) == keys
    for key in keys - {"learner/nonfinite_total"}:
        values = [m[key] for m in per_update if key in m]
        assert chunk[key] == pytest.approx(np.mean(values), rel=1e-6, abs=1e-9), key
    # every=8: the measurement's own statistics are averaged over the one update that had them.
    if "combiner/cos_now/aux/reward" in keys:
        assert chunk["combiner/gate/measured"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("name,tasks,settings", CASES, ids=IDS)
def test_a_nonfinite_batch_is_skipped_on_the_device_and_counted_at_the_read(name, tasks,
                                                                           settings):
    learner = make_learner(tasks, settings)
    learner.update(batch(tasks, 0))
    before = [p.detach().clone() for p in learner.parameters()]
    opt_before = {id(p): {k: v.clone() for k, v in learner.optimizer.state[p].items()}
                  for p in learner.parameters()}
    learner.step(nan_batch(tasks, 1))
    for p, q in zip(before, learner.parameters()):
        assert torch.equal(p, q)
    for p in learner.parameters():
        for k, v in learner.optimizer.state[p].items():
            assert torch.equal(v, opt_before[id(p)][k]), k
    # Not read yet: the step counts as taken until the read says it was skipped.
    assert learner.updates == 2 and learner.nonfinite_total == 0
    learner.step(batch(tasks, 2))
    metrics = learner.read_metrics()
    assert learner.updates == 2 and learner.nonfinite_total == 1
    assert metrics["learner/nonfinite_total"] == 1.0
    assert math.isfinite(metrics["loss/total"])     # the skipped step's NaN is left out
    assert learner.nonfinite.run == 0


def test_a_run_of_skipped_steps_raises_at_the_read():
    from learner.algorithm import NonFiniteLossError

    learner = make_learner(TASKS[:1], {}, max_nonfinite_run=2)
    learner.step(nan_batch(TASKS[:1], 0))
    learner.step(nan_batch(TASKS[:1], 1))
    learner.step(batch(TASKS[:1], 2))      # the run ended, but it happened within the chunk
    with pytest.raises(NonFiniteLossError, match="2 consecutive non-finite updates"):
        learner.read_metrics()
    assert learner.nonfinite_total == 2 and learner.updates == 1


@pytest.mark.parametrize("name,tasks,settings", CASES, ids=IDS)
def test_resume_is_exact(name, tasks, settings):
    first = make_learner(tasks, settings)
    for i in range(3):
        first.step(batch(tasks, i))
    first.step(nan_batch(tasks, 3))
    first.read_metrics()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = make_learner(tasks, settings, seed=1)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    assert (second.updates, second.nonfinite_total) == (first.updates, first.nonfinite_total)
    for i in range(4, 13):                 # every=8: past the next measurement
        first.step(batch(tasks, i))
        second.step(batch(tasks, i))
    assert first.read_metrics() == second.read_metrics()
    for p, q in zip(first.parameters(), second.parameters()):
        assert torch.equal(p, q)
