"""The multi-task SAC update's time, measured side by side in one run (interleaved, after
warm-up, median over repeats), per update over chunks of updates read once, as the learner
actor runs them.

One update is the whole step: target, critic step, actor step, α step, Polyak. Shapes are
Meta-World's (papers 003/004): MT10 (K=10 tasks, obs 39 + 10 one-hot) and MT50 (K=50, obs
39 + 50), 4-dim actions, 3×400 MLPs, 128 transitions per task.

- `sac (sum)`: the MT-SAC baseline as accord runs it (`learner.compile: auto`, i.e. one CUDA
  graph per update on a GPU, eager on the CPU): one batched forward and one backward of
  Σ_k J_k per network. Every ratio is against this row.
- `sac + pcgrad (task-split)`: K per-task gradients on the shared weights from one vmapped
  pass, then PCGrad on the device.
- `sac (sum), bf16` and `sac + pcgrad, bf16`: the same with `learner.bf16`, the hidden layers'
  products in bfloat16 (on a GPU's tensor cores; on a CPU's AMX units where it has them, and
  possibly slower than float32 where it has not).
- `..., eager` (CUDA only): the same update with `learner.compile: off`, what the graph saves.
- `sac (sum), compiled`: `learner.compile: compile` (torch.compile; its compile time is spent
  in the warm-up, outside the timing; left out of `--quick`).
- `sac (sum), before`: the update as it ran before it was a device program
  (bench/sac_before.py): vmapped losses, host reads of every metric and check, unfused Adam.
- `sac (sum), plain`: the same update written plainly (bench/sac_plain.py: the same networks
  and arithmetic, nothing around them), the floor of what the learner's update can cost on
  that device when it runs eagerly.
- `sac + naive pcgrad loop`: K forward/backward passes per network, then Alg. 1 of paper 003
  on flat vectors, one pair at a time (what a straightforward implementation does).

    python -m bench.sac --device cuda        # or: accord bench sac --device cuda
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np
import torch

from accord.config import config_from_dict
from bench.sac_before import HostSyncedSacLearner
from bench.sac_plain import PlainSacUpdate
from combiners import flatten, write_grads
from envs import EnvSpec
from learner.sac.learner import SacLearner

OBS, ACTION = 39, 4


class NaivePCGradSplit:
    """Drop-in for the learner's task split: a per-task loop and a per-pair projection loop."""

    def __init__(self, model, num_tasks: int, seed: int = 0):
        self.model, self.K = model, num_tasks
        self.shared = model.shared_parameters()
        self.heads = model.task_parameters() or [[] for _ in range(num_tasks)]
        self.rng = random.Random(seed)

    def apply(self, combiner, loss_fn, batches, task_ids):
        grads, auxes = [], []
        for k in range(self.K):
            loss, aux = loss_fn(self.model, batches[0][k], task_ids[k], *(t[k] for t in batches[1:]))
            g = torch.autograd.grad(loss, self.shared + self.heads[k], allow_unused=True,
                                    materialize_grads=True)
            write_grads(self.heads[k], flatten(g[len(self.shared):])) if self.heads[k] else None
            grads.append(flatten(g[:len(self.shared)]))
            auxes.append({n: v.detach() for n, v in aux.items()})
        total = torch.zeros_like(grads[0])
        for i in range(self.K):
            g_i = grads[i].clone()
            others = [j for j in range(self.K) if j != i]
            self.rng.shuffle(others)
            for j in others:
                dot = torch.dot(g_i, grads[j])
                if dot < 0:
                    g_i -= dot / torch.dot(grads[j], grads[j]) * grads[j]
            total += g_i
        write_grads(self.shared, total)
        return {}, {n: torch.stack([a[n] for a in auxes]) for n in auxes[0]}


# method -> (combiner, learner.compile, learner.bf16, learner class); "naive" swaps in the
# per-task loop
METHODS = {
    "sac (sum)": ("sum", "auto", False, SacLearner),
    "sac + pcgrad (task-split)": ("pcgrad", "auto", False, SacLearner),
    "sac (sum), bf16": ("sum", "auto", True, SacLearner),
    "sac + pcgrad, bf16": ("pcgrad", "auto", True, SacLearner),
    "sac (sum), eager": ("sum", "off", False, SacLearner),
    "sac (sum), compiled": ("sum", "compile", False, SacLearner),
    "sac + pcgrad, eager": ("pcgrad", "off", False, SacLearner),
    "sac (sum), before": ("sum", "off", False, HostSyncedSacLearner),
    "sac (sum), plain": ("sum", "off", False, PlainSacUpdate),
    "sac + naive pcgrad loop": ("naive", "off", False, SacLearner),
}


