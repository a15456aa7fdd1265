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
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import ray

from accord.config import ExperimentConfig, check_resources, gpu_shares, inference_device, to_yaml
from accord.errors import UserError
from accord.console import Console
from accord.loop import STOP_SIGNALS, RayRoles, RunResult, TrainingLoop
from accord.metrics import EpisodeTracker, MetricsSink
from accord.placement import check_placement, learner_has_gpu, placement_options
from accord.replay_store import open_replay_store
from accord.run_status import describe_status, driver_facts, read_status, write_status
from accord.watchdog import KEEP
from actors.evaluator import EvaluatorActor
from actors.inference_server import server_of, start_inference_servers
from actors.remote import RolloutActor
from actors.rollout import env_options
from envs import EnvSpec, describe
from ingest.launch import LiveMetrics, start_ingest
from learner.registry import policy_weights
from learner.broadcast import WeightStore
from learner.checkpoint import Restored, load_latest
from learner.remote import LearnerActor
from replay.service import QueueActor

def joins_cluster(address: str | None) -> bool:
    """Whether `init_ray(address)` would join a running cluster rather than start an embedded one."""
    return ray.is_initialized() or bool(address or os.environ.get("RAY_ADDRESS"))


def local_resources() -> dict[str, float]:
    """What an embedded Ray would offer, known without starting it (Ray counts the GPUs that
    CUDA shows), so a config this machine cannot run fails before any process starts."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def actor_name(run_id: str, role: str, index: int | None = None) -> str:
    """`accord:<run>:<role>[:<index>]`, the name the Ray dashboard lists an actor under; the run
    id (the run directory's name) keeps two runs on one cluster apart."""
    return f"accord:{run_id}:{role}" + ("" if index is None else f":{index}")


def monitoring_env(prometheus_host: str | None, grafana_host: str | None) -> dict[str, str]:
    """What the Ray dashboard's Metrics tab needs to find Prometheus (and Grafana); a variable
    the user has set already is kept."""
    wanted = {"RAY_PROMETHEUS_HOST": prometheus_host, "RAY_GRAFANA_HOST": grafana_host}
    return {k: v for k, v in wanted.items() if v and k not in os.environ}


# Ray starts its worker processes at niceness 15, so that they yield to the driver. Here every
# worker is part of the run (learner, rollout actors, replay shards, weight store): at 15 they get
# about 1/28 of the CPU share of any other process on a shared machine, and since the rate
# limiter ties the learner and the actors in lockstep the whole run then crawls (SAC on Pendulum
# fell from ~60 to ~0.5 updates/s under a load of 6 busy processes on 2 cores: a 15 ms update took
# over a second of wall time). Niceness 0 gives them the same share as the rest of the machine.
EMBEDDED_SYSTEM_CONFIG = {"worker_niceness": 0}


def init_ray(address: str | None, num_actors: int = 1, prometheus_host: str | None = None,
             grafana_host: str | None = None, dashboard: bool = True) -> bool:
    """Join a cluster (address or RAY_ADDRESS) or start an embedded local one. True if we started it.

    The embedded Ray gets at least one CPU slot per rollout actor plus the learner, so a laptop
    run with more actors than cores oversubscribes instead of leaving actors unscheduled. Its
    dashboard (`dashboard=False`: none) reads RAY_PROMETHEUS_HOST / RAY_GRAFANA_HOST from the
    environment it starts in; a cluster's dashboard has them from `ray start` (deploy/cluster.yaml)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    # Embedded: dashboard only on loopback, no cluster, no Redis, no GPU needed.
    os.environ.update(monitoring_env(prometheus_host, grafana_host))
    ray.init(include_dashboard=dashboard, dashboard_host="127.0.0.1", log_to_driver=True,
             configure_logging=False, num_cpus=max(os.cpu_count() or 1, num_actors + 1),
             _system_config=EMBEDDED_SYSTEM_CONFIG)
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
    """Bad input found here (no loadable checkpoint to resume, a device the cluster lacks)
    raises `UserError` before the run directory is written to: its config.yaml and status.json
    stay as they were."""
    console = console or Console(enabled=cfg.run.progress)
    # Absolute: the learner actor writes checkpoints from its own working directory.
    run_dir = Path(run_dir).resolve()
    if not joins_cluster(address):
        check_resources(cfg, local_resources(), where="this machine")
    restored = None
    if resume:
        console.log(f"previous run: {describe_status(read_status(run_dir))}")
        restored = _restore(cfg, run_dir, console)  # before Ray: nothing to resume, nothing started
    replay_store = open_replay_store(cfg, run_dir)  # before Ray: a Redis that fails, nothing started
    watchdog = start_watchdog(run_dir)
    stop = StopRequest(hangup_log=run_dir / "console.log")
    previous: dict = {}
    started_ray = False
    recorded = False  # whether this start has written to the run directory
    try:
        # Ray's processes inherit an ignored SIGHUP (dispositions survive exec), so a closed
        # terminal stops the driver alone, which then stops them in order.
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        started_ray = init_ray(address, cfg.actors.num_actors, cfg.run.prometheus_host,
                               cfg.run.grafana_host, cfg.run.dashboard)
        check_resources(cfg, ray.cluster_resources())
        check_placement(cfg, ray.nodes())
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        write_status(run_dir, "running", "starting", exit_code=None, **driver_facts())
        recorded = True
        previous.update({s: signal.signal(s, stop) for s in STOP_SIGNALS if s not in previous})
        signal.signal(signal.SIGHUP, stop)
        return _train(cfg, run_dir, restored, console, stop, replay_store.url)
    except KeyboardInterrupt:
        if recorded:
            _record_abort(run_dir, "interrupted", "stopped by a signal during start-up or by a "
                                                  "second one before the final checkpoint; the "
                                                  "newest checkpoint is older")
        raise
    except BaseException as exc:
        if recorded:
            _record_abort(run_dir, "failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started_ray:
            ray.shutdown()
        replay_store.close()  # after the replay shards: their last inserts are in its AOF
        _release(watchdog, keep_processes=not started_ray)
        try:
            watchdog.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass  # still ending stragglers; it exits on its own once they are gone


def _release(watchdog: subprocess.Popen, keep_processes: bool) -> None:
    """EOF to the watchdog: it ends what is left of our processes, then exits. A Ray this
    driver joined but did not start may still be our child (`ray.init` earlier in this process):
    it is the caller's, so the watchdog is told to keep it."""
    try:
        if keep_processes:
            watchdog.stdin.write(KEEP)
        watchdog.stdin.close()
    except BrokenPipeError:
        pass  # the watchdog is gone already: there is no one left to tell


def _restore(cfg: ExperimentConfig, run_dir: Path, console: Console) -> Restored:
    """The newest checkpoint of `run_dir` that loads (corrupt ones are set aside as `*.corrupt`,
    kept, and logged); `UserError` when none does."""
    restored = load_latest(run_dir)
    for path, error in restored.corrupt:
        console.log(f"[yellow]skipped corrupt checkpoint {path.name}: {error}")
    if restored.path is None:
        if not restored.corrupt:
            raise UserError(f"--resume: {run_dir} has no checkpoints to continue from")
        newest, error = restored.corrupt[0]
        raise UserError(f"--resume: none of the {len(restored.corrupt)} checkpoints under "
                        f"{run_dir}/checkpoints loads ({newest.name}: {error}); all are kept, "
                        f"renamed *.corrupt")
    try:
        policy_weights(cfg, restored.state)
    except (KeyError, TypeError):  # loads, but holds something else (no learner state)
        raise UserError(f"--resume: {restored.path} is not a checkpoint of an accord "
                        f"{cfg.learner.algorithm} learner") from None
    console.log(f"resuming from {restored.path.name}")
    return restored


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
    learner, rollout actors, and the inference servers of `actors.inference: server`."""
    service: list
    weight_store: ray.actor.ActorHandle
    learner: ray.actor.ActorHandle
    actors: list
    spec: EnvSpec
    evaluator: ray.actor.ActorHandle | None = None
    inference: list = field(default_factory=list)

    @property
    def queue(self) -> ray.actor.ActorHandle:
        """IMPALA's one FIFO queue."""
        return self.service[0]

    def stop(self) -> None:
        refs = [a.stop.remote() for a in self.actors]
        ray.wait(refs, num_returns=len(refs), timeout=10)
        extra = [self.evaluator] if self.evaluator is not None else []
        # Servers after the rollout actors: an actor still stopping may wait on its step.
        for handle in [*self.actors, *self.inference, self.learner, self.weight_store, *self.service,
                       *extra]:
            ray.kill(handle, no_restart=True)


def start_service(cfg: ExperimentConfig, spec: EnvSpec, run_id: str,
                  replay_url: str | None = None) -> tuple[list, list[str]]:
    """IMPALA: one FIFO queue of unroll references; SAC: the replay table's shards (kept in the
    Redis at `replay_url` too, when there is one)."""
    if cfg.learner.algorithm == "sac":
        from replay.sharding import replay_shard_name, start_replay_shards

        shards = start_replay_shards(cfg, spec, run_id, replay_url,
                                     placement_options(cfg.placement.service))
        return shards, [replay_shard_name(run_id, s) for s in range(len(shards))]
    shards = cfg.queue.shards
    names = [actor_name(run_id, "queue", s if shards > 1 else None) for s in range(shards)]
    return [QueueActor.options(name=n, **placement_options(cfg.placement.service)).remote("fifo", cfg.queue.capacity // shards) for n in names], names


def start_topology(cfg: ExperimentConfig, run_id: str, checkpoint: str | None = None,
                   run_dir: Path | None = None, replay_url: str | None = None) -> Topology:
    """Create every role on the connected Ray cluster; load `checkpoint` into the learner first.
    With a `run_dir`, Ray restarts a dead learner (`learner.max_restarts`) from its newest
    checkpoint; without one (benchmarks) a dead learner stays dead. `replay_url`: the Redis of a
    durable replay (accord/replay_store.py)."""
    spec = describe(cfg.env.kind, cfg.env.tasks[0], **env_options(cfg))
    check_resources(cfg, ray.cluster_resources())
    nodes = ray.nodes()
    check_placement(cfg, nodes)
    learner_gpus, server_gpus = gpu_shares(cfg, ray.cluster_resources())
    if not learner_has_gpu(cfg, nodes):  # no GPU on the nodes its placement allows
        learner_gpus = 0.0
    service_nodes = placement_options(cfg.placement.service)
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < cfg.actors.num_actors + 1:
        warnings.warn(f"the cluster has {cpus:.0f} CPUs for {cfg.actors.num_actors} rollout actors "
                      f"and the learner (one each): some actors wait until nodes join")
    service, service_names = start_service(cfg, spec, run_id, replay_url)
    weights_name = actor_name(run_id, "weights")
    weight_store = WeightStore.options(name=weights_name, **service_nodes).remote()
    learner = LearnerActor.options(
        name=actor_name(run_id, "learner"), num_gpus=learner_gpus, num_cpus=1,
        max_restarts=cfg.learner.max_restarts if run_dir is not None else 0, max_task_retries=0,
        **placement_options(cfg.placement.learner)).remote(cfg, spec, service_names, weights_name, None if run_dir is None else str(run_dir))
    # With local inference the rollout actors start (a process, torch, their envs) while the
    # learner does: their loop acts only once the learner has published, so no experience
    # from unpublished weights is produced. Served actors need their servers, which need the
    # published weights, so they start after them.
    served = cfg.actors.inference == "server"
    actors = [] if served else start_rollout_actors(cfg, run_id, spec, service_names, weights_name, [])
    if checkpoint is not None:
        frames = ray.get(learner.load.remote(checkpoint))["frames"]
        if cfg.learner.algorithm == "sac":  # its frames are the replay's inserts: count on
            ray.get(service[0].count_earlier_inserts.remote(frames))
    ray.get(learner.publish.remote())
    inference, inference_names = start_inference(cfg, spec, run_id, weights_name, server_gpus)
    if served:
        actors = start_rollout_actors(cfg, run_id, spec, service_names, weights_name, inference_names)
    evaluator = (EvaluatorActor.options(name=actor_name(run_id, "evaluator"), **service_nodes).remote(
        cfg, spec, weights_name) if cfg.run.eval_every else None)
    return Topology(service, weight_store, learner, actors, spec, evaluator, inference)


def start_rollout_actors(cfg: ExperimentConfig, run_id: str, spec: EnvSpec, service_names: list[str],
                         weights_name: str, inference_names: list[str]) -> list:
    """`actors.num_actors` rollout actors; each acts through its inference server where there are
    `inference_names`, with its own copy of the policy otherwise."""
    return [
        RolloutActor.options(name=actor_name(run_id, "rollout", i),
                             max_restarts=cfg.actors.max_restarts, max_task_retries=0,
                             **placement_options(cfg.placement.rollout)).remote(
            cfg, i, spec, service_names, weights_name,
            inference_names[server_of(i, len(inference_names))] if inference_names else None)
        for i in range(cfg.actors.num_actors)]


def start_inference(cfg: ExperimentConfig, spec: EnvSpec, run_id: str, weights_name: str,
                    num_gpus: float) -> tuple[list, list[str]]:
    """The inference servers of `actors.inference: server` (none for local inference), ready:
    each holds the published weights, so the rollout actors' first steps do not wait on them."""
    if cfg.actors.inference != "server":
        return [], []
    n = cfg.actors.inference_servers
    names = [actor_name(run_id, "inference", s if n > 1 else None) for s in range(n)]
    servers = start_inference_servers(cfg, spec, names, weights_name,
                                      inference_device(cfg, ray.cluster_resources()), num_gpus)
    ray.get([s.ready.remote() for s in servers])
    return servers, names


def _train(cfg: ExperimentConfig, run_dir: Path, restored: Restored | None, console: Console,
           stop: StopRequest, replay_url: str | None = None) -> RunResult:
    checkpoint, corrupt = None, 0
    if restored is not None:
        checkpoint, corrupt = str(restored.path), len(restored.corrupt)
    topo = start_topology(cfg, run_dir.name, checkpoint, run_dir, replay_url)
    ingest = _start_ingest(cfg, topo, run_dir, console)  # None unless replay.grpc.port is set
    sink = MetricsSink(run_dir, task=cfg.env.tasks[0] if len(cfg.env.tasks) == 1 else "",
                       run=run_dir.name)
    episodes = EpisodeTracker(cfg.env.tasks)
    device = ray.get(topo.learner.device_name.remote())
    serving = (f"; policy on {len(topo.inference)} inference server(s) on "
               f"{inference_device(cfg, ray.cluster_resources())}" if topo.inference else "")
    console.log(f"run directory {run_dir}; learner on {device}; {_counted(cfg.actors.num_actors, 'actor')} "
                f"x {_counted(cfg.env.envs_per_actor, 'env')} on {', '.join(cfg.env.tasks)}{serving}")
    roles = RayRoles(topo.learner, topo.service, topo.actors, topo.evaluator, topo.inference)
    # Restarts of the learner from a checkpoint: a resume is one, and so is each time Ray
    # restarts a dead learner within the run (the loop counts those on).
    learner_restarts = (sink.last_value("learner/restarts") or 0.0) + 1 if restored is not None else 0.0
    static_metrics = {"checkpoints/corrupt_skipped": corrupt}
    loop = TrainingLoop(cfg, run_dir, roles, sink, episodes, console, stop,
                        static_metrics=static_metrics if ingest is None else LiveMetrics(static_metrics, ingest),
                        learner_restarts=int(learner_restarts))
    try:
        return loop.run()
    finally:
        sink.close()
        console.close()
        if ingest is not None:
            ingest.stop()
        topo.stop()


def _start_ingest(cfg: ExperimentConfig, topo: Topology, run_dir: Path, console: Console):
    """The gRPC ingestion server in front of the replay shards (ingest/), or None."""
    if cfg.replay.grpc.port is None:
        return None
    try:
        return start_ingest(cfg, topo.spec, topo.service, run_dir, console.log)
    except OSError as exc:
        topo.stop()
        raise UserError(f"replay.grpc: {exc}") from None


def _counted(n: int, noun: str) -> str:
    """'1 actor', '2 actors'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
