"""The replay/queue service: tables (what is stored, how it is handed out) and the Ray actor."""
from replay.tables import FifoTable, Table, make_table

__all__ = ["FifoTable", "Table", "make_table"]
