"""The tabular Q-learning teacher pi_Q of paper 000 (Du et al., Sec. 3.2 and App. F).

The teacher is trained on the original world T_aux (with its +10 rewards) by Q-learning
(Watkins, 1989) with a uniform exploration policy, as in the paper's Fig. 10:

    Q(s, a) <- Q(s, a) + alpha * (r + gamma * max_a' Q(s', a') * (1 - terminal) - Q(s, a))

with gamma = 0.95, the paper's discount. The state is the agent's cell: the teacher sees the
whole state, unlike the student with its egocentric window.

pi_Q at temperature 0 is the greedy policy (ties split evenly); at temperature tau > 0 it is
softmax(Q(s, .) / tau), the teacher temperatures of the paper's Fig. 3.

Choices made here, where the paper is silent:
- Exploring starts: each episode starts on a uniformly random free non-terminal cell, so a
  uniform behaviour policy visits far cells too; updates come from `walkers` episodes run side
  by side (one vectorised update per step; duplicates of one (s, a) in a step keep one).
- alpha = 0.1 and the number of transitions are arguments; the defaults converge on the
  sampled 15 x 15 worlds within about a second.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .gridworld_world import NUM_ACTIONS, SIZE, GridWorld, sample_world

GAMMA = 0.95
# The teachers' names in a config (`learner.aux.<name>.teacher`). They read the agent's cell,
# which the observation does not show, so the actors record their policies in each unroll
# instead of the learner running them.
RECORDED_TEACHERS = ("q_aux", "q_main")


def train_teacher(world: GridWorld, *, transitions: int = 300_000, alpha: float = 0.1,
                  gamma: float = GAMMA, walkers: int = 64, seed: int = 0) -> np.ndarray:
    """Q-learning on ``world``; returns Q, float64 [SIZE, SIZE, NUM_ACTIONS]."""
    if transitions < walkers or walkers < 1:
        raise ValueError(f"need transitions >= walkers >= 1, got {transitions} and {walkers}")
    if not (0.0 < alpha <= 1.0 and 0.0 <= gamma <= 1.0):
        raise ValueError(f"alpha must be in (0, 1] and gamma in [0, 1], got {alpha} and {gamma}")
    rng = np.random.default_rng(seed)
    q = np.zeros((SIZE, SIZE, NUM_ACTIONS))
    starts = np.argwhere(~world.walls & ~world.terminal)
    pos = starts[rng.integers(len(starts), size=walkers)]
    for _ in range(transitions // walkers):
        actions = rng.integers(NUM_ACTIONS, size=walkers)  # uniform exploration
        out = world.step(pos, actions, rng)
        bootstrap = q[out.pos[:, 0], out.pos[:, 1]].max(axis=1)
        target = out.reward + gamma * np.where(out.terminated, 0.0, bootstrap)
        r, c = pos[:, 0], pos[:, 1]
        q[r, c, actions] += alpha * (target - q[r, c, actions])
        pos = out.pos
        done = out.terminated
        pos[done] = starts[rng.integers(len(starts), size=int(done.sum()))]
    return q


def teacher_probs(q: np.ndarray, pos: np.ndarray, temperature: float = 0.0) -> np.ndarray:
    """pi_Q(. | s) for cells ``pos`` [N, 2] (or one cell [2]): float64 [N, NUM_ACTIONS] (or [4])."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    pos = np.asarray(pos)
    single = pos.ndim == 1
    pos = np.atleast_2d(pos)
    values = q[pos[:, 0], pos[:, 1]]
    if temperature == 0.0:
        best = values == values.max(axis=1, keepdims=True)
        probs = best / best.sum(axis=1, keepdims=True)
    else:
        logits = values / temperature
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
    return probs[0] if single else probs


@lru_cache(maxsize=16)
def world_q(seed: int, source: str) -> np.ndarray:
    """Q of the teacher of world `seed`: "q_aux" learned on T_aux (with the +10 rewards, paper
    000's cross-task teacher), "q_main" on T_main. Cached: every env of a process shares it."""
    world = sample_world(seed)
    if source == "q_main":
        world = world.without_big_rewards()
    elif source != "q_aux":
        raise ValueError(f"unknown gridworld teacher {source!r}; expected 'q_aux' or 'q_main'")
    q = train_teacher(world, seed=seed)
    q.setflags(write=False)
    return q
