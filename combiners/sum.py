"""The baseline combiner: a fixed weighted sum of the loss terms' gradients.

With unit weights this is exactly the gradient of the summed loss, `∇ Σ_k L_k`. It is the
"simple mixing" that paper 000 (Fig. 1, second row) and paper 001 (§5.1, fixed weights)
compare against. Its weights are config constants, known on the host, so callers always take
the one-backward path (`fixed_weights`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from combiners.base import Combiner, Stats, as_weights, check_inputs, term_names, unstack


class Sum(Combiner):
    """`g = Σ_k w_k g_k`; `weights=None` means all ones."""

    role = "peers"

    def __init__(self, weights: Sequence[float] | None = None):
        self.weights = None if weights is None else [float(w) for w in weights]

    def _weights(self, K: int) -> tuple[float, ...]:
        return (1.0,) * K if self.weights is None else as_weights(self.weights, K)

    def combine(self, G, losses=None, layout=None, names=None):
        check_inputs(G, losses, layout)
        K = G.shape[0]
        names = term_names(K, names, self.role)
        g = self._device_weights(K, G) @ G
        # Norms only (K·P work): a Gram matrix would cost the baseline O(K²P).
        norms = torch.cat([torch.linalg.vector_norm(G, dim=1),
                           torch.linalg.vector_norm(g).reshape(1)])
        stats = unstack("norm/", names, norms[:-1])
        stats["norm/combined"] = norms[-1]
        return g, stats

    def _device_weights(self, K: int, G: torch.Tensor) -> torch.Tensor:
        # Copied to the device once per (K, device, dtype), not on every update.
        key = (K, G.device, G.dtype)
        cache = self.__dict__.setdefault("_on_device", {})
        if key not in cache:
            cache[key] = torch.tensor(self._weights(K), dtype=G.dtype).to(G.device)
        return cache[key]

    def fixed_weights(self, num_terms: int) -> tuple[float, ...]:
        # Always known in advance: callers can run one backward of Σ_k w_k L_k.
        return self._weights(num_terms)

    def record_fixed(self, losses=None, names=None) -> Stats:
        return {}

    def __repr__(self) -> str:
        return f"Sum(weights={self.weights})"
