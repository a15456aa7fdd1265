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
their orders at a time (K − 1 vectorised steps, O(K³) scalar work in float64 on G's device,
with no branch on a value: a step without a conflict subtracts zero). The only [K, P] work is
one Gram matmul and one `a @ G` with a = 1ᵀA (the reduction folded in), instead of the K²
vector projections of the plain loop. The orders come from a torch.Generator on G's device
(argsort of uniforms), so no part of an update waits for the host.
"""
from __future__ import annotations

import torch

from combiners.base import (Combiner, check_inputs, constant, gram, mix, term_names, unstack)


def pcgrad_coefficients(M, orders) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients A[K, K] with g_i^PC = Σ_m A[i, m] g_m, and the number of projections made
    (a 0-dim tensor), both on M's device.

    `M` is the Gram matrix G Gᵀ; `orders[i]` lists the tasks j ≠ i in the order row i visits them.
    """
    M = torch.as_tensor(M).to(torch.float64)
    K = M.shape[0]
    A = torch.eye(K, dtype=torch.float64, device=M.device)
    if K < 2:
        return A, torch.zeros((), dtype=torch.int64, device=M.device)
    orders = torch.as_tensor(orders).to(device=M.device, dtype=torch.int64).reshape(K, K - 1)
    diag = M.diagonal()
    # Projecting on a zero row is a no-op (nothing to remove), which also avoids 0/0.
    inv_sq = torch.where(diag > 0, 1.0 / diag, torch.zeros_like(diag))
    # Step s of row i uses j = orders[i, s]: gather its row of M, pre-divided by ‖g_j‖², so that
    # the update of B[i, :] is one multiply-subtract; d[i, s] records g_i^PC · g_j when < 0.
    M_over_sq = (M * inv_sq[:, None])[orders.T]        # [K-1, K, K]
    B = M.clone()                                      # B[i, m] = g_i^PC · g_m
    d = torch.empty(K - 1, K, dtype=torch.float64, device=M.device)
    for s in range(K - 1):
        torch.clamp(B.gather(1, orders[:, s:s + 1]).squeeze(1), max=0.0, out=d[s])
        B.addcmul_(d[s, :, None], M_over_sq[s], value=-1.0)
    coef = d.T * inv_sq[orders]                        # c_ij = g_i^PC · g_j / ‖g_j‖²
    # Each (i, j) is visited once: a scatter of −c into the identity.
    A = A - torch.zeros_like(A).scatter_(1, orders, coef)
    return A, torch.count_nonzero(coef)


def pcgrad_project(G: torch.Tensor, orders) -> torch.Tensor:
    """The projected gradients g_i^PC as a [K, P] tensor (for inspection and tests)."""
    A, _ = pcgrad_coefficients(gram(G), torch.as_tensor(orders).to(G.device))
    return A.to(G.dtype) @ G


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
        # The generator is made on the device of the first G it meets (or of `to`); until
        # then it is described by a seed, or by a state loaded from a checkpoint.
        self._seed = int(seed) if seed is not None else int(torch.Generator().seed())
        self._rng: torch.Generator | None = None
        self._pending_state: torch.Tensor | None = None
        self._pending_device = "cpu"
        #: orders used by the last `combine` ([K, K-1] on G's device, row i = the j's visited).
        self.last_orders: torch.Tensor | None = None

    def _generator(self, device: torch.device) -> torch.Generator:
        device = torch.device(device)
        if self._rng is not None and self._rng.device.type != device.type:
            raise ValueError(f"PCGrad's generator lives on {self._rng.device}, not {device}; a "
                             f"combiner stays on the device it started on")
        if self._rng is None:
            if self._pending_state is not None and self._pending_device != device.type:
                raise ValueError(f"PCGrad's loaded generator state belongs to a "
                                 f"{self._pending_device} generator, not {device.type}: resume "
                                 f"on the device the run was saved from")
            self._rng = torch.Generator(device=device)
            if self._pending_state is not None:
                self._rng.set_state(self._pending_state)
                self._pending_state = None
            else:
                self._rng.manual_seed(self._seed)
        return self._rng

    def to(self, device: torch.device | str) -> PCGrad:
        self._generator(torch.device(device))
        return self

    def sample_orders(self, K: int, device: torch.device | str | None = None) -> torch.Tensor:
        """One uniformly random order over the other tasks for every task i (one RNG draw on
        the device).

        argsort of iid uniforms is a uniform random permutation; giving task i itself a key
        above every uniform sorts it last, and the first K − 1 entries, the other tasks, stay
        in uniform random order.
        """
        if device is None:
            device = self._rng.device if self._rng is not None else "cpu"
        rng = self._generator(device)
        if K < 2:
            return torch.zeros((K, 0), dtype=torch.int64, device=rng.device)
        keys = torch.rand(K, K, generator=rng, dtype=torch.float64, device=rng.device)
        keys.diagonal().fill_(2.0)
        return keys.argsort(dim=1)[:, :K - 1]

    def combine(self, G, losses=None, layout=None, names=None):
        check_inputs(G, losses, layout)
        K = G.shape[0]
        names = term_names(K, names, self.role)
        M = gram(G)
        orders = self.sample_orders(K, G.device)
        A, projections = pcgrad_coefficients(M, orders)
        a = A.sum(dim=0)                                  # Σ_i g_i^PC = (1ᵀA) G
        if self.reduction == "mean":
            a = a / K
        self.last_orders = orders

        diag = M.diagonal()
        upper = torch.triu_indices(K, K, offset=1, device=G.device)
        dots = M[upper[0], upper[1]]
        denom = (diag[upper[0]] * diag[upper[1]]).sqrt()
        cos = torch.where(denom > 0, dots / denom.clamp_min(1e-300), torch.zeros_like(dots))
        stats = {
            "pcgrad/conflicts": (dots < 0).sum().to(torch.float64),
            "pcgrad/pairs": constant(dots.numel(), M),
            "pcgrad/projections": projections.to(torch.float64),
            "pcgrad/mean_cos": cos.mean() if cos.numel() else constant(0.0, M),
        }
        stats.update(unstack("norm/", names, diag.clamp_min(0).sqrt()))
        stats["norm/combined"] = (a @ M @ a).clamp_min(0).sqrt()
        return mix(G, a), stats

    def state_dict(self) -> dict:
        """The generator's state (CPU bytes) and the device type it belongs to; before the
        generator exists, the seed it will start from."""
        if self._rng is not None:
            return {"rng": self._rng.get_state(), "rng_device": self._rng.device.type,
                    "seed": self._seed}
        pending = None if self._pending_state is None else self._pending_state.clone()
        return {"rng": pending, "rng_device": self._pending_device, "seed": self._seed}

    def load_state_dict(self, state: dict) -> None:
        self._seed = int(state.get("seed", self._seed))
        rng = state["rng"]
        self._pending_state = None if rng is None else \
            torch.as_tensor(rng, dtype=torch.uint8).clone()
        self._pending_device = state.get("rng_device", "cpu")
        device = None if self._rng is None else self._rng.device
        self._rng = None
        if device is not None:   # stay where it was
            self._generator(device)

    def __repr__(self) -> str:
        return f"PCGrad(reduction={self.reduction!r}, seed={self.seed})"
