"""Inference servers share the rollout actors round robin, and each knows how many it serves
(its batch is complete when every one of them has asked)."""
from actors.inference_server import clients_of, server_of


def test_servers_share_the_fleet_round_robin_and_know_how_many_they_serve():
    assert [server_of(i, 3) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [clients_of(s, 7, 3) for s in range(3)] == [3, 2, 2]
    assert clients_of(0, 5, 1) == 5
