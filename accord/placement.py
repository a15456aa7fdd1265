"""Where each role of a run goes on a multi-node cluster, by a custom resource of its nodes.

deploy/cluster.yaml gives its GPU head (driver, learner, replay service) the resource
`accord-head` and its CPU workers (rollout actors) `accord-worker`, 1000 units each. The config's
`placement` section names, per role, the nodes it runs on (`head`, `worker`); each of the role's
actors then asks for a thousandth of `accord-<name>`, so Ray places it, and restarts it after a
node is lost, only on such nodes. (A resource, not a node label: with Ray 2.60's `label_selector`
the rehearsal once saw a learner meant for the head started on a worker; resources hold.)
Unset (the default, and what a laptop's embedded Ray needs) places a role anywhere.

`check_placement` reads the joined cluster's nodes before any actor starts, so a fleet the
cluster cannot hold is one config error naming the field, not actors pending for ever. It
counts the nodes alive now: on an autoscaling cluster, bring the workers up first (min_workers).
"""
from __future__ import annotations

from accord.config import ConfigError, ExperimentConfig

RESOURCE_PREFIX = "accord-"
SHARE = 0.001  # of a node's 1000 units: placement only, it never limits how many actors fit


def node_resource(value: str) -> str:
    """The custom resource of the nodes named `value` (`head` -> `accord-head`)."""
    return RESOURCE_PREFIX + value


def placement_options(value: str | None) -> dict:
    """Actor options that keep a role on its nodes (nothing when the role may go anywhere)."""
    return {"resources": {node_resource(value): SHARE}} if value else {}


def _matching(nodes: list[dict], value: str) -> list[dict]:
    return [n for n in nodes if n.get("Alive") and n.get("Resources", {}).get(node_resource(value), 0) > 0]


def _kinds(nodes: list[dict]) -> str:
    names = sorted({r for n in nodes if n.get("Alive") for r in n.get("Resources", {})
                    if r.startswith(RESOURCE_PREFIX)})
    return ", ".join(names)


def check_placement(cfg: ExperimentConfig, nodes: list[dict]) -> None:
    """`nodes`: `ray.nodes()` of the joined cluster. Raises ConfigError naming the placement
    field whose nodes are missing or too small."""
    where = cfg.placement
    for field in ("learner", "service", "rollout"):
        value = getattr(where, field)
        if value and not _matching(nodes, value):
            raise ConfigError(f"placement.{field}: no node of the Ray cluster has the resource "
                              f"{node_resource(value)} (its nodes have: {_kinds(nodes) or 'no accord-* resource'})")
    if where.rollout and cfg.actors.num_actors:
        # One CPU per rollout actor (actors/remote.py); more would wait for a node that never comes.
        nodes_of_fleet = _matching(nodes, where.rollout)
        cpus = sum(n.get("Resources", {}).get("CPU", 0.0) for n in nodes_of_fleet)
        if cpus < cfg.actors.num_actors:
            raise ConfigError(f"placement.rollout: {cfg.actors.num_actors} rollout actors need one "
                              f"CPU each on nodes with {node_resource(where.rollout)}; the cluster's "
                              f"{len(nodes_of_fleet)} such node(s) have {cpus:g} CPUs "
                              f"(lower actors.num_actors or add worker nodes)")
    if where.learner and cfg.learner.device == "cuda":
        gpus = sum(n.get("Resources", {}).get("GPU", 0.0) for n in _matching(nodes, where.learner))
        if gpus < 1:
            raise ConfigError(f"placement.learner: learner.device is 'cuda' but no node with "
                              f"{node_resource(where.learner)} has a GPU")


def learner_has_gpu(cfg: ExperimentConfig, nodes: list[dict]) -> bool:
    """Whether the learner gets a GPU: one of the nodes it may run on has one, and the config
    does not pin it to the CPU. (A GPU elsewhere in the cluster would leave it pending.)"""
    if cfg.learner.device == "cpu":
        return False
    allowed = _matching(nodes, cfg.placement.learner) if cfg.placement.learner else [
        n for n in nodes if n.get("Alive")]
    return any(n.get("Resources", {}).get("GPU", 0.0) >= 1 for n in allowed)
