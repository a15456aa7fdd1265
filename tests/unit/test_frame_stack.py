"""Compact unrolls of stacked Atari frames (envs/frame_stack.py): each frame is sent once, and
the learner's restacked observations equal the env's stacked ones exactly, through episode
ends, fresh stacks and across unrolls collated side by side."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from accord.config import config_from_dict
from actors.rollout import RolloutWorker
from envs import describe
from envs.frame_stack import COMPACT_KEYS, CONTINUES, HEAD, ZEROS, collate_compact, compact, restack_index
from learner.impala.learner import ImpalaLearner, collate

T, M = 20, 4


def breakout_cfg(compact_frames: bool, envs: int = M):
    return config_from_dict({
        "env": {"kind": "atari", "tasks": ["breakout"], "envs_per_actor": envs,
                # short episodes, so several end (and restart) inside each unroll
                "max_episode_frames": 160},
        "actors": {"num_actors": 1, "unroll_length": T, "compact_frames": compact_frames},
        "learner": {"batch_size": envs},
        "run": {"seed": 3},
    })


class RecordingWorker:
    """A Breakout rollout worker whose env's observations are recorded as the env returns
    them, so the unrolls it sends can be compared with the env's own stacks."""

    def __init__(self, compact_frames: bool, envs: int = M):
        self.worker = RolloutWorker(breakout_cfg(compact_frames, envs), 0, describe("atari", "breakout"))
        self.seen = [self.worker.obs.copy()]
        step = self.worker.env.step

        def recording_step(actions):
            result = step(actions)
            self.seen.append(result.obs.copy())
            return result

        self.worker.env.step = recording_step

    def unroll(self) -> tuple[dict, np.ndarray]:
        u = self.worker.unroll()
        return u, np.stack(self.seen[-(T + 1):])


def restacked(batch: dict) -> np.ndarray:
    return batch["obs_pool"][batch["obs_index"]]


@pytest.fixture(scope="module")
def twin_unrolls():
    """Three compact unrolls of a Breakout worker and the env's stacked observations of each."""
    recorder = RecordingWorker(True)
    try:
        pairs = [recorder.unroll() for _ in range(3)]
    finally:
        recorder.worker.close()
    packed = [u for u, _ in pairs]
    full = [{**{k: v for k, v in u.items() if k not in COMPACT_KEYS}, "obs": obs} for u, obs in pairs]
    return full, packed


def test_restacked_observations_equal_the_env_stacks_exactly(twin_unrolls):
    full, packed = twin_unrolls
    assert all("obs" not in u and "frames" in u for u in packed)
    for f, p in zip(full, packed):  # each unroll alone
        np.testing.assert_array_equal(restacked(collate([p])), f["obs"])
    # and side by side along the batch axis
    np.testing.assert_array_equal(restacked(collate(packed)), collate(full)["obs"])
    codes = np.concatenate([u["stack_start"] for u in packed], axis=1)
    # the check covers all three ways a stack starts: episodes ended inside the unrolls
    assert (codes == CONTINUES).any() and (codes == ZEROS).any() and (codes == HEAD).any()
    assert (np.concatenate([u["terminated"] | u["truncated"] for u in packed], axis=1)).any()


def test_full_stacks_when_compact_frames_is_off():
    worker = RolloutWorker(breakout_cfg(False, 2), 0, describe("atari", "breakout"))
    try:
        u = worker.unroll()
    finally:
        worker.close()
    assert "frames" not in u and u["obs"].shape == (T + 1, 2, 4, 84, 84)


def test_each_frame_is_sent_once(twin_unrolls):
    full, packed = twin_unrolls

    def nbytes(u):
        return sum(v.nbytes for v in u.values() if isinstance(v, np.ndarray))

    ratio = sum(map(nbytes, full)) / sum(map(nbytes, packed))
    # (T+1)*S frames per env against T+1 newest plus at most S-1 older ones at t=0 (none when
    # the stack starts blank): at least 84/24 = 3.5 at T=20, less the few fields both forms share.
    assert ratio > 3.45


def test_a_stack_that_starts_mid_unroll_with_old_frames_is_kept_as_a_head():
    rng = np.random.default_rng(0)
    obs = rng.integers(1, 255, (4, 2, 3, 2, 2), dtype=np.uint8)  # no continuation anywhere
    obs[1, 0, :-1] = obs[0, 0, 1:]                                # env 0 continues at t=1
    obs[2, 1, :-1] = 0                                            # env 1 starts blank at t=2
    packed = compact(obs)
    np.testing.assert_array_equal(packed["stack_start"], [[HEAD, HEAD], [CONTINUES, HEAD],
                                                          [HEAD, ZEROS], [HEAD, HEAD]])
    assert packed["heads"].shape == (6, 2, 2, 2)
    pool, index = collate_compact([packed])
    np.testing.assert_array_equal(pool[index], obs)


def test_the_first_step_cannot_continue_an_earlier_one():
    with pytest.raises(ValueError, match="stack_start\\[0\\]"):
        restack_index(np.zeros((2, 1), dtype=np.int8), 4, 1, 1)


def test_the_learner_updates_the_same_on_compact_and_full_unrolls(twin_unrolls):
    full, packed = twin_unrolls
    cfg = breakout_cfg(True)
    spec = describe("atari", "breakout")
    metrics, weights = [], []
    for batch in (collate(full[:1]), collate(packed[:1])):
        torch.manual_seed(0)
        learner = ImpalaLearner(cfg, spec, device="cpu")
        metrics.append(learner.update(batch))
        weights.append({k: v.clone() for k, v in learner.model.state_dict().items()})
    assert metrics[0] == metrics[1]
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=0, atol=0)
