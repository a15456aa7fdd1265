"""The combiner interface and the small pieces every combiner shares.

A combiner sits between computing per-term gradients and applying one gradient (RLlib's
compute_gradients -> postprocess -> apply seam). It gets `G[K, P]` (row k: gradient of loss term
k on the shared parameters), the term values `losses[K]` (or None) and a `Layout`, and returns
one gradient `g[P]` plus a flat dict of float statistics.

Design choice: the measurements (Gram matrices, `[K, K]` or `[L, K, K]`) are reduced on G's
device, copied to the host once per update, and all decisions (gates, weights, projection
orders) are taken there in float64. The only `[K, P]`-sized work left is one `w @ G`. This keeps
combiner state on the CPU, so `state_dict()` is device-free and round-trips through
`torch.save` / `torch.load(weights_only=True)`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from combiners.layout import Layout

Stats = dict[str, float]


class Combiner:
    """Base class. Subclasses implement `combine` and, when they keep any, their state."""

    #: "main_aux": row 0 is the main term, rows 1.. auxiliary terms; "peers": K peer tasks.
    role: str = "peers"

    def combine(self, G: torch.Tensor, losses: torch.Tensor | None = None,
                layout: Layout | Sequence[tuple[str, int, int]] | None = None,
                names: Sequence[str] | None = None) -> tuple[torch.Tensor, Stats]:
        """Return the combined gradient `g[P]` and statistics for this update."""
        raise NotImplementedError

    def fixed_weights(self, num_terms: int) -> torch.Tensor | None:
        """Weights `w[K]` when this update's result is known to be `w @ G` before G exists.

        Lets the caller skip the per-term gradients and run one backward of `sum_k w_k L_k`
        (then call `record_fixed`). None when this update must see G.
        """
        return None

    def record_fixed(self, losses: torch.Tensor | None = None,
                     names: Sequence[str] | None = None) -> Stats:
        """Count an update that the caller made with `fixed_weights` (no G was built)."""
        raise RuntimeError(f"{type(self).__name__} has no fixed-weight updates")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_inputs(G: torch.Tensor, losses: torch.Tensor | None, layout) -> Layout:
    """Validate shapes; return the layout to use (`None` means one layer over all of P)."""
    if not isinstance(G, torch.Tensor) or G.dim() != 2 or not G.is_floating_point():
        raise ValueError(f"G must be a floating [K, P] tensor, got "
                         f"{getattr(G, 'shape', type(G))}")
    K, P = G.shape
    if K == 0 or P == 0:
        raise ValueError(f"G must have at least one row and one column, got {tuple(G.shape)}")
    if losses is not None and tuple(losses.shape) != (K,):
        raise ValueError(f"losses must have shape [{K}] to match G, got {tuple(losses.shape)}")
    if layout is None:
        return Layout.whole(P)
    if not isinstance(layout, Layout):
        layout = Layout(layout)
    if layout.size != P:
        raise ValueError(f"layout covers {layout.size} columns but G has {P}")
    return layout


def term_names(K: int, names: Sequence[str] | None, role: str) -> list[str]:
    """Names used in stats keys: given ones, else main/aux1.. (main_aux) or task0.. (peers)."""
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != K:
            raise ValueError(f"got {len(names)} names for {K} rows of G")
        return names
    if role == "main_aux":
        return ["main"] + [f"aux{i}" for i in range(1, K)]
    return [f"task{k}" for k in range(K)]


def host(t: torch.Tensor) -> torch.Tensor:
    """Detached float64 CPU copy: the one device-to-host sync of an update."""
    return t.detach().to(device="cpu", dtype=torch.float64)


def gram(G: torch.Tensor) -> torch.Tensor:
    """`M = G Gᵀ` on the host: every pairwise dot product and squared norm, `[K, K]`."""
    return host(G @ G.T)


def mix(G: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`g = Σ_k w_k g_k` as one `[K] @ [K, P]` product on G's device."""
    return w.to(device=G.device, dtype=G.dtype) @ G


def cosine(dot: torch.Tensor, sq_a: torch.Tensor, sq_b: torch.Tensor) -> torch.Tensor:
    """Cosine from a dot product and squared norms; 0 where either vector is zero."""
    denom = (sq_a * sq_b).sqrt()
    return torch.where(denom > 0, dot / denom.clamp_min(1e-300), torch.zeros_like(dot))


def norm_stats(M: torch.Tensor, w: torch.Tensor, names: Sequence[str]) -> Stats:
    """Per-term and combined gradient norms from the Gram matrix (no extra pass over G)."""
    stats = {f"norm/{n}": float(v) for n, v in zip(names, M.diagonal().clamp_min(0).sqrt())}
    stats["norm/combined"] = float((w @ M @ w).clamp_min(0).sqrt())
    return stats


def as_weights(weights, K: int) -> torch.Tensor:
    """Float64 CPU weight vector of length K from a list, tuple or tensor."""
    w = torch.as_tensor(weights, dtype=torch.float64).flatten().cpu()
    if w.numel() != K:
        raise ValueError(f"got {w.numel()} weights for {K} loss terms")
    return w
