"""Combiner overhead: time per update of each combiner divided by the plain summed-loss update
(one backward of Σ_k L_k + the optimizer step) on the same model and batch, measured side by
side in one run (interleaved, after warm-up, median over repeats).

(a) MT-SAC critic (paper 003/004 setup): MLP 3×400 on obs 39 + action 4 + one-hot task id,
    K = 10 and 50 tasks with their own slices of the batch; PCGrad gets its K gradients from one
    vmapped pass (`apply_task_split`); a naive per-task loop (K backward passes + vector
    projections in Python) is shown for reference.
(b) Nature CNN (paper 000 Atari setup) with a policy/value head and 1 or 4 cheap auxiliary
    heads on the shared features; per-term gradients from one batched backward.
(c) The real IMPALA learner (`ImpalaLearner.update`, optimizer step included) on Breakout-shaped
    unrolls with paper 001's four self-supervised terms (inverse and forward dynamics, reward,
    autoencoder). Plain is `sum`: V-trace plus the four aux terms, one backward; each combiner
    runs in its own learner built from the same seed, all on one fixed batch. "olaux forward"
    is OL-AUX with `learner.combiner.strategy: forward` (dot products from a forward-mode pass).
    "plain, bf16" is the plain update with `learner.bf16` (the forward passes in bfloat16).

    python -m bench.combiners --device cuda        # or: accord bench combiners --device cuda
"""
from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from bench.aux_learner import (SELF_SUPERVISED, _check_no_skipped_steps, _learner_steps,
                                 atari_batch, impala_case)
from combiners import (CosineGate, OLAux, PCGrad, Sum, apply_combined, apply_task_split,
                       flatten, write_grads)

GOALS = {  # ratio vs plain on a GPU
    ("mtsac", 10, "pcgrad"): 1.3, ("mtsac", 50, "pcgrad"): 1.5,
    ("cnn", None, "cosine_gate every=8"): 1.15, ("cnn", None, "cosine_gate every=1"): 1.7,
    ("cnn", 4, "olaux"): 1.5,
    ("impala", None, "cosine_gate every=8"): 1.15, ("impala", None, "cosine_gate every=1"): 1.7,
    ("impala", 4, "olaux"): 1.5, ("impala", 4, "olaux forward"): 1.5,
}


# ---- (a) MT-SAC critic -------------------------------------------------------------------------

class Critic(nn.Module):
    def __init__(self, num_tasks: int, hidden: int = 400, obs_dim: int = 39, act_dim: int = 4):
        super().__init__()
        d = obs_dim + act_dim + num_tasks
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, obs, act, task):
        return self.net(torch.cat([obs, act, task], dim=-1)).squeeze(-1)


def critic_loss(model, obs, act, task, target):
    return F.mse_loss(model(obs, act, task), target)


def critic_losses(model, obs, act, task, target):
    """All K tasks' `critic_loss` from one plain forward of the whole [K, n] batch."""
    K, n = target.shape
    q = model(obs.flatten(0, 1), act.flatten(0, 1), task.flatten(0, 1)).view(K, n)
    return ((q - target) ** 2).mean(dim=1)


def _naive_pcgrad(model, batch, rng: random.Random):
    """Reference loop: K backward passes, then Alg. 1 on vectors, one pair at a time."""
    obs, act, task, target = batch
    K, n = target.shape
    q = model(obs.flatten(0, 1), act.flatten(0, 1), task.flatten(0, 1)).view(K, n)
    losses = ((q - target) ** 2).mean(dim=1)
    params = list(model.parameters())
    grads = [flatten(torch.autograd.grad(losses[k], params, retain_graph=k < K - 1))
             for k in range(K)]
    total = torch.zeros_like(grads[0])
    for i in range(K):
        g_i = grads[i].clone()
        others = [j for j in range(K) if j != i]
        rng.shuffle(others)
        for j in others:
            dot = torch.dot(g_i, grads[j])
            if dot < 0:
                g_i -= dot / torch.dot(grads[j], grads[j]) * grads[j]
        total += g_i
    write_grads(params, total)


