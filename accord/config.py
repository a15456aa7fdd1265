"""The experiment config: typed, validated before anything starts, frozen.

A config is YAML on disk; `load_config(path, overrides)` applies `--set a.b=v` overrides,
validates every field and returns a frozen `ExperimentConfig`. Any problem raises `ConfigError`
whose message names the field, so the CLI can print one line and exit 2 with no Ray started.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from accord.errors import UserError

AuxKind = Literal["distill", "inverse_dynamics", "forward_dynamics", "reward", "autoencoder"]
AUX_KINDS = get_args(AuxKind)  # the learner builds the same kinds (learner/aux, tested equal)


class ConfigError(UserError):
    """A config that cannot run; the message names the offending field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnvConfig(_Section):
    kind: Literal["atari", "gym", "metaworld", "gridworld"] = Field("atari", description="Environment family (gridworld: paper 000, App. F).")
    tasks: tuple[str, ...] = Field(
        ("breakout",), min_length=1,
        description="One task per entry: Atari game ids, gymnasium ids or Meta-World env names "
                    "(MT10/MT50 fill them from env.benchmark). With at least as many actors as "
                    "tasks actor i runs task i mod len(tasks); with fewer, the tasks are dealt "
                    "round robin and each actor steps all of its tasks.")
    benchmark: Literal["MT1", "MT10", "MT50"] | None = Field(
        None, description="Meta-World benchmark; MT1 trains the one task in env.tasks.")
    envs_per_actor: int = Field(8, ge=1, description="M environments per task an actor holds, stepped as one batch (SAC: 1 unless set).")
    full_action_space: bool = Field(False, description="Atari: all 18 actions (needed for one policy over several games).")
    sticky_actions: float = Field(0.25, ge=0.0, le=1.0, description="Atari: repeat-previous-action probability.")
    clip_rewards: bool = Field(True, description="Atari: train on sign-clipped rewards; episode scores stay raw.")
    max_episode_frames: int = Field(108_000, ge=1, description="Atari: emulator frames before an episode is truncated.")


class ActorConfig(_Section):
    num_actors: int = Field(2, ge=0, description="Rollout actors, one CPU each (the paper ran 200; SAC: 1 unless set); "
                                                 "0: none, the run is fed over gRPC alone (replay.grpc.port).")
    unroll_length: int = Field(20, ge=1, description="T: steps per unroll handed to the learner.")
    max_restarts: int = Field(3, ge=0, description="Times Ray restarts a dead rollout actor.")
    unrolls_per_insert: int = Field(
        1, ge=1, description="IMPALA: unrolls an actor sends per queue insert (fewer calls; weights refresh between inserts).")
    compact_frames: bool = Field(
        True, description="Unrolls of stacked image frames (Atari) carry each frame once; the learner restacks them.")
    inference: Literal["local", "server"] = Field(
        "local", description="Where IMPALA's rollout actors run the policy. local: each on its own CPU "
                             "copy (best on CPU-only clusters); server: inference actors batch the "
                             "steps of many rollout actors into one forward, on a GPU share where there "
                             "is one, and the rollout actors only step their envs (SEED RL, Sample Factory).")
    inference_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="inference: server: auto is CUDA when the cluster (or this machine) has a "
                            "GPU; with none, server needs cpu set explicitly (a CPU server is rarely "
                            "faster than local inference).")
    inference_servers: int = Field(1, ge=1, description="inference: server: inference actors; rollout actor i is served by server i mod this.")
    inference_max_wait_ms: float = Field(
        5.0, ge=0, description="inference: server: how long a server's first waiting step waits for the "
                               "steps of its other rollout actors; a batch runs at once when all have asked.")
    inference_gpu_fraction: float = Field(
        0.25, gt=0, le=1, description="inference: server on CUDA: the GPU share each inference actor "
                                      "reserves; on a one-GPU cluster the learner takes the rest.")
    inference_max_restarts: int = Field(3, ge=0, description="Times Ray restarts a dead inference actor.")


class GrpcIngestConfig(_Section):
    """gRPC ingestion (ingest/): producers outside Ray stream transitions into the replay table."""
    port: int | None = Field(
        None, ge=0, le=65535, description="Port of the ingestion server the driver starts; None: no "
                                          "server; 0: any free port (written to RUN_DIR/ingest_address).")
    host: str = Field("127.0.0.1", min_length=1, description="Address it listens on; beyond loopback only with TLS.")
    token_env: str = Field(
        "ACCORD_INGEST_TOKEN", min_length=1,
        description="Environment variable holding the bearer token producers must send; when it is "
                    "unset a token is generated per run and written to RUN_DIR/ingest_token (mode 0600).")
    tls_cert: str | None = Field(None, description="PEM certificate chain; with tls_key the server speaks TLS only.")
    tls_key: str | None = Field(None, description="PEM private key of tls_cert.")
    max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, le=1024 ** 3,
        description="Largest chunk message accepted; a larger one gets RESOURCE_EXHAUSTED.")
    max_streams: int = Field(
        8, ge=1, description="Concurrent calls served; one more gets RESOURCE_EXHAUSTED.")

    @model_validator(mode="after")
    def _secure(self) -> "GrpcIngestConfig":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert: TLS needs both tls_cert and tls_key")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file {path!r}")
        # The bearer token travels in every call's headers: in clear text it must not leave the host.
        if self.port is not None and self.tls_cert is None and not _is_loopback(self.host):
            raise ValueError(f"host: {self.host!r} is not a loopback address; serving beyond this "
                             f"machine sends the token in clear text, so give tls_cert and tls_key")
        return self


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


