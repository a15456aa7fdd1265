"""What an update reports, kept on the learner's device until the end of a learner chunk.

An update that reads a metric (`float(t)`, `.item()`, `.tolist()`) makes the host wait for the
device to drain before it can queue the next kernel; a few dozen such reads per update are what
made a GPU update cost 20 ms where its arithmetic needs one. Here an update only *adds* its
values into device buffers, and `LearnerWorker` reads them once per chunk (`read()`: one
device-to-host copy). The non-finite guard decides on the device the same way: a flag per step
part, counted in a device tensor, checked against `learner.max_nonfinite_run` when read.

Both buffers are updated in place, so an update that uses them can be captured as a CUDA graph
and replayed.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from learner.algorithm import NonFiniteLossError


class DeviceMetrics:
    """Per-update values summed on the device; `read()` gives each one's mean over the updates
    that recorded it with `ok` true (a skipped update's values are left out, not averaged in)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        self._column_index: dict[tuple[str, ...], torch.Tensor] = {}
        self._sums = torch.zeros(0, dtype=torch.float64, device=self.device)
        self._counts = torch.zeros(0, dtype=torch.float64, device=self.device)

    def _columns(self, names: tuple[str, ...]) -> torch.Tensor:
        """The column index of a key list, built once per list: no host-to-device copy per
        update. New names grow the buffers (only while an update first meets them, before any
        graph capture)."""
        if names not in self._column_index:
            new = [n for n in names if n not in self._index]
            for n in new:
                self._index[n] = len(self.names)
                self.names.append(n)
            if new:
                pad = torch.zeros(len(new), dtype=torch.float64, device=self.device)
                self._sums = torch.cat([self._sums, pad])
                self._counts = torch.cat([self._counts, pad])
            self._column_index[names] = torch.tensor([self._index[n] for n in names],
                                                     device=self.device)
        return self._column_index[names]

    def record(self, values: Mapping[str, torch.Tensor], ok: torch.Tensor | None = None) -> None:
        """Add one update's values (0-dim tensors) where `ok` (a 0-dim bool) is true."""
        if not values:
            return
        names = list(values)
        cols = self._columns(tuple(names))
        v = torch.stack([self._scalar(values[n]) for n in names])
        if ok is None:
            self._sums.index_add_(0, cols, v)
            self._counts.index_add_(0, cols, torch.ones_like(v))
            return
        w = ok.to(torch.float64)
        # where, not w * v: a skipped update's NaN must not reach the sums (NaN · 0 = NaN).
        self._sums.index_add_(0, cols, torch.where(ok, v, torch.zeros_like(v)))
        self._counts.index_add_(0, cols, w.expand_as(v))

    def _scalar(self, value) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.detach().reshape(()).to(torch.float64)
        # A Python number was read on the host already; it costs a copy to the device.
        return torch.as_tensor(float(value), dtype=torch.float64, device=self.device)

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {"sums": self._sums, "counts": self._counts}

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        """Put back a `snapshot()` (a copy of it) into the same buffers."""
        self._sums.copy_(saved["sums"])
        self._counts.copy_(saved["counts"])

    def read(self) -> dict[str, float]:
        """Means since the last read (one host read), then start again from zero."""
        if not self.names:
            return {}
        both = torch.stack([self._sums, self._counts]).cpu()
        self._sums.zero_()
        self._counts.zero_()
        return {n: float(s / c) for n, s, c in zip(self.names, both[0].tolist(), both[1].tolist())
                if c > 0}


class DeviceNonFiniteGuard:
    """Counts skipped updates on the device: `observe(ok)` counts a skipped update (and the run
    of them in a row) without a host read; `read()` syncs the counts and raises
    `NonFiniteLossError` when a run reached `max_run` since the last read."""

    def __init__(self, max_run: int, device: torch.device | str, parts: Sequence[str] = ("loss",)):
        self.max_run = max_run
        self.parts = list(parts)
        self.device = torch.device(device)
        # [total, run, longest run since read, part that failed last (index + 1, 0: none)]
        self._state = torch.zeros(4, dtype=torch.int64, device=self.device)
        self._detail: torch.Tensor | None = None   # the last skipped update's losses and norm
        self.total = 0
        self.run = 0

    def observe(self, ok: torch.Tensor, failed_part: torch.Tensor | None = None,
                detail: torch.Tensor | None = None) -> None:
        """`ok`: 0-dim bool, the update stepped; `failed_part`: index into `parts` when not;
        `detail`: the failed part's losses then its gradient norm, for the message."""
        bad = (~ok).to(torch.int64)
        total, run, longest, part = self._state.unbind()
        run_now = (run + 1) * bad
        part_now = bad * ((failed_part.to(torch.int64) if failed_part is not None else 0) + 1) \
            + (1 - bad) * part
        self._state.copy_(torch.stack([total + bad, run_now, torch.maximum(longest, run_now),
                                       part_now]))
        if detail is not None:
            if self._detail is None:
                self._detail = torch.zeros_like(detail)
            self._detail.copy_(torch.where(ok, self._detail, detail))

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {"state": self._state, **({"detail": self._detail} if self._detail is not None else {})}

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        self._state.copy_(saved["state"])
        if "detail" in saved:
            self._detail.copy_(saved["detail"])

    def sync(self) -> None:
        """Read `total` and `run` (at a chunk's edge, e.g. for a checkpoint) without judging."""
        self.total, self.run = self._state[:2].tolist()

    def read(self) -> None:
        """Sync `total` and `run`; raise when a run of `max_run` skipped updates happened."""
        total, run, longest, part = self._state.tolist()
        self.total, self.run = total, run
        self._state[2] = run   # the longest run of the next chunk starts from the current one
        if longest >= self.max_run:
            what = self.parts[part - 1] if part > 0 else "unknown part"
            if self._detail is not None:
                values = self._detail.tolist()
                what += f" losses {values[:-1]}, gradient norm {values[-1]}"
            raise NonFiniteLossError(
                f"{longest} consecutive non-finite updates (last: {what}); stopping. Lower "
                f"learner.lr or check the rewards.")

    def load(self, total: int, run: int) -> None:
        self.total, self.run = int(total), int(run)
        self._state.copy_(torch.tensor([total, run, run, 0], dtype=torch.int64))