def mtsac_case(K: int, n: int, hidden: int, device: str):
    torch.manual_seed(0)
    base = Critic(K, hidden).to(device)
    obs = torch.randn(K, n, 39, device=device)
    act = torch.rand(K, n, 4, device=device) * 2 - 1
    task = F.one_hot(torch.arange(K, device=device), K).float()[:, None].expand(K, n, K)
    target = torch.randn(K, n, device=device)
    batch = (obs, act, task.contiguous(), target)
    names = [name for name, _ in base.named_parameters()]

    def plain(model):
        critic_losses(model, *batch).sum().backward()

    def ours(combiner):
        # The fixed-weight update (sum) takes the batched losses; PCGrad needs G (vmap).
        return lambda model: apply_task_split(combiner, model, critic_loss, batch, names,
                                              batched_loss_fn=critic_losses)

    rng = random.Random(0)
    return base, [("plain", plain), ("sum", ours(Sum())), ("pcgrad", ours(PCGrad(seed=0))),
                  ("naive pcgrad loop", lambda model: _naive_pcgrad(model, batch, rng))]


# ---- (b) Nature CNN with auxiliary heads -------------------------------------------------------

class AuxAgent(nn.Module):
    def __init__(self, num_aux: int, frame: int, num_actions: int = 6, aux_dim: int = 32):
        super().__init__()
        from models.torsos import NatureCNN
        self.torso = NatureCNN(in_channels=4, hidden=512, frame_size=frame)
        self.pv = nn.Linear(self.torso.output_dim, num_actions + 1)   # logits + value
        self.aux = nn.ModuleList(nn.Linear(self.torso.output_dim, aux_dim)
                                 for _ in range(num_aux))


def agent_losses(model: AuxAgent, obs, actions, adv, returns, aux_targets) -> dict:
    z = model.torso(obs)
    out = model.pv(z)
    logp = F.log_softmax(out[:, :-1], dim=-1)
    pg = -(logp.gather(1, actions[:, None]).squeeze(1) * adv).mean()
    entropy = -(logp.exp() * logp).sum(-1).mean()
    baseline = 0.5 * ((out[:, -1] - returns) ** 2).mean()
    losses = {"main": pg + 0.5 * baseline - 0.01 * entropy}
    for i, head in enumerate(model.aux):
        losses[f"aux{i + 1}"] = F.mse_loss(head(z), aux_targets[i])
    return losses


def cnn_case(num_aux: int, N: int, frame: int, device: str):
    torch.manual_seed(0)
    base = AuxAgent(num_aux, frame).to(device)
    batch = (torch.randint(0, 256, (N, 4, frame, frame), dtype=torch.uint8, device=device),
             torch.randint(0, 6, (N,), device=device), torch.randn(N, device=device),
             torch.randn(N, device=device), torch.randn(num_aux, N, 32, device=device))

    def plain(model):
        sum(agent_losses(model, *batch).values()).backward()

    def ours(combiner):
        def update(model):
            heads = {"main": list(model.pv.parameters())}
            heads.update({f"aux{i + 1}": list(h.parameters()) for i, h in enumerate(model.aux)})
            apply_combined(combiner, agent_losses(model, *batch),
                           list(model.torso.named_parameters()), heads)
        return update

    return base, [("plain", plain), ("sum", ours(Sum())),
                  ("cosine_gate every=1", ours(CosineGate(every=1))),
                  ("cosine_gate every=8", ours(CosineGate(every=8))),
                  ("olaux", ours(OLAux()))]


# ---- timing ------------------------------------------------------------------------------------

def _model_steps(base: nn.Module, methods: list[tuple[str, Callable]]):
    """One full update per call (zero_grad, the method's backward, an Adam step), each method
    on its own copy of `base`."""
    steps = []
    for name, fn in methods:
        model = copy.deepcopy(base)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step(fn=fn, model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            fn(model)
            opt.step()
        steps.append((name, step))
    return steps


def _interleaved(steps: list[tuple[str, Callable[[], object]]], device: str, repeats: int,
                 warmup: int, block: int) -> dict[str, float]:
    """Median seconds per update; each sample is `block` updates, methods take turns (the
    first mover rotates, so slow drifts of the machine hit every method alike)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    samples: dict[str, list[float]] = {name: [] for name, _ in steps}
    for r in range(warmup + repeats):
        shift = r % len(steps)
        for name, step in steps[shift:] + steps[:shift]:
            sync()
            start = time.perf_counter()
            for _ in range(block):
                step()
            sync()
            if r >= warmup:
                samples[name].append((time.perf_counter() - start) / block)
    return {name: statistics.median(ts) for name, ts in samples.items()}


def _rows(case: str, kind: str, size, times: dict[str, float], device: str) -> list[dict]:
    rows = []
    for name, t in times.items():
        goal = GOALS.get((kind, size, name), GOALS.get((kind, None, name)))
        ratio = t / times["plain"]
        rows.append({"case": case, "combiner": name, "ms": 1e3 * t, "ratio": ratio,
                     "goal": goal, "device": device,
                     "met": None if goal is None or not device.startswith("cuda")
                     else ratio <= goal})
    return rows


def _print(rows: list[dict], device: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain fallback
        print(f"{'case':34} {'combiner':22} {'ms/update':>10} {'ratio':>8} {'goal':>8}")
        for r in rows:
            goal = "" if r["goal"] is None else f"<= {r['goal']:.2f}x"
            print(f"{r['case']:34} {r['combiner']:22} {r['ms']:10.2f} {r['ratio']:7.2f}x "
                  f"{goal:>8}")
        return
    table = Table(title=f"combiner update time vs plain summed-loss update ({device})")
    for col in ("case", "combiner", "ms/update", "ratio vs plain", "goal (GPU)"):
        table.add_column(col, justify="left" if col in ("case", "combiner") else "right")
    for r in rows:
        goal = "" if r["goal"] is None else f"≤ {r['goal']:.2f}×"
        if r["met"] is not None:
            goal += " ✓" if r["met"] else " ✗"
        table.add_row(r["case"], r["combiner"], f"{r['ms']:.2f}", f"{r['ratio']:.2f}×", goal)
    Console(width=120).print(table)


CASES = ("mtsac", "cnn", "impala")


def main(device: str = "cpu", repeats: int | None = None, quick: bool = False,
         tiny: bool = False, cases: tuple[str, ...] = CASES) -> list[dict]:
    """Run the cases and print the table; returns the rows as dicts.

    On CPU the CNN batch is cut to 32×2 frames (32×20 on CUDA) and the learner's to T=5 × B=16
    unrolls (T=20 × B=32 on CUDA, IMPALA's) so the default run stays within a few minutes;
    `quick` uses few repeats (and on CPU 32 samples per task, 32 frames, T=5 × B=8), `tiny`
    shrinks every model and batch (for smoke tests). The case column names the sizes used.
    """
    unknown = set(cases) - set(CASES)
    if unknown:
        raise ValueError(f"unknown bench cases {sorted(unknown)}; expected some of {CASES}")
    cuda = device.startswith("cuda")
    if repeats is None:
        repeats = 2 if quick else (15 if cuda else 7)
    warmup = 1 if quick else 2
    if tiny:
        mtsac = [(3, 8, 32), (5, 8, 32)]
        cnn = [(1, 4, 36), (4, 4, 36)]
        unroll, batch_size = 2, 4
    else:
        n = 32 if quick and not cuda else 128
        mtsac = [(10, n, 400), (50, n, 400)]
        frames = 32 * 20 if cuda else (32 if quick else 32 * 2)
        cnn = [(1, frames, 84), (4, frames, 84)]
        unroll, batch_size = (20, 32) if cuda else ((5, 8) if quick else (5, 16))
    rows = []
    for K, n, hidden in mtsac if "mtsac" in cases else []:
        base, methods = mtsac_case(K, n, hidden, device)
        times = _interleaved(_model_steps(base, methods), device, repeats, warmup,
                             block=8 if cuda else 1)
        rows += _rows(f"mtsac critic K={K} ({n}/task)", "mtsac", K, times, device)
    for num_aux, N, frame in cnn if "cnn" in cases else []:
        base, methods = cnn_case(num_aux, N, frame, device)
        times = _interleaved(_model_steps(base, methods), device, repeats, warmup, block=8)
        rows += _rows(f"nature cnn main+{num_aux} aux (N={N})", "cnn", num_aux, times, device)
    if "impala" in cases:
        learners = impala_case(unroll, batch_size, device)
        # block=8: every sample of cosine_gate every=8 holds exactly one measured update (a
        # tiny smoke run times single updates instead).
        times = _interleaved(_learner_steps(learners, atari_batch(unroll, batch_size)), device,
                             repeats, warmup, block=1 if tiny else 8)
        _check_no_skipped_steps(learners)
        rows += _rows(f"impala learner v-trace+{len(SELF_SUPERVISED)} aux "
                      f"(T={unroll}, B={batch_size})", "impala", len(SELF_SUPERVISED), times,
                      device)
    _print(rows, device)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--case", action="append", choices=CASES,
                        help="run only this case (repeatable); default: all")
    args = parser.parse_args()
    main(args.device, args.repeats, args.quick, args.tiny, tuple(args.case or CASES))