REDIS_URL_SCHEMES = ("redis", "rediss", "unix")


class RedisReplayConfig(_Section):
    """Where `replay.backend: redis` keeps the replay table (replay/redis_table.py)."""
    url: str | None = Field(
        None, description="redis://[:PASSWORD@]HOST:PORT/DB (rediss:// with TLS, unix:///path.sock). "
                          "None: accord starts its own redis-server on 127.0.0.1 with a generated "
                          "password and AOF everysec, data in RUN_DIR/redis, stopped with the run. "
                          "config.yaml keeps this field, so rather give the password in password_env.")
    password_env: str = Field(
        "ACCORD_REDIS_PASSWORD", min_length=1,
        description="Environment variable that holds the password when `url` has none.")

    @model_validator(mode="after")
    def _url_parses(self) -> "RedisReplayConfig":
        if self.url is None:
            return self
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(self.url)
            parts.port  # raises ValueError on a port that is not a number in 0..65535
        except ValueError as exc:
            raise ValueError(f"replay.redis.url: {self.url!r} is not a URL ({exc})") from None
        if parts.scheme not in REDIS_URL_SCHEMES:
            raise ValueError(f"replay.redis.url: {self.url!r} must start with redis://, rediss:// or unix://")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError(f"replay.redis.url: {self.url!r} names no host (redis://HOST:PORT/DB)")
        db = parts.path.strip("/")
        if parts.scheme != "unix" and db and not db.isdigit():
            raise ValueError(f"replay.redis.url: {self.url!r}: the database after the port must be a number, got {db!r}")
        return self


class ReplayConfig(_Section):
    """The replay table of off-policy algorithms (SAC); the FIFO queue serves IMPALA."""
    backend: Literal["memory", "redis"] = Field(
        "memory", description="Where the table lives. memory: in the replay actors, lost with them. "
                              "redis: also in Redis (each insert acknowledged once Redis holds it), so "
                              "the replay survives the death of the replay actors, the learner and the "
                              "driver, and `--resume` restarts with it.")
    redis: RedisReplayConfig = Field(RedisReplayConfig(), description="The Redis of replay.backend: redis.")
    capacity_per_task: int = Field(1_000_000, ge=1, description="Transitions kept per task (a ring buffer each).")
    learning_starts: int = Field(
        100, ge=1, description="Transitions per task before the learner samples (Stable-Baselines3's "
                               "100; the Meta-World configs set the papers' 1500); until the first "
                               "update is published, actors act uniformly at random.")
    samples_per_insert: float | Literal["auto"] | None = Field(
        "auto", description="Rate limit (Reverb's SampleToInsertRatio): sampled transitions per "
                            "inserted one. auto: learner.sac.batch_per_task x "
                            "learner.sac.updates_per_step, i.e. that many updates per env step "
                            "of every task; None lets actors and "
                            "learner run free (fastest, but the update-to-data ratio then "
                            "depends on the hardware).")

    tolerance: float = Field(
        0.0, ge=0, description="How far, in sampled transitions, the ratio may drift before the "
                               "faster side waits; 0 picks the smallest that cannot deadlock.")
    shards: int = Field(1, ge=1, description="Replay service actors; tasks are partitioned across them.")
    prefetch: int = Field(2, ge=1, description="Batches the learner keeps in flight, so it rarely waits.")
    grpc: GrpcIngestConfig = Field(GrpcIngestConfig(), description="gRPC ingestion of transitions from producers outside Ray (SAC).")

    @model_validator(mode="after")
    def _url_needs_redis(self) -> "ReplayConfig":
        # Otherwise a run meant to be durable would silently keep its replay in memory only.
        if self.backend != "redis" and self.redis.url is not None:
            raise ValueError(f"replay.redis.url: set, but replay.backend is {self.backend!r}; "
                             f"set replay.backend: redis to use it")
        return self


class QueueConfig(_Section):
    capacity: int = Field(64, ge=1, description="Unrolls held before inserters block (back-pressure), over all shards.")
    shards: int = Field(1, ge=1, description="Queue actors; actor i inserts into shard i mod shards, the learner draws from each in turn.")
    backend: Literal["memory"] = Field("memory", description="Where queued unrolls live.")


class CombinerConfig(_Section):
    name: Literal["sum", "pcgrad", "cosine_gate", "olaux"] = Field(
        "sum", description="How per-task gradients on the shared weights become one (combiners/). "
                           "cosine_gate and olaux weigh the aux terms (learner.aux) against the main "
                           "term; without aux terms, the first task is main, the others auxiliary.")
    options: dict[str, Any] = Field({}, description="Keyword arguments of the combiner, e.g. {seed: 0} for pcgrad.")
    strategy: Literal["batched", "sequential", "forward"] = Field(
        "batched", description="How the per-term gradients are computed: batched (one vmapped backward), "
                               "sequential (one backward each), or forward (olaux with aux terms: "
                               "the dot products ∇L_main·∇L_aux from one forward-mode pass, no per-term gradients).")

    @model_validator(mode="after")
    def _buildable(self) -> "CombinerConfig":
        if self.name == "sum" and not self.options:
            return self  # the default; no need to import torch to know it builds
        from combiners import make_combiner

        try:
            make_combiner(self.name, **self.options)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"options: {exc}") from None
        return self


class AuxConfig(_Section):
    """One auxiliary loss of `learner.aux` (IMPALA): a named `aux/<name>` term with its own head."""
    kind: AuxKind | None = Field(
        None, description="What the term computes; default: the entry's name (so `distill: {...}` is a "
                          "distillation term). Give it to have two terms of one kind, e.g. two teachers.")
    weight: float = Field(1.0, ge=0, description="Coefficient of the term's loss (OL-AUX: its starting weight).")
    teacher: str | None = Field(
        None, description="distill: an accord checkpoint file or run directory, or q_aux / q_main, the "
                          "gridworld's tabular Q-learning teacher of T_aux (paper 000) or of T_main.")
    temperature: float = Field(1.0, ge=0, description="distill: teacher policy softmax(Q or logits / temperature); 0 is greedy.")
    invert: bool = Field(False, description="distill with q_aux/q_main: an adversarial teacher, softmax(-Q / temperature).")
    tasks: tuple[str, ...] | None = Field(
        None, description="distill: the tasks whose steps are distilled; default those the teacher was "
                          "trained on (every task when it knows none, or for q_aux/q_main).")
    hidden: int = Field(256, ge=1, description="Hidden units of the term's head.")


class SacConfig(_Section):
    """Soft actor-critic (Haarnoja et al., 2018) as the multi-task papers 003 and 004 run it."""
    model: Literal["mtsac", "multihead", "dgrad_a"] = Field(
        "mtsac", description="mtsac: one MLP reading the one-hot task id; multihead: one output "
                             "head per task; dgrad_a: per-layer task networks M(z)x + beta(z) (paper 004).")
    hidden: tuple[int, ...] = Field((256, 256), min_length=1, description="Hidden units per layer of actor and critics (Stable-Baselines3's and CleanRL's single-task size; the Meta-World configs set the papers' 3x400).")
    batch_per_task: int = Field(128, ge=1, description="Transitions of each task in every batch (task-balanced); the Meta-World configs set the papers' 128 too.")
    updates_per_step: float = Field(1.5, gt=0, description="Updates per env step of every task (the update-to-data ratio) that replay.samples_per_insert: auto holds the run to: batch_per_task x this. 3 updates of 128 rows every 2 env steps learned Pendulum-v1 in 0.88x the env steps of one update of 256 (Stable-Baselines3's and CleanRL's ratio), at 3/4 of its rows per env step (README, Pendulum against Stable-Baselines3); the Meta-World configs set the papers' 1.")
    actor_lr: float = Field(3e-4, gt=0, description="Adam learning rate of the policy.")
    critic_lr: float = Field(3e-4, gt=0, description="Adam learning rate of the twin Q critics.")
    alpha_lr: float = Field(3e-4, gt=0, description="Adam learning rate of each task's log temperature.")
    init_alpha: float = Field(1.0, gt=0, description="Initial temperature of every task.")
    target_entropy: float | None = Field(None, description="Entropy target; None means -|A|.")
    tau: float = Field(0.005, gt=0, le=1, description="Polyak rate of the target critics.")
    reward_scale: float = Field(1.0, gt=0, description="Rewards are multiplied by this before the TD target.")


class LearnerConfig(_Section):
    algorithm: Literal["impala", "sac"] = Field(
        "impala", description="impala: V-trace over unrolls from the FIFO queue (Discrete actions); "
                              "sac: soft actor-critic over the replay table (Box actions).")
    model: Literal["auto", "nature", "resnet", "mlp"] = Field(
        "auto", description="IMPALA torso; auto: the Nature CNN for frames, an MLP for vectors.")
    per_task_heads: bool = Field(False, description="One policy/value head per task instead of one shared head.")
    vf_share_layers: bool = Field(True, description="Policy and value share the torso (IMPALA); false gives the value its own torso of the same kind (paper 000's gridworld).")
    batch_size: int = Field(32, ge=1, description="Trajectories per update; rounded up to whole unrolls of envs_per_actor.")
    lr: float = Field(6e-4, gt=0, description="RMSProp learning rate (paper 000).")
    lr_decay: bool = Field(True, description="Anneal lr linearly to 0 over run.total_frames (IMPALA).")
    rmsprop_alpha: float = Field(0.99, gt=0, lt=1, description="RMSProp smoothing constant.")
    rmsprop_eps: float = Field(0.01, gt=0, description="RMSProp epsilon (IMPALA uses 0.01).")
    rmsprop_momentum: float = Field(0.0, ge=0, lt=1, description="RMSProp momentum.")
    discount: float = Field(0.99, gt=0, le=1, description="gamma.")
    entropy_coef: float = Field(0.01, ge=0, description="Entropy cost (paper 000).")
    baseline_coef: float = Field(0.5, ge=0, description="Value loss weight.")
    rl_coef: float = Field(1.0, ge=0, description="Coefficient of the V-trace terms (pg, baseline, entropy); 0 trains on the aux terms alone, e.g. distillation only.")
    clip_rho: float = Field(1.0, gt=0, description="V-trace rho-bar.")
    clip_pg_rho: float = Field(1.0, gt=0, description="V-trace rho-bar for the policy-gradient advantage.")
    clip_c: float = Field(1.0, gt=0, description="V-trace c-bar.")
    loss_reduction: Literal["sum", "mean"] = Field("sum", description="Sum (IMPALA) or mean over T*B.")
    max_grad_norm: float = Field(40.0, gt=0, description="Global gradient-norm clip.")
    publish_every: int = Field(1, ge=1, description="k: publish weights to actors once k updates have passed since the last publish (and publish_seconds).")
    publish_seconds: float = Field(
        0.5, ge=0, description="And once this many seconds have passed: bounds how often every actor "
                               "fetches the whole network (at most 1/publish_seconds per actor per "
                               "second), whatever the learner's speed. The copy and the put run off the "
                               "updates' path; a chunk's end publishes what its updates earned. 0: "
                               "every publish_every updates.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when the cluster has a GPU.")
    bf16: bool = Field(
        False, description="bfloat16 autocast of the networks' forward passes, on CUDA and on the CPU "
                           "(worth it where the CPU has bfloat16 matrix units, AMX); weights, "
                           "gradients, the combiner, the optimizer and SAC's output layers stay "
                           "float32.")
    compile: Literal["auto", "off", "compile", "graphs"] = Field(
        "auto", description="How the update runs: off: eagerly (the readable reference); compile: "
                            "torch.compile; graphs: captured once as a CUDA graph and replayed (CUDA "
                            "only); auto: graphs on CUDA, off on CPU. A compile or capture that fails "
                            "falls back to eager with one line saying why.")
    max_nonfinite_run: int = Field(20, ge=1, description="Consecutive non-finite losses that stop training.")
    max_restarts: int = Field(
        3, ge=0, description="Times Ray restarts a dead learner process within a run; each restart "
                             "continues from the newest checkpoint (losing at most one checkpoint "
                             "interval of updates). Past it the run stops and says how to resume.")
    num_threads: int = Field(1, ge=1, description="torch threads of a CPU learner.")
    combiner: CombinerConfig = Field(CombinerConfig(), description="Gradient combiner on the shared weights (used when there are several tasks, aux terms, or it is not 'sum'). sum/pcgrad: across tasks, each task's term being its V-trace loss plus its aux terms on its own unrolls; cosine_gate/olaux: the main term (all tasks' V-trace losses) against each aux term, or without aux terms the first task against the others. SAC combines the critic's and the actor's shared gradients separately.")
    aux: dict[str, AuxConfig] = Field({}, description="Auxiliary losses by name (IMPALA), e.g. {distill: {teacher: runs/x}, inverse_dynamics: {}}.")
    sac: SacConfig = Field(SacConfig(), description="SAC settings (learner.algorithm: sac).")


