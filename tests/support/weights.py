"""Weights for a network's state dict drawn from N(0, scale²) with a fixed seed, as NumPy
arrays: what a learner publishes, for tests of the code that loads and acts with them."""
from __future__ import annotations

import numpy as np
import torch


def random_weights(model: torch.nn.Module, seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    return {k: (scale * torch.randn(v.shape, generator=g)).numpy() for k, v in model.state_dict().items()}
