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
  so `fixed_weights` lets the caller skip the per-term gradients on them;
- a measurement whose gradients hold a NaN or inf leaves the average and the gate as they were
  (`gate/nonfinite` is 1), so one bad batch does not poison the rest of the run.

Everything (the per-layer cosines, the average, the gate) is computed on G's device in float64;
the update counter that says when to measure is the only thing the host decides.
"""
from __future__ import annotations

import torch

from combiners.base import (Combiner, Stats, check_inputs, constant, cosine, f64, gram, mix,
                            norm_stats, on_device, term_names, to_cpu, unstack)


class CosineGate(Combiner):
    """Row 0 main, rows 1.. aux. `mode`: "unweighted" (Alg. 1) or "weighted" (Alg. 2);
    `per_layer`: mean of per-layer cosines (else one cosine over all of P); `ema`: smoothing of
    the cosine per measurement (0: none); `threshold`: gate on iff smoothed cos ≥ threshold;
    `every`: measure on every k-th update, hold the gate in between.

    Stats: `cos/<aux>` (smoothed), `cos_now/<aux>` and `cos_now/<aux>/<layer>` (this
    measurement), `gate/<aux>` (weight applied), `gate/measured`, `gate/nonfinite` and
    `norm/<term>` (on measuring updates).
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
        # Device state, float64: the biased EMA accumulator c [K-1], the number of (finite)
        # measurements n (0-dim), and the weights of the aux rows held between measurements.
        self._c: torch.Tensor | None = None
        self._n: torch.Tensor | None = None
        self._gate: torch.Tensor | None = None
        self._step = 0                          # updates so far (host counter)

    # ---- algorithm ---------------------------------------------------------------------------

    def _measure(self, G: torch.Tensor, layout):
        """This update's cosine c_t[i] of main vs aux i, per-layer cosines, and the Gram matrix."""
        if not self.per_layer:
            M = gram(G)
            return cosine(M[0, 1:], M[0, 0], M.diagonal()[1:]), None, M
        grams = f64(layout.grams(G))                       # [L, K, K]
        sq = grams.diagonal(dim1=1, dim2=2)                # [L, K] squared norms per layer
        cos_layer = cosine(grams[:, 0, 1:], sq[:, :1], sq[:, 1:])   # [L, K-1]
        valid = (sq[:, :1] > 0) & (sq[:, 1:] > 0)
        c_t = (cos_layer * valid).sum(0) / valid.sum(0).clamp_min(1)
        return c_t, cos_layer, grams.sum(0)

    def _debiased(self, c: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """c / (1 − ema^n): the proper weighted mean of the n measurements seen."""
        return c / (1.0 - torch.pow(self.ema, n))

    def _gate_from(self, c_hat: torch.Tensor) -> torch.Tensor:
        on = c_hat >= self.threshold
        if self.mode == "unweighted":
            return on.to(torch.float64)
        return torch.where(on, c_hat.clamp_min(0.0), torch.zeros_like(c_hat))

    def _advance(self, c_t: torch.Tensor, finite: torch.Tensor) -> None:
        """c ← ema·c + (1 − ema)·c_t and the gate from its debiased value, where `finite`;
        in place, so the state tensors keep their storage from update to update."""
        n = self._n + finite.to(torch.float64)
        c = torch.where(finite, self.ema * self._c + (1.0 - self.ema) * c_t, self._c)
        self._gate.copy_(torch.where(finite, self._gate_from(self._debiased(c, n)), self._gate))
        self._c.copy_(c)
        self._n.copy_(n)

    # ---- interface ---------------------------------------------------------------------------

    def to(self, device: torch.device | str) -> CosineGate:
        """Move the state to `device` (done by the first update anyway)."""
        self._c, self._n, self._gate = (on_device(t, torch.device(device))
                                        for t in (self._c, self._n, self._gate))
        return self

    def _state_on(self, device: torch.device, K: int) -> None:
        if self._gate is None:   # before the first measurement: nothing seen, aux off
            self._c = torch.zeros(K - 1, dtype=torch.float64, device=device)
            self._n = torch.zeros((), dtype=torch.float64, device=device)
            self._gate = torch.zeros(K - 1, dtype=torch.float64, device=device)
        elif self._gate.device != device:
            self.to(device)

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
        self._state_on(G.device, K)
        if measured:
            c_t, cos_layer, M = self._measure(G, layout)
            # (cosine() would turn a NaN into 0: check the Gram matrix itself.)
            finite = torch.isfinite(M).all()
            self._advance(c_t, finite)
            stats["gate/nonfinite"] = (~finite).to(torch.float64)
            stats.update(unstack("cos_now/", names[1:], c_t))
            if cos_layer is not None and len(layout) > 1:
                for l, (layer, _, _) in enumerate(layout):
                    stats.update(unstack("cos_now/", [f"{n}/{layer}" for n in names[1:]],
                                         cos_layer[l]))
        # The main row always enters with weight 1.
        w = torch.cat([torch.ones(1, dtype=torch.float64, device=G.device), self._gate])
        if measured:
            stats.update(norm_stats(M, w, names))
        self._step += 1
        stats.update(self._gate_stats(names, measured))
        return mix(G, w), stats

    def fixed_weights(self, num_terms: int) -> torch.Tensor | None:
        self._check_size(num_terms)
        if self._measures_now():
            return None
        return torch.cat([torch.ones(1, dtype=torch.float64, device=self._gate.device),
                          self._gate])

    def record_fixed(self, losses=None, names=None) -> Stats:
        if self._measures_now():
            raise RuntimeError("this update measures the cosine; call combine() with G")
        K = self._gate.numel() + 1
        self._step += 1
        return self._gate_stats(term_names(K, names, self.role), measured=False)

    def _gate_stats(self, names, measured: bool) -> Stats:
        c_hat = torch.where(self._n > 0, self._debiased(self._c, self._n),
                            torch.full_like(self._c, float("nan")))
        stats = {"gate/measured": constant(float(measured), self._gate)}
        stats.update(unstack("cos/", names[1:], c_hat))
        stats.update(unstack("gate/", names[1:], self._gate.clone()))   # a copy: state moves on
        return stats

    def state_dict(self) -> dict:
        return {"c": to_cpu(self._c), "n": to_cpu(self._n), "step": self._step,
                "gate": to_cpu(self._gate)}

    def load_state_dict(self, state: dict) -> None:
        c, n, gate = state["c"], state["n"], state["gate"]
        self._c = None if c is None else torch.as_tensor(c, dtype=torch.float64).clone()
        self._gate = None if gate is None else torch.as_tensor(gate, dtype=torch.float64).clone()
        self._n = None if gate is None else torch.as_tensor(n, dtype=torch.float64).clone()
        if self._gate is not None and self._c is None:   # a gate held before any finite measure
            self._c = torch.zeros_like(self._gate)
        self._step = int(state["step"])

    def __repr__(self) -> str:
        return (f"CosineGate(mode={self.mode!r}, per_layer={self.per_layer}, ema={self.ema}, "
                f"threshold={self.threshold}, every={self.every})")
