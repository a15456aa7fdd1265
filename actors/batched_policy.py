"""The inference server's policy, without Ray: one forward for the steps of many rollout actors.

Each request is one actor's step: its M observations, their task ids and the M x A sampling
draws the actor took from its own generator (actors/sampling.py). The requests are stacked,
run through the network once on the server's device, and split again; each reply carries the
actions, the behaviour logits (V-trace's mu) and the version of the weights that made them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from actors.sampling import actions_from_noise


@dataclass
class StepRequest:
    obs: np.ndarray        # [M, *obs_shape]
    task_ids: np.ndarray   # [M] int64
    noise: np.ndarray      # [M, A] float32, q ~ Exp(1)


class BatchedPolicy:
    def __init__(self, model: torch.nn.Module, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.version = -1

    def set_weights(self, version: int, weights: dict[str, np.ndarray]) -> None:
        self.model.load_state_dict({k: torch.tensor(v) for k, v in weights.items()})
        self.version = version

    @torch.inference_mode()
    def forward(self, requests: list[StepRequest]) -> list[dict]:
        """One forward over every request's rows; per request {actions, logits, version}."""
        sizes = [len(r.obs) for r in requests]
        obs = self._to_device(np.concatenate([r.obs for r in requests]))
        task_ids = self._to_device(np.concatenate([r.task_ids for r in requests]))
        noise = self._to_device(np.concatenate([r.noise for r in requests]))
        logits, _ = self.model(obs, task_ids)
        actions = actions_from_noise(logits, noise)
        # One copy back for the whole batch, then views per request.
        logits, actions = logits.cpu().numpy(), actions.cpu().numpy()
        bounds = np.cumsum(sizes)[:-1]
        return [{"actions": a, "logits": lg, "version": self.version}
                for a, lg in zip(np.split(actions, bounds), np.split(logits, bounds))]

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":  # pinned, so the copy overlaps the rest of the batch
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor
