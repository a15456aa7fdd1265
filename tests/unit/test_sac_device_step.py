"""The SAC step as a device program: no host read inside a step, a chunk's metrics are the
per-update values averaged, and the fast paths (`learner.compile: compile` on the CPU here,
`graphs` where CUDA is) give the eager reference's losses, weights and combiner state, skip a
NaN batch the same way and resume exactly."""
import copy

import numpy as np
import pytest
import torch

from learner.sac.learner import SacLearner
from tests.support.host_reads import count_host_reads
from tests.unit.test_sac_learner import SPEC, _batch, _cfg

CUDA = torch.cuda.is_available()


def _learner(combiner="sum", model="mtsac", compile="off", device="cpu", seed=0, bf16=False):
    cfg = _cfg(model, combiner)
    learner_cfg = cfg.learner.model_copy(update={"compile": compile, "bf16": bf16})
    cfg = cfg.model_copy(update={"learner": learner_cfg})
    torch.manual_seed(seed)
    return SacLearner(cfg, SPEC, device)


def _weights(learner) -> list[torch.Tensor]:
    nets = (learner.actor, learner.critic, learner.critic_target)
    return [p.detach().cpu() for net in nets for p in net.parameters()] + [learner.log_alpha.cpu()]


@pytest.mark.parametrize("combiner", ["sum", "pcgrad"])
def test_a_step_reads_nothing_back_from_the_device(combiner):
    learner = _learner(combiner, "multihead")
    learner.step(_batch(0))                     # the first step sets up metric columns, Adam
    with count_host_reads() as reads:
        learner.step(_batch(1))
        learner.step(_batch(2))
    assert reads == []
    learner.read_metrics()


def test_a_chunk_reports_the_mean_of_its_updates():
    one, chunk = _learner(seed=3), _learner(seed=3)
    torch.manual_seed(11)
    per_update = [one.update(_batch(i)) for i in range(3)]
    torch.manual_seed(11)
    for i in range(3):
        chunk.step(_batch(i))
    averaged = chunk.read_metrics()
    assert set(averaged) == set(per_update[0]) - {"learner/nonfinite_total"}
    for key, value in averaged.items():
        assert value == pytest.approx(np.mean([m[key] for m in per_update]), rel=1e-5, abs=1e-7), key
    assert chunk.read_metrics() == {}           # read once: the sums start again


def _run(learner, batches, seed):
    torch.manual_seed(seed)
    return [learner.update(b) for b in batches]


def _nan_batch(seed):
    bad = _batch(seed)
    bad["reward"][0, 1] = np.nan
    return bad


def _check_same(fast, eager, fast_metrics, eager_metrics):
    for got, want in zip(fast_metrics, eager_metrics):
        assert set(got) == set(want)
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-5), key
    for got, want in zip(_weights(fast), _weights(eager)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (fast.updates, fast.nonfinite_total) == (eager.updates, eager.nonfinite_total)
    for a, b in zip(fast.state_dict()["combiners"].values(), eager.state_dict()["combiners"].values()):
        assert a.keys() == b.keys()


def _fast_path_equals_eager(mode, device, combiner, bf16=False):
    batches = [_batch(1), _batch(2), _nan_batch(3), _batch(4), _batch(5), _batch(6)]
    eager = _learner(combiner, compile="off", device=device, bf16=bf16)
    fast = _learner(combiner, compile=mode, device=device, bf16=bf16)
    eager_metrics = _run(eager, batches, seed=7)
    fast_metrics = _run(fast, batches, seed=7)
    assert fast._runner.mode == mode, fast._runner.fallback_reason
    assert fast.nonfinite_total == 1 and fast.updates == len(batches) - 1
    _check_same(fast, eager, fast_metrics, eager_metrics)
    # Resume: a copy through state_dict goes on exactly as the original does.
    resumed = _learner(combiner, compile=mode, device=device, seed=99, bf16=bf16)
    resumed.load_state_dict(copy.deepcopy(fast.state_dict()))
    more = [_batch(8), _batch(9), _batch(10), _batch(11)]
    _check_same(resumed, fast, _run(resumed, more, seed=12), _run(fast, more, seed=12))


@pytest.mark.parametrize("combiner", ["sum", "pcgrad"])
def test_compiled_update_equals_the_eager_one(combiner):
    _fast_path_equals_eager("compile", "cpu", combiner)


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("combiner", ["sum", "pcgrad"])
@pytest.mark.parametrize("mode", ["graphs", "compile"])
def test_cuda_fast_paths_equal_the_eager_update(mode, combiner):
    _fast_path_equals_eager(mode, "cuda", combiner)


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("combiner", ["sum", "pcgrad"])
def test_cuda_graphs_equal_the_eager_update_in_bf16(combiner):
    # A graph replays the eager update's own kernels, bfloat16 ones included. (torch.compile
    # may fuse and round bfloat16 differently; its check then falls back to eager, saying so.)
    _fast_path_equals_eager("graphs", "cuda", combiner, bf16=True)
