"""The seam between the learner actor and an algorithm (IMPALA, SAC, ...).

`LearnerActor` (learner/remote.py) drives any algorithm through two small protocols, so the
queue/replay service, weight broadcast, checkpoints and metrics are written once:

- an `Algorithm` is a plain class (no Ray) holding the networks, optimizers and combiners:
  `step(batch)` takes one learner step without reading anything back from the device (its
  metrics and non-finite checks stay there, see `learner/device_metrics.py`),
  `read_metrics()` reads what the steps since the last read reported (their means) and raises
  `NonFiniteLossError` after a run of skipped steps, `update(batch)` is the two together (one
  step, read at once: what tests and single steps use), `actor_weights()` is what rollout
  actors run (as numpy arrays; `actor_tensors()` the same as the learner's own tensors, for a
  copy off the update's path, learner/publish.py), and `state_dict()` / `load_state_dict()` is its whole state;
- a `BatchSource` knows how its algorithm's batches come out of the service: `request()`
  asks for the next one (a Ray reference, so the learner can prefetch while it updates) and
  `receive(reply, timeout)` turns the reply into a batch dict, or None when nothing came; it
  raises `TimeoutError` when data the reply names did not arrive within `timeout` seconds.

Every batch carries two keys for the learner actor besides what its algorithm reads:
`versions` (the weight version behind each item, for the policy-lag metric) and `episodes`
([E, 4] rows of task id, raw return, length, success or NaN, for episodes that ended, reported
once).

`learner/registry.py` picks the implementation from `learner.algorithm` (a module of its own, so
the learners can import this seam without an import circle).
"""
from __future__ import annotations

import random
from typing import Any, Protocol

import numpy as np
import torch


class NonFiniteLossError(RuntimeError):
    """Raised after `max_nonfinite_run` consecutive updates with a non-finite loss."""


class Algorithm(Protocol):
    updates: int
    frames: int
    nonfinite_total: int

    def step(self, batch: dict) -> None: ...

    def read_metrics(self) -> dict[str, float]: ...

    def update(self, batch: dict) -> dict[str, float]: ...

    def actor_weights(self) -> dict[str, np.ndarray]: ...

    def actor_tensors(self) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class BatchSource(Protocol):
    lost: int  # items the service handed out that could not be fetched (their owner died)

    def request(self) -> Any: ...

    def receive(self, reply: Any, timeout: float | None = None) -> dict | None: ...


def rng_state() -> dict:
    """torch, CUDA, NumPy and Python RNG states as tensors and plain values (loadable with
    `weights_only=True`), including the cached Gaussian draw of NumPy's and Python's RNG."""
    np_state = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gauss": float(np_state[4]),
        "python": torch.tensor(list(internal), dtype=torch.int64),
        "python_gauss_next": gauss_next,
    }


def set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    np.random.set_state(("MT19937", rng["numpy_keys"].numpy().astype(np.uint32), rng["numpy_pos"],
                         rng.get("numpy_has_gauss", 0), rng.get("numpy_cached_gauss", 0.0)))
    random.setstate((3, tuple(int(x) for x in rng["python"].tolist()), rng.get("python_gauss_next")))
