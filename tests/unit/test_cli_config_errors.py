"""`accord train` on a bad config: one `config error:` line naming the field, exit 2, no Ray.

Each case runs the real CLI in a fresh interpreter (a tiny launcher around `accord.cli.main`),
so "Ray was never imported" is checked on a clean `sys.modules`. All cases start together in a
module-scoped fixture; each costs well under a second of imports.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from accord.config import load_config

REPO = Path(__file__).resolve().parents[2]

# Re-raises the CLI's exit status after printing which heavy modules got imported.
LAUNCHER = textwrap.dedent("""
    import sys
    from accord.cli import main
    sys.argv = ["accord", *sys.argv[1:]]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    print(f"RAY_IMPORTED={'ray' in sys.modules}")
    print(f"TORCH_IMPORTED={'torch' in sys.modules}")
    sys.exit(code)
""")

GYM = "env: {kind: gym, tasks: [CartPole-v1]}\nlearner: {model: mlp}\n"
PENDULUM_SAC = "env: {kind: gym, tasks: [Pendulum-v1], envs_per_actor: 1}\nlearner: {algorithm: sac}\n"


@dataclass(frozen=True)
class Case:
    id: str
    yaml: str | None          # None: no file is written (the path does not exist)
    sets: tuple[str, ...]     # --set values
    names: tuple[str, ...]    # substrings the one error line must contain
    builds_combiner: bool = False  # validating combiner options imports torch (not Ray)


CASES = [
    Case("unknown_combiner", "", ("learner.combiner.name=gradnorm",), ("learner.combiner.name",)),
    Case("bad_combiner_option", "", ("learner.combiner.name=pcgrad", "learner.combiner.options={foo: 1}"),
         ("learner.combiner", "options", "foo"), builds_combiner=True),
    Case("olaux_log_of_rl_loss", "", ("learner.combiner.name=olaux",),
         ("learner.combiner.options", "log_losses"), builds_combiner=True),
    Case("unknown_aux_loss", "", ("learner.aux={curiosity: {}}",), ("learner.aux.curiosity", "distill")),
    Case("distill_without_teacher", "", ("learner.aux={distill: {}}",), ("learner.aux.distill.teacher",)),
    Case("missing_teacher_checkpoint", "", ("learner.aux={distill: {teacher: runs/nowhere}}",),
         ("learner.aux.distill.teacher", "runs/nowhere")),
    Case("tabular_teacher_off_the_gridworld", "", ("learner.aux={distill: {teacher: q_aux}}",),
         ("learner.aux.distill.teacher", "gridworld")),
    Case("teacher_option_on_a_head_term", "", ("learner.aux={reward: {teacher: q_aux}}",),
         ("learner.aux.reward", "distill")),
    Case("unknown_section", "trainer: {lr: 0.1}\n", (), ("trainer", "unknown field")),
    Case("unknown_field", "learner: {learning_rate: 0.1}\n", (), ("learner.learning_rate", "unknown field")),
    Case("wrong_type", "learner: {lr: fast}\n", (), ("learner.lr",)),
    Case("section_not_mapping", "learner: 5\n", (), ("learner",)),
    Case("zero_actors", "actors: {num_actors: 0}\n", (), ("actors.num_actors",)),
    Case("negative_lr", "", ("learner.lr=-1e-3",), ("learner.lr",)),
    Case("sticky_out_of_range", "env: {sticky_actions: 1.5}\n", (), ("env.sticky_actions",)),
    Case("unknown_model", "learner: {model: transformer}\n", (), ("learner.model", "'nature', 'resnet' or 'mlp'")),
    Case("empty_tasks", "env: {tasks: []}\n", (), ("env.tasks",)),
    Case("unknown_atari_game", "env: {tasks: [breakot]}\n", (), ("env.tasks.0", "breakot", "breakout")),
    Case("unknown_gym_id", GYM, ("env.tasks=[CartPol-v1]",), ("env.tasks.0", "CartPol-v1")),
    Case("queue_smaller_than_batch", "queue: {capacity: 4}\nlearner: {batch_size: 32}\nenv: {envs_per_actor: 8}\n",
         (), ("queue.capacity", "deadlock")),
    Case("mlp_on_atari", "learner: {model: mlp}\n", (), ("learner.model", "mlp")),
    Case("cnn_on_gym", GYM, ("learner.model=nature",), ("learner.model", "nature")),
    Case("duplicate_tasks", "env: {tasks: [pong, pong]}\nactors: {num_actors: 2}\n", (), ("env.tasks", "duplicate")),
    Case("sac_on_atari", "learner: {algorithm: sac}\n", (), ("learner.algorithm", "Box")),
    Case("impala_on_pendulum", "env: {kind: gym, tasks: [Pendulum-v1]}\n", (), ("learner.algorithm", "Box")),
    Case("sac_on_cartpole", "env: {kind: gym, tasks: [CartPole-v1]}\nlearner: {algorithm: sac}\n", (),
         ("learner.algorithm", "Discrete")),
    Case("no_actors_and_no_grpc", "env: {kind: gym, tasks: [Pendulum-v1]}\nlearner: {algorithm: sac}\n",
         ("actors.num_actors=0",), ("actors.num_actors", "replay.grpc.port")),
    Case("grpc_ingest_on_impala", "", ("replay.grpc.port=50051",), ("replay.grpc.port", "SAC")),
    Case("grpc_beyond_loopback_without_tls", "env: {kind: gym, tasks: [Pendulum-v1]}\nlearner: {algorithm: sac}\n",
         ("replay.grpc.port=50051", "replay.grpc.host=0.0.0.0"), ("replay.grpc", "host", "0.0.0.0", "tls_cert")),
    Case("grpc_tls_cert_without_key", "", ("replay.grpc.tls_cert=/etc/hostname",), ("replay.grpc", "tls_key")),
    Case("unknown_replay_backend", PENDULUM_SAC, ("replay.backend=disk",), ("replay.backend", "'memory' or 'redis'")),
    Case("redis_url_not_redis", PENDULUM_SAC, ("replay.backend=redis", "replay.redis.url=http://h:1"),
         ("replay.redis.url", "redis://")),
    Case("redis_url_bad_port", PENDULUM_SAC, ("replay.backend=redis", "replay.redis.url=redis://h:99999/0"),
         ("replay.redis.url", "99999")),
    Case("redis_url_without_redis_backend", PENDULUM_SAC, ("replay.redis.url=redis://h:1/0",),
         ("replay.redis.url", "replay.backend")),
    Case("redis_replay_for_impala", "", ("replay.backend=redis",), ("replay.backend", "impala")),
    Case("unknown_inference", "", ("actors.inference=remote",), ("actors.inference", "'local' or 'server'")),
    Case("inference_server_for_sac", PENDULUM_SAC, ("actors.inference=server", "actors.inference_device=cpu"),
         ("actors.inference", "IMPALA")),
    Case("more_inference_servers_than_actors", "",
         ("actors.inference=server", "actors.inference_device=cpu", "actors.inference_servers=3"),
         ("actors.inference_servers", "idle")),
    Case("local_inference_on_cuda", "", ("actors.inference_device=cuda",), ("actors.inference_device", "server")),
    Case("set_without_equals", "", ("learner.lr",), ("--set", "learner.lr", "KEY=VALUE")),
    Case("set_invalid_yaml_value", "", ("learner.lr=[1",), ("--set learner.lr", "not valid YAML")),
    Case("set_into_a_value", "learner: {lr: 0.1}\n", ("learner.lr.x=1",), ("learner.lr.x", "not a section")),
    Case("missing_file", None, (), ("config", "no such file", "missing.yaml")),
    Case("yaml_not_a_mapping", "- env\n- learner\n", (), ("config", "mapping")),
    Case("invalid_yaml", "learner:\n  lr: [1, 2\n", (), ("config", "not valid YAML")),
]


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


def _run(case: Case, tmp: Path) -> Outcome:
    path = tmp / (f"{case.id}.yaml" if case.yaml is not None else "missing.yaml")
    if case.yaml is not None:
        path.write_text(case.yaml)
    argv = ["train", str(path)]
    for s in case.sets:
        argv += ["--set", s]
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    tmp = tmp_path_factory.mktemp("configs")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {c.id: pool.submit(_run, c, tmp) for c in CASES}
        return {k: f.result() for k, f in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_config_is_one_line_exit_2_and_no_ray(case, outcomes):
    out = outcomes[case.id]
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("config error: ")
    for name in case.names:
        assert name in lines[0], f"{name!r} not in {lines[0]!r}"
    assert "RAY_IMPORTED=False" in out.stdout.splitlines()
    # The heavy imports come after validation; torch would mean the driver was reached.
    if not case.builds_combiner:
        assert "TORCH_IMPORTED=False" in out.stdout.splitlines()


def test_smoke_config_loads_and_overrides_apply():
    base = load_config(REPO / "configs" / "smoke.yaml")
    assert base.env.tasks == ("breakout",)
    cfg = load_config(REPO / "configs" / "smoke.yaml", ["learner.lr=3e-4", "env.tasks=[pong]"])
    assert cfg.learner.lr == 3e-4
    assert cfg.env.tasks == ("pong",)
    # Everything not overridden still comes from the file, not from the defaults.
    assert cfg.learner.batch_size == base.learner.batch_size == 8
    assert cfg.queue.capacity == 8
    assert cfg.run.name == "smoke"
    assert cfg.model_dump(exclude={"learner": {"lr"}, "env": {"tasks"}}) == \
        base.model_dump(exclude={"learner": {"lr"}, "env": {"tasks"}})


def test_later_set_wins_and_values_parse_as_yaml():
    cfg = load_config(REPO / "configs" / "smoke.yaml",
                      ["learner.lr=1e-3", "learner.lr=2e-3", "run.progress=true", "actors.num_actors=3"])
    assert cfg.learner.lr == 2e-3
    assert cfg.run.progress is True
    assert cfg.actors.num_actors == 3