class RunConfig(_Section):
    name: str = Field("run", min_length=1, description="Run directory prefix.")
    root: str = Field("runs", description="Where run directories are created.")
    seed: int = Field(0, ge=0, description="Seeds torch, numpy and the environments.")
    total_frames: int = Field(1_000_000, ge=1, description="Stop after this many environment frames (agent steps x frameskip on Atari) reach the learner.")
    max_seconds: float = Field(0.0, ge=0, description="Also stop after this wall time; 0 means no limit.")
    stop_return: float | None = Field(None, description="Also stop once every task's mean return (last 100 episodes) reaches this.")
    checkpoint_every: int = Field(500, ge=1, description="Updates between checkpoints.")
    checkpoint_every_seconds: float = Field(
        300.0, gt=0, description="Also checkpoint once this much wall time has passed since the last "
                                 "one, so a SIGKILL, an OOM kill or a lost node loses at most this "
                                 "much however slow the updates are.")
    checkpoint_failure_tolerance_seconds: float = Field(
        900.0, ge=0, description="Train on while checkpoints fail to write (disk full, directory "
                                 "gone, no permission) for up to this long, each failure counted "
                                 "and reported and the previous checkpoints kept; past it the run "
                                 "stops with exit code 1. Checked at each attempt; 0 stops at the "
                                 "first failed write.")
    keep_checkpoints: int = Field(3, ge=1, description="Checkpoints kept on disk.")
    log_every: float = Field(5.0, gt=0, description="Seconds between metric rows.")
    progress: bool = Field(True, description="Live progress display on the console.")
    eval_every: int = Field(0, ge=0, description="Updates between evaluations of the deterministic policy (success rate and return per task), each of the policy the learner published at that update; 0: never.")
    eval_episodes: int = Field(5, ge=1, description="Episodes per task in each periodic evaluation.")
    dashboard: bool = Field(
        True, description="Start the embedded Ray's dashboard (on 127.0.0.1). false: Ray starts "
                          "without its dashboard processes, several seconds sooner on a small "
                          "machine where nobody watches (a scripted sweep, CI). A joined "
                          "cluster's dashboard is `ray start`'s.")
    prometheus_host: str | None = Field(
        "http://127.0.0.1:9090", description="Prometheus the embedded Ray's dashboard queries for "
                                             "its Metrics tab (RAY_PROMETHEUS_HOST; `accord monitor` "
                                             "starts one there); the environment variable wins.")
    grafana_host: str | None = Field(
        None, description="Grafana the embedded Ray's dashboard embeds (RAY_GRAFANA_HOST), e.g. "
                          "http://127.0.0.1:3000; the environment variable wins.")


class PlacementConfig(_Section):
    """Which nodes each role runs on: the nodes with the custom resource `accord-<name>`
    (accord/placement.py); deploy/cluster.yaml gives its GPU head `accord-head` and its CPU
    workers `accord-worker`. None: anywhere (as on a laptop's embedded Ray)."""
    rollout: str | None = Field(None, min_length=1, description="Nodes of the rollout actors, e.g. worker; their CPUs must hold actors.num_actors.")
    learner: str | None = Field(None, min_length=1, description="Node of the learner, e.g. head (the node with the GPU).")
    service: str | None = Field(None, min_length=1, description="Nodes of the queue or replay shards, the weight store and the evaluator, e.g. head.")


