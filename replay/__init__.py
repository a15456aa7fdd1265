"""The replay/queue service: tables (what is stored, how it is handed out), rate limiting and
the Ray actors (replay/service.py: the FIFO queue; replay/replay_service.py and
replay/sharding.py: the replay table of off-policy training)."""
from replay.rate_limiter import SampleToInsertRatio, check_rate_limit, min_tolerance
from replay.replay_table import ReplayTable
from replay.tables import FifoTable, Table, make_table

__all__ = ["FifoTable", "ReplayTable", "SampleToInsertRatio", "Table", "check_rate_limit",
           "make_table", "min_tolerance"]
