"""Cosine gating of auxiliary gradients (Du et al., *Adapting Auxiliary Losses Using Gradient
Similarity*, paper 000).

Row 0 of G is ∇θ L_main, rows 1.. are ∇θ L_aux,i on the shared parameters θ. With
c_i = cos(∇θ L_main, ∇θ L_aux,i) the update direction is

    unweighted (Alg. 1):  g = ∇θ L_main + Σ_i [c_i ≥ threshold] ∇θ L_aux,i
    weighted   (Alg. 2):  g = ∇θ L_main + Σ_i max(0, c_i) ∇θ L_aux,i

which keeps convergence on L_main (Prop. 1): an aux gradient is used only while it is a
descent direction for the main loss. For Atari the paper computes the cosine per layer and
averages over layers, smooths it over time with c ← 0.999 c + 0.001 c_t, and uses threshold
0.02 (one game) or 0.01 (multi-task) (App. G).

Choices made here, where the paper is silent:
- the moving average is debiased like Adam's moments: c_hat = c / (1 − ema^n) after n
  measurements with c starting at 0, so the first measurement sets c_hat = c_t exactly (it is
  not shrunk toward 0) and early estimates are the proper weighted mean of what was seen,
  instead of letting one noisy first value linger for ~1/(1 − ema) measurements;
- layers where either gradient is zero carry no direction and are left out of the layer mean;
- the weighted variant also honours `threshold` (weight c_hat if c_hat ≥ threshold, else 0),
  which is max(0, c_hat) at the default threshold 0;
- with `every=k` the cosine is measured on every k-th update (the moving average advances per
  measurement) and the gate is held in between; those held updates are plain weighted sums,
  so `fixed_weights` lets the caller skip the per-term gradients on them.
"""
from __future__ import annotations

import torch

from combiners.base import (Combiner, Stats, check_inputs, cosine, gram, host, mix,
                            norm_stats, term_names)