class ExperimentConfig(_Section):
    env: EnvConfig = EnvConfig()
    actors: ActorConfig = ActorConfig()
    queue: QueueConfig = QueueConfig()
    replay: ReplayConfig = ReplayConfig()
    learner: LearnerConfig = LearnerConfig()
    run: RunConfig = RunConfig()
    placement: PlacementConfig = PlacementConfig()

    @model_validator(mode="before")
    @classmethod
    def _resolve_auto_ratio(cls, tree: Any) -> Any:
        """replay.samples_per_insert: auto becomes a number here, so the rest of the system
        (and the run's config.yaml) sees the ratio it runs with."""
        if not isinstance(tree, dict):
            return tree
        replay = tree.get("replay")
        replay = {} if replay is None else replay
        if not isinstance(replay, dict) or replay.get("samples_per_insert", "auto") != "auto":
            return tree
        learner = tree.get("learner") if isinstance(tree.get("learner"), dict) else {}
        sac = learner.get("sac") if isinstance(learner.get("sac"), dict) else {}
        batch = sac.get("batch_per_task", SacConfig.model_fields["batch_per_task"].default)
        ratio = sac.get("updates_per_step", SacConfig.model_fields["updates_per_step"].default)
        if not isinstance(batch, int) or isinstance(batch, bool) \
                or not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not ratio > 0:
            return tree  # its own validation names the bad field
        return {**tree, "replay": {**replay, "samples_per_insert": float(batch * ratio)}}

    @model_validator(mode="before")
    @classmethod
    def _sac_fleet_defaults(cls, tree: Any) -> Any:
        """SAC acts as Stable-Baselines3, CleanRL and RLlib's SAC do unless told otherwise: one
        actor of one env (per task). Its updates then come right after the step they learn
        from, where 2 actors x 8 envs (IMPALA's defaults, kept for it) spread the same env steps
        over 16 episodes played at once by older policies: on Pendulum-v1, five seeds at one
        update of 256 rows per env step, one actor of one env reached a return of -200 in 1.11x
        Stable-Baselines3's env steps and 2 x 8 envs in 1.22x (README, Pendulum against
        Stable-Baselines3). A value given in the config or by --set is kept."""
        if not isinstance(tree, dict):
            return tree
        learner = tree.get("learner") if isinstance(tree.get("learner"), dict) else {}
        env, actors = tree.get("env"), tree.get("actors")
        env = {} if env is None else env
        actors = {} if actors is None else actors
        if learner.get("algorithm") != "sac" or not isinstance(env, dict) or not isinstance(actors, dict):
            return tree  # a bad section is named by its own validation
        return {**tree, "env": {"envs_per_actor": 1, **env}, "actors": {"num_actors": 1, **actors}}

    @model_validator(mode="before")
    @classmethod
    def _benchmark_tasks(cls, tree: Any) -> Any:
        """Meta-World's MT10/MT50 define their own tasks (in the benchmark's order: task ids)."""
        env = tree.get("env") if isinstance(tree, dict) else None
        if not (isinstance(env, dict) and env.get("kind") == "metaworld"
                and env.get("benchmark") in ("MT10", "MT50")):
            return tree
        from envs.metaworld import benchmark_tasks

        tasks = list(benchmark_tasks(env["benchmark"]))
        if "tasks" in env and list(env["tasks"]) != tasks:
            raise ValueError(f"env.tasks: {env['benchmark']} defines its own {len(tasks)} tasks; "
                             f"leave env.tasks out (or use MT1 for one task)")
        return {**tree, "env": {**env, "tasks": tasks}}

    @model_validator(mode="after")
    def _cross_field(self) -> "ExperimentConfig":
        sac = self.learner.algorithm == "sac"
        if self.learner.compile == "graphs" and self.learner.device == "cpu":
            raise ValueError("learner.compile: 'graphs' captures CUDA graphs; it needs "
                             "learner.device cuda (or auto on a machine with a GPU)")
        if sac and self.env.kind == "atari":
            raise ValueError("learner.algorithm: 'sac' needs a Box action space and Atari games have "
                             "discrete actions; use 'impala'")
        if not sac and self.env.kind == "metaworld":
            raise ValueError("learner.algorithm: Meta-World has continuous (Box) actions; use 'sac'")
        if self.env.kind == "metaworld" and self.env.benchmark is None:
            raise ValueError("env.benchmark: Meta-World needs one of MT1, MT10, MT50")
        if self.env.kind != "metaworld" and self.env.benchmark is not None:
            raise ValueError(f"env.benchmark: only for env.kind 'metaworld', not {self.env.kind!r}")
        if self.env.benchmark == "MT1" and len(self.env.tasks) != 1:
            raise ValueError(f"env.tasks: MT1 trains one task, got {len(self.env.tasks)}")
        spi = self.replay.samples_per_insert
        if spi is not None and spi <= 0:
            raise ValueError(f"replay.samples_per_insert: must be > 0 (or auto, or null for no limit), got {spi}")
        if self.replay.grpc.port is not None and not sac:
            raise ValueError("replay.grpc.port: gRPC ingestion feeds the SAC replay table; "
                             f"learner.algorithm is {self.learner.algorithm!r}")
        if self.actors.num_actors == 0 and self.replay.grpc.port is None:
            raise ValueError("actors.num_actors: 0 rollout actors leave the run without experience "
                             "unless producers feed it over gRPC (set replay.grpc.port, SAC)")
        self._check_inference()
        if sac:
            self._check_replay()
        else:
            if self.replay.backend != "memory":
                raise ValueError(f"replay.backend: {self.replay.backend!r} keeps SAC's replay table; "
                                 f"{self.learner.algorithm} trains from the queue (queue.backend)")
            unrolls_per_batch = -(-self.learner.batch_size // self.env.envs_per_actor)
            # The learner waits for a whole batch of unrolls; a queue that cannot hold one batch
            # plus one in-flight insert would block actors and learner forever.
            per_shard = self.queue.capacity // self.queue.shards
            if per_shard < unrolls_per_batch + 1:
                raise ValueError(
                    f"queue.capacity: {self.queue.capacity} over {self.queue.shards} shard(s) holds "
                    f"{per_shard} per shard, which must exceed the {unrolls_per_batch} unrolls per batch "
                    f"(learner.batch_size / env.envs_per_actor) by one, or inserts deadlock")
            if self.queue.shards > self.actors.num_actors:
                raise ValueError(f"queue.shards: {self.queue.shards} shards for {self.actors.num_actors} "
                                 f"actors would leave some empty, and the learner waits on each in turn")
        if self.env.kind == "atari" and self.learner.model == "mlp":
            raise ValueError("learner.model: 'mlp' cannot read Atari frames; use 'nature' or 'resnet'")
        if self.env.kind != "atari" and self.learner.model in ("nature", "resnet"):
            raise ValueError(f"learner.model: {self.learner.model!r} expects 84x84 frames; use 'mlp' or "
                             f"'auto' for the vector observations of {self.env.kind!r}")
        if sac and self.env.kind == "gridworld":
            raise ValueError("learner.algorithm: the gridworld has discrete actions; use 'impala'")
        combiner = self.learner.combiner
        self._check_aux()
        if combiner.strategy == "forward" and not (combiner.name == "olaux" and self.learner.aux):
            raise ValueError("learner.combiner.strategy: forward computes OL-AUX's dot products; it "
                             "needs combiner olaux and learner.aux terms")
        if combiner.name == "olaux" and combiner.options.get("log_losses", True) and not self.learner.aux:
            # OL-AUX's adaptive loss balancing takes log L_aux; a V-trace task loss can be negative.
            raise ValueError("learner.combiner.options: olaux over task losses needs log_losses: false "
                             "(V-trace and SAC actor losses can be negative, log L is undefined)")
        if len(set(self.env.tasks)) != len(self.env.tasks):
            raise ValueError(f"env.tasks: duplicate entries in {self.env.tasks}")
        return self

    def _check_inference(self) -> None:
        actors = self.actors
        if actors.inference == "local":
            if actors.inference_device == "cuda":
                raise ValueError("actors.inference_device: cuda is for actors.inference: server; local "
                                 "inference runs on each rollout actor's CPU")
            return
        if self.learner.algorithm != "impala":
            raise ValueError(f"actors.inference: server batches IMPALA's policy; "
                             f"{self.learner.algorithm} actors act with local inference")
        # A server without rollout actors to serve would wait for steps that never come.
        if actors.inference_servers > actors.num_actors:
            raise ValueError(f"actors.inference_servers: {actors.inference_servers} servers for "
                             f"{actors.num_actors} rollout actors would leave some idle")

    def _check_aux(self) -> None:
        if not self.learner.aux:
            return
        if self.learner.algorithm != "impala":
            raise ValueError("learner.aux: auxiliary losses are built for the IMPALA learner")
        from envs.gridworld_teacher import RECORDED_TEACHERS  # numpy and envs: only when needed

        for name, aux in self.learner.aux.items():
            field = f"learner.aux.{name}"
            kind = aux.kind or name
            if kind not in AUX_KINDS:
                raise ValueError(f"{field}: unknown aux loss {kind!r}; name it after one of "
                                 f"{', '.join(AUX_KINDS)} or give its kind")
            if kind != "distill":
                if aux.teacher is not None or aux.tasks is not None or aux.invert:
                    raise ValueError(f"{field}: teacher, tasks and invert are options of distill, not {kind}")
                continue
            if aux.teacher is None:
                raise ValueError(f"{field}.teacher: distill needs a teacher (a checkpoint or run directory, "
                                 f"or q_aux / q_main on the gridworld)")
            if aux.teacher in RECORDED_TEACHERS:
                if self.env.kind != "gridworld":
                    raise ValueError(f"{field}.teacher: {aux.teacher} is the gridworld's tabular teacher; "
                                     f"env.kind is {self.env.kind!r}")
            elif not Path(aux.teacher).exists():
                raise ValueError(f"{field}.teacher: no checkpoint or run directory at {aux.teacher}")
            elif aux.invert:
                raise ValueError(f"{field}.invert: only for the tabular teachers q_aux / q_main")
            unknown = [t for t in aux.tasks or () if t not in self.env.tasks]
            if unknown:
                raise ValueError(f"{field}.tasks: {unknown} are not in env.tasks {list(self.env.tasks)}")

    def _check_replay(self) -> None:
        # The same checks the replay service runs before it starts its shards.
        from replay.sharding import checked_shard_settings

        checked_shard_settings(self)

    @property
    def frames_per_step(self) -> int:
        """Emulator frames per agent step (frameskip 4 on Atari)."""
        return 4 if self.env.kind == "atari" else 1


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """`a.b=v` strings to (path, value) pairs; values are parsed as YAML (so 3, true, [a, b])."""
    out = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. learner.lr=3e-4")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({exc.problem})") from None
        out.append((key.strip(), value))
    return out


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{where}: {msg}" if where and not msg.startswith(where) else msg)
    return "; ".join(lines)


