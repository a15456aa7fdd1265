"""Where each role of a run goes on a multi-node cluster, by node label.

deploy/cluster.yaml labels its nodes `accord-node: head` (the GPU node: driver, learner, replay
service) and `accord-node: worker` (the CPU nodes: rollout actors). The config's `placement`
section names, per role, the label value its nodes carry; the role's actors then carry Ray's
`label_selector`, so Ray places them, and restarts them after a node is lost, only on such
nodes. Unset (the default, and what a laptop's embedded Ray needs) places a role anywhere.

`check_placement` reads the joined cluster's nodes before any actor starts, so a fleet the
cluster cannot hold is one config error naming the field, not actors pending for ever. It
counts the nodes alive now: on an autoscaling cluster, bring the workers up first (min_workers).
"""
from __future__ import annotations

from accord.config import ConfigError, ExperimentConfig

NODE_LABEL = "accord-node"


def label_selector(value: str | None) -> dict[str, str]:
    """Ray's `label_selector` for nodes labelled `accord-node=<value>`; {} places anywhere."""
    return {NODE_LABEL: value} if value else {}


def placement_options(value: str | None) -> dict:
    """Actor options that keep a role on its nodes (nothing when the role may go anywhere)."""
    selector = label_selector(value)
    return {"label_selector": selector} if selector else {}


def _matching(nodes: list[dict], value: str) -> list[dict]:
    return [n for n in nodes if n.get("Alive") and (n.get("Labels") or {}).get(NODE_LABEL) == value]


def _labelled(nodes: list[dict]) -> str:
    values = sorted({(n.get("Labels") or {}).get(NODE_LABEL, "-") for n in nodes if n.get("Alive")})
    return ", ".join(f"{NODE_LABEL}={v}" if v != "-" else "unlabelled" for v in values)


def check_placement(cfg: ExperimentConfig, nodes: list[dict]) -> None:
    """`nodes`: `ray.nodes()` of the joined cluster. Raises ConfigError naming the placement
    field whose nodes are missing or too small."""
    where = cfg.placement
    for field in ("learner", "service", "rollout"):
        value = getattr(where, field)
        if value and not _matching(nodes, value):
            raise ConfigError(f"placement.{field}: no node of the Ray cluster is labelled "
                              f"{NODE_LABEL}={value} (its nodes: {_labelled(nodes) or 'none'})")
    if where.rollout and cfg.actors.num_actors:
        # One CPU per rollout actor (actors/remote.py); more would wait for a node that never comes.
        nodes_of_fleet = _matching(nodes, where.rollout)
        cpus = sum(n.get("Resources", {}).get("CPU", 0.0) for n in nodes_of_fleet)
        if cpus < cfg.actors.num_actors:
            raise ConfigError(f"placement.rollout: {cfg.actors.num_actors} rollout actors need one "
                              f"CPU each on nodes labelled {NODE_LABEL}={where.rollout}; the cluster's "
                              f"{len(nodes_of_fleet)} such node(s) have {cpus:g} CPUs "
                              f"(lower actors.num_actors or add worker nodes)")
    if where.learner and cfg.learner.device == "cuda":
        gpus = sum(n.get("Resources", {}).get("GPU", 0.0) for n in _matching(nodes, where.learner))
        if gpus < 1:
            raise ConfigError(f"placement.learner: learner.device is 'cuda' but no node labelled "
                              f"{NODE_LABEL}={where.learner} has a GPU")


def learner_has_gpu(cfg: ExperimentConfig, nodes: list[dict]) -> bool:
    """Whether the learner gets a GPU: one of the nodes it may run on has one, and the config
    does not pin it to the CPU. (A GPU elsewhere in the cluster would leave it pending.)"""
    if cfg.learner.device == "cpu":
        return False
    allowed = _matching(nodes, cfg.placement.learner) if cfg.placement.learner else [
        n for n in nodes if n.get("Alive")]
    return any(n.get("Resources", {}).get("GPU", 0.0) >= 1 for n in allowed)