class CosineGate(Combiner):
    """Row 0 main, rows 1.. aux. `mode`: "unweighted" (Alg. 1) or "weighted" (Alg. 2);
    `per_layer`: mean of per-layer cosines (else one cosine over all of P); `ema`: smoothing of
    the cosine per measurement (0: none); `threshold`: gate on iff smoothed cos ≥ threshold;
    `every`: measure on every k-th update, hold the gate in between.

    Stats: `cos/<aux>` (smoothed), `cos_now/<aux>` and `cos_now/<aux>/<layer>` (this
    measurement), `gate/<aux>` (weight applied), `gate/measured`, `norm/<term>`.
    """

    role = "main_aux"

    def __init__(self, mode: str = "unweighted", per_layer: bool = True, ema: float = 0.999,
                 threshold: float = 0.0, every: int = 1):
        if mode not in ("unweighted", "weighted"):
            raise ValueError(f"mode must be 'unweighted' or 'weighted', got {mode!r}")
        if not 0.0 <= float(ema) < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        if int(every) != every or every < 1:
            raise ValueError(f"every must be a positive integer, got {every}")
        self.mode, self.per_layer = mode, bool(per_layer)
        self.ema, self.threshold, self.every = float(ema), float(threshold), int(every)
        self._c: torch.Tensor | None = None     # biased EMA accumulator, float64 [K-1]
        self._n = 0                             # measurements so far
        self._step = 0                          # updates so far
        self._gate: torch.Tensor | None = None  # weights of the aux rows, held between measurements

    # ---- algorithm ---------------------------------------------------------------------------

    def _measure(self, G: torch.Tensor, layout):
        """This update's cosine c_t[i] of main vs aux i, per-layer cosines, and the Gram matrix."""
        if not self.per_layer:
            M = gram(G)
            return cosine(M[0, 1:], M[0, 0], M.diagonal()[1:]), None, M
        grams = host(layout.grams(G))                      # [L, K, K]
        sq = grams.diagonal(dim1=1, dim2=2)                # [L, K] squared norms per layer
        cos_layer = cosine(grams[:, 0, 1:], sq[:, :1], sq[:, 1:])   # [L, K-1]
        valid = (sq[:, :1] > 0) & (sq[:, 1:] > 0)
        c_t = (cos_layer * valid).sum(0) / valid.sum(0).clamp_min(1)
        return c_t, cos_layer, grams.sum(0)

    def _smooth(self, c_t: torch.Tensor) -> torch.Tensor:
        """c ← ema·c + (1 − ema)·c_t, returned debiased as c / (1 − ema^n)."""
        if self._c is None:
            self._c = torch.zeros_like(c_t)
        self._n += 1
        self._c = self.ema * self._c + (1.0 - self.ema) * c_t
        return self._c / (1.0 - self.ema ** self._n)

    def _gate_from(self, c_hat: torch.Tensor) -> torch.Tensor:
        on = c_hat >= self.threshold
        if self.mode == "unweighted":
            return on.to(torch.float64)
        return torch.where(on, c_hat.clamp_min(0.0), torch.zeros_like(c_hat))

    # ---- interface ---------------------------------------------------------------------------

    def _check_size(self, K: int) -> None:
        if self._gate is not None and self._gate.numel() != K - 1:
            raise ValueError(f"CosineGate was fed {self._gate.numel()} aux terms before, "
                             f"now {K - 1}")

    def _measures_now(self) -> bool:
        return self._gate is None or self._step % self.every == 0

    def combine(self, G, losses=None, layout=None, names=None):
        layout = check_inputs(G, losses, layout)
        K = G.shape[0]
        self._check_size(K)
        names = term_names(K, names, self.role)
        stats: Stats = {}
        measured = self._measures_now()
        if measured:
            c_t, cos_layer, M = self._measure(G, layout)
            if bool(torch.isfinite(M).all()):   # (cosine() would turn NaN into 0)
                self._gate = self._gate_from(self._smooth(c_t))
            else:
                # A non-finite gradient must not poison the average for the rest of the run:
                # keep the state (aux off if nothing was measured yet) and say so.
                stats["gate/nonfinite"] = 1.0
                if self._gate is None:
                    self._gate = torch.zeros(K - 1, dtype=torch.float64)
            for i, name in enumerate(names[1:]):
                stats[f"cos_now/{name}"] = float(c_t[i])
                if cos_layer is not None and len(layout) > 1:
                    for (layer, _, _), v in zip(layout, cos_layer[:, i]):
                        stats[f"cos_now/{name}/{layer}"] = float(v)
        # The main row always enters with weight 1.
        w = torch.cat([torch.ones(1, dtype=torch.float64), self._gate])
        if measured:
            stats.update(norm_stats(M, w, names))
        self._step += 1
        stats.update(self._gate_stats(names, measured))
        return mix(G, w), stats

    def fixed_weights(self, num_terms: int) -> torch.Tensor | None:
        self._check_size(num_terms)
        if self._measures_now():
            return None
        return torch.cat([torch.ones(1, dtype=torch.float64), self._gate])

    def record_fixed(self, losses=None, names=None) -> Stats:
        if self._measures_now():
            raise RuntimeError("this update measures the cosine; call combine() with G")
        K = self._gate.numel() + 1
        self._step += 1
        return self._gate_stats(term_names(K, names, self.role), measured=False)

    def _gate_stats(self, names, measured: bool) -> Stats:
        if self._n == 0:
            c_hat = torch.full((len(names) - 1,), float("nan"), dtype=torch.float64)
        else:
            c_hat = self._c / (1.0 - self.ema ** self._n)
        stats = {"gate/measured": float(measured)}
        for i, name in enumerate(names[1:]):
            stats[f"cos/{name}"] = float(c_hat[i])
            stats[f"gate/{name}"] = float(self._gate[i])
        return stats

    def state_dict(self) -> dict:
        return {"c": None if self._c is None else self._c.clone(), "n": self._n,
                "step": self._step, "gate": None if self._gate is None else self._gate.clone()}

    def load_state_dict(self, state: dict) -> None:
        c, gate = state["c"], state["gate"]
        self._c = None if c is None else torch.as_tensor(c, dtype=torch.float64).clone()
        self._gate = None if gate is None else torch.as_tensor(gate, dtype=torch.float64).clone()
        self._n, self._step = int(state["n"]), int(state["step"])

    def __repr__(self) -> str:
        return (f"CosineGate(mode={self.mode!r}, per_layer={self.per_layer}, ema={self.ema}, "
                f"threshold={self.threshold}, every={self.every})")
