"""Sharding the replay service: tasks are partitioned across replay actors, k -> k % S.

One Ray actor handles a few thousand calls a second (DESIGN.md), so with many rollout actors
the replay service runs as S shards, each holding whole tasks. Whole tasks per shard keep the
task-balanced draw local: every shard samples `batch_per_task` rows of each of its tasks and
the learner's `ReplaySource` (learner/sac/source.py) stacks the parts in task order.

Actor side: `split_by_shard` cuts a chunk into one sub-chunk per shard. Send all of them
before waiting on any reply: an insert into one shard may wait on its rate limiter, and
holding back another shard's insert meanwhile could starve the learner's sample there.
"""
from __future__ import annotations

import numpy as np

from replay.rate_limiter import check_rate_limit, min_tolerance


def shard_of_task(task_id: int, num_shards: int) -> int:
    if num_shards < 1:
        raise ValueError(f"replay.shards must be >= 1, got {num_shards}")
    if task_id < 0:
        raise ValueError(f"task_id must be >= 0, got {task_id}")
    return task_id % num_shards


def tasks_of_shard(shard: int, num_tasks: int, num_shards: int) -> list[int]:
    return [k for k in range(num_tasks) if shard_of_task(k, num_shards) == shard]


def split_by_shard(chunk: dict, num_shards: int) -> dict[int, dict]:
    """{shard: sub-chunk} for every shard that gets rows or ended episodes; rows keep their order
    and episodes go to the shard of their task (column 0)."""
    if num_shards < 1:
        raise ValueError(f"replay.shards must be >= 1, got {num_shards}")
    task_id = np.asarray(chunk["task_id"])
    if task_id.size and task_id.min() < 0:
        raise ValueError(f"transition chunk: negative task id {int(task_id.min())}")
    episodes = np.asarray(chunk.get("episodes", np.zeros((0, 4))), dtype=np.float64)
    row_shard = task_id % num_shards
    episode_shard = episodes[:, 0].astype(np.int64) % num_shards if len(episodes) else np.zeros(0, np.int64)
    if num_shards == 1:
        return {0: chunk} if task_id.size or len(episodes) else {}
    out = {}
    for shard in range(num_shards):
        rows = row_shard == shard
        shard_episodes = episodes[episode_shard == shard]
        if not rows.any() and not len(shard_episodes):
            continue
        part = {k: np.asarray(v)[rows] for k, v in chunk.items() if k != "episodes"}
        part["episodes"] = shard_episodes
        out[shard] = part
    return out


def shard_settings(cfg, num_tasks: int, shard: int) -> dict:
    """The rate-limit sizes of one shard: its largest insert (T * M rows per task, for as many
    of its tasks as one actor can step) and its sample (batch_per_task rows per task)."""
    tasks = tasks_of_shard(shard, num_tasks, cfg.replay.shards)
    if not tasks:
        raise ValueError(f"replay.shards: {cfg.replay.shards} shards for {num_tasks} tasks would leave "
                         f"shard {shard} without a task; use at most {num_tasks}")
    tasks_per_actor = -(-num_tasks // max(cfg.actors.num_actors, 1))  # round-robin dealing of tasks
    per_task = cfg.actors.unroll_length * cfg.env.envs_per_actor
    return {"task_ids": tasks,
            "max_insert": per_task * min(tasks_per_actor, len(tasks)),
            "max_sample": cfg.learner.sac.batch_per_task * len(tasks)}


def replay_shard_name(run_id: str, shard: int) -> str:
    """The Ray actor name of one shard; rollout actors look shards up by it."""
    return f"accord:{run_id}:replay:{shard}"


def checked_shard_settings(cfg) -> list[dict]:
    """Every shard's settings (`shard_settings`), after the checks that keep a run from
    deadlocking: the minimum size fits the capacity, no shard is empty, and the rate limit's
    tolerance covers one insert and one sample. Config validation and `start_replay_shards`
    both call this, so the two can never disagree."""
    num_tasks = len(cfg.env.tasks)
    if cfg.replay.learning_starts > cfg.replay.capacity_per_task:
        raise ValueError(f"replay.learning_starts: {cfg.replay.learning_starts} exceeds "
                         f"replay.capacity_per_task {cfg.replay.capacity_per_task}")
    settings = [shard_settings(cfg, num_tasks, s) for s in range(cfg.replay.shards)]
    spi, tolerance = cfg.replay.samples_per_insert, cfg.replay.tolerance
    for s in settings:
        if spi is not None:
            check_rate_limit(spi, tolerance or min_tolerance(spi, s["max_insert"], s["max_sample"]),
                             s["max_insert"], s["max_sample"])
    return settings


def start_replay_shards(cfg, spec, run_id: str, redis_url: str | None = None,
                        placement: dict | None = None) -> list:
    """Create the replay actors `accord:<run_id>:replay:<s>`, one per shard; the handles are in
    shard order. Settings that could deadlock raise ValueError before any actor starts.
    `placement`: actor options that keep the shards on their nodes (accord/placement.py).

    With `redis_url` (replay.backend: redis) the shards keep their tables in that Redis under
    `accord:<run_id>:replay` and start with what it holds there. A Redis on loopback is reachable
    from this node only, so the shards are then placed on this node."""
    from replay.replay_actor import ReplayActor  # Ray only here: config checks import this module

    settings = checked_shard_settings(cfg)
    options, extra = dict(placement or {}), ()
    if redis_url is not None:
        from replay.redis_table import replay_namespace

        extra = (redis_url, replay_namespace(run_id))
        if is_loopback_url(redis_url):
            import ray
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options.pop("label_selector", None)  # this node it must be, whatever its label
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False)
    return [
        ReplayActor.options(name=replay_shard_name(run_id, shard), **options).remote(
            shard, s["task_ids"], spec, cfg.replay.capacity_per_task, cfg.replay.learning_starts,
            cfg.replay.samples_per_insert, cfg.replay.tolerance, s["max_insert"], s["max_sample"],
            cfg.run.seed, *extra)
        for shard, s in enumerate(settings)]


def is_loopback_url(url: str) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.") or urlsplit(url).scheme == "unix"
