"""OL-AUX: online learning of auxiliary-task weights (Lin et al., *Adaptive Auxiliary Task
Weighting for Reinforcement Learning*, NeurIPS 2019, paper 001; signs as in paper 002).

The shared parameters follow L(θ_t) = L_main(θ_t) + Σ_i w_i L_aux,i(θ_t), so with G's row 0
= ∇θ L_main and rows 1.. = ∇θ L_aux,i the combined gradient is

    g = ∇θ L_main + Σ_i w_i ∇θ L_aux,i ,        w initialised to 1.

The weights chase the decrease of the main loss over the next N updates, V^N(w) =
L_main(θ_{t+N}) − L_main(θ_t) ≈ −α Σ_j ∇L_main(θ_{t+j})ᵀ ∇L(θ_{t+j}) (paper 002 eq. 6), whose
first-order gradient in w_i is −α Σ_j ∇L_main·∇L_aux,i (eq. 7). Descending it, every N = `horizon`
updates:

    w_i ← w_i + lr · Σ_{j over the horizon} ∇θ L_main(θ_j) · ∇θ L_aux,i(θ_j)

so an aux term whose gradient agrees with the main one gains weight, and an adversarial one
loses it. `lr` is β·α of Alg. 1 (the paper folds the θ step size into the w step and gives no
value). `nonnegative` clamps w at 0, so a harmful term is switched off rather than reversed.

Adaptive loss balancing (Alg. 1): with `log_losses` the aux terms enter as log L_aux,i, whose
gradient is ∇L_aux,i / L_aux,i (aux losses are positive), and the dot products above use those
rescaled gradients. The main RL loss can be negative, so it is used as it is. An aux loss that
is not positive has no logarithm: its row is left out of that update (coefficient 0, dot 0) and
`olaux/nonpositive` counts it, rather than stopping the run from a value the host never reads.

w, the horizon sum and every decision live on G's device in float64; the update counter that
says when a horizon ends is the only thing the host decides.
"""
from __future__ import annotations

import torch

from combiners.base import (Combiner, Stats, check_inputs, cosine, f64, gram, mix, norm_stats,
                            on_device, term_names, to_cpu, unstack)


