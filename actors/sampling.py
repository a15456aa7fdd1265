"""Action sampling split in two halves, so that the randomness stays with the rollout actor
while the policy runs elsewhere (actors/batched_policy.py, the inference server).

`torch.multinomial(probs, 1, generator=g)` (what local inference draws with) computes, for one
sample, `argmax(probs / q)` with `q ~ Exp(1)` drawn as `empty_like(probs).exponential_(1, g)`:
the exponential form of the Gumbel-max trick (ATen's multinomial, n_sample == 1). So a rollout
actor that draws `q` from its own generator and has the server compute the argmax gets the
action local inference would have drawn from the same weights, observations and seed, and its
generator ends in the same state (tests/unit/test_inference_equality.py holds the two equal).
The draws cost M x A floats per step; keeping them on the actor means a restarted server, or
another server, changes no random stream.
"""
from __future__ import annotations

import torch


def sampling_noise(generator: torch.Generator, num_envs: int, num_actions: int) -> torch.Tensor:
    """q ~ Exp(1), [M, A] float32: the draws `torch.multinomial` would take from `generator`."""
    return torch.empty(num_envs, num_actions).exponential_(1, generator=generator)


def actions_from_noise(logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """argmax(softmax(logits) / q) per row: a sample of softmax(logits) given the draws q."""
    return (torch.softmax(logits, -1) / noise).argmax(-1)
