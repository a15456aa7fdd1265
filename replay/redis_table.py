"""The durable replay table (`replay.backend: redis`): a `ReplayTable` written through to Redis.

Sampling reads the in-memory rings, as with the default table; every insert is first written to
Redis in one MULTI/EXEC transaction (the rows and the ring's `pos`/`size` together) and only
after Redis has answered is it applied in memory and acknowledged. So what a caller saw
acknowledged is in Redis, and a table built on the same Redis and namespace (a shard restarted
after the death of its actor, a run resumed after the death of its driver) starts with it.
How much of it survives the death of redis-server itself is Redis's fsync policy: with
`appendfsync everysec` about the last second of inserts can be lost.

Layout, per task k under the namespace N (`accord:<run id>:replay`):

    N:task:k:meta               hash: pos, size, inserted, layout
    N:task:k:<field>:<block>    string: rows [block * B, (block + 1) * B) of one field, raw bytes

Fields are stored as the rows' raw bytes (C order, the table's dtypes) and read back with
`np.frombuffer`: nothing from Redis is unpickled or evaluated, so a hostile Redis can corrupt
the replay, not run code in the actor. Blocks of B rows keep every string far below Redis's
512 MB limit and let a write touch only the rows it changes (SETRANGE). Each meta write is an
absolute value, never an increment, so a transaction that redis-py retries after a dropped
connection writes the same thing twice rather than counting twice.

Tasks are keyed by their global task id, so a resumed run with another `replay.shards` finds
every task's rows in whichever shard now holds it.
"""
from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np

from replay.replay_table import FIELDS, ReplayTable, _Ring

BLOCK_ROWS = 4096


class StoredReplayError(ValueError):
    """What Redis holds for a task cannot be loaded into this table (another layout, or torn)."""


def replay_namespace(run_id: str) -> str:
    return f"accord:{run_id}:replay"


def redis_client(url: str):
    """A client for `url` that rides out a short outage: a command whose connection dropped is
    retried a few times with backoff (about 2 s in all) before the insert fails."""
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5,
                                retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 4),
                                retry_on_error=[redis.ConnectionError, redis.TimeoutError])


