"""How a learner's update runs: eagerly, compiled, or captured once as a CUDA graph and replayed.

The update itself is one plain function over static input buffers (the learner copies each
batch into the same device tensors) that makes no host read: it only queues device work. That
is what lets it be replayed. `learner.compile` picks the way:

- `off`: call it (the readable reference; the default on CPU).
- `compile`: `torch.compile` of it. Where Dynamo cannot trace (autograd calls, functorch
  transforms) it breaks the graph and runs that part eagerly, so the math stays the same.
- `graphs` (the default on CUDA): the first `warmup` calls run eagerly on a side stream (they
  are real updates: optimizer state, the metric columns and cuBLAS workspaces come into being
  there, as graph capture requires); the next call captures the whole update — target,
  critic, actor, temperature, Polyak, the combiner included — as one CUDA graph, and every
  call from then on is one `replay()`: a single launch for the whole update.

The first fast call is checked against the eager reference, on the learner's own state:
from a snapshot (`save`), the update runs eagerly and its result is kept; the snapshot is
restored and the compiled (or captured and replayed) update runs; the two results must agree
(`rtol`, `atol`: the fast path may order float sums differently). A compile or capture that
raises, or a result that disagrees, falls back to eager with one line on stderr saying why,
never silently, and the state is the eager reference's: the run goes on with the same math.
Dynamo compiles each piece between graph breaks when it first reaches it, so a compile can
fail part-way through an update: the restore covers that too. `reset()` drops a captured graph
(the buffers changed shape, or the state was loaded into new tensors).
"""
from __future__ import annotations

import copy
import sys
from collections.abc import Callable

import torch

MODES = ("off", "compile", "graphs")


def resolve_mode(requested: str, device: torch.device) -> str:
    """`auto`: graphs on CUDA, off elsewhere; `graphs` needs CUDA."""
    if requested == "auto":
        return "graphs" if device.type == "cuda" else "off"
    if requested not in MODES:
        raise ValueError(f"learner.compile must be one of auto, {', '.join(MODES)}; got {requested!r}")
    if requested == "graphs" and device.type != "cuda":
        raise ValueError("learner.compile: 'graphs' captures CUDA graphs and needs "
                         f"learner.device cuda; this learner runs on {device.type}")
    return requested


def largest_difference(fast, reference, rtol: float, atol: float) -> str | None:
    """Where two states (nested dicts, lists and tensors) differ beyond the tolerance, as
    "path: what", or None."""
    found = _difference(fast, reference, rtol, atol)
    return None if found is None else f"{'.'.join(found[0])}: {found[1]}"


def _difference(fast, reference, rtol, atol) -> tuple[list[str], str] | None:
    if isinstance(reference, (dict, list, tuple)):
        items = reference.items() if isinstance(reference, dict) else enumerate(reference)
        for key, value in items:
            found = _difference(fast[key], value, rtol, atol)
            if found is not None:
                return [str(key), *found[0]], found[1]
        return None
    if isinstance(reference, torch.Tensor):
        a, b = fast.detach().cpu(), reference.detach().cpu()
        if a.shape != b.shape:
            return [], f"shape {tuple(a.shape)} != {tuple(b.shape)}"
        if a.is_floating_point():
            if not torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol, equal_nan=True):
                return [], f"max |difference| {(a.double() - b.double()).abs().max().item():.3g}"
        elif not torch.equal(a, b):
            return [], "values differ"
        return None
    return None if fast == reference else ([], f"{fast!r} != {reference!r}")


class StepRunner:
    """Runs `fn()` (one update over static buffers) in the chosen mode. `save()` returns the
    state the update changes and `load(state)` puts it back; both are needed for the fast modes."""

    def __init__(self, fn: Callable[[], None], mode: str, device: torch.device,
                 save: Callable[[], dict], load: Callable[[dict], None], warmup: int = 3,
                 name: str = "update", rtol: float = 1e-3, atol: float = 1e-5):
        self.fn = fn
        self.save, self.load = save, load
        self.mode = mode
        self.device = device
        self.warmup = warmup if mode == "graphs" else 1
        self.name = name
        self.rtol, self.atol = rtol, atol
        self.calls = 0
        self.fallback_reason: str | None = None
        self._fast: Callable[[], None] | None = None

    def __call__(self) -> None:
        self.calls += 1
        if self.mode == "off" or self.calls <= self.warmup:
            self._eager()
        elif self._fast is not None:
            self._fast()
        else:
            self._first_fast_call()

    def reset(self) -> None:
        """Forget a captured graph; the next calls warm up and capture again."""
        if self.mode == "graphs":
            self._fast = None
        self.calls = 0

    def _eager(self) -> None:
        if self.mode != "graphs":
            self.fn()
            return
        # Warm-up on a side stream, as torch.cuda.graphs asks: the allocations made here stay
        # out of the capture's memory pool.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.fn()
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _make_fast(self) -> Callable[[], None]:
        if self.mode == "compile":
            return torch.compile(self.fn)
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(graph):
            self.fn()       # recorded, not run: the replays run it
        return graph.replay

    def _first_fast_call(self) -> None:
        before = copy.deepcopy(self.save())
        self.fn()                                  # the eager reference of this update
        reference = copy.deepcopy(self.save())
        self.load(copy.deepcopy(before))
        try:
            fast = self._make_fast()
            fast()
            where = largest_difference(self.save(), reference, self.rtol, self.atol)
        except Exception as err:
            self._fall_back(reference, f"{type(err).__name__}: {_first_line(err)}")
            return
        if where is not None:
            self._fall_back(reference, f"its result differs from the eager update at {where}")
            return
        self._fast = fast

    def _fall_back(self, reference: dict, why: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.load(reference)
        self.fallback_reason = why
        print(f"learner.compile: {self.mode} of the {self.name} failed ({why}); running it "
              f"eagerly", file=sys.stderr, flush=True)
        self.mode = "off"
        self._fast = None


def _first_line(err: BaseException) -> str:
    text = str(err)
    return text.splitlines()[0] if text else ""
