"""`learner.bf16` in the SAC update: the networks' hidden layers run in bfloat16, their output
layers (Q, μ, log σ) and everything after the forwards (losses, the gradients the combiner
reads, Adam, Polyak) in float32, without a host read; the update stays close to float32's."""
import numpy as np
import pytest
import torch

from combiners import flatten
from tests.support.host_reads import count_host_reads
from tests.unit.test_sac_device_step import _learner
from tests.unit.test_sac_learner import _batch


def _record_dtypes(module: torch.nn.Module, seen: set, name: str) -> None:
    module.register_forward_hook(
        lambda _module, args, out: seen.update({(name, "in", args[0].dtype), (name, "out", out.dtype)}))


def _float32_state(learner):
    for net in (learner.actor, learner.critic, learner.critic_target):
        yield from net.parameters()
    yield learner.log_alpha
    for optimizer in learner._optimizers():
        for state in optimizer.state.values():
            yield from (v for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("model", ["mtsac", "multihead"])
@pytest.mark.parametrize("combiner", ["sum", "pcgrad"])
def test_bf16_hidden_layers_run_in_bfloat16_and_the_rest_in_float32(combiner, model):
    learner = _learner(combiner, model, bf16=True)
    learner.step(_batch(0))                  # Adam's state and the metric columns come into being
    seen = set()
    for net_name in ("actor", "critic", "critic_target"):
        mlps = [getattr(learner, net_name).net] if net_name == "actor" else \
            [getattr(learner, net_name).q1, getattr(learner, net_name).q2]
        for i, mlp in enumerate(mlps):
            _record_dtypes(mlp.layers[-1], seen, f"{net_name}{i}.hidden")
            _record_dtypes(mlp.out, seen, f"{net_name}{i}.out")
    combined = []   # what PCGrad's projections see: the gradients' dtype, and autocast's state
    combine = learner.critic_combiner.combine
    learner.critic_combiner.combine = lambda G, *args, **kw: (
        combined.append((G.dtype, torch.is_autocast_enabled("cpu"))), combine(G, *args, **kw))[1]
    with count_host_reads() as reads:
        learner.step(_batch(1))
    assert reads == []
    hidden = {dtype for name, _, dtype in seen if name.endswith(".hidden")}
    outputs = {dtype for name, _, dtype in seen if name.endswith(".out")}
    assert hidden == {torch.bfloat16}, seen
    assert outputs == {torch.float32}, seen
    assert len({name for name, _, _ in seen}) == 10   # every network ran: 5 MLPs, 2 layers each
    assert combined == ([(torch.float32, False)] if combiner == "pcgrad" else [])
    for tensor in _float32_state(learner):
        assert tensor.dtype == torch.float32
    for net in (learner.actor, learner.critic):
        assert all(p.grad.dtype == torch.float32 for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("combiner", ["sum", "pcgrad"])
def test_a_bf16_update_stays_close_to_the_float32_one(combiner):
    full, mixed = _learner(combiner, bf16=False), _learner(combiner, bf16=True)
    start = {net: flatten(list(getattr(full, net).parameters())).clone() for net in ("actor", "critic")}
    last = {}
    for name, learner in (("full", full), ("mixed", mixed)):
        torch.manual_seed(5)
        last[name] = [learner.update(_batch(i)) for i in range(3)][-1]
    assert mixed.updates == full.updates == 3
    for key in ("loss/critic/t0", "loss/actor/t1", "sac/q_mean"):
        assert last["mixed"][key] == pytest.approx(last["full"][key], rel=1e-2), key
    for net in ("actor", "critic"):
        # Adam's steps are about lr per weight whatever the gradient's scale, so the weights
        # are compared by where three updates took them: the same way, give or take rounding.
        moved_full = flatten(list(getattr(full, net).parameters())) - start[net]
        moved_mixed = flatten(list(getattr(mixed, net).parameters())) - start[net]
        assert torch.cosine_similarity(moved_full, moved_mixed, dim=0) > 0.98, net
        assert not torch.equal(moved_full, moved_mixed), net   # else bf16 rounded nothing


def test_bf16_leaves_the_rollout_actors_weights_float32():
    learner = _learner(bf16=True)
    learner.update(_batch(0))
    weights = learner.actor_weights()     # what the actors load and act with, in float32
    assert {w.dtype for w in weights.values()} == {np.dtype(np.float32)}
