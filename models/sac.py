"""SAC networks for vector observations: a tanh-Gaussian actor and twin Q critics (Haarnoja
et al., 2018, "Soft Actor-Critic Algorithms and Applications"), in the three multi-task
variants that papers 003 (PCGrad) and 004 (D-Grad) compare on Meta-World:

- `mtsac`: one MLP for all tasks; the one-hot task id is already part of the observation.
- `multihead`: a shared MLP trunk and one output layer per task, chosen by the task id.
- `dgrad_a`: paper 004's D-Grad (A). After the activation of each hidden layer a D-Grad (A)
  layer applies `M(z) x + β(z)` (Eq. 1), with `M(z) ∈ R^{n×n}` a full matrix and `β(z) ∈ R^n`
  produced by that layer's task network from the one-hot task vector z (Fig. 2). The paper
  uses 3 hidden layers of 160 units for D-Grad (A) (6×160 for the others).

Where D-Grad's task networks belong. The paper does not give the task network's depth. Its
input is a one-hot z, so whatever the network, its output for task k is a function of k alone:
the most general form is a table, i.e. a linear task network without bias, whose column k is
(vec M_k, β_k). We use exactly that, and it makes every task network *task-specific*: task k's
loss reaches only (M_k, β_k). A deeper or biased task network would share weights across tasks
and bring back the gradient interference the layer exists to remove ("encourages the
activations of each layer to be orthogonal to the layer's activations when conditioned on other
task vectors", §4.2). So (M_k, β_k) are in `task_parameters()[k]`: the combiners never mix
them, each gets its own task's gradient, as the heads of `multihead` do. The task networks are
"randomly initialised" (§4.2): each M_k, β_k like an n→n `nn.Linear`.

Task ids. `task_id` is one id per row (`[N]` with x `[N, in]`, what rollout actors pass), one
id per task block (`[K]` with task-major x `[K, n, in]`, what the learner's batched update
passes: each per-task layer is then one batched matmul over the K blocks), or a 0-dim tensor
meaning every row is that task (inside `torch.func.vmap` over task-major batches, where the id
is batched and the layer again becomes one batched matmul). None of them materialises an n×n
matrix per row.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

MODELS = ("mtsac", "multihead", "dgrad_a")
#: log σ is squashed smoothly into this range (as CleanRL's SAC), so σ never collapses to 0 or
#: explodes while the gradient still flows at the bounds.
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
_GATHER_LIMIT = 1 << 22   # per-row weight gather up to this many elements, else a loop


class TaskLinear(nn.Module):
    """One affine map per task: `y = W_k x + b_k` for the row's task k.

    Used as `multihead`'s output heads and as D-Grad (A)'s `M(z) x + β(z)` (W_k = M_k, b_k = β_k).
    Each task's weight and bias are separate parameters so that they can be listed per task.
    """

    def __init__(self, in_features: int, out_features: int, num_tasks: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)   # nn.Linear's default initialisation
        self.weight = nn.ParameterList(
            nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
            for _ in range(num_tasks))
        self.bias = nn.ParameterList(
            nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
            for _ in range(num_tasks))

    @property
    def num_tasks(self) -> int:
        return len(self.weight)

    def task_parameters(self, k: int) -> list[nn.Parameter]:
        return [self.weight[k], self.bias[k]]

    def forward(self, x: torch.Tensor, task_id: torch.Tensor) -> torch.Tensor:
        W = torch.stack(list(self.weight))        # [K, out, in]
        b = torch.stack(list(self.bias))          # [K, out]
        task_id = task_id.long()
        if task_id.dim() == 0:                    # every row is one task
            # index_select, not W[task_id]: a 0-dim index would be read as a Python int,
            # which fails under vmap (the id is batched there).
            k = task_id.reshape(1)
            return F.linear(x, W.index_select(0, k)[0], b.index_select(0, k)[0])
        if x.dim() == 3 and task_id.shape == x.shape[:1]:   # task-major blocks [K, n, in]
            return torch.baddbmm(b[task_id].unsqueeze(1), x, W[task_id].transpose(1, 2))
        if x.dim() != 2 or task_id.shape != x.shape[:1]:
            raise ValueError(f"task ids need x [N, in] with task_id [N] (per row), or x "
                             f"[K, n, in] with task_id [K] (per task block); got x "
                             f"{tuple(x.shape)}, task_id {tuple(task_id.shape)}")
        if x.shape[0] * self.out_features * self.in_features <= _GATHER_LIMIT:
            return torch.einsum("noi,ni->no", W[task_id], x) + b[task_id]
        out = x.new_empty(x.shape[0], self.out_features)
        for k in torch.unique(task_id).tolist():   # large maps: one matmul per task present
            rows = (task_id == k).nonzero().squeeze(1)
            out[rows] = F.linear(x[rows], W[k], b[k])
        return out


class TaskMLP(nn.Module):
    """`in_dim -> hidden... -> out_dim` with ReLU, in one of the variants of `MODELS`."""

    def __init__(self, model: str, in_dim: int, out_dim: int, num_tasks: int,
                 hidden: tuple[int, ...]):
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"unknown SAC model {model!r}; expected one of {MODELS}")
        if in_dim < 1 or out_dim < 1 or num_tasks < 1 or not hidden or min(hidden) < 1:
            raise ValueError(f"SAC network sizes must be positive: in_dim={in_dim}, "
                             f"out_dim={out_dim}, num_tasks={num_tasks}, hidden={hidden}")
        self.model = model
        sizes = (in_dim, *hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        # D-Grad (A): one task network (M(z), β(z)) after each hidden layer's activation.
        self.dgrad = nn.ModuleList(TaskLinear(n, n, num_tasks) for n in hidden) \
            if model == "dgrad_a" else None
        self.out = TaskLinear(hidden[-1], out_dim, num_tasks) if model == "multihead" \
            else nn.Linear(hidden[-1], out_dim)

    def _task_layers(self) -> list[TaskLinear]:
        layers = list(self.dgrad) if self.dgrad is not None else []
        return layers + ([self.out] if isinstance(self.out, TaskLinear) else [])

    def forward(self, x: torch.Tensor, task_id: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x))
            if self.dgrad is not None:
                x = self.dgrad[i](x, task_id)          # M_l(z) x + β_l(z)
        if torch.is_autocast_enabled(x.device.type):
            # Under bf16 autocast (`learner.bf16`) the hidden layers' products run in bfloat16
            # and the output layer in float32: Q-values, μ and log σ keep float32's precision
            # (bfloat16's 8-bit significand would round a Q of 400 to a multiple of 2).
            with torch.autocast(x.device.type, enabled=False):
                return self._output(x.float(), task_id)
        return self._output(x, task_id)

    def _output(self, x: torch.Tensor, task_id: torch.Tensor) -> torch.Tensor:
        return self.out(x, task_id) if isinstance(self.out, TaskLinear) else self.out(x)

    def task_parameters(self) -> list[list[nn.Parameter]]:
        layers = self._task_layers()
        if not layers:
            return []
        return [[p for layer in layers for p in layer.task_parameters(k)]
                for k in range(layers[0].num_tasks)]

    def shared_parameters(self) -> list[nn.Parameter]:
        task = {id(p) for ps in self.task_parameters() for p in ps}
        return [p for p in self.parameters() if id(p) not in task]


class SacActor(nn.Module):
    """Tanh-Gaussian policy: u ~ N(μ(s), σ(s)²), a = tanh(u) ∈ [-1, 1]^A."""

    def __init__(self, model: str, obs_dim: int, action_dim: int, num_tasks: int,
                 hidden: tuple[int, ...]):
        super().__init__()
        self.action_dim = action_dim
        self.net = TaskMLP(model, obs_dim, 2 * action_dim, num_tasks, tuple(hidden))

    def forward(self, obs: torch.Tensor, task_id: torch.Tensor):
        """(mean, log_std), each [..., A]; log_std lies in [LOG_STD_MIN, LOG_STD_MAX]."""
        mean, raw = self.net(obs, task_id).chunk(2, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1.0)
        return mean, log_std

    def sample(self, obs: torch.Tensor, task_id: torch.Tensor, noise: torch.Tensor | None = None):
        """Reparameterised a = tanh(μ + σ ε) and log π(a|s), ε ~ N(0, I) (or the given `noise`).

        Change of variables (SAC paper, App. C): log π(a|s) = Σ_d [log N(u_d; μ_d, σ_d) −
        log(1 − tanh²(u_d))], with log(1 − tanh² u) = 2 (log 2 − u − softplus(−2u)) for
        numerical stability at large |u|.
        """
        mean, log_std = self(obs, task_id)
        eps = torch.randn_like(mean) if noise is None else noise
        u = mean + log_std.exp() * eps
        gaussian = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_det = (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return torch.tanh(u), gaussian - log_det

    def act(self, obs: torch.Tensor, task_id: torch.Tensor, deterministic: bool,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """Actions in [-1, 1]^A: tanh(μ) when deterministic, else a sample."""
        mean, log_std = self(obs, task_id)
        if deterministic:
            return torch.tanh(mean)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return torch.tanh(mean + log_std.exp() * eps)

    def shared_parameters(self) -> list[nn.Parameter]:
        return self.net.shared_parameters()

    def task_parameters(self) -> list[list[nn.Parameter]]:
        return self.net.task_parameters()


class TwinQ(nn.Module):
    """Two independent Q networks Q_1, Q_2(s, a) (clipped double-Q, Fujimoto et al., 2018)."""

    def __init__(self, model: str, obs_dim: int, action_dim: int, num_tasks: int,
                 hidden: tuple[int, ...]):
        super().__init__()
        self.q1 = TaskMLP(model, obs_dim + action_dim, 1, num_tasks, tuple(hidden))
        self.q2 = TaskMLP(model, obs_dim + action_dim, 1, num_tasks, tuple(hidden))

    def forward(self, obs: torch.Tensor, action: torch.Tensor, task_id: torch.Tensor):
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x, task_id).squeeze(-1), self.q2(x, task_id).squeeze(-1)

    def shared_parameters(self) -> list[nn.Parameter]:
        return self.q1.shared_parameters() + self.q2.shared_parameters()

    def task_parameters(self) -> list[list[nn.Parameter]]:
        one, two = self.q1.task_parameters(), self.q2.task_parameters()
        return [a + b for a, b in zip(one, two)]


def build_sac_actor(model: str, obs_dim: int, action_dim: int, num_tasks: int,
                    hidden: tuple[int, ...]) -> SacActor:
    return SacActor(model, obs_dim, action_dim, num_tasks, tuple(hidden))


def build_sac_critic(model: str, obs_dim: int, action_dim: int, num_tasks: int,
                     hidden: tuple[int, ...]) -> TwinQ:
    return TwinQ(model, obs_dim, action_dim, num_tasks, tuple(hidden))
