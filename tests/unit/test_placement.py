"""accord/placement.py: the placement fields against a cluster's nodes (as `ray.nodes()` lists
them), checked before any actor starts, and the actor options each role gets."""
import pytest

from accord.config import ConfigError, config_from_dict
from accord.placement import check_placement, learner_has_gpu, placement_options


def node(role: str | None, cpus: float, gpus: float = 0, alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {}),
                                          **({f"accord-{role}": 1000.0} if role else {})}}


CLUSTER = [node("head", 8, gpus=1), node("worker", 2), node("worker", 2)]


def config(num_actors=4, device="auto", **placement):
    return config_from_dict({"env": {"kind": "gym", "tasks": ["CartPole-v1"]},
                             "actors": {"num_actors": num_actors}, "learner": {"device": device},
                             "placement": placement})


def test_a_fleet_that_fits_the_worker_cpus_passes():
    check_placement(config(4, rollout="worker", learner="head", service="head"), CLUSTER)


def test_a_fleet_larger_than_the_worker_cpus_names_the_field():
    with pytest.raises(ConfigError, match=r"^placement.rollout: 5 rollout actors need one CPU each "
                                          r"on nodes with accord-worker; the cluster's 2 "
                                          r"such node\(s\) have 4 CPUs"):
        check_placement(config(5, rollout="worker"), CLUSTER)


def test_a_dead_node_holds_nothing():
    nodes = [*CLUSTER[:2], node("worker", 2, alive=False)]
    with pytest.raises(ConfigError, match="placement.rollout: 4 rollout actors"):
        check_placement(config(4, rollout="worker"), nodes)


@pytest.mark.parametrize("field", ["rollout", "learner", "service"])
def test_a_node_kind_the_cluster_lacks_names_the_field_and_the_labels_there_are(field):
    with pytest.raises(ConfigError, match=rf"^placement.{field}: no node of the Ray cluster has the "
                                          rf"resource accord-gpu \(its nodes have: accord-head, "
                                          rf"accord-worker\)"):
        check_placement(config(1, **{field: "gpu"}), CLUSTER)


def test_a_cuda_learner_needs_a_gpu_on_its_own_nodes():
    with pytest.raises(ConfigError, match="placement.learner: learner.device is 'cuda' but no node "
                                          "with accord-worker has a GPU"):
        check_placement(config(1, device="cuda", learner="worker"), CLUSTER)


def test_the_learner_asks_for_a_gpu_only_where_it_may_run():
    assert learner_has_gpu(config(learner="head"), CLUSTER)
    assert not learner_has_gpu(config(learner="worker"), CLUSTER)
    assert learner_has_gpu(config(), CLUSTER)  # anywhere: the head's GPU counts
    assert not learner_has_gpu(config(device="cpu", learner="head"), CLUSTER)


def test_unset_places_anywhere_and_a_set_role_asks_for_a_sliver_of_its_nodes_resource():
    check_placement(config(100), [node(None, 1)])  # the embedded Ray: nothing to check
    assert placement_options(None) == {}
    assert placement_options("worker") == {"resources": {"accord-worker": 0.001}}
