"""PCGrad: projecting conflicting gradients (Yu et al., *Gradient Surgery for Multi-Task
Learning*, NeurIPS 2020, paper 003, Alg. 1).

For each task i, over the other tasks j in its own random order: if g_i^PC · g_j < 0 then

    g_i^PC ← g_i^PC − (g_i^PC · g_j / ‖g_j‖²) g_j

projecting onto the normal plane of the *original* g_j; the result is Σ_i g_i^PC ("sum", as in
the paper) or its mean. Only shared parameters are treated; heads keep their own gradients.

How it is computed. Every g_i^PC stays in the span of the original rows, g_i^PC = Σ_m A[i, m] g_m,
starting from A = I, and its dot product with an original row is linear in the Gram matrix
M = G Gᵀ: g_i^PC · g_j = (A M)[i, j]. So the whole sequential procedure runs on K×K scalars:
keep B = A M, and when row i is projected on g_j with coefficient c = B[i, j] / M[j, j],
subtract c from A[i, j] and c·M[j, :] from B[i, :]. All K rows advance together, one step of
their orders at a time (K − 1 vectorised steps, O(K³) scalar work in float64 on the host).
The only [K, P] work is one Gram matmul and one `a @ G` with a = 1ᵀA (the reduction folded in),
instead of the K² vector projections of the plain loop.
"""
from __future__ import annotations

import numpy as np
import torch

from combiners.base import Combiner, Stats, check_inputs, gram, host, mix, term_names


def pcgrad_coefficients(M: np.ndarray, orders: np.ndarray) -> tuple[np.ndarray, int]:
    """Coefficients A[K, K] with g_i^PC = Σ_m A[i, m] g_m, and the number of projections made.

    `M` is the Gram matrix G Gᵀ; `orders[i]` lists the tasks j ≠ i in the order row i visits them.
    """
    M = np.asarray(M, dtype=np.float64)
    K = M.shape[0]
    A = np.eye(K)
    if K < 2:
        return A, 0
    orders = np.asarray(orders, dtype=np.int64).reshape(K, K - 1)
    off_diagonal = M[~np.eye(K, dtype=bool)]
    if not (off_diagonal < 0).any():
        return A, 0                    # no pair conflicts: every g_i^PC = g_i
    diag = M.diagonal()
    # Projecting on a zero row is a no-op (nothing to remove), which also avoids 0/0.
    inv_sq = np.divide(1.0, diag, out=np.zeros(K), where=diag > 0)
    # Step s of row i uses j = orders[i, s]: gather its row of M, pre-divided by ‖g_j‖², so that
    # the update of B[i, :] is one multiply-subtract; d[i, s] records g_i^PC · g_j when < 0.
    M_over_sq = (M * inv_sq[:, None])[orders.T]        # [K-1, K, K]
    flat_ij = (np.arange(K)[:, None] * K + orders).T.copy()   # [K-1, K]: (i, j) in B.ravel()
    B = M.copy()                                       # B[i, m] = g_i^PC · g_m
    B_flat = B.reshape(-1)
    d = np.zeros((K - 1, K))
    step = np.empty((K, K))
    for s in range(K - 1):
        d_s = np.minimum(B_flat.take(flat_ij[s]), 0.0, out=d[s])   # nonzero where conflicting
        if d_s.any():
            np.multiply(d_s[:, None], M_over_sq[s], out=step)
            B -= step
    coef = d.T * inv_sq[orders]                        # c_ij = g_i^PC · g_j / ‖g_j‖²
    A[np.arange(K)[:, None], orders] -= coef           # each (i, j) is visited once: no clash
    return A, int(np.count_nonzero(coef))


def pcgrad_project(G: torch.Tensor, orders) -> torch.Tensor:
    """The projected gradients g_i^PC as a [K, P] tensor (for inspection and tests)."""
    A, _ = pcgrad_coefficients(gram(G).numpy(), np.asarray(orders))
    return torch.from_numpy(A).to(device=G.device, dtype=G.dtype) @ G


class PCGrad(Combiner):
    """All rows are peer tasks. `reduction`: "sum" (paper) or "mean" of the projected rows;
    `seed`: seeds the torch.Generator that draws the orders (kept in `state_dict`).

    Stats: `pcgrad/conflicts` (pairs with g_i · g_j < 0), `pcgrad/pairs`, `pcgrad/projections`
    (projections made), `pcgrad/mean_cos` (mean pairwise cosine), `norm/<task>`.
    """

    role = "peers"

    def __init__(self, reduction: str = "sum", seed: int | None = None):
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction
        self.seed = seed
        self._rng = torch.Generator()
        if seed is None:
            self._rng.seed()
        else:
            self._rng.manual_seed(int(seed))
        #: orders used by the last `combine` ([K, K-1], row i = the j's visited by task i).
        self.last_orders: np.ndarray | None = None

    def sample_orders(self, K: int) -> np.ndarray:
        """One uniformly random order over the other tasks for every task i (one RNG draw).

        argsort of iid uniforms is a uniform random permutation; dropping i from row i keeps
        the remaining order uniform.
        """
        if K < 2:
            return np.zeros((K, 0), dtype=np.int64)
        perm = torch.rand(K, K, generator=self._rng, dtype=torch.float64).argsort(dim=1).numpy()
        return perm[perm != np.arange(K)[:, None]].reshape(K, K - 1)

    def combine(self, G, losses=None, layout=None, names=None):
        check_inputs(G, losses, layout)
        K = G.shape[0]
        names = term_names(K, names, self.role)
        M_device = G @ G.T                  # queued on G's device ...
        orders = self.sample_orders(K)      # ... while the host draws the orders
        M = host(M_device)
        A, projections = pcgrad_coefficients(M.numpy(), orders)
        a = torch.from_numpy(A.sum(axis=0))        # Σ_i g_i^PC = (1ᵀA) G
        if self.reduction == "mean":
            a = a / K
        self.last_orders = orders

        diag = M.diagonal()
        upper = torch.triu_indices(K, K, offset=1)
        dots = M[upper[0], upper[1]]
        denom = (diag[upper[0]] * diag[upper[1]]).sqrt()
        cos = torch.where(denom > 0, dots / denom.clamp_min(1e-300), torch.zeros_like(dots))
        stats: Stats = {
            "pcgrad/conflicts": float((dots < 0).sum()),
            "pcgrad/pairs": float(dots.numel()),
            "pcgrad/projections": float(projections),
            "pcgrad/mean_cos": float(cos.mean()) if cos.numel() else 0.0,
        }
        stats.update({f"norm/{n}": float(v) for n, v in zip(names, diag.clamp_min(0).sqrt())})
        stats["norm/combined"] = float((a @ M @ a).clamp_min(0).sqrt())
        return mix(G, a), stats

    def state_dict(self) -> dict:
        return {"rng": self._rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._rng.set_state(torch.as_tensor(state["rng"], dtype=torch.uint8).clone())

    def __repr__(self) -> str:
        return f"PCGrad(reduction={self.reduction!r}, seed={self.seed})"