def config_from_dict(tree: dict) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> ExperimentConfig:
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config: {str(path)!r} is a directory, not a YAML file "
                              f"(to continue a run: accord train --resume {path})")
        if not path.is_file():
            raise ConfigError(f"config: no such file {str(path)!r}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config: cannot read {path} ({type(exc).__name__}: {exc})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config: {path} is not valid YAML: {' '.join(str(exc).split())}") from None  # the CLI prints one line
        if not isinstance(tree, dict):
            raise ConfigError(f"config: {path} must hold a mapping of sections, got {type(tree).__name__}")
    for key, value in parse_overrides(list(overrides)):
        _set_path(tree, key, value)
    return _validate_tasks(config_from_dict(tree))


def _validate_tasks(cfg: ExperimentConfig) -> ExperimentConfig:
    """Check every task exists and return the config with canonical task names (so two
    spellings of one game are caught as duplicates and metrics use one name)."""
    from envs import normalize_task, validate_task

    canonical = []
    for i, name in enumerate(cfg.env.tasks):
        try:
            validate_task(cfg.env.kind, name)
        except ValueError as exc:
            raise ConfigError(f"env.tasks.{i}: {exc}") from None
        canonical.append(normalize_task(cfg.env.kind, name))
    if cfg.env.kind == "gym":
        _check_gym_spaces(cfg)
    if tuple(canonical) == cfg.env.tasks:
        return cfg
    # Validated again with the canonical names, so the one duplicate rule sees them.
    tree = cfg.model_dump()
    tree["env"]["tasks"] = canonical
    return config_from_dict(tree)


