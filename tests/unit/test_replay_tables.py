"""replay/tables.py: the smallest FIFO table and the messages of its refusals."""
from __future__ import annotations

import pytest

from replay.tables import FifoTable, make_table


def test_a_table_of_one_item_holds_one():
    table = FifoTable(1)
    assert table.can_insert() and not table.can_sample(1) and table.can_sample(0)
    table.insert("only", 3)
    assert not table.can_insert() and table.can_sample(1)
    assert table.sample(1) == ["only"] and len(table) == 0


@pytest.mark.parametrize("capacity", [0, -2])
def test_a_non_positive_capacity_is_refused_with_its_value(capacity):
    with pytest.raises(ValueError) as err:
        FifoTable(capacity)
    assert str(err.value) == f"capacity must be >= 1, got {capacity}"


def test_refusals_say_why():
    table = FifoTable(1)
    table.insert("a", 0)
    with pytest.raises(OverflowError) as full:
        table.insert("b", 0)
    assert str(full.value) == "FifoTable is full; wait for can_insert()"
    with pytest.raises(LookupError) as short:
        table.sample(2)
    assert str(short.value) == "FifoTable holds 1 items, 2 requested"
    with pytest.raises(ValueError) as unknown:
        make_table("FIFO", 2)
    assert str(unknown.value) == "unknown table kind 'FIFO'"


def test_a_sample_of_zero_takes_nothing():
    table = make_table("fifo", 2)
    table.insert("a", 1)
    assert table.sample(0) == [] and len(table) == 1