def _learner(K: int, method: str, hidden: tuple[int, ...],
             device: str) -> SacLearner | PlainSacUpdate:
    combiner, mode, bf16, cls = METHODS[method]
    cfg = config_from_dict({
        "env": {"kind": "gym", "tasks": [f"task{k}" for k in range(K)]},  # shapes only: no env is made
        "actors": {"num_actors": K},
        "learner": {"model": "mlp", "algorithm": "sac", "compile": mode, "bf16": bf16,
                    "combiner": {"name": "sum" if combiner == "sum" else "pcgrad",
                                 "options": {} if combiner == "sum" else {"seed": 0}},
                    "sac": {"model": "mtsac", "hidden": list(hidden)}},
    })
    torch.manual_seed(0)
    spec = EnvSpec((OBS + K,), np.dtype(np.float32), action_dim=ACTION)
    if cls is PlainSacUpdate:   # the learner's networks, run plainly
        return PlainSacUpdate(SacLearner(cfg, spec, device))
    learner = cls(cfg, spec, device)
    if combiner == "naive":
        learner._critic_split = NaivePCGradSplit(learner.critic, K)
        learner._actor_split = NaivePCGradSplit(learner.actor, K)
    return learner


def _batch(K: int, n: int) -> dict:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(K, n, OBS + K)).astype(np.float32)
    obs[..., OBS:] = np.eye(K, dtype=np.float32)[:, None]          # one-hot task id
    next_obs = obs.copy()
    next_obs[..., :OBS] = rng.normal(size=(K, n, OBS))
    return {"obs": obs, "next_obs": next_obs,
            "action": rng.uniform(-1, 1, (K, n, ACTION)).astype(np.float32),
            "reward": rng.normal(size=(K, n)).astype(np.float32),
            "terminated": np.zeros((K, n), bool), "truncated": np.zeros((K, n), bool),
            "versions": np.zeros(K, np.int64), "episodes": np.zeros((0, 4)), "inserted": 0}


def _interleaved(learners: dict[str, SacLearner], batch: dict, device: str, repeats: int,
                 warmup: int, chunk: int) -> dict[str, float]:
    """Median seconds per update over chunks of `chunk` steps and one read; the methods take
    turns and the first mover rotates."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    names = list(learners)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            for _ in range(chunk):
                learners[name].step(batch)
            learners[name].read_metrics()
            sync()
            if r >= warmup:
                samples[name].append((time.perf_counter() - start) / chunk)
    return {n: statistics.median(ts) for n, ts in samples.items()}


def main(device: str = "cpu", quick: bool = False) -> list[dict]:
    """Print the table and return its rows. `quick`: a smoke run (small nets, few repeats)."""
    hidden, n = ((32, 32), 4) if quick else ((400, 400, 400), 128)
    cuda = device.startswith("cuda")
    repeats, warmup, chunk = (1, 0, 1) if quick else ((10, 2, 20) if cuda else (3, 1, 3))
    rows = []
    print(f"SAC update time vs plain SAC (sum) on {device}")
    print(f"{'case':40} {'method':28} {'ms/update':>10} {'ratio vs sum':>13}", flush=True)
    for suite, K in (("MT10", 10), ("MT50", 50)):
        # The naive loop's K passes per network make MT50 minutes long; MT10 shows its cost.
        methods = [m for m in METHODS if (cuda or not m.endswith(", eager"))
                   and (K == 10 or m != "sac + naive pcgrad loop")
                   and not (quick and m.endswith(", compiled"))]
        learners = {m: _learner(K, m, hidden, device) for m in methods}
        for learner in learners.values():   # warm-up, capture and compile stay out of the timing
            for _ in range(5 if cuda else (3 if learner.compile_mode == "compile" else 0)):
                learner.step(_batch(K, n))
            learner.read_metrics()
        times = _interleaved(learners, _batch(K, n), device, repeats, warmup, chunk)
        case = f"{suite} K={K} obs {OBS}+{K} {'x'.join(map(str, hidden))} {n}/task"
        for label in methods:
            row = {"case": case, "method": label, "ms": 1e3 * times[label],
                   "ratio": times[label] / times["sac (sum)"], "device": device}
            rows.append(row)
            print(f"{case:40} {label:28} {row['ms']:10.2f} {row['ratio']:12.2f}x", flush=True)
        for label, now, baseline in (("sum now / before", "sac (sum)", "sac (sum), before"),
                                     ("sum now / plain", "sac (sum)", "sac (sum), plain"),
                                     ("sum, bf16 now / before", "sac (sum), bf16", "sac (sum), before")):
            print(f"{case:40} {label:28} {'':10} {times[now] / times[baseline]:12.2f}x", flush=True)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    main(args.device, args.quick)