def _check_gym_spaces(cfg: ExperimentConfig) -> None:
    """The algorithm must fit the action space, and one network needs one set of spaces.
    Classic gymnasium envs are cheap to make, so this is checked before anything starts."""
    from envs import describe

    specs = []
    for i, name in enumerate(cfg.env.tasks):
        try:
            specs.append(describe("gym", name))
        except ValueError as exc:
            raise ConfigError(f"env.tasks.{i}: {exc}") from None
    spec = specs[0]
    if cfg.learner.algorithm == "impala" and spec.continuous:
        raise ConfigError(f"learner.algorithm: {cfg.env.tasks[0]} has a Box action space; "
                          f"IMPALA here needs Discrete actions, use 'sac'")
    if cfg.learner.algorithm == "sac" and not spec.continuous:
        raise ConfigError(f"learner.algorithm: {cfg.env.tasks[0]} has a Discrete action space; "
                          f"SAC needs a Box action space, use 'impala'")
    for i, other in enumerate(specs[1:], start=1):
        if other != spec:
            raise ConfigError(f"env.tasks.{i}: {cfg.env.tasks[i]} has spaces {other}, unlike "
                              f"{cfg.env.tasks[0]} ({spec}); one network needs one set of spaces")


def check_resources(cfg: ExperimentConfig, resources: dict[str, float],
                    where: str = "the Ray cluster") -> None:
    """What the config asks of the hardware against what `where` offers (a Ray cluster's
    `ray.cluster_resources()`, or this machine before an embedded Ray starts), checked before any
    actor starts: a learner pinned to CUDA where no node has a GPU would wait forever for a GPU
    slot, or fail inside its actor with a CUDA error far from the field that asked for it."""
    if cfg.learner.device == "cuda" and resources.get("GPU", 0) < 1:
        raise ConfigError(f"learner.device: 'cuda' but {where} has no GPU resource ("
                          f"{resources.get('CPU', 0):g} CPUs, 0 GPUs); use auto (CUDA when there "
                          f"is a GPU) or cpu")
    if cfg.actors.inference == "server" and cfg.actors.inference_device != "cpu":
        if resources.get("GPU", 0) <= 0:
            raise ConfigError(
                f"actors.inference_device: {cfg.actors.inference_device!r} serves the policy on a GPU "
                f"but {where} has none ({resources.get('CPU', 0):g} CPUs, 0 GPUs); set "
                f"actors.inference_device: cpu to serve it on a CPU, or use actors.inference: local")
        gpu_shares(cfg, resources)  # raises where the learner and the servers do not fit


def inference_device(cfg: ExperimentConfig, resources: dict[str, float]) -> str:
    """The device of `actors.inference: server`: cuda or cpu (auto: cuda where there is a GPU)."""
    if cfg.actors.inference_device == "auto":
        return "cuda" if resources.get("GPU", 0) > 0 else "cpu"
    return cfg.actors.inference_device


def gpu_shares(cfg: ExperimentConfig, resources: dict[str, float]) -> tuple[float, float]:
    """(learner's GPUs, each inference server's GPUs) as Ray resources. The learner takes a whole
    GPU where one is left beside the servers' shares, else what the servers leave of the one
    GPU, so that neither waits forever for a GPU slot that never frees."""
    gpus = resources.get("GPU", 0)
    learner = 1.0 if gpus >= 1 and cfg.learner.device != "cpu" else 0.0
    serving = cfg.actors.inference == "server" and inference_device(cfg, resources) == "cuda"
    if not serving:
        return learner, 0.0
    share = cfg.actors.inference_gpu_fraction
    needed = share * cfg.actors.inference_servers
    if learner and gpus < 1 + needed:
        learner = round(1.0 - needed, 6)
        if learner <= 0:
            raise ConfigError(
                f"actors.inference_gpu_fraction: {cfg.actors.inference_servers} inference servers x "
                f"{share:g} leave the learner no share of the cluster's {gpus:g} GPU(s); lower it or "
                f"actors.inference_servers")
    elif not learner and gpus < needed:
        raise ConfigError(f"actors.inference_gpu_fraction: {cfg.actors.inference_servers} inference "
                          f"servers x {share:g} need more than the cluster's {gpus:g} GPU(s)")
    return learner, share


def to_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