class OLAux(Combiner):
    """Row 0 main, rows 1.. aux. `horizon`: N, updates between weight steps; `lr`: step size of
    w; `log_losses`: aux terms as log L_aux (needs `losses`); `nonnegative`: clamp w at 0.

    Stats: `w/<aux>` (weight used this update), `dot/<aux>` (∇L_main · ∇L_aux as used),
    `cos/<aux>`, `norm/<term>`, `olaux/nonfinite` (1 when this update's dots were left out),
    `olaux/nonpositive` (under `log_losses`: aux losses ≤ 0 left out of this update).
    `state_dict()["weights"]` is w.

    Only the dots ∇L_main · ∇L_aux,i enter the weight step, so `weights_from_dots` runs an
    update from them alone (see `combiners.apply.apply_forward_dots`, which gets them from one
    forward-mode pass instead of the K per-term gradients).
    """

    role = "main_aux"

    def __init__(self, horizon: int = 5, lr: float = 0.01, log_losses: bool = True,
                 nonnegative: bool = True):
        if int(horizon) != horizon or horizon < 1:
            raise ValueError(f"horizon must be a positive integer, got {horizon}")
        if not float(lr) >= 0.0:
            raise ValueError(f"lr must be non-negative, got {lr}")
        self.horizon, self.lr = int(horizon), float(lr)
        self.log_losses, self.nonnegative = bool(log_losses), bool(nonnegative)
        self._w: torch.Tensor | None = None    # w_i, float64 [K-1], on the device
        self._acc: torch.Tensor | None = None  # Σ over the current horizon of g_main·g_aux,i
        self._step = 0                         # updates so far (host counter)

    def _row_scale(self, losses: torch.Tensor | None, K: int, device: torch.device
                   ) -> tuple[torch.Tensor, Stats]:
        """Factor turning raw rows into the gradients used: 1/L_aux,i under log losses (0 for
        an aux loss that is not positive: it has no log)."""
        scale = torch.ones(K, dtype=torch.float64, device=device)
        if not self.log_losses or K == 1:
            return scale, {}
        if losses is None:
            raise ValueError("OLAux(log_losses=True) needs the loss values to form ∇log L_aux")
        aux = f64(losses)[1:].to(device)
        positive = aux > 0
        scale = torch.cat([scale[:1], torch.where(positive, 1.0 / aux, torch.zeros_like(aux))])
        return scale, {"olaux/nonpositive": (~positive).sum().to(torch.float64)}

    def combine(self, G, losses=None, layout=None, names=None):
        check_inputs(G, losses, layout)
        K = G.shape[0]
        names = term_names(K, names, self.role)
        scale, stats = self._row_scale(losses, K, G.device)
        M = gram(G)                                   # raw Gram, on the device
        M_used = M * scale[:, None] * scale[None, :]  # Gram of the rows actually combined
        coef, weight_stats = self._advance(M_used[0, 1:], torch.isfinite(M).all(), scale, names)
        g = mix(G, coef)

        stats.update(norm_stats(M, coef, names))
        stats.update(weight_stats)
        stats.update(unstack("cos/", names[1:], cosine(M[0, 1:], M[0, 0], M.diagonal()[1:])))
        return g, stats

    def weights_from_dots(self, dots: torch.Tensor, losses: torch.Tensor | None,
                          names=None) -> tuple[torch.Tensor, Stats]:
        """This update's coefficients from the raw dot products alone, no G needed.

        `dots[K-1]` holds d_i = ∇θ L_main · ∇θ L_aux,i (raw gradients, before any 1/L_aux,i
        scaling), `losses[K]` the term values (needed only under `log_losses`). Returns
        `coef[K]` (float64, on the dots' device) with coef_0 = 1 and coef_i = w_i s_i, so that
        `coef @ G` is what `combine(G, losses)` returns, and advances w exactly as `combine`
        does: the dot product of the rows used is s_0 s_i d_i with s_0 = 1. Stats: `w/<aux>`,
        `dot/<aux>`, `olaux/nonfinite` (and `olaux/nonpositive`); the norms and cosines need
        the Gram matrix and are absent.
        """
        if not isinstance(dots, torch.Tensor) or dots.dim() != 1:
            raise ValueError(f"dots must be a 1-D tensor [K-1] of ∇L_main·∇L_aux,i, got "
                             f"{getattr(dots, 'shape', type(dots))}")
        K = dots.numel() + 1
        if losses is not None and tuple(losses.shape) != (K,):
            raise ValueError(f"losses must have shape [{K}] (main, then the {K - 1} aux terms), "
                             f"got {tuple(losses.shape)}")
        names = term_names(K, names, self.role)
        scale, stats = self._row_scale(losses, K, dots.device)
        d = f64(dots)
        coef, weight_stats = self._advance(d * scale[1:], torch.isfinite(d).all(), scale, names)
        stats.update(weight_stats)
        return coef, stats

    def to(self, device: torch.device | str) -> OLAux:
        """Move the state to `device` (done by the first update anyway)."""
        self._w, self._acc = (on_device(t, torch.device(device)) for t in (self._w, self._acc))
        return self

    def _advance(self, dots_used: torch.Tensor, finite: torch.Tensor, scale: torch.Tensor,
                 names: list[str]) -> tuple[torch.Tensor, Stats]:
        """One update of Alg. 1 from its dot products ∇L_main · ∇(log) L_aux,i: the
        coefficients of the rows (w in force, times the row scale), then the state step.

        `finite` (0-dim bool) is False when this update's gradients held a NaN or inf; its dots
        are then left out of the horizon sum, so one bad batch does not poison w for the rest
        of the run.
        """
        K = scale.numel()
        if self._w is None:
            self._w = torch.ones(K - 1, dtype=torch.float64, device=scale.device)
            self._acc = torch.zeros(K - 1, dtype=torch.float64, device=scale.device)
        elif self._w.numel() != K - 1:
            raise ValueError(f"OLAux was fed {self._w.numel()} aux terms before, now {K - 1}")
        elif self._w.device != scale.device:
            self.to(scale.device)
        w_used = self._w.clone()
        coef = torch.cat([torch.ones(1, dtype=torch.float64, device=scale.device), w_used]) * scale

        # Accumulate this update's dot products; step w at the end of each horizon (Alg. 1:
        # the update of θ_t uses the w in force, then w moves if (t + 1) mod N == 0).
        self._acc.add_(torch.where(finite, dots_used, torch.zeros_like(dots_used)))
        self._step += 1
        if self._step % self.horizon == 0:
            self._w.add_(self._acc, alpha=self.lr)
            if self.nonnegative:
                self._w.clamp_(min=0.0)
            self._acc.zero_()

        stats: Stats = {"olaux/nonfinite": (~finite).to(torch.float64)}
        stats.update(unstack("w/", names[1:], w_used))
        stats.update(unstack("dot/", names[1:], dots_used))
        return coef, stats

    @property
    def weights(self) -> torch.Tensor | None:
        """Current w (used by the next update); None before the first update."""
        return None if self._w is None else self._w.clone()

    def state_dict(self) -> dict:
        return {"weights": to_cpu(self._w), "acc": to_cpu(self._acc), "step": self._step}

    def load_state_dict(self, state: dict) -> None:
        w, acc = state["weights"], state["acc"]
        self._w = None if w is None else torch.as_tensor(w, dtype=torch.float64).clone()
        self._acc = None if acc is None else torch.as_tensor(acc, dtype=torch.float64).clone()
        self._step = int(state["step"])

    def __repr__(self) -> str:
        return (f"OLAux(horizon={self.horizon}, lr={self.lr}, log_losses={self.log_losses}, "
                f"nonnegative={self.nonnegative})")
