"""The one place that wires the topology: Ray, the queue service, the learner, the weight
store and the rollout actors; then the loop that trains, logs, checkpoints and stops.

Stopping: the run ends at `run.total_frames` (or `run.max_seconds`); Ctrl-C (SIGINT), SIGTERM
(what `ray job stop` sends) or SIGHUP (a closed terminal, a dropped SSH session) finishes the
current learner chunk, writes a checkpoint and exits cleanly, so `accord train --resume RUN_DIR`
continues from there. A driver killed outright (SIGKILL, an OOM kill) loses at most
`run.checkpoint_every_seconds`; its watchdog ends the embedded Ray's processes and marks the
run failed in RUN_DIR/status.json (accord/run_status.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import ray

from accord.config import ExperimentConfig, to_yaml
from accord.console import Console
from accord.loop import STOP_SIGNALS, RayRoles, RunResult, TrainingLoop
from accord.metrics import EpisodeTracker, MetricsSink
from accord.run_status import describe_status, driver_facts, read_status, write_status
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
    """SIGINT/SIGTERM/SIGHUP ask the loop to stop at its next check (chunks last about a second);
    a second SIGINT or SIGTERM forces the exit. A repeated SIGHUP does not: one hangup can
    arrive twice (from the kernel and from the shell that forwards it to its jobs).

    After a hangup the terminal is gone and writing to it fails (EIO), which would cost the
    final messages and turn exit code 0 into 120 at interpreter exit; so the streams that went
    to a terminal go to `hangup_log` (RUN_DIR/console.log) from then on."""

    def __init__(self, hangup_log: Path | None = None):
        self.signal_name: str | None = None
        self.hangup_log = hangup_log
        # Asked now: once the terminal has hung up, isatty() on it fails too.
        self._terminal_fds = [fd for fd in (1, 2) if _isatty(fd)]

    def __call__(self, signum, frame):
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP and self.hangup_log is not None and self._terminal_fds:
            _redirect(self._terminal_fds, self.hangup_log)
            self._terminal_fds = []
        if self.signal_name is not None:
            if name == "SIGHUP":
                return
            raise KeyboardInterrupt
        self.signal_name = name


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _redirect(fds: list[int], log: Path) -> None:
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for fd in fds:
            os.dup2(target, fd)
    finally:
        os.close(target)


def start_watchdog(run_dir: Path) -> subprocess.Popen:
    """accord/watchdog.py, fed by a pipe that only this process holds (see its docstring)."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen([sys.executable, "-m", "accord.watchdog", str(run_dir), str(os.getpid())],
                            stdin=subprocess.PIPE, env=env, close_fds=True)


def train(cfg: ExperimentConfig, run_dir: Path, *, address: str | None = None,
          resume: bool = False, console: Console | None = None) -> RunResult:
    console = console or Console(enabled=cfg.run.progress)
    # Absolute: the learner actor writes checkpoints from its own working directory.
    run_dir = Path(run_dir).resolve()
    if resume:
        console.log(f"previous run: {describe_status(read_status(run_dir))}")
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    write_status(run_dir, "running", "starting", exit_code=None, **driver_facts())
    watchdog = start_watchdog(run_dir)
    stop = StopRequest(hangup_log=run_dir / "console.log")
    previous: dict = {}
    started_ray = False
    try:
        # Ray's processes inherit an ignored SIGHUP (dispositions survive exec), so a closed
        # terminal stops the driver alone, which then stops them in order.
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        started_ray = init_ray(address, cfg.actors.num_actors)
        previous.update({s: signal.signal(s, stop) for s in STOP_SIGNALS if s not in previous})
        signal.signal(signal.SIGHUP, stop)
        return _train(cfg, run_dir, resume, console, stop)
    except KeyboardInterrupt:
        _record_abort(run_dir, "interrupted", "stopped by a signal during start-up or by a second "
                                              "one before the final checkpoint; the newest "
                                              "checkpoint is older")
        raise
    except BaseException as exc:
        _record_abort(run_dir, "failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started_ray:
            ray.shutdown()
        watchdog.stdin.close()  # EOF: the watchdog ends what is left of our processes, then exits
        try:
            watchdog.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass  # still ending stragglers; it exits on its own once they are gone


def _record_abort(run_dir: Path, state: str, reason: str) -> None:
    """Record an end the loop did not record itself (it records every end it reaches)."""
    record = read_status(run_dir)
    if record is not None and record.get("state") != "running":
        return
    try:
        write_status(run_dir, state, reason)
    except OSError as exc:  # the run directory itself is gone: say so, keep the real error
        print(f"could not record the run's end in {run_dir}/status.json: {exc}", file=sys.stderr)


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
    names = [f"accord-queue-{run_id}-{s}" for s in range(cfg.queue.shards)]
    per_shard = cfg.queue.capacity // cfg.queue.shards
    return [QueueActor.options(name=n).remote("fifo", per_shard) for n in names], names


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
    roles = RayRoles(topo.learner, topo.service, topo.actors, topo.evaluator)
    loop = TrainingLoop(cfg, run_dir, roles, sink, episodes, console, stop,
                        static_metrics={"checkpoints/corrupt_skipped": corrupt})
    try:
        return loop.run()
    finally:
        sink.close()
        console.close()
        topo.stop()
