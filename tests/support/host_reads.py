"""Count the places where code reads a tensor's value back to Python.

On a GPU each such read (`.item()`, `float(t)`, `.tolist()`, `if t:`, `.cpu()`, `.numpy()`)
waits for the device to drain; an update that makes none can be queued ahead of the device and
captured as a CUDA graph. On the CPU the same calls are cheap but are the same calls, so a test
on the CPU finds them: inside `count_host_reads()` every conversion of a tensor's value to a
Python value or a host copy is recorded with the line that made it.
"""
from __future__ import annotations

import contextlib
import traceback

import torch

_PATCHED = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")


@contextlib.contextmanager
def count_host_reads():
    """Yields a list that fills with `(method, 'file:line')` for each read made inside."""
    reads: list[tuple[str, str]] = []
    originals = {name: getattr(torch.Tensor, name) for name in _PATCHED}

    def wrap(name, original):
        def reading(self, *args, **kwargs):
            frame = traceback.extract_stack(limit=3)[0]
            reads.append((name, f"{frame.filename}:{frame.lineno}"))
            return original(self, *args, **kwargs)
        return reading

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
