"""accord/config.py in process: frozen, documented, paper defaults, YAML round trip, errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from accord.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    load_config,
    parse_overrides,
    to_yaml,
)

REPO = Path(__file__).resolve().parents[2]
GYM = {"env": {"kind": "gym", "tasks": ["CartPole-v1"]}, "learner": {"model": "mlp"}}


def _sections() -> dict[str, type[BaseModel]]:
    return {name: field.annotation for name, field in ExperimentConfig.model_fields.items()}


# --- frozen ------------------------------------------------------------------------------------


def test_sections_and_top_level_are_frozen():
    cfg = config_from_dict({})
    with pytest.raises(ValidationError, match="frozen"):
        cfg.learner.lr = 1.0
    with pytest.raises(ValidationError, match="frozen"):
        cfg.learner = cfg.learner.model_copy()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.run.seed = 7
    assert cfg.learner.lr == 6e-4 and cfg.run.seed == 0


def test_task_list_cannot_be_mutated_in_place():
    cfg = config_from_dict(GYM)
    with pytest.raises((TypeError, AttributeError, ValidationError)):
        cfg.env.tasks.append("CartPole-v1")


# --- defaults and documentation -----------------------------------------------------------------


def test_defaults_are_paper_000_settings():
    cfg = config_from_dict({})
    assert cfg.learner.lr == 6e-4
    assert cfg.learner.entropy_coef == 0.01
    assert cfg.learner.batch_size == 32
    assert cfg.actors.unroll_length == 20
    # The rest of IMPALA's RMSProp/V-trace settings that paper 000 inherits.
    assert cfg.learner.baseline_coef == 0.5
    assert cfg.learner.discount == 0.99
    assert cfg.learner.rmsprop_eps == 0.01
    assert cfg.learner.rmsprop_alpha == 0.99
    assert cfg.learner.max_grad_norm == 40.0
    assert cfg.learner.loss_reduction == "sum"
    assert (cfg.learner.clip_rho, cfg.learner.clip_pg_rho, cfg.learner.clip_c) == (1.0, 1.0, 1.0)
    assert cfg.env.sticky_actions == 0.25
    assert cfg.frames_per_step == 4
    assert config_from_dict(GYM).frames_per_step == 1


def test_every_field_of_every_section_has_a_description():
    sections = _sections()
    assert set(sections) == {"env", "actors", "queue", "replay", "learner", "run", "placement"}
    missing = [f"{s}.{f}" for s, model in sections.items()
               for f, info in model.model_fields.items()
               if not (info.description and info.description.strip())]
    assert missing == []


def test_sections_forbid_unknown_fields():
    for name, model in _sections().items():
        assert model.model_config.get("extra") == "forbid", name
        assert model.model_config.get("frozen") is True, name


# --- YAML round trip ----------------------------------------------------------------------------


def test_to_yaml_round_trip_gives_an_equal_config(tmp_path):
    cfg = load_config(REPO / "configs" / "smoke.yaml",
                      ["learner.lr=3e-4", "env.tasks=[pong, breakout]", "learner.per_task_heads=true"])
    text = to_yaml(cfg)
    assert config_from_dict(yaml.safe_load(text)) == cfg
    path = tmp_path / "config.yaml"
    path.write_text(text)
    again = load_config(path)
    assert again == cfg
    assert to_yaml(again) == text


def test_round_trip_of_defaults_writes_every_section():
    cfg = config_from_dict(GYM)
    tree = yaml.safe_load(to_yaml(cfg))
    assert list(tree) == ["env", "actors", "queue", "replay", "learner", "run", "placement"]
    assert tree["learner"]["lr"] == 6e-4
    assert config_from_dict(tree) == cfg


def test_configs_in_repo_all_load(tmp_path):
    paths = sorted((REPO / "configs").glob("*.yaml"))
    assert paths
    for path in paths:
        teacher = ((yaml.safe_load(path.read_text()).get("learner") or {}).get("aux") or {}) \
            .get("distill", {}).get("teacher", "")
        # Distillation configs name a teacher run the user trains first (their comments say how).
        overrides = ([f"learner.aux.distill.teacher={tmp_path}"]
                     if teacher and teacher not in ("q_aux", "q_main") else [])
        assert isinstance(load_config(path, overrides), ExperimentConfig), path


# --- errors -------------------------------------------------------------------------------------


def test_config_error_is_a_value_error_naming_the_field():
    with pytest.raises(ConfigError, match=r"^learner\.lr: "):
        config_from_dict({"learner": {"lr": 0}})
    assert issubclass(ConfigError, ValueError)


def test_several_errors_are_joined_on_one_line():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"learner": {"lr": -1, "bogus": 1}, "actors": {"num_actors": -1}})
    message = str(info.value)
    assert "\n" not in message
    assert "learner.lr" in message and "learner.bogus: unknown field" in message
    assert "actors.num_actors" in message


@pytest.mark.parametrize("tree, field", [
    ({"queue": {"capacity": 4}, "learner": {"batch_size": 32}, "env": {"envs_per_actor": 8}}, "queue.capacity"),
    ({"env": {"tasks": ["pong", "pong"]}}, "env.tasks"),
    ({"learner": {"model": "mlp"}}, "learner.model"),
    ({"env": {"kind": "gym", "tasks": ["CartPole-v1"]}, "learner": {"model": "nature"}}, "learner.model"),
    ({"learner": {"algorithm": "sac"}}, "learner.algorithm"),
    ({"env": {"kind": "metaworld", "benchmark": "MT10"}}, "learner.algorithm"),
    ({"env": {"kind": "metaworld", "tasks": ["reach-v3"]}, "learner": {"algorithm": "sac"}}, "env.benchmark"),
    ({"env": {"kind": "metaworld", "benchmark": "MT1", "tasks": ["reach-v3", "push-v3"]},
      "learner": {"algorithm": "sac"}}, "env.tasks"),
    ({"env": {"benchmark": "MT10"}}, "env.benchmark"),
])
def test_cross_field_invariants(tree, field):
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        config_from_dict(tree)


def test_queue_capacity_one_above_a_batch_is_enough():
    # 32 / 8 = 4 unrolls per batch; 5 slots leave room for one in-flight insert.
    cfg = config_from_dict({"queue": {"capacity": 5}, "learner": {"batch_size": 32},
                            "env": {"envs_per_actor": 8}})
    assert cfg.queue.capacity == 5
    # Rounded up: 33 trajectories need 5 unrolls, so 5 slots are no longer enough.
    with pytest.raises(ConfigError, match="queue.capacity"):
        config_from_dict({"queue": {"capacity": 5}, "learner": {"batch_size": 33},
                          "env": {"envs_per_actor": 8}})


def test_unknown_task_names_its_index():
    with pytest.raises(ConfigError, match=r"^env\.tasks\.1: .*breakot"):
        load_config(None, ["env.tasks=[pong, breakot]", "actors.num_actors=2"])


def test_two_spellings_of_one_game_are_duplicates():
    with pytest.raises(ConfigError, match="env.tasks"):
        load_config(None, ["env.tasks=[breakout, BreakoutNoFrameskip-v4]", "actors.num_actors=2"])


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="mapping.*list"):
        load_config(path)


def test_empty_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path, ["env.tasks=[pong]"]) == config_from_dict({"env": {"tasks": ["pong"]}})


# --- --set parsing ------------------------------------------------------------------------------


def test_override_values_parse_as_yaml():
    pairs = parse_overrides(["a.b=3", "a.c=true", "a.d=[x, y]", " a.e =0.5", "a.f=", "a.g=x=y"])
    assert pairs == [("a.b", 3), ("a.c", True), ("a.d", ["x", "y"]), ("a.e", 0.5),
                     ("a.f", ""), ("a.g", "x=y")]


def test_exponent_without_a_dot_still_sets_a_float():
    # YAML 1.1 reads "3e-4" as a string; the float field still has to end up a float.
    assert parse_overrides(["learner.lr=3e-4"]) == [("learner.lr", "3e-4")]
    cfg = load_config(None, ["learner.lr=3e-4"])
    assert isinstance(cfg.learner.lr, float) and cfg.learner.lr == 3e-4


@pytest.mark.parametrize("bad", ["learner.lr", "=3", " =3"])
def test_override_without_key_or_equals_is_an_error(bad):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides([bad])


def test_override_cannot_descend_into_a_value(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learner: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"learner\.lr\.x: 'lr' is not a section"):
        load_config(path, ["learner.lr.x=1"])


def test_task_names_are_made_canonical():
    cfg = load_config(None, ["env.tasks=[BreakoutNoFrameskip-v4, ALE/Pong-v5]", "actors.num_actors=2"])
    assert cfg.env.tasks == ("breakout", "pong")


def test_sac_rate_limit_defaults_to_updates_per_step_updates_per_env_step_of_every_task():
    sac = ["env.kind=gym", "env.tasks=[Pendulum-v1]", "learner.algorithm=sac"]
    cfg = load_config(None, sac)
    assert (cfg.learner.sac.batch_per_task, cfg.learner.sac.updates_per_step) == (128, 1.5)
    assert cfg.replay.samples_per_insert == 192.0  # 3 updates of 128 rows every 2 env steps
    assert load_config(None, [*sac, "learner.sac.batch_per_task=64"]).replay.samples_per_insert == 96.0
    one = load_config(None, [*sac, "learner.sac.batch_per_task=64", "learner.sac.updates_per_step=1"])
    assert one.replay.samples_per_insert == 64.0
    assert load_config(None, [*sac, "learner.sac.updates_per_step=0.5"]).replay.samples_per_insert == 64.0
    with pytest.raises(ConfigError, match=r"^learner\.sac\.updates_per_step: "):
        load_config(None, [*sac, "learner.sac.updates_per_step=0"])
    assert load_config(None, [*sac, "replay.samples_per_insert=null"]).replay.samples_per_insert is None
    assert load_config(None, [*sac, "replay.samples_per_insert=3"]).replay.samples_per_insert == 3.0
    with pytest.raises(ConfigError, match=r"^replay\.samples_per_insert: must be > 0"):
        load_config(None, [*sac, "replay.samples_per_insert=0"])


def test_sac_acts_with_one_actor_of_one_env_unless_told_otherwise_and_impala_keeps_its_fleet():
    sac = ["env.kind=gym", "env.tasks=[Pendulum-v1]", "learner.algorithm=sac"]
    cfg = load_config(None, sac)
    assert (cfg.actors.num_actors, cfg.env.envs_per_actor) == (1, 1)
    assert cfg.replay.samples_per_insert == 192.0  # still 1.5 updates of 128 rows per env step
    cfg = load_config(None, [*sac, "actors.num_actors=3", "env.envs_per_actor=4"])
    assert (cfg.actors.num_actors, cfg.env.envs_per_actor) == (3, 4)
    cfg = load_config(None, [*sac, "actors.num_actors=0", "replay.grpc.port=50051"])
    assert (cfg.actors.num_actors, cfg.env.envs_per_actor) == (0, 1)
    impala = load_config(None, ["env.kind=gym", "env.tasks=[CartPole-v1]"])
    assert (impala.actors.num_actors, impala.env.envs_per_actor) == (2, 8)


def test_a_config_naming_only_the_env_and_the_algorithm_is_complete():
    cfg = load_config(None, ["env.kind=gym", "env.tasks=[Pendulum-v1]", "learner.algorithm=sac"])
    assert cfg.learner.model == "auto" and cfg.learner.sac.model == "mtsac"
    with pytest.raises(ConfigError, match=r"^learner\.algorithm: .*Box"):
        load_config(None, ["env.kind=gym", "env.tasks=[Pendulum-v1]"])
