"""What a model must know of an environment before any actor starts: its `EnvSpec`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    """Observation and action spaces of one task, as the learner and the actors see them.

    Exactly one of `num_actions` (a Discrete action space: IMPALA) and `action_dim` (a Box
    action space: SAC) is set. Continuous actions are always exchanged in [-1, 1]^action_dim;
    the env rescales them to its own bounds, so a tanh policy needs no knowledge of them.
    """

    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int | None = None
    action_dim: int | None = None

    def __post_init__(self) -> None:
        if (self.num_actions is None) == (self.action_dim is None):
            raise ValueError("EnvSpec needs exactly one of num_actions (discrete) and action_dim (continuous)")

    @property
    def continuous(self) -> bool:
        return self.action_dim is not None
