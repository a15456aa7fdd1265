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

A capture or compile that fails falls back to eager with one line on stderr saying why, never
silently, and the run goes on with the same math. A capture runs nothing, so the update of the
call that failed to capture simply runs eagerly; compiled code may fail part-way through an
update (Dynamo compiles each piece between graph breaks when it first reaches it), so the first
compiled call is made from a snapshot of the learner's state (`save`/`load`), which a failure
restores before the eager run. `reset()` drops a captured graph (the buffers changed shape, or
the state was loaded into new tensors).
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


class StepRunner:
    """Runs `fn()` (one update over static buffers) in the chosen mode."""

    def __init__(self, fn: Callable[[], None], mode: str, device: torch.device, warmup: int = 3,
                 name: str = "update", save: Callable[[], dict] | None = None,
                 load: Callable[[dict], None] | None = None):
        self.fn = fn
        self.save, self.load = save, load
        self.mode = mode
        self.device = device
        self.warmup = warmup
        self.name = name
        self.calls = 0
        self.fallback_reason: str | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._compiled: Callable[[], None] | None = None

    def __call__(self) -> None:
        self.calls += 1
        if self.mode == "compile":
            return self._run_compiled()
        if self.mode == "graphs":
            return self._run_graph()
        self.fn()

    def reset(self) -> None:
        """Forget a captured graph; the next calls warm up and capture again."""
        self._graph = None
        self.calls = 0

    def _fall_back(self, why: BaseException) -> None:
        self.fallback_reason = f"{type(why).__name__}: {str(why).splitlines()[0] if str(why) else ''}"
        print(f"learner.compile: {self.mode} of the {self.name} failed ({self.fallback_reason}); "
              f"running it eagerly", file=sys.stderr, flush=True)
        self.mode = "off"
        self._graph = None

    def _run_compiled(self) -> None:
        if self._compiled is not None:
            self._compiled()
            return
        self._compiled = torch.compile(self.fn)
        before = copy.deepcopy(self.save()) if self.save is not None else None
        try:
            self._compiled()
        except Exception as err:     # a compile error shows at the first call
            if before is not None:
                self.load(before)
            self._fall_back(err)
            self.fn()

    def _run_graph(self) -> None:
        if self._graph is not None:
            self._graph.replay()
            return
        if self.calls <= self.warmup:
            # Warm-up on a side stream, as torch.cuda.graphs asks: the allocations made here
            # stay out of the capture's memory pool.
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.fn()
            torch.cuda.current_stream(self.device).wait_stream(side)
            return
        graph = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize(self.device)
            with torch.cuda.graph(graph):
                self.fn()       # recorded, not run: the replay below runs this update
        except Exception as err:
            # A failed capture leaves no update done; this call's update runs eagerly.
            torch.cuda.synchronize(self.device)
            self._fall_back(err)
            self.fn()
            return
        self._graph = graph
        graph.replay()
