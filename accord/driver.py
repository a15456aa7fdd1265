"""The one place that wires the topology: Ray, the queue service, the learner, the weight
store and the rollout actors; then the loop that trains, logs, checkpoints and stops.

Stopping: the run ends at `run.total_frames` (or `run.max_seconds`); Ctrl-C (SIGINT) or SIGTERM
(what `ray job stop` sends) finishes the current learner chunk, writes a checkpoint and exits
cleanly, so `accord train --resume RUN_DIR` continues from there.
"""
from __future__ import annotations

import os
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import ray

from accord.config import ExperimentConfig, to_yaml
from accord.console import Console
from accord.loop import RunResult, TrainingLoop
from accord.metrics import EpisodeTracker, MetricsSink
from actors.evaluator import EvaluatorActor
from actors.remote import RolloutActor
from actors.rollout import env_options
from envs import EnvSpec, describe
from learner.broadcast import WeightStore
from learner.checkpoint import load_latest
from learner.remote import LearnerActor
from replay.service import QueueActor

def new_run_dir(cfg: ExperimentConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.run.root) / f"{cfg.run.name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    path.mkdir(parents=True)
    return path


def init_ray(address: str | None, num_actors: int = 1) -> bool:
    """Join a cluster (address or RAY_ADDRESS) or start an embedded local one. True if we started it.

    The embedded Ray gets at least one CPU slot per rollout actor plus the learner, so a laptop
    run with more actors than cores oversubscribes instead of leaving actors unscheduled."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    # Embedded: dashboard only on loopback, no cluster, no Redis, no GPU needed.
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True,
             configure_logging=False, num_cpus=max(os.cpu_count() or 1, num_actors + 1))
    return True


class StopRequest:
    """SIGINT/SIGTERM ask the loop to stop at its next check (chunks last about a second);
    a second signal forces the exit."""

    def __init__(self):
        self.signal_name: str | None = None

    def __call__(self, signum, frame):
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name


def train(cfg: ExperimentConfig, run_dir: Path, *, address: str | None = None,
          resume: bool = False, console: Console | None = None) -> RunResult:
    console = console or Console(enabled=cfg.run.progress)
    # Absolute: the learner actor writes checkpoints from its own working directory.
    run_dir = Path(run_dir).resolve()
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    started_ray = init_ray(address, cfg.actors.num_actors)
    stop = StopRequest()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _train(cfg, run_dir, resume, console, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started_ray:
            ray.shutdown()


@dataclass
class Topology:
    """The running roles of one run: the queue or replay service (its shards), weight store,
    learner, rollout actors."""
    service: list
    weight_store: ray.actor.ActorHandle
    learner: ray.actor.ActorHandle
    actors: list
    spec: EnvSpec
    evaluator: ray.actor.ActorHandle | None = None

    @property
    def queue(self) -> ray.actor.ActorHandle:
        """IMPALA's one FIFO queue."""
        return self.service[0]

    def stop(self) -> None:
        refs = [a.stop.remote() for a in self.actors]
        ray.wait(refs, num_returns=len(refs), timeout=10)
        extra = [self.evaluator] if self.evaluator is not None else []
        for handle in [*self.actors, self.learner, self.weight_store, *self.service, *extra]:
            ray.kill(handle, no_restart=True)


def start_service(cfg: ExperimentConfig, spec: EnvSpec, run_id: str) -> tuple[list, list[str]]:
    """IMPALA: one FIFO queue of unroll references; SAC: the replay table's shards."""
    if cfg.learner.algorithm == "sac":
        from replay.sharding import replay_shard_name, start_replay_shards

        shards = start_replay_shards(cfg, spec, run_id)
        return shards, [replay_shard_name(run_id, s) for s in range(len(shards))]
    name = f"accord-queue-{run_id}"
    return [QueueActor.options(name=name).remote("fifo", cfg.queue.capacity)], [name]


def start_topology(cfg: ExperimentConfig, run_id: str, checkpoint: str | None = None) -> Topology:
    """Create every role on the connected Ray cluster; load `checkpoint` into the learner first."""
    spec = describe(cfg.env.kind, cfg.env.tasks[0], **env_options(cfg))
    has_gpu = ray.cluster_resources().get("GPU", 0) >= 1 and cfg.learner.device != "cpu"
    if cfg.learner.device == "cuda" and not has_gpu:
        raise RuntimeError("learner.device is 'cuda' but the Ray cluster has no GPU; "
                           "use device: auto or cpu")
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < cfg.actors.num_actors + 1:
        warnings.warn(f"the cluster has {cpus:.0f} CPUs for {cfg.actors.num_actors} rollout actors "
                      f"and the learner (one each): some actors wait until nodes join")
    service, service_names = start_service(cfg, spec, run_id)
    weights_name = f"accord-weights-{run_id}"
    weight_store = WeightStore.options(name=weights_name).remote()
    learner = LearnerActor.options(num_gpus=1 if has_gpu else 0, num_cpus=1).remote(
        cfg, spec, service, weight_store)
    if checkpoint is not None:
        ray.get(learner.load.remote(checkpoint))
    # Actors wait for these weights, so no experience from unpublished weights is produced.
    ray.get(learner.publish.remote())
    actors = [
        RolloutActor.options(max_restarts=cfg.actors.max_restarts, max_task_retries=0).remote(
            cfg, i, spec, service_names, weights_name)
        for i in range(cfg.actors.num_actors)]
    evaluator = (EvaluatorActor.remote(cfg, spec, weights_name) if cfg.run.eval_every else None)
    return Topology(service, weight_store, learner, actors, spec, evaluator)


def _train(cfg: ExperimentConfig, run_dir: Path, resume: bool, console: Console,
           stop: StopRequest) -> RunResult:
    checkpoint, corrupt = None, 0
    if resume:
        restored = load_latest(run_dir)
        for path, error in restored.corrupt:
            console.log(f"[yellow]skipped corrupt checkpoint {path.name}: {error}")
        if restored.path is None:
            raise RuntimeError(f"--resume: no loadable checkpoint under {run_dir}/checkpoints")
        checkpoint, corrupt = str(restored.path), len(restored.corrupt)
        console.log(f"resuming from {restored.path.name}")
    topo = start_topology(cfg, run_dir.name, checkpoint)
    sink = MetricsSink(run_dir)
    episodes = EpisodeTracker(cfg.env.tasks)
    device = ray.get(topo.learner.device_name.remote())
    console.log(f"run directory {run_dir}; learner on {device}; {cfg.actors.num_actors} actors "
                f"x {cfg.env.envs_per_actor} envs on {', '.join(cfg.env.tasks)}")
    loop = TrainingLoop(cfg, run_dir, topo.learner, topo.service, topo.actors, sink, episodes,
                        console, stop, static_metrics={"checkpoints/corrupt_skipped": corrupt},
                        evaluator=topo.evaluator)
    try:
        return loop.run()
    finally:
        sink.close()
        console.close()
        topo.stop()
