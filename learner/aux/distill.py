"""Policy distillation from a frozen teacher (paper 000, Sec. 3.2 and 3.3):

    aux/distill = KL(π_teacher(·|x_t) ‖ π(·|x_t)) = Σ_a p_a (log p_a − log π(a|x_t))

per step, on the student's own trajectories. Its gradient is the cross-entropy's (paper 000,
App. F: −Σ_a π_Q(a|s) ∇ log π(a|s)); KL is reported because it is 0 when the student matches.

Two kinds of teacher:
- an accord checkpoint (file or run directory): the teacher's actor-critic is rebuilt from the
  run's config.yaml, loaded on the learner's device with `requires_grad=False` and run under
  `no_grad`, so it gets exactly zero gradient and never changes. Its policy is
  softmax(logits / temperature) (temperature 0: greedy);
- a teacher the actors record (`q_aux`, `q_main`: the gridworld's tabular Q-learning teachers,
  which see the agent's cell rather than the egocentric view); its probabilities arrive in the
  unroll as `teacher_probs/<name>`.

Which steps are distilled: those of `tasks` (default: the student's tasks the teacher was
trained on, or every task when it knows none of them; recorded teachers: every task).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from envs.gridworld_teacher import RECORDED_TEACHERS
from learner.aux.base import AuxBatch, AuxTerm


def teacher_policy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Action probabilities at `temperature`; 0 is the greedy policy, ties split evenly."""
    if temperature == 0.0:
        best = (logits == logits.max(-1, keepdim=True).values).to(logits.dtype)
        return best / best.sum(-1, keepdim=True)
    return F.softmax(logits / temperature, dim=-1)


def kl_per_step(p: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ softmax(student_logits)) over the last axis; 0·log 0 = 0 for a greedy p."""
    log_pi = F.log_softmax(student_logits, dim=-1)
    return (torch.xlogy(p, p) - p * log_pi).sum(-1)


def teacher_run_settings(config_yaml: Path) -> dict:
    """What rebuilds a teacher run's network, read from its config.yaml as plain YAML: accord
    writes the resolved config there (every field, validated when the run started), and the
    launcher's config model sits above the learner, which does not import it."""
    import yaml

    tree = yaml.safe_load(config_yaml.read_text()) or {}
    learner, env = tree.get("learner") or {}, tree.get("env") or {}
    fields = {"algorithm": learner, "model": learner, "per_task_heads": learner,
              "vf_share_layers": learner, "tasks": env}
    missing = [f"{'env' if part is env else 'learner'}.{key}" for key, part in fields.items()
               if key not in part]
    if missing:
        raise ValueError(f"teacher {config_yaml}: no {', '.join(missing)}; a teacher is a run "
                         f"directory accord wrote (its config.yaml has every field)")
    return {key: part[key] for key, part in fields.items()}


class CheckpointTeacher:
    """A frozen actor-critic from an accord run. A plain object, not a submodule, so its weights
    are never in the learner's parameters, optimizer or checkpoints."""

    def __init__(self, path: str | Path, obs_shape, device: torch.device):
        from learner.checkpoint import load_checkpoint, resolve_checkpoint
        from models.actor_critic import build_model

        ckpt, run_dir = resolve_checkpoint(path)
        run = teacher_run_settings(run_dir / "config.yaml")
        if run["algorithm"] != "impala":
            raise ValueError(f"teacher {ckpt}: a distillation teacher must be an IMPALA run, "
                             f"this one is {run['algorithm']!r}")
        weights = load_checkpoint(ckpt)["model"]
        num_actions = weights["heads.0.weight"].shape[0] - int(run["vf_share_layers"])
        self.model = build_model(run["model"], obs_shape, num_actions, len(run["tasks"]),
                                 run["per_task_heads"], run["vf_share_layers"])
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as err:
            raise ValueError(f"teacher {ckpt} does not fit this run's observations "
                             f"{tuple(obs_shape)}: {err}") from None
        self.model.to(device).eval().requires_grad_(False)
        self.tasks = list(run["tasks"])
        self.num_actions = num_actions
        self.path = ckpt

    def head_for(self, task: str) -> int:
        """The teacher head for a student task: its own if it was trained on it, else the first."""
        return self.tasks.index(task) if task in self.tasks else 0

    @torch.no_grad()
    def logits(self, obs: torch.Tensor, head_ids: torch.Tensor) -> torch.Tensor:
        return self.model(obs, head_ids)[0]


class Distill(AuxTerm):
    def __init__(self, name: str, weight: float, *, teacher: str, temperature: float,
                 tasks: list[str] | None, student_tasks: list[str], num_actions: int,
                 obs_shape, device: torch.device):
        super().__init__(name, weight)
        self.temperature = float(temperature)
        self.recorded = teacher in RECORDED_TEACHERS
        self.teacher = None
        if self.recorded:
            distilled = list(tasks) if tasks else list(student_tasks)
        else:
            self.teacher = CheckpointTeacher(teacher, obs_shape, device)
            if self.teacher.num_actions != num_actions:
                raise ValueError(f"teacher {self.teacher.path} has {self.teacher.num_actions} actions, "
                                 f"this run {num_actions}; use the same action space "
                                 f"(env.full_action_space) for teacher and student")
            known = [t for t in student_tasks if t in self.teacher.tasks]
            distilled = list(tasks) if tasks else (known or list(student_tasks))
        # Per student task id: is it distilled, and which teacher head serves it.
        self.register_buffer("distilled", torch.tensor([t in distilled for t in student_tasks]),
                             persistent=False)
        heads = [self.teacher.head_for(t) if self.teacher else 0 for t in student_tasks]
        self.register_buffer("teacher_head", torch.tensor(heads, dtype=torch.int64),
                             persistent=False)

    def teacher_probs(self, batch: AuxBatch) -> torch.Tensor:
        if self.recorded:
            return batch.teacher_probs[self.name].to(batch.logits.dtype)
        T, B = batch.actions.shape
        obs = batch.obs[:-1].reshape(T * B, *batch.obs.shape[2:])
        heads = self.teacher_head[batch.task_id.long()].repeat(T)
        logits = self.teacher.logits(obs, heads).float().view(T, B, -1)
        return teacher_policy(logits, self.temperature).to(batch.logits.dtype)

    def per_step(self, batch: AuxBatch):
        loss = kl_per_step(self.teacher_probs(batch), batch.logits)
        mask = self.distilled[batch.task_id.long()].to(loss.dtype).expand_as(loss)
        return loss, mask
