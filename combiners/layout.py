"""Where each layer of the shared parameters sits in the flat gradient vector.

Combiners see the shared gradient of each loss term as one row of `G[K, P]`. Some of them need
to know which columns belong to which layer: cosine gating on Atari measures the cosine "on a
per-layer basis and then averaged" (Du et al., paper 000, App. G). A `Layout` is that map: an
ordered, gap-free list of `(name, start, stop)` slices covering `[0, P)`.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch


class Layout:
    """Named, contiguous, non-overlapping column slices `[start, stop)` that cover `[0, P)`."""

    def __init__(self, slices: Sequence[tuple[str, int, int]]):
        slices = [(str(name), int(start), int(stop)) for name, start, stop in slices]
        if not slices:
            raise ValueError("a Layout needs at least one layer")
        expected = 0
        for name, start, stop in slices:
            # Gap-free and ordered: flatten/unflatten and the layout agree column for column.
            if start != expected or stop <= start:
                raise ValueError(f"layer {name!r} spans [{start}, {stop}); expected it to start at "
                                 f"{expected} and be non-empty")
            expected = stop
        names = [name for name, _, _ in slices]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique, got {names}")
        self.slices: tuple[tuple[str, int, int], ...] = tuple(slices)

    @classmethod
    def whole(cls, size: int, name: str = "all") -> Layout:
        """The whole vector as one layer (what `layout=None` means to a combiner)."""
        return cls([(name, 0, int(size))])

    @classmethod
    def from_parameters(cls, params: Iterable, by: str = "module") -> Layout:
        """Build the layout of `flatten(params)`.

        `params` is what `module.named_parameters()` yields (`(name, tensor)` pairs) or plain
        tensors (named `p0, p1, ...`). With `by="module"` consecutive parameters of one module
        (`fc.weight`, `fc.bias`) form one layer, the usual meaning of "layer"; with
        `by="parameter"` every tensor is its own layer.
        """
        if by not in ("module", "parameter"):
            raise ValueError(f"by must be 'module' or 'parameter', got {by!r}")
        slices: list[list] = []
        offset = 0
        for i, item in enumerate(params):
            name, p = item if isinstance(item, tuple) else (f"p{i}", item)
            key = name.rsplit(".", 1)[0] if by == "module" and "." in name else name
            n = p.numel()
            if n == 0:
                continue
            if slices and by == "module" and slices[-1][0] == key:
                slices[-1][2] += n
            else:
                slices.append([key, offset, offset + n])
            offset += n
        # Two non-adjacent groups can share a module prefix; keep names unique by suffixing.
        seen: dict[str, int] = {}
        for s in slices:
            count = seen.get(s[0], 0)
            seen[s[0]] = count + 1
            if count:
                s[0] = f"{s[0]}#{count}"
        return cls([tuple(s) for s in slices])

    @property
    def size(self) -> int:
        """P, the number of columns covered."""
        return self.slices[-1][2]

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.slices]

    def __len__(self) -> int:
        return len(self.slices)

    def __iter__(self) -> Iterator[tuple[str, int, int]]:
        return iter(self.slices)

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and self.slices == other.slices

    def __repr__(self) -> str:
        return f"Layout({list(self.slices)!r})"

    def grams(self, G: torch.Tensor) -> torch.Tensor:
        """Per-layer Gram matrices `[L, K, K]`: entry `[l, i, j]` is `g_i · g_j` on layer l.

        One `[K, P_l] @ [P_l, K]` product per layer: every per-layer dot product and norm a
        combiner needs, without materialising a `[K, P]` elementwise product.
        """
        if G.shape[-1] != self.size:
            raise ValueError(f"G has {G.shape[-1]} columns but the layout covers {self.size}")
        return torch.stack([G[:, a:b] @ G[:, a:b].T for _, a, b in self.slices])
