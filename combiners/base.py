"""The combiner interface and the small pieces every combiner shares.

A combiner sits between computing per-term gradients and applying one gradient (RLlib's
compute_gradients -> postprocess -> apply seam). It gets `G[K, P]` (row k: gradient of loss term
k on the shared parameters), the term values `losses[K]` (or None) and a `Layout`, and returns
one gradient `g[P]` plus a flat dict of statistics.

Design choice: a combiner is a device program. The measurements (Gram matrices, `[K, K]` or
`[L, K, K]`) are reduced on G's device and every decision (gates, weights, projection orders,
the non-finite checks) is a tensor op there, in float64; nothing is read back to the host, so
an update that calls a combiner can be queued ahead of the device (and captured as a CUDA
graph). The statistics are 0-dim tensors on G's device (`Stats`), which the learner sums on
the device and reads once per chunk (`learner.device_metrics`). Only what the host knows
anyway (the update counter, the number of terms, config constants) steers Python control flow.

State lives on the device too; `state_dict()` returns CPU tensors (round-trips through
`torch.save` / `torch.load(weights_only=True)`) and `load_state_dict` keeps them until the next
update moves them to its device.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from combiners.layout import Layout

#: Statistics of one update: 0-dim tensors on G's device, never Python floats.
Stats = dict[str, torch.Tensor]

#: Weights known before G exists: host constants (config values, `Sum`) or a device tensor
#: (state, e.g. `CosineGate`'s gate between measurements).
FixedWeights = Sequence[float] | torch.Tensor


class Combiner:
    """Base class. Subclasses implement `combine` and, when they keep any, their state."""

    #: "main_aux": row 0 is the main term, rows 1.. auxiliary terms; "peers": K peer tasks.
    role: str = "peers"

    def combine(self, G: torch.Tensor, losses: torch.Tensor | None = None,
                layout: Layout | Sequence[tuple[str, int, int]] | None = None,
                names: Sequence[str] | None = None) -> tuple[torch.Tensor, Stats]:
        """Return the combined gradient `g[P]` and statistics for this update."""
        raise NotImplementedError

    def fixed_weights(self, num_terms: int) -> FixedWeights | None:
        """Weights `w[K]` when this update's result is known to be `w @ G` before G exists.

        Lets the caller skip the per-term gradients and run one backward of `sum_k w_k L_k`
        (then call `record_fixed`). A tuple of floats when the weights are host constants, a
        float64 tensor on the combiner's device when they are state; None when this update
        must see G. Decided from host-side counters only.
        """
        return None

    def record_fixed(self, losses: torch.Tensor | None = None,
                     names: Sequence[str] | None = None) -> Stats:
        """Count an update that the caller made with `fixed_weights` (no G was built)."""
        raise RuntimeError(f"{type(self).__name__} has no fixed-weight updates")

    def to(self, device: torch.device | str) -> Combiner:
        """Move the state to `device` (a stateless combiner has nothing to move)."""
        return self

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


def f64(t: torch.Tensor) -> torch.Tensor:
    """Detached float64 copy on the same device (decisions are taken in float64)."""
    return t.detach().to(torch.float64)


def gram(G: torch.Tensor) -> torch.Tensor:
    """`M = G Gᵀ` in float64 on G's device: every pairwise dot product and squared norm."""
    return f64(G @ G.T)


def mix(G: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`g = Σ_k w_k g_k` as one `[K] @ [K, P]` product on G's device."""
    return w.to(device=G.device, dtype=G.dtype) @ G


def cosine(dot: torch.Tensor, sq_a: torch.Tensor, sq_b: torch.Tensor) -> torch.Tensor:
    """Cosine from a dot product and squared norms; 0 where either vector is zero."""
    denom = (sq_a * sq_b).sqrt()
    return torch.where(denom > 0, dot / denom.clamp_min(1e-300), torch.zeros_like(dot))


def unstack(prefix: str, names: Sequence[str], values: torch.Tensor) -> Stats:
    """`{prefix + name: values[i]}`: 0-dim views of one device tensor, no host read."""
    return dict(zip((prefix + n for n in names), values.unbind()))


def constant(value: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-dim float64 tensor on `like`'s device, filled there (no host-to-device copy)."""
    return torch.full((), float(value), dtype=torch.float64, device=like.device)


def norm_stats(M: torch.Tensor, w: torch.Tensor, names: Sequence[str]) -> Stats:
    """Per-term and combined gradient norms from the Gram matrix (no extra pass over G)."""
    w = w.to(device=M.device, dtype=M.dtype)
    stats = unstack("norm/", names, M.diagonal().clamp_min(0).sqrt())
    stats["norm/combined"] = (w @ M @ w).clamp_min(0).sqrt()
    return stats


def as_weights(weights, K: int) -> tuple[float, ...]:
    """Host weight constants of length K from a list or tuple of numbers (config values)."""
    w = tuple(float(x) for x in weights)
    if len(w) != K:
        raise ValueError(f"got {len(w)} weights for {K} loss terms")
    return w


def on_device(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """`t` as float64 on `device` (a loaded state moves on its first use)."""
    return None if t is None else t.to(device=device, dtype=torch.float64)


def to_cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    """A CPU copy for `state_dict` (None stays None)."""
    return None if t is None else t.detach().to("cpu", copy=True)
