"""deploy/cluster.yaml against the Ray that ships with accord.

The config goes through the same steps `ray up` runs before it touches a cloud
(ray.autoscaler._private.commands._bootstrap_config: prepare_config, then validate_config
against ray/autoscaler/ray-schema.json), and through jsonschema directly. The `ray start`
lines are parsed by the installed `ray start` command itself, so a misspelt or removed flag
fails here rather than on a fresh head node. Offline and fast: no cloud, no Ray processes.
"""
from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray.autoscaler
from ray._private.authentication.authentication_token_setup import _get_default_token_path
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.scripts.scripts import start as ray_start_command

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "deploy" / "cluster.yaml"
SCHEMA_PATH = Path(ray.autoscaler.__file__).parent / "ray-schema.json"

ROLLOUT_ACTORS = 200          # the paper's fleet, one CPU each
GPU_INSTANCE_FAMILIES = ("g4dn.", "g5.", "g6.", "g6e.", "p3.", "p4d.", "p5.")


def load_raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_up_validate(config: dict) -> dict:
    """What `ray up` does to a config before contacting the provider."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def raw() -> dict:
    return load_raw()


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    return ray_up_validate(raw)


def ray_start_invocations(commands: list[str]) -> list[tuple[dict, list[str]]]:
    """(environment, argv after `ray start`) for every `ray start` in a list of shell lines.

    Handles `export K=V;` statements earlier on the line and `K=V ray start` prefixes.
    """
    found = []
    for line in commands:
        env: dict[str, str] = {}
        for statement in re.split(r";|&&", line):
            words = shlex.split(statement)
            if words[:1] == ["export"]:
                env.update(w.split("=", 1) for w in words[1:] if "=" in w)
                continue
            prefix = {}
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                key, value = words.pop(0).split("=", 1)
                prefix[key] = value
            if words[:2] == ["ray", "start"]:
                found.append(({**env, **prefix}, words[2:]))
    return found


def parse_ray_start(argv: list[str]) -> dict:
    """Parse with the installed `ray start` (raises click.UsageError on an unknown flag)."""
    ctx = ray_start_command.make_context("ray start", list(argv))
    return ctx.params


# ---------------------------------------------------------------- schema, the ray up way


def test_validates_like_ray_up(prepared):
    assert prepared["cluster_name"] == "accord"
    assert prepared["provider"]["type"] == "aws"


def test_raw_file_matches_the_schema_ray_ships(raw):
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.validate(raw, schema)


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda c: c.update(max_worker=4),  # misspelt top-level key
         jsonschema.ValidationError, "'max_worker' was unexpected"),
        (lambda c: c["available_node_types"]["head.gpu"].update(gpus=1),
         jsonschema.ValidationError, "'gpus' was unexpected"),
        (lambda c: c["available_node_types"]["worker.cpu"]["resources"].update(CPU="64"),
         jsonschema.ValidationError, "'64' is not of type 'integer'"),
        (lambda c: c["available_node_types"]["worker.cpu"].update(min_workers="four"),
         jsonschema.ValidationError, "'four' is not of type 'integer'"),
        (lambda c: c.update(worker_start_ray_commands="ray start --address=$RAY_HEAD_IP:6379"),
         jsonschema.ValidationError, "is not of type 'array'"),
        (lambda c: c.update(head_node_type="head.tpu"),
         ValueError, "must be one of `available_node_types`"),
        (lambda c: c.update(max_workers=1),
         ValueError, "smaller than the sum of `min_workers`"),
    ],
    ids=["unknown-top-level-key", "unknown-node-type-key", "string-resource",
         "string-min-workers", "commands-not-a-list", "missing-head-type", "max-below-min"],
)
def test_a_broken_copy_is_rejected_by_the_same_validator(raw, mutate, error, match):
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises(error, match=re.escape(match)):
        ray_up_validate(broken)


# ---------------------------------------------------------------- sizing


def test_head_has_a_gpu_for_the_learner(prepared):
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) >= 1
    assert head["node_config"]["InstanceType"].startswith(GPU_INSTANCE_FAMILIES)
    assert head["max_workers"] == 0
    # The head keeps CPUs for the driver, the learner and the replay service.
    assert head["resources"].get("CPU", 0) >= 2


def test_workers_hold_the_rollout_fleet(prepared):
    head_type = prepared["head_node_type"]
    workers = {k: v for k, v in prepared["available_node_types"].items() if k != head_type}
    assert workers
    nodes_left = prepared["max_workers"]
    capacity = 0
    for node_type in sorted(workers.values(), key=lambda t: -t["resources"].get("CPU", 0)):
        nodes = min(node_type["max_workers"], nodes_left)
        capacity += nodes * node_type["resources"].get("CPU", 0)
        nodes_left -= nodes
        assert node_type["resources"].get("GPU", 0) == 0  # rollout actors run on CPUs
    assert capacity >= ROLLOUT_ACTORS


# ---------------------------------------------------------------- ray start lines


def test_every_ray_start_flag_exists_in_the_installed_ray(prepared):
    invocations = ray_start_invocations(
        prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"])
    assert len(invocations) == 2
    for _, argv in invocations:
        parse_ray_start(argv)


def test_head_dashboard_binds_to_loopback(prepared):
    [(_, argv)] = ray_start_invocations(prepared["head_start_ray_commands"])
    params = parse_ray_start(argv)
    assert params["head"] is True
    assert params["dashboard_host"] == "127.0.0.1"
    assert params["autoscaling_config"] == "~/ray_bootstrap_config.yaml"
    assert "0.0.0.0" not in CLUSTER_YAML.read_text()


def test_workers_join_the_head(prepared):
    [(_, argv)] = ray_start_invocations(prepared["worker_start_ray_commands"])
    params = parse_ray_start(argv)
    assert params["head"] is False
    assert params["address"] == "$RAY_HEAD_IP:6379"


# ---------------------------------------------------------------- token authentication


def test_token_auth_is_on_for_every_ray_start(prepared):
    invocations = ray_start_invocations(
        prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"])
    for env, _ in invocations:
        assert env.get("RAY_AUTH_MODE") == "token"


def test_every_node_gets_the_token_where_ray_looks_for_it(prepared):
    # Ray (token mode, no RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH) reads ~/.ray/auth_token.
    default = "~/" + _get_default_token_path().relative_to(Path.home()).as_posix()
    assert prepared["file_mounts"].get(default) == default
    # ... and the secret itself never sits in the config.
    text = CLUSTER_YAML.read_text()
    assert "RAY_AUTH_TOKEN" not in text
    assert not re.search(r"\b[0-9a-f]{64}\b", text)


NODE_SETUP = REPO / "deploy" / "setup" / "node.sh"
HEAD_SETUP = REPO / "deploy" / "setup" / "head.sh"


def test_every_node_runs_the_node_setup_script_and_the_head_its_own(prepared):
    # prepare_config folds setup_commands into both lists, as `ray up` runs them.
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert "bash ~/accord/deploy/setup/node.sh" in prepared[key], key
    assert "bash ~/accord/deploy/setup/head.sh" in prepared["head_setup_commands"]
    assert "bash ~/accord/deploy/setup/head.sh" not in prepared["worker_setup_commands"]
    # The scripts reach the nodes with the other sources.
    assert prepared["file_mounts"]["~/accord/deploy/setup"] == "./deploy/setup"


def test_shells_on_the_nodes_default_to_token_mode():
    # `ray exec` / `ray attach` / drivers started by hand get the mode from ~/.bashrc.
    script = NODE_SETUP.read_text()
    assert re.search(r"echo 'export RAY_AUTH_MODE=token' >> ~/\.bashrc", script)
    assert "chmod 600 ~/.ray/auth_token" in script


def test_node_resources_keep_the_learner_on_the_gpu_head_and_rollouts_on_the_workers(prepared):
    from accord.placement import node_resource

    types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    assert types[head]["resources"][node_resource("head")] > 0
    assert node_resource("worker") not in types[head]["resources"]
    assert types[head]["resources"]["GPU"] >= 1
    for name, node_type in types.items():
        if name != head:
            assert node_type["resources"][node_resource("worker")] > 0, name
            assert node_resource("head") not in node_type["resources"], name


# ---------------------------------------------------------------- installing accord


def test_setup_installs_accord_on_every_node():
    script = NODE_SETUP.read_text()
    assert re.search(r'\bpip install --python "\$ACCORD_VENV/bin/python" -e "\$ACCORD_HOME"', script)
    assert "ACCORD_HOME=${ACCORD_HOME:-$HOME/accord}" in script
    assert "ACCORD_VENV=${ACCORD_VENV:-$HOME/accord-venv}" in script
    # The console script `accord` and `ray` come from the environment the start lines use.
    assert 'line="source $ACCORD_VENV/bin/activate"' in script


def test_file_mounts_carry_what_pip_install_needs(prepared):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    mounts = prepared["file_mounts"]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    needed = ["pyproject.toml", pyproject["project"]["readme"], "configs", *packages]
    for name in needed:
        assert mounts.get(f"~/accord/{name}") == f"./{name}", name
    for remote, local in mounts.items():
        if remote.startswith("~/accord/"):
            assert remote == "~/accord/" + local.removeprefix("./")
