"""The evaluator actor: every `run.eval_every` updates the driver asks it to play the newest
published policy on every task (`run.eval_episodes` each, deterministic for SAC) and gets
back `eval/...` metrics. It runs beside training, so evaluation never stalls the learner."""
from __future__ import annotations

import ray
import torch

from actors.evaluation import build_eval_policy, eval_metrics, evaluate_policy


# No CPU reserved: it plays a few episodes now and then, and a fleet sized to its CPUs (one
# per rollout actor and the learner) would otherwise leave it waiting for one forever.
@ray.remote(num_cpus=0)
class EvaluatorActor:
    def __init__(self, cfg, spec, weight_store_name: str):
        torch.set_num_threads(1)
        self.cfg, self.spec = cfg, spec
        self.weight_store = ray.get_actor(weight_store_name)
        self.rounds = 0

    def __repr__(self) -> str:
        return f"EvaluatorActor(evaluator, tasks {', '.join(self.cfg.env.tasks)}, rounds {self.rounds})"

    def evaluate(self) -> dict[str, float]:
        reply = ray.get(self.weight_store.latest.remote(-1))
        if reply is None:
            return {}
        version, (ref,) = reply
        act = build_eval_policy(self.cfg, self.spec, ray.get(ref))
        # A new seed each round, so successive evaluations are independent samples.
        seed = self.cfg.run.seed + 20_000 + 1_000 * self.rounds
        self.rounds += 1
        results = evaluate_policy(self.cfg, act, self.cfg.run.eval_episodes, seed)
        return {**eval_metrics(results), "eval/version": float(version)}
