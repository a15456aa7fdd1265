"""accord/metric_names.py: metrics.csv keys -> one Prometheus metric per quantity, with labels."""
from __future__ import annotations

import re

import pytest

from accord.metric_names import LABELS, TABLE, ray_metric

# Keys as a run writes them (IMPALA with cosine gate / OL-AUX / PCGrad, SAC, evaluation).
CASES = [
    ("fps", "accord_frames_per_second", {}),
    ("updates_per_s", "accord_updates_per_second", {}),
    ("return/breakout", "accord_return", {"task": "breakout"}),
    ("success/reach-v3", "accord_success_ratio", {"task": "reach-v3"}),
    ("eval/success_mean", "accord_eval_success_ratio", {"task": "mean"}),
    ("loss/main/pg", "accord_loss", {"task": "", "role": "main", "term": "pg"}),
    ("loss/aux/distill", "accord_loss", {"task": "", "role": "aux", "term": "distill"}),
    ("loss/world-3/main/baseline", "accord_loss", {"task": "world-3", "role": "main", "term": "baseline"}),
    ("loss/total", "accord_loss", {"task": "", "role": "total", "term": "total"}),
    ("loss/critic", "accord_loss", {"task": "", "role": "", "term": "critic"}),
    ("loss/critic/reach-v3", "accord_loss", {"task": "reach-v3", "role": "sac", "term": "critic"}),
    ("sac/alpha/reach-v3", "accord_sac_alpha", {"task": "reach-v3"}),
    ("loss/world-4/stats/rho_mean", "accord_loss_diagnostic", {"task": "world-4", "stat": "rho_mean"}),
    ("combiner/cos_now/aux/distill", "accord_combiner_cosine",
     {"net": "", "term": "distill", "layer": "all"}),
    ("combiner/cos_now/aux/distill/torso.net.1", "accord_combiner_cosine",
     {"net": "", "term": "distill", "layer": "torso.net.1"}),
    ("combiner/cos/aux/distill", "accord_combiner_cosine_smoothed", {"net": "", "term": "distill"}),
    ("combiner/gate/aux/distill", "accord_combiner_gate", {"net": "", "term": "distill"}),
    ("combiner/w/aux/pixel_control", "accord_olaux_weight", {"net": "", "term": "pixel_control"}),
    ("combiner/pcgrad/conflicts", "accord_pcgrad_conflicts", {"net": ""}),
    ("combiner/critic/pcgrad/conflicts", "accord_pcgrad_conflicts", {"net": "critic"}),
    ("combiner/norm/task/world-3", "accord_combiner_grad_norm", {"net": "", "term": "world-3"}),
    ("learner/grad_norm/actor", "accord_learner_grad_norm", {"net": "actor"}),
    ("learner/lag_mean", "accord_policy_lag", {}),
    ("learner/lost_unrolls", "accord_lost_unrolls", {}),
    ("actors/restarts", "accord_restarts", {"role": "rollout"}),
    ("learner/restarts", "accord_restarts", {"role": "learner"}),
    ("queue/depth", "accord_queue_depth", {}),
    ("replay/size", "accord_replay_depth", {"task": "all"}),
    ("replay/size/reach-v3", "accord_replay_depth", {"task": "reach-v3"}),
    # not in the table: a name of its own, no labels
    ("queue/inserted", "accord_queue_inserted", {}),
    ("some/New-metric.x", "accord_some_new_metric_x", {}),
]


@pytest.mark.parametrize("key,name,labels", CASES)
def test_key_maps_to_metric_and_labels(key, name, labels):
    metric = ray_metric(key)
    assert (metric.name, metric.tags) == (name, labels)


def test_single_task_runs_fill_the_task_label_of_unlabelled_keys():
    assert ray_metric("loss/main/pg", task="breakout").tags["task"] == "breakout"
    assert ray_metric("loss/total", task="breakout").tags["task"] == "breakout"
    # a key that names its task keeps it
    assert ray_metric("return/pong", task="breakout").tags == {"task": "pong"}
    assert ray_metric("replay/size", task="breakout").tags == {"task": "all"}


def test_every_key_of_one_metric_gives_the_same_label_names():
    # Ray fixes a metric's tag keys when it is created; a row with other labels would fail.
    by_name: dict[str, set] = {}
    for key, _, _ in CASES:
        metric = ray_metric(key)
        by_name.setdefault(metric.name, set()).add(metric.label_names)
    assert all(len(names) == 1 for names in by_name.values()), by_name


def test_names_follow_prometheus_conventions():
    names = {name for _, name, _, _ in TABLE} | {ray_metric(k).name for k, _, _ in CASES}
    for name in names:
        # no ':' (reserved for recording rules), snake_case, accord's prefix
        assert re.fullmatch(r"accord_[a-z0-9_]+", name), name
        # every accord metric is a gauge: `_total` would claim a counter
        assert not name.endswith("_total"), name
    for labels in LABELS.values():
        assert all(re.fullmatch(r"[a-z_]+", label) for label in labels)


def test_a_fallback_name_never_takes_a_labelled_metric_name():
    assert ray_metric("return").name == "accord_return_unlabelled"
    assert ray_metric("return").labels == ()
