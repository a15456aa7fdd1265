"""accord's combiners inside RLlib's own PPO Learner (real RLlib, one module per task over a
shared encoder). One module, so RLlib is imported once.

- The gradient the adapter writes on the shared encoder equals PCGrad applied to per-module
  gradients computed independently (plain torch.autograd.grad), and with Sum it equals
  RLlib's own summed backward; each task head keeps its own module's gradient.
- The shared encoder is stepped once per update (RLlib's stock learner steps it per module).
- With two learners (DDP), each combines its own shard, then the results are averaged.
- RLlib PPO with PCGrad learns multi-task CartPole in a fixed budget of iterations, and the
  PCGrad statistics reach RLlib's results.
"""
import numpy as np
import pytest
import torch

pytest.importorskip("ray.rllib")

from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner  # noqa: E402
from ray.rllib.core.columns import Columns  # noqa: E402
from ray.rllib.evaluation.postprocessing import Postprocessing  # noqa: E402

from accord.rllib import MultiTaskCartPole, multitask_ppo_config  # noqa: E402
from accord.rllib.learner import STATS_KEY  # noqa: E402
from combiners import PCGrad, flatten, read_grads  # noqa: E402

POLES = [0.25, 0.5, 1.0]
LR = 3e-4


def _learner(combiner, learner_class=None):
    config = multitask_ppo_config(combiner, POLES, seed=0, lr=LR)
    if learner_class is not None:
        config = config.learners(learner_class=learner_class)
    return config.build_learner(env=MultiTaskCartPole({"pole_lengths": POLES}))


def _batch(module_ids, n=64, seed=0):
    """A PPO train batch per module, as RLlib's learner connector would hand it over."""
    rng = np.random.default_rng(seed)
    batch = {}
    for mid in sorted(module_ids):
        obs = torch.as_tensor(rng.normal(size=(n, 4)), dtype=torch.float32)
        actions = torch.as_tensor(rng.integers(0, 2, size=n))
        logits = torch.as_tensor(rng.normal(size=(n, 2)), dtype=torch.float32)
        logp = torch.log_softmax(logits, -1).gather(1, actions[:, None]).squeeze(1)
        batch[mid] = {
            Columns.OBS: obs, Columns.ACTIONS: actions, Columns.ACTION_DIST_INPUTS: logits,
            Columns.ACTION_LOGP: logp,
            Postprocessing.ADVANTAGES: torch.as_tensor(rng.normal(size=n), dtype=torch.float32),
            Postprocessing.VALUE_TARGETS: torch.as_tensor(rng.normal(size=n) * 5,
                                                          dtype=torch.float32),
        }
    return batch


def _shared_and_heads(learner):
    mids = sorted(learner.module.keys())
    encoder = learner.module[mids[0]].encoder
    assert all(learner.module[m].encoder is encoder for m in mids)
    shared = list(encoder.parameters())
    shared_ids = {id(p) for p in shared}
    heads = {m: [p for p in learner.module[m].parameters() if id(p) not in shared_ids]
             for m in mids}
    return shared, heads


def _losses(learner, batch):
    return learner.compute_losses(fwd_out=learner.module.forward_train(batch), batch=batch)


@pytest.mark.integration
def test_pcgrad_gradient_matches_independent_reference():
    learner = _learner("pcgrad")
    shared, heads = _shared_and_heads(learner)

    # Reference: one plain autograd.grad per module loss, then combiners' PCGrad on G. The
    # weights' draw varies between processes (RLlib's build order), so take the first batch
    # whose task gradients conflict somewhere: a check without conflicts would not tell
    # PCGrad from the sum.
    for seed in range(20):
        batch = _batch(learner.module.keys(), seed=100 + seed)
        losses = _losses(learner, batch)
        names = list(losses)
        G = torch.stack([flatten(torch.autograd.grad(losses[m], shared, retain_graph=True))
                         for m in names])
        expected, stats = PCGrad(seed=0).combine(G, names=names)
        if stats["pcgrad/conflicts"] > 0:
            break
    assert stats["pcgrad/conflicts"] > 0, "no batch made the task gradients conflict"
    expected_heads = {m: flatten(torch.autograd.grad(losses[m], heads[m], retain_graph=True))
                      for m in names}

    learner.compute_gradients(_losses(learner, batch))
    assert torch.allclose(read_grads(shared), expected, atol=1e-6, rtol=0)
    assert not torch.allclose(read_grads(shared), G.sum(0), atol=1e-4), \
        "with conflicts, PCGrad must differ from the plain sum"
    for m in names:
        assert torch.allclose(read_grads(heads[m]), expected_heads[m], atol=1e-6, rtol=0)
    logged = learner.metrics.peek((("__all_modules__", STATS_KEY, "pcgrad/conflicts")))
    assert logged == stats["pcgrad/conflicts"]


