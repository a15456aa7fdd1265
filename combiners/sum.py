"""The baseline combiner: a fixed weighted sum of the loss terms' gradients.

With unit weights this is exactly the gradient of the summed loss, `∇ Σ_k L_k`. It is the
"simple mixing" that paper 000 (Fig. 1, second row) and paper 001 (§5.1, fixed weights)
compare against.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from combiners.base import Combiner, Stats, as_weights, check_inputs, host, term_names


class Sum(Combiner):
    """`g = Σ_k w_k g_k`; `weights=None` means all ones."""

    role = "peers"

    def __init__(self, weights: Sequence[float] | None = None):
        self.weights = None if weights is None else [float(w) for w in weights]

    def _weights(self, K: int) -> torch.Tensor:
        return torch.ones(K, dtype=torch.float64) if self.weights is None \
            else as_weights(self.weights, K)

    def combine(self, G, losses=None, layout=None, names=None):
        check_inputs(G, losses, layout)
        K = G.shape[0]
        names = term_names(K, names, self.role)
        w = self._weights(K).to(device=G.device, dtype=G.dtype)
        g = w @ G
        # Norms only (K·P work): a Gram matrix would cost the baseline O(K²P).
        norms = host(torch.cat([torch.linalg.vector_norm(G, dim=1),
                                torch.linalg.vector_norm(g).reshape(1)]))
        stats = {f"norm/{n}": float(v) for n, v in zip(names, norms[:-1])}
        stats["norm/combined"] = float(norms[-1])
        return g, stats

    def fixed_weights(self, num_terms: int) -> torch.Tensor:
        # Always known in advance: callers can run one backward of Σ_k w_k L_k.
        return self._weights(num_terms)

    def record_fixed(self, losses=None, names=None) -> Stats:
        return {}

    def __repr__(self) -> str:
        return f"Sum(weights={self.weights})"
