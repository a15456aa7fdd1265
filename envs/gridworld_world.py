"""The gridworlds of paper 000 (Du et al., "Adapting Auxiliary Losses Using Gradient
Similarity", Sec. 3.2 and App. F): one layout and its dynamics, in numpy. The env
kind "gridworld" (envs/gridworld.py) and the tabular teacher (envs/gridworld_teacher.py) both
build on it.

From the paper: a distribution over 15 x 15 gridworlds; the agent observes its surrounding up to
4 cells away and moves in 4 directions with 10% transition noise; walls block movement; +5 and
+10 rewards both terminate the episode; negative rewards, some terminating, some not; every
step has a fixed 0.01 chance of moving to a non-rewarding terminal state, so episodes have
finite expected length. The auxiliary task T_aux is the sampled world; the main task T_main
keeps its layout but removes the +10 rewards, whose cells then no longer terminate.

Choices made here, where the paper is silent:

- Observation: the 9 x 9 window of cells within 4 (Chebyshev distance) of the agent, centred
  on it, in three channels: wall (cells outside the grid count as walls), the cell's reward
  divided by 10, and whether the cell terminates. Flattened to float32 [3 * 81]; the agent is
  always at the centre, so its position is not shown (the task is partially observable).
- Noise: with probability 0.1 the move goes in one of the three other directions, uniformly;
  so the executed direction differs from the chosen one on 10% of moves.
- Rewards are earned for the cell the agent stands on after the move (bumping into a wall on a
  penalty cell pays the penalty again). The random end pays 0 and does not move the agent.
- Layout: each cell is a wall with probability 0.2; the start is a random free cell; free cells
  not reachable from the start become walls, so every reward is reachable. On the reachable
  cells other than the start: two +10 and two +5 (terminating), two terminating penalties of
  -1..-5 and four non-terminating penalties of -1.
- The start cell is fixed per world (Fig. 10 marks one starting point).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

SIZE = 15
VIEW_RADIUS = 4
VIEW = 2 * VIEW_RADIUS + 1
CHANNELS = 3  # wall, reward / REWARD_SCALE, terminates
REWARD_SCALE = 10.0
OBS_SIZE = CHANNELS * VIEW * VIEW
# Actions 0..3: up, right, down, left, as (row, column) offsets.
MOVES = np.array([(-1, 0), (0, 1), (1, 0), (0, -1)], dtype=np.int64)
NUM_ACTIONS = len(MOVES)
WALL_PROBABILITY = 0.2
MIN_REACHABLE = 40  # a sampled layout with fewer reachable cells is drawn again
BIG_REWARD, SMALL_REWARD = 10.0, 5.0



class Outcome(NamedTuple):
    pos: np.ndarray  # int64 [N, 2], the cell after the step
    reward: np.ndarray  # float64 [N]
    terminated: np.ndarray  # bool [N]
    ended_by_chance: np.ndarray  # bool [N]: the 0.01 random end, which pays 0 and does not move
    direction: np.ndarray  # int64 [N]: the direction executed after noise


@dataclass(frozen=True, eq=False)
class GridWorld:
    """One layout: ``walls``, ``rewards`` (earned on the cell after a move) and ``terminal``,
    all [SIZE, SIZE], and the ``start`` cell."""

    walls: np.ndarray
    rewards: np.ndarray
    terminal: np.ndarray
    start: tuple[int, int]
    noise: float = 0.1
    end_probability: float = 0.01

    def __post_init__(self) -> None:
        for name in ("walls", "rewards", "terminal"):
            if getattr(self, name).shape != (SIZE, SIZE):
                raise ValueError(f"GridWorld.{name} must be {SIZE}x{SIZE}, got {getattr(self, name).shape}")
        if self.walls[self.start] or self.terminal[self.start]:
            raise ValueError(f"GridWorld start {self.start} is a wall or a terminal cell")
        if not (0.0 <= self.noise <= 1.0 and 0.0 <= self.end_probability <= 1.0):
            raise ValueError(f"noise {self.noise} and end_probability {self.end_probability} must be in [0, 1]")

    def without_big_rewards(self) -> GridWorld:
        """T_main: the +10 cells become plain, non-terminating cells."""
        big = self.rewards == BIG_REWARD
        return replace(self, rewards=np.where(big, 0.0, self.rewards), terminal=self.terminal & ~big)

    def move(self, pos: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """Deterministic move; walls and the border leave the agent where it is."""
        target = pos + MOVES[direction]
        inside = ((target >= 0) & (target < SIZE)).all(axis=1)
        clipped = np.clip(target, 0, SIZE - 1)
        blocked = ~inside | self.walls[clipped[:, 0], clipped[:, 1]]
        return np.where(blocked[:, None], pos, target)

    def step(self, pos: np.ndarray, actions: np.ndarray, rng: np.random.Generator) -> Outcome:
        """One noisy step of N agents at cells ``pos`` [N, 2] taking ``actions`` [N]."""
        n = len(actions)
        noisy = rng.random(n) < self.noise
        # Another direction, uniform over the three that differ from the chosen one.
        direction = np.where(noisy, (actions + rng.integers(1, NUM_ACTIONS, n)) % NUM_ACTIONS, actions)
        ended = rng.random(n) < self.end_probability
        new = self.move(pos, direction)
        new[ended] = pos[ended]
        reward = np.where(ended, 0.0, self.rewards[new[:, 0], new[:, 1]])
        terminated = ended | self.terminal[new[:, 0], new[:, 1]]
        return Outcome(new, reward, terminated, ended, direction)

    def observe(self, pos: np.ndarray) -> np.ndarray:
        """float32 [N, OBS_SIZE]: the egocentric 9 x 9 window around each agent (module doc)."""
        pad = VIEW_RADIUS
        planes = np.stack([
            np.pad(self.walls.astype(np.float32), pad, constant_values=1.0),
            np.pad((self.rewards / REWARD_SCALE).astype(np.float32), pad),
            np.pad(self.terminal.astype(np.float32), pad),
        ])
        # In padded coordinates the window of cell (r, c) starts at (r, c).
        rows = pos[:, 0, None, None] + np.arange(VIEW)[None, :, None]
        cols = pos[:, 1, None, None] + np.arange(VIEW)[None, None, :]
        windows = planes[:, rows, cols]  # [CHANNELS, N, VIEW, VIEW]
        return np.ascontiguousarray(windows.transpose(1, 0, 2, 3).reshape(len(pos), OBS_SIZE))


def _reachable(walls: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    seen = np.zeros_like(walls)
    seen[start] = True
    frontier = [start]
    while frontier:
        r, c = frontier.pop()
        for dr, dc in MOVES:
            nr, nc = r + dr, c + dc
            if 0 <= nr < SIZE and 0 <= nc < SIZE and not walls[nr, nc] and not seen[nr, nc]:
                seen[nr, nc] = True
                frontier.append((nr, nc))
    return seen


def sample_world(seed: int) -> GridWorld:
    """The world of ``seed`` (T_aux, with its +10 rewards); the same seed gives the same world."""
    rng = np.random.default_rng(seed)
    while True:
        walls = rng.random((SIZE, SIZE)) < WALL_PROBABILITY
        free = np.argwhere(~walls)
        start = tuple(int(v) for v in free[rng.integers(len(free))])
        reachable = _reachable(walls, start)
        if reachable.sum() >= MIN_REACHABLE:
            break
    walls = ~reachable  # unreachable pockets would only be dead observation
    cells = [tuple(c) for c in np.argwhere(reachable) if tuple(c) != start]
    rewards = np.zeros((SIZE, SIZE))
    terminal = np.zeros((SIZE, SIZE), dtype=bool)
    placements = ([(BIG_REWARD, True)] * 2 + [(SMALL_REWARD, True)] * 2
                  + [(-float(rng.integers(1, 6)), True) for _ in range(2)] + [(-1.0, False)] * 4)
    chosen = rng.choice(len(cells), size=len(placements), replace=False)
    for index, (value, terminates) in zip(chosen, placements):
        rewards[cells[index]] = value
        terminal[cells[index]] = terminates
    return GridWorld(walls, rewards, terminal, start)
