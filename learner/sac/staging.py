"""SAC's batch in static device buffers: each batch is copied into the same tensors, so an
update captured as a CUDA graph reads every new batch without being captured again.

On CUDA the arrays go through pinned host buffers and are copied with `non_blocking`, so the
host queues the copy behind the update in flight and goes on. Two pinned sets alternate: the
host fills one while the copy from the other may still be queued, and waits (on that copy's
event, not on the device as a whole) only before it reuses a set.
"""
from __future__ import annotations

import numpy as np
import torch

#: per-row fields of a batch, task-major [K, n, ...], and the dtype each is kept in
FIELDS = {"obs": torch.float32, "action": torch.float32, "reward": torch.float32,
          "next_obs": torch.float32, "terminated": torch.bool, "truncated": torch.bool}


class StaticBatch:
    def __init__(self, num_tasks: int, obs_dim: int, action_dim: int, device: torch.device):
        self.num_tasks, self.obs_dim, self.action_dim = num_tasks, obs_dim, action_dim
        self.device = device
        self.tensors: dict[str, torch.Tensor] = {}
        self._pinned: list[dict[str, torch.Tensor]] = []
        self._copied: list[torch.cuda.Event | None] = []
        self._turn = 0

    def _check(self, batch: dict) -> dict[str, np.ndarray]:
        missing = [k for k in (*FIELDS, "inserted") if k not in batch]
        if missing:
            raise ValueError(f"SAC batch lacks {missing}; it has {sorted(batch)}")
        arrays = {k: np.asarray(batch[k]) for k in FIELDS}
        K, D, A = self.num_tasks, self.obs_dim, self.action_dim
        n = arrays["reward"].shape[1] if arrays["reward"].ndim == 2 else -1
        expected = {"obs": (K, n, D), "action": (K, n, A), "reward": (K, n),
                    "next_obs": (K, n, D), "terminated": (K, n), "truncated": (K, n)}
        wrong = {k: arrays[k].shape for k in expected if arrays[k].shape != expected[k]}
        if n < 1 or wrong:
            raise ValueError(f"SAC batch must be task-major [K={K}, n, ...] with obs dim {D} and "
                             f"action dim {A}; got shapes {wrong or {'reward': arrays['reward'].shape}}")
        return arrays

    def _allocate(self, arrays: dict[str, np.ndarray]) -> None:
        self.tensors = {k: torch.empty(a.shape, dtype=FIELDS[k], device=self.device)
                        for k, a in arrays.items()}
        if self.device.type == "cuda":
            self._pinned = [{k: torch.empty(a.shape, dtype=FIELDS[k], pin_memory=True)
                             for k, a in arrays.items()} for _ in range(2)]
            self._copied = [None, None]

    def noise(self, count: int, width: int) -> list[torch.Tensor]:
        """`count` static [K, n, width] buffers shaped like this batch, for the update's noise."""
        K, n = self.tensors["reward"].shape
        if len(getattr(self, "_noise", [])) != count or self._noise[0].shape != (K, n, width):
            self._noise = [torch.empty(K, n, width, device=self.device) for _ in range(count)]
        return self._noise

    def load(self, batch: dict) -> bool:
        """Copy `batch` into the buffers; True when they had to be (re)allocated."""
        arrays = self._check(batch)
        fresh = not self.tensors or any(self.tensors[k].shape != a.shape for k, a in arrays.items())
        if fresh:
            self._allocate(arrays)
        if self.device.type != "cuda":
            for k, a in arrays.items():
                self.tensors[k].copy_(torch.from_numpy(np.ascontiguousarray(a)))
            return fresh
        turn = self._turn
        self._turn = 1 - turn
        if self._copied[turn] is not None:
            self._copied[turn].synchronize()   # its last copy to the device has been made
        for k, a in arrays.items():
            self._pinned[turn][k].copy_(torch.from_numpy(np.ascontiguousarray(a)))
            self.tensors[k].copy_(self._pinned[turn][k], non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._copied[turn] = event
        return fresh
