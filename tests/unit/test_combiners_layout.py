"""Layout: how parameters become layers (empty tensors skipped, repeated module names kept
apart), and the messages of the shapes it refuses."""
from __future__ import annotations

import pytest
import torch

from combiners.layout import Layout


def _params(*named: tuple[str, int]) -> list[tuple[str, torch.Tensor]]:
    return [(name, torch.zeros(n)) for name, n in named]


def test_an_empty_tensor_is_skipped_and_the_parameters_after_it_still_count():
    layout = Layout.from_parameters(_params(("a.w", 2), ("a.empty", 0), ("b.w", 3)), by="parameter")
    assert list(layout) == [("a.w", 0, 2), ("b.w", 2, 5)]


def test_a_module_seen_again_later_gets_a_numbered_name():
    layout = Layout.from_parameters(_params(("enc.w", 2), ("head.w", 1), ("enc.b", 3), ("head.b", 1),
                                            ("enc.c", 1)))
    assert layout.names == ["enc", "head", "enc#1", "head#1", "enc#2"]
    assert layout.size == 8


def test_refused_shapes_say_what_is_wrong():
    with pytest.raises(ValueError, match="^a Layout needs at least one layer$"):
        Layout([])
    with pytest.raises(ValueError, match="layer 'b' spans"):
        Layout([("a", 0, 2), ("b", 2, 2)])  # an empty layer
    with pytest.raises(ValueError, match="^by must be 'module' or 'parameter', got 'layer'$"):
        Layout.from_parameters(_params(("a.w", 1)), by="layer")
    with pytest.raises(ValueError, match="^G has 3 columns but the layout covers 2$"):
        Layout([("a", 0, 2)]).grams(torch.zeros(2, 3))
