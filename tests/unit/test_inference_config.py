"""`actors.inference: server` against the hardware, before anything starts: a GPU server needs
a GPU (auto means CUDA where there is one, so no GPU and no explicit cpu is an error naming
`actors.inference_device`), and the learner and the servers share one GPU without either
waiting forever for a slot."""
from __future__ import annotations

import pytest

from accord.config import ConfigError, check_resources, config_from_dict, gpu_shares, inference_device

CPU_ONLY = {"CPU": 8.0}
ONE_GPU = {"CPU": 8.0, "GPU": 1.0}


def _cfg(learner_device: str = "auto", **actors):
    return config_from_dict({
        "env": {"kind": "gym", "tasks": ["CartPole-v1"]},
        "actors": {"num_actors": 4, **actors},
        "learner": {"model": "mlp", "device": learner_device},
    })


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_a_gpu_server_without_a_gpu_names_inference_device(device):
    with pytest.raises(ConfigError, match=rf"^actors\.inference_device: '{device}' serves the policy on a "
                                          rf"GPU but this machine has none .*actors\.inference_device: cpu"):
        check_resources(_cfg(inference="server", inference_device=device), CPU_ONLY, where="this machine")


def test_a_cpu_server_or_local_inference_need_no_gpu():
    check_resources(_cfg(inference="server", inference_device="cpu"), CPU_ONLY)
    check_resources(_cfg(), CPU_ONLY)
    assert inference_device(_cfg(inference="server"), CPU_ONLY) == "cpu"
    assert gpu_shares(_cfg(inference="server", inference_device="cpu"), CPU_ONLY) == (0.0, 0.0)


def test_auto_serves_on_the_gpu_and_the_learner_takes_what_the_servers_leave_of_one():
    cfg = _cfg(inference="server", inference_servers=2, inference_gpu_fraction=0.25)
    check_resources(cfg, ONE_GPU)
    assert inference_device(cfg, ONE_GPU) == "cuda"
    assert gpu_shares(cfg, ONE_GPU) == (0.5, 0.25)
    assert gpu_shares(cfg, {"GPU": 2.0}) == (1.0, 0.25)  # a whole GPU for the learner beside them
    assert gpu_shares(_cfg(learner_device="cpu", inference="server"), ONE_GPU) == (0.0, 0.25)
    assert gpu_shares(_cfg(), ONE_GPU) == (1.0, 0.0)  # local inference: as before


def test_servers_that_leave_the_learner_no_share_of_the_one_gpu_are_refused():
    cfg = _cfg(inference="server", inference_servers=4, inference_gpu_fraction=0.25)
    with pytest.raises(ConfigError, match=r"^actors\.inference_gpu_fraction: 4 inference servers x 0.25"):
        check_resources(cfg, ONE_GPU)
    with pytest.raises(ConfigError, match=r"^actors\.inference_gpu_fraction"):
        check_resources(_cfg(learner_device="cpu", inference="server", inference_servers=3,
                             inference_gpu_fraction=0.5), ONE_GPU)


@pytest.mark.parametrize("actors,field", [
    ({"inference": "server", "inference_device": "cpu", "inference_servers": 5}, "actors.inference_servers"),
    ({"inference_device": "cuda"}, "actors.inference_device"),
])
def test_settings_that_cannot_serve_name_their_field(actors, field):
    with pytest.raises(ConfigError, match=rf"^actors\.{field.split('.')[1]}: "):
        _cfg(**actors)


def test_sac_actors_keep_local_inference():
    with pytest.raises(ConfigError, match=r"^actors\.inference: server batches IMPALA's policy"):
        config_from_dict({"env": {"kind": "gym", "tasks": ["Pendulum-v1"]}, "learner": {"algorithm": "sac"},
                          "actors": {"inference": "server", "inference_device": "cpu"}})