@pytest.mark.integration
def test_sum_matches_rllib_summed_backward_and_steps_shared_once():
    learner = _learner("sum")
    batch = _batch(learner.module.keys(), seed=1)
    shared, heads = _shared_and_heads(learner)
    params = shared + [p for m in sorted(heads) for p in heads[m]]

    # RLlib's own compute_gradients: one backward of the summed module losses.
    PPOTorchLearner.compute_gradients(learner, _losses(learner, batch))
    expected = read_grads(params)
    grads = learner.compute_gradients(_losses(learner, batch))
    assert torch.allclose(read_grads(params), expected, atol=1e-6, rtol=0)

    # RLlib's postprocess (grad_clip) and apply (Adam): Adam's first step moves each
    # parameter by about lr, so 2·lr or more means the encoder was stepped twice.
    before = flatten([p.detach().clone() for p in shared])
    learner.apply_gradients(learner.postprocess_gradients(grads))
    step = (flatten([p.detach() for p in shared]) - before).abs().max().item()
    assert 0.5 * LR < step <= 1.01 * LR

    # RLlib's stock learner on the same tied modules puts the encoder in every module's
    # optimizer, and steps it once per module (here three times).
    stock = _learner("sum", learner_class=PPOTorchLearner)
    shared, _ = _shared_and_heads(stock)
    before = flatten([p.detach().clone() for p in shared])
    grads = stock.compute_gradients(_losses(stock, _batch(stock.module.keys(), seed=1)))
    stock.apply_gradients(stock.postprocess_gradients(grads))
    step = (flatten([p.detach() for p in shared]) - before).abs().max().item()
    assert step > 2.5 * LR


@pytest.mark.integration
@pytest.mark.learning
def test_rllib_ppo_with_pcgrad_learns_multitask_cartpole(local_ray):
    algo = multitask_ppo_config("pcgrad", POLES, seed=0, lr=1e-3).build_algo()
    try:
        results = [algo.train() for _ in range(8)]
    finally:
        algo.stop()
    returns = [r["env_runners"]["episode_return_mean"] for r in results]
    stats = results[-1]["learners"]["__all_modules__"][STATS_KEY]
    assert {"pcgrad/conflicts", "pcgrad/mean_cos", "pcgrad/pairs"} <= set(stats)
    assert stats["pcgrad/pairs"] == 3
    assert -1.0 <= stats["pcgrad/mean_cos"] <= 1.0
    # Summed over the three tasks, a random policy scores about 3 x 22; require it doubled.
    print("episode_return_mean per iteration:", [round(r, 1) for r in returns])
    assert np.mean(returns[-2:]) > 2.0 * returns[0], returns


@pytest.mark.integration
def test_two_learners_combine_per_shard_then_average(local_ray):
    """DDP on CPU (gloo): each learner combines its own shard's task gradients (its own PCGrad
    statistics), then the combined gradients are averaged, so both replicas take the same
    step (equal clipped-gradient norms, identical encoders) and the encoder moves once."""
    from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

    config = multitask_ppo_config("pcgrad", POLES, seed=0, lr=LR).learners(
        num_learners=2, num_cpus_per_learner=1)
    group = config.build_learner_group(env=MultiTaskCartPole({"pole_lengths": POLES}))
    try:
        batch = _batch(["task0", "task1", "task2"], n=128)
        batch = MultiAgentBatch({m: SampleBatch({k: v.numpy() for k, v in cols.items()})
                                 for m, cols in batch.items()}, env_steps=128)
        before = group.get_state(components="learner/rl_module")["learner"]["rl_module"]
        results = group.update(batch=batch, minibatch_size=256, num_epochs=1)
        encoders = [r.get() if hasattr(r, "get") else r for r in group.foreach_learner(
            lambda learner: {k: v.detach().numpy().copy() for k, v in
                             learner.module["task0"].unwrapped().encoder.state_dict().items()})]
    finally:
        group.shutdown()

    peek = lambda stat: stat.peek() if hasattr(stat, "peek") else float(stat)  # noqa: E731
    shard_norms = [peek(r["__all_modules__"][STATS_KEY]["norm/combined"]) for r in results]
    assert shard_norms[0] != pytest.approx(shard_norms[1]), "each shard combines its own terms"
    for m in ("task0", "task1", "task2"):
        clipped = [peek(r[m]["gradients_default_optimizer_global_norm"]) for r in results]
        assert clipped[0] == pytest.approx(clipped[1], rel=1e-6)
    a, b = encoders
    assert all(np.array_equal(a[k], b[k]) for k in a)
    step = max(np.abs(a[k] - before["task0"][f"encoder.{k}"]).max() for k in a)
    assert 0.5 * LR < step <= 1.01 * LR
