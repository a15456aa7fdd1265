"""Frame-stacked observations sent once per frame: compact on the actor, restack on the learner.

An Atari observation stacks the last S frames ([S, H, W] uint8), so an unroll of T+1 steps
holds every frame S times. The compact form keeps the newest frame of each step and says how
the S-1 older ones are found:

    frames       [T+1, M, H, W]     the newest frame of obs[t]
    stack_start  [T+1, M] int8      CONTINUES: obs[t][:-1] == obs[t-1][1:] (the same episode)
                                    ZEROS:     obs[t][:-1] are blank frames (a fresh episode)
                                    HEAD:      obs[t][:-1] are stored in `heads`
    heads        [K, S-1, H, W]     the older frames of the HEAD steps, in (t, m) order

obs[0] always starts a stack (the previous unroll may never reach the learner), so each unroll
carries (T+1+S-1) frames per env instead of (T+1)*S. The codes are read off the observations
themselves, so the restacked observations equal the env's exactly whatever the env does at
reset. Restacking is a gather from one frame pool, so it runs on the learner's device.
"""
from __future__ import annotations

import numpy as np

CONTINUES, ZEROS, HEAD = 0, 1, 2
COMPACT_KEYS = ("frames", "stack_start", "heads")


def is_frame_stack(obs: np.ndarray) -> bool:
    """True for uint8 observations [M, S, H, W] with S > 1: stacked image frames."""
    return obs.dtype == np.uint8 and obs.ndim == 4 and obs.shape[1] > 1


def compact(obs: np.ndarray) -> dict[str, np.ndarray]:
    """[T+1, M, S, H, W] stacked observations -> the compact form above."""
    older, newest = obs[:, :, :-1], obs[:, :, -1]
    continues = np.zeros(obs.shape[:2], dtype=bool)
    continues[1:] = (older[1:] == obs[:-1, :, 1:]).all(axis=(2, 3, 4))
    zeros = ~older.any(axis=(2, 3, 4))
    stack_start = np.where(continues, CONTINUES, np.where(zeros, ZEROS, HEAD)).astype(np.int8)
    return {"frames": np.ascontiguousarray(newest), "stack_start": stack_start,
            "heads": np.ascontiguousarray(older[stack_start == HEAD])}


def restack_index(stack_start: np.ndarray, stack: int, heads_at: int, frames_at: int) -> np.ndarray:
    """Pool indices [T+1, M, S] of every frame of every stacked observation.

    The pool holds a blank frame at 0, the heads' frames from `heads_at` ((S-1) per head, in
    (t, m) order) and the newest frames from `frames_at` (in (t, m) order)."""
    steps, envs = stack_start.shape
    index = np.zeros((steps, envs, stack), dtype=np.int64)
    head_rank = np.cumsum((stack_start == HEAD).ravel()).reshape(steps, envs) - 1
    older = np.arange(stack - 1)
    for t in range(steps):
        code = stack_start[t]
        index[t, :, -1] = frames_at + t * envs + np.arange(envs)
        if t > 0:
            cont = code == CONTINUES
            index[t, cont, :-1] = index[t - 1, cont, 1:]
        elif (code == CONTINUES).any():
            raise ValueError("stack_start[0] must start a stack: there is no earlier step")
        head = code == HEAD
        index[t, head, :-1] = heads_at + head_rank[t, head, None] * (stack - 1) + older
        # ZEROS keeps index 0: the blank frame.
    return index


def collate_compact(unrolls: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """One frame pool [P, H, W] for several compact unrolls and the index [T+1, B, S] that
    restacks them side by side along the batch axis."""
    first = unrolls[0]["frames"]
    stack = unrolls[0]["heads"].shape[1] + 1  # [K, S-1, H, W] keeps S-1 even when K = 0
    parts, indices = [np.zeros((1, *first.shape[2:]), dtype=first.dtype)], []
    at = 1
    for u in unrolls:
        heads = u["heads"].reshape(-1, *first.shape[2:])
        frames = u["frames"].reshape(-1, *first.shape[2:])
        indices.append(restack_index(u["stack_start"], stack, at, at + len(heads)))
        parts += [heads, frames]
        at += len(heads) + len(frames)
    return np.concatenate(parts), np.concatenate(indices, axis=1)
