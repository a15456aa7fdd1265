"""Atari through ale-py's C++ vector env (``ale_py.vector_env.AtariVectorEnv``).

Preprocessing follows Machado et al. 2018 ("Revisiting the ALE"): 84x84 grayscale, a stack of
4 frames, frameskip 4 with max-pooling of the last two frames, sticky actions with
probability 0.25, up to 30 no-ops at reset, FIRE on reset where the game needs it, no
life-loss terminations, and episodes cut at 108,000 frames (30 minutes of play).

AtariVectorEnv's ``info`` carries lives and frame numbers but not the unclipped reward, so
the env runs with ALE's reward clipping off and clipping happens here: the training reward is
clipped, while :class:`EpisodeStats` scores are raw game scores.
"""

from __future__ import annotations

import difflib
import re
import warnings

import numpy as np
from ale_py import roms
from ale_py.vector_env import AtariVectorEnv as _ALEVectorEnv
from gymnasium.vector import AutoresetMode

from .base import RawStep, TrackedVecEnv
from .spec import EnvSpec

OBSERVATION_SHAPE = (4, 84, 84)  # [stack, height, width], channel-first as ALE returns it
FULL_ACTION_SPACE_SIZE = 18

# "BreakoutNoFrameskip-v4", "ALE/Breakout-v5", "BreakoutDeterministic-v4" -> "Breakout".
_GYM_ID = re.compile(r"^(?:ALE/)?(?P<game>.+?)(?:NoFrameskip|Deterministic)?(?:-v\d+)?$")


def _rom_ids_by_key() -> dict[str, str]:
    # Keys ignore case and underscores, so "MsPacman", "mspacman" and "ms_pacman" all match.
    return {rom.replace("_", ""): rom for rom in roms.get_all_rom_ids()}


def normalize_task(name: str) -> str:
    """Maps "breakout", "Breakout", "BreakoutNoFrameskip-v4", "ALE/Breakout-v5" to "breakout"."""
    match = _GYM_ID.match(name.strip())
    key = (match.group("game") if match else name).lower().replace("_", "")
    by_key = _rom_ids_by_key()
    if key not in by_key:
        close = difflib.get_close_matches(key, list(by_key), n=3)
        hint = f" (did you mean {' or '.join(repr(by_key[k]) for k in close)}?)" if close else ""
        raise ValueError(
            f"unknown Atari game {name!r}{hint}. Use an ALE ROM id such as 'breakout' or "
            f"'ms_pacman' (also accepted: 'MsPacman', 'MsPacmanNoFrameskip-v4', "
            f"'ALE/MsPacman-v5'); ale_py.roms.get_all_rom_ids() lists all {len(by_key)}."
        )
    return by_key[key]


def validate_task(name: str) -> None:
    """Checks the game id and that its ROM file is installed; creates no emulator."""
    rom = normalize_task(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # get_rom_path warns before returning None
        try:
            path = roms.get_rom_path(rom)
        except OSError as exc:  # missing ROM directory or checksum mismatch
            raise ValueError(f"Atari ROM for {rom!r} is unusable: {exc}") from exc
    if path is None or not path.exists():
        raise ValueError(f"Atari ROM for {rom!r} is not installed (ale_py.roms has no file for it)")


class AtariVecEnv(TrackedVecEnv):
    """``num_envs`` copies of one Atari game, observations uint8 [M, 4, 84, 84].

    Options:
        full_action_space: use all 18 ALE actions instead of the game's minimal set, so one
            policy head fits every game in a multi-game run.
        num_threads: emulator threads; 1 because one rollout actor is given one CPU.
        clip_rewards: clip the training reward to [-1, 1] (episode scores stay raw).
        sticky_actions: probability that the emulator repeats the previous action instead.
        max_episode_frames: truncate episodes after this many emulator frames
            (frameskip 4, so an episode has at most max_episode_frames / 4 agent steps).
        noop_max: up to this many random no-ops at reset.
        task_one_hot: accepted for a uniform signature; must stay 0 (image observations).
    """

    observation_dtype = np.dtype(np.uint8)
    keeps_final_obs = False  # image stacks: copying them every step is not worth it for IMPALA

    def __init__(
        self,
        task_name: str,
        task_id: int,
        num_envs: int,
        seed: int,
        *,
        full_action_space: bool = False,
        num_threads: int = 1,
        clip_rewards: bool = True,
        sticky_actions: float = 0.25,
        max_episode_frames: int = 108_000,
        noop_max: int = 30,
        task_one_hot: int = 0,
    ) -> None:
        if not 0.0 <= sticky_actions <= 1.0:
            raise ValueError(f"sticky_actions must be a probability in [0, 1], got {sticky_actions}")
        if max_episode_frames < 1:
            raise ValueError(f"max_episode_frames must be >= 1, got {max_episode_frames}")
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0 (0: one per core), got {num_threads}")
        super().__init__(normalize_task(task_name), task_id, num_envs, seed, task_one_hot)
        self._set_observation_shape(OBSERVATION_SHAPE)  # raises if a one-hot is asked for
        self.full_action_space = full_action_space
        self.num_threads = num_threads
        self.clip_rewards = clip_rewards
        self.sticky_actions = sticky_actions
        self.max_episode_frames = max_episode_frames
        self.noop_max = noop_max
        self._env: _ALEVectorEnv | None = None
        self._create()
        self.num_actions = int(self._env.single_action_space.n)

    def _create(self) -> None:
        self._env = _ALEVectorEnv(
            self.task_name,
            self.num_envs,
            num_threads=self.num_threads,
            max_num_frames_per_episode=self.max_episode_frames,
            repeat_action_probability=self.sticky_actions,
            full_action_space=self.full_action_space,
            autoreset_mode=AutoresetMode.SAME_STEP,
            noop_max=self.noop_max,
            reward_clipping=False,  # clipped in _training_reward so scores stay raw
        )

    def _reset_all(self, seed: int) -> np.ndarray:
        obs, _ = self._env.reset(seed=seed)
        return obs

    def _step_raw(self, actions):
        obs, rewards, terminated, truncated, _ = self._env.step(actions)
        return RawStep(obs, rewards, terminated, truncated)


def make_vec_env(task_name: str, task_id: int, num_envs: int, seed: int, **options) -> AtariVecEnv:
    return AtariVecEnv(task_name, task_id, num_envs, seed, **options)


def describe(task_name: str, *, full_action_space: bool = False, **_options):
    """The `EnvSpec` without stepping; the action set needs the ROM."""
    if full_action_space:
        validate_task(task_name)
        return EnvSpec(OBSERVATION_SHAPE, np.dtype(np.uint8), num_actions=FULL_ACTION_SPACE_SIZE)
    env = _ALEVectorEnv(normalize_task(task_name), 1, num_threads=1)
    try:
        return EnvSpec(OBSERVATION_SHAPE, np.dtype(np.uint8), num_actions=int(env.single_action_space.n))
    finally:
        env.close()
