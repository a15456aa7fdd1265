"""Rows that a producer process and the test that kills it both know (no Ray imported)."""
import numpy as np


def killed_rows(k: int) -> dict:
    n = 6
    return dict(task_ids=np.arange(n) % 3, obs=np.full((n, 2), k / 10, np.float32),
                action=np.zeros((n, 2), np.float32), reward=np.full(n, k, np.float32),
                next_obs=np.full((n, 2), -k / 10, np.float32), terminated=np.zeros(n, bool),
                truncated=np.ones(n, bool))