class RedisReplayTable(ReplayTable):
    """`ReplayTable` whose inserts are acknowledged only once Redis holds them (module docstring).

    `client` is a `redis.Redis`; `restored` is the number of rows loaded at construction and
    `write_failures` the inserts that Redis refused or did not answer (they raise, and are
    neither stored nor acknowledged)."""

    def __init__(self, task_ids: Sequence[int], capacity_per_task: int, obs_shape: tuple[int, ...],
                 obs_dtype, action_dim: int, client, namespace: str, block_rows: int = BLOCK_ROWS):
        super().__init__(task_ids, capacity_per_task, obs_shape, obs_dtype, action_dim)
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        self.client = client
        self.namespace = namespace
        self.block_rows = block_rows
        self.row_bytes = {k: self.dtypes[k].itemsize * math.prod(self.shapes[k]) for k in FIELDS}
        # Written with every insert and compared on load: rows of another shape, dtype,
        # capacity or block size would be read as garbage.
        self.layout = json.dumps({"capacity": capacity_per_task, "block_rows": block_rows,
                                  "fields": {k: [self.dtypes[k].str, list(self.shapes[k])] for k in FIELDS}},
                                 sort_keys=True)
        self._inserted_per_task = {t: 0 for t in self.task_ids}
        self.write_failures = 0
        self.restored = self._load()

    # ---------------------------------------------------------------- keys
    def _meta_key(self, task: int) -> str:
        return f"{self.namespace}:task:{task}:meta"

    def _block_key(self, task: int, field: str, block: int) -> str:
        return f"{self.namespace}:task:{task}:{field}:{block}"

    # ---------------------------------------------------------------- insert
    def insert(self, chunk: dict) -> int:
        """Write the chunk's rows to Redis (one transaction), then to memory; returns the rows
        inserted. A Redis error propagates after being counted, with nothing stored."""
        import redis

        n = self.validate(chunk)
        task_id = np.asarray(chunk["task_id"])
        per_task = {}
        pipe = self.client.pipeline(transaction=True)
        for task in np.unique(task_id).tolist():
            select = task_id == task
            rows = {k: np.ascontiguousarray(np.asarray(chunk[k])[select], dtype=self.dtypes[k])
                    for k in FIELDS}
            ring = self._rings.get(task)
            pos, size = (0, 0) if ring is None else (ring.pos, ring.size)
            new_pos, new_size = self._queue_rows(pipe, task, rows, pos, size)
            inserted = self._inserted_per_task[task] + len(rows["reward"])
            pipe.hset(self._meta_key(task), mapping={"pos": new_pos, "size": new_size,
                                                     "inserted": inserted, "layout": self.layout})
            per_task[task] = (rows, inserted)
        try:
            pipe.execute()
        except redis.RedisError:
            self.write_failures += 1
            raise
        finally:
            pipe.reset()
        # Redis holds the rows: only now do they become sampleable and acknowledged.
        for task, (rows, inserted) in per_task.items():
            self._ring(task).write(rows)
            self._inserted_per_task[task] = inserted
        return n

    def _queue_rows(self, pipe, task: int, rows: dict[str, np.ndarray], pos: int,
                    size: int) -> tuple[int, int]:
        """Queue the SETRANGEs that put `rows` where `_Ring.write` puts them; returns the ring's
        (pos, size) afterwards."""
        capacity = self.capacity_per_task
        m = len(rows["reward"])
        if m >= capacity:  # as _Ring.write: the newest `capacity` rows, from row 0
            rows = {k: v[m - capacity:] for k, v in rows.items()}
            start, new_pos, new_size = 0, 0, capacity
        else:
            start, new_pos, new_size = pos, (pos + m) % capacity, min(size + m, capacity)
        i, j, left = start, 0, len(rows["reward"])
        while left:
            block, within = divmod(i, self.block_rows)
            k = min(left, self.block_rows - within, capacity - i)  # stop at a block's end and the wrap
            for field in FIELDS:
                pipe.setrange(self._block_key(task, field, block), within * self.row_bytes[field],
                              rows[field][j:j + k].tobytes())
            i, j, left = (i + k) % capacity, j + k, left - k
        return new_pos, new_size

    def store_stats(self) -> dict[str, float]:
        return {"replay/restored": float(self.restored),
                "replay/redis_write_failures": float(self.write_failures)}

    def inserted(self, task: int) -> int:
        """Rows ever acknowledged for `task`, over every table on this namespace."""
        return self._inserted_per_task[task]

    def _ring(self, task: int) -> _Ring:
        ring = self._rings.get(task)
        if ring is None:
            ring = self._rings[task] = _Ring(self.capacity_per_task, self.shapes, self.dtypes)
        return ring

    # ---------------------------------------------------------------- load
    def _load(self) -> int:
        """Fill the rings from what Redis holds for this table's tasks; returns the rows loaded."""
        loaded = 0
        for task in self.task_ids:
            meta = {k.decode(): v.decode() for k, v in self.client.hgetall(self._meta_key(task)).items()}
            if not meta:
                continue
            where = f"Redis {self._meta_key(task)}"
            if meta.get("layout") != self.layout:
                raise StoredReplayError(
                    f"{where} holds replay rows of another layout ({meta.get('layout')}) than this "
                    f"run's ({self.layout}): the replay or env settings changed since it was written")
            try:
                pos, size, inserted = int(meta["pos"]), int(meta["size"]), int(meta["inserted"])
            except (KeyError, ValueError):
                raise StoredReplayError(f"{where}: pos/size/inserted missing or not integers: {meta}") from None
            capacity = self.capacity_per_task
            # A ring fills rows [0, size) before it wraps: pos == size until size == capacity.
            if not (0 <= size <= capacity and 0 <= pos < capacity and (size == capacity or pos == size)
                    and inserted >= size):
                raise StoredReplayError(f"{where}: inconsistent ring pos={pos} size={size} "
                                        f"inserted={inserted} for capacity {capacity}")
            ring = self._ring(task)
            blocks = -(-size // self.block_rows)
            pipe = self.client.pipeline(transaction=False)
            for field in FIELDS:
                for block in range(blocks):
                    pipe.get(self._block_key(task, field, block))
            parts = pipe.execute()
            for f, field in enumerate(FIELDS):
                stored = [part or b"" for part in parts[f * blocks:(f + 1) * blocks]]
                for block, part in enumerate(stored):
                    need = (min(size, (block + 1) * self.block_rows) - block * self.block_rows) * self.row_bytes[field]
                    if len(part) < need:
                        raise StoredReplayError(f"{where}: {field} block {block} holds {len(part)} bytes, "
                                                f"the ring's {size} rows need {need}")
                    stored[block] = part[:need]
                ring.arrays[field][:size] = np.frombuffer(b"".join(stored), dtype=self.dtypes[field]).reshape(
                    size, *self.shapes[field])
            ring.pos, ring.size = pos, size
            self._inserted_per_task[task] = inserted
            loaded += size
        return loaded
