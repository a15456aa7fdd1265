"""How a metric key of the run directory becomes a Ray (Prometheus) metric: one metric per
quantity, with what varies inside the key moved into labels.

The CSV and TensorBoard keep readable slash keys (`loss/main/pg`, `return/breakout`,
`combiner/cos_now/aux/distill/torso.net.1`); Prometheus gets `accord_loss{role="main",term="pg"}`,
`accord_return{task="breakout"}`, `accord_combiner_cosine{term="distill",layer="torso.net.1"}`,
so one Grafana query covers every task, term and layer.

Names follow Prometheus's conventions: snake_case, base units as suffixes (`_seconds`,
`_ratio` for 0..1 fractions, `_per_second` for rates), no `:` (reserved for recording rules;
Ray warns about it). `_total` is kept for counters, and every accord metric is a gauge: the
driver reports totals that already survive `--resume` (restored from the checkpoint), which a
Ray Counter, starting again at 0 in every process, could not carry. So a cumulative count is a
gauge without the suffix (`accord_restarts`, `accord_lost_unrolls`), read with `delta()`.
Ray prefixes every application metric with `ray_` on export (`ray_accord_return`).

Each metric has one fixed label set (Ray rejects a value with a declared label missing); a
label a key does not name is exported empty, which Prometheus treats as absent.
A key no row matches keeps a name of its own (`accord_<key with _ for / . ->`), so a new
metric reaches the dashboard before it is given labels here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Label values: task names (`breakout`, `world-3`, `reach-v3`) and layer names
# (`torso.net.1`) hold no slash; aux terms are named `aux/<term>` by the learner.
_SEG = r"[^/]+"


@dataclass(frozen=True)
class RayMetric:
    name: str
    labels: tuple[tuple[str, str], ...]  # (label, value) in the metric's fixed order

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.labels)


# (key pattern, metric name, fixed labels, description). The first full match wins; the
# pattern's named groups and the fixed labels give the label values. Order matters where
# patterns overlap: the specific ones come first.
TABLE: list[tuple[str, str, dict[str, str], str]] = [
    # throughput and progress
    (r"fps", "accord_frames_per_second", {}, "Environment frames per second (all actors)"),
    (r"updates_per_s", "accord_updates_per_second", {}, "Learner updates per second"),
    (r"frames", "accord_frames", {}, "Environment frames consumed by the learner so far"),
    (r"updates", "accord_updates", {}, "Learner updates so far"),
    # episodes, per task
    (rf"return/(?P<task>{_SEG})", "accord_return", {}, "Mean episode return (raw score), last 100 episodes"),
    (rf"success/(?P<task>{_SEG})", "accord_success_ratio", {}, "Success rate, last 100 episodes"),
    (rf"episode_length/(?P<task>{_SEG})", "accord_episode_length", {}, "Mean episode length in env steps, last 100 episodes"),
    (rf"episodes/(?P<task>{_SEG})", "accord_episodes", {}, "Episodes finished so far"),
    (rf"eval/return/(?P<task>{_SEG})", "accord_eval_return", {}, "Evaluation mean return"),
    (rf"eval/success/(?P<task>{_SEG})", "accord_eval_success_ratio", {}, "Evaluation success rate"),
    (r"eval/success_mean", "accord_eval_success_ratio", {"task": "mean"}, "Evaluation success rate"),
    # loss terms: `loss/[<task>/]<role>/<term>` (roles: main, aux), the summed loss, and the
    # learner's diagnostics (`loss/[<task>/]stats/<name>`: V-trace's rho, clip fraction, ...)
    (r"loss/total", "accord_loss", {"task": "", "role": "total", "term": "total"}, "Loss term value"),
    (rf"loss/(?:(?P<task>{_SEG})/)?stats/(?P<stat>{_SEG})", "accord_loss_diagnostic", {},
     "Diagnostics computed with the loss (importance weights, clipping, values)"),
    (rf"loss/(?:(?P<task>{_SEG})/)?(?P<role>main|aux)/(?P<term>{_SEG})", "accord_loss", {}, "Loss term value"),
    (rf"loss/(?P<term>critic|actor|alpha)/(?P<task>{_SEG})", "accord_loss", {"role": "sac"}, "Loss term value"),
    (rf"loss/(?P<term>{_SEG})", "accord_loss", {"task": "", "role": ""}, "Loss term value"),
    (rf"sac/alpha/(?P<task>{_SEG})", "accord_sac_alpha", {}, "SAC entropy temperature per task"),
    (rf"sac/entropy/(?P<task>{_SEG})", "accord_sac_entropy", {}, "SAC policy entropy per task"),
    # combiner statistics; SAC prefixes them with the network (`combiner/critic/...`)
    (rf"combiner/(?:(?P<net>critic|actor)/)?cos_now/aux/(?P<term>{_SEG})/(?P<layer>{_SEG})",
     "accord_combiner_cosine", {}, "Cosine of main and aux gradient this update, per layer ('all': layer mean)"),
    (rf"combiner/(?:(?P<net>critic|actor)/)?cos_now/aux/(?P<term>{_SEG})",
     "accord_combiner_cosine", {"layer": "all"}, "Cosine of main and aux gradient this update, per layer ('all': layer mean)"),
    (rf"combiner/(?:(?P<net>critic|actor)/)?cos/aux/(?P<term>{_SEG})",
     "accord_combiner_cosine_smoothed", {}, "Smoothed (EMA, debiased) cosine the gate decides on"),
    (r"combiner/(?:(?P<net>critic|actor)/)?gate/measured", "accord_combiner_gate_measured", {},
     "1 if this update measured the cosine"),
    (rf"combiner/(?:(?P<net>critic|actor)/)?gate/aux/(?P<term>{_SEG})", "accord_combiner_gate", {},
     "Weight the cosine gate gives the aux gradient"),
    (rf"combiner/(?:(?P<net>critic|actor)/)?w/aux/(?P<term>{_SEG})", "accord_olaux_weight", {},
     "OL-AUX weight w_i of the aux term"),
    (rf"combiner/(?:(?P<net>critic|actor)/)?dot/aux/(?P<term>{_SEG})", "accord_olaux_dot", {},
     "OL-AUX dot product of main and aux gradient this update"),
    (r"combiner/(?:(?P<net>critic|actor)/)?pcgrad/conflicts", "accord_pcgrad_conflicts", {},
     "Task pairs with conflicting gradients (g_i . g_j < 0) this update"),
    (r"combiner/(?:(?P<net>critic|actor)/)?pcgrad/pairs", "accord_pcgrad_pairs", {}, "Task pairs compared"),
    (r"combiner/(?:(?P<net>critic|actor)/)?pcgrad/projections", "accord_pcgrad_projections", {},
     "Projections applied this update"),
    (r"combiner/(?:(?P<net>critic|actor)/)?pcgrad/mean_cos", "accord_pcgrad_mean_cosine", {},
     "Mean cosine over task pairs"),
    (r"combiner/(?:(?P<net>critic|actor)/)?norm/combined", "accord_combiner_grad_norm", {"term": "combined"},
     "Gradient norm per term on the shared parameters"),
    (rf"combiner/(?:(?P<net>critic|actor)/)?norm/(?:aux|task)/(?P<term>{_SEG})", "accord_combiner_grad_norm", {},
     "Gradient norm per term on the shared parameters"),
    (rf"combiner/(?:(?P<net>critic|actor)/)?norm/(?P<term>{_SEG})", "accord_combiner_grad_norm", {},
     "Gradient norm per term on the shared parameters"),
    # learner
    (r"learner/lag_mean", "accord_policy_lag", {}, "Mean learner version minus behaviour version of the batches"),
    (r"learner/lost_unrolls", "accord_lost_unrolls", {}, "Unrolls lost with a dead actor, skipped by the learner"),
    (r"learner/sample_timeouts", "accord_learner_sample_timeouts", {}, "Batches the learner waited for in vain"),
    (r"learner/fetch_timeouts", "accord_learner_fetch_timeouts", {}, "Learner chunks that ended on time while a batch was still on its way"),
    (r"learner/wait_fraction", "accord_learner_wait_ratio", {}, "Fraction of the learner's time spent waiting for data"),
    (r"learner/seconds", "accord_learner_chunk_seconds", {}, "Duration of the last learner chunk"),
    (r"learner/overrun_seconds", "accord_learner_chunk_overrun_seconds", {}, "How far the last learner chunk ran past its seconds"),
    (r"learner/late_chunks", "accord_learner_late_chunks", {}, "Learner chunks that ran past their seconds by more than their slowest update (a wait was not bounded)"),
    # weights to the actors
    (r"weights/publishes", "accord_weights_publishes", {}, "Weight publishes in the last learner chunk"),
    (r"weights/publish_bytes", "accord_weights_publish_bytes", {}, "Bytes of one published copy of the actors' weights"),
    (r"weights/publish_timeouts", "accord_weights_publish_timeouts", {}, "Publishes whose weight-store or shard call timed out"),
    (r"weights/publishes_deferred", "accord_weights_publishes_deferred", {}, "Publish points reached while the previous publish was still on its way"),
    (r"weights/flush_timeouts", "accord_weights_flush_timeouts", {}, "Learner chunks that ended with a publish still on its way"),
    (r"weights/fleet_bytes_per_s", "accord_weights_fleet_bytes_per_second", {}, "Bytes of weights the actors fetched per second (fetches x bytes per publish)"),
    (r"actors/weight_fetches", "accord_actors_weight_fetches", {}, "Weight fetches of all rollout actors so far"),
    (r"actors/weight_fetch_timeouts", "accord_actors_weight_fetch_timeouts", {}, "Weight fetches the rollout actors gave up on after a minute, acting on with the weights they had"),
    (r"learner/updates_in_chunk", "accord_learner_chunk_updates", {}, "Updates in the last learner chunk"),
    (r"learner/lr", "accord_learner_learning_rate", {}, "Learning rate"),
    (r"learner/nonfinite_total", "accord_learner_nonfinite_steps", {}, "Steps skipped for a non-finite loss or gradient"),
    (r"learner/grad_norm(?:/(?P<net>critic|actor))?", "accord_learner_grad_norm", {}, "Gradient norm before clipping"),
    # restarts of the roles
    (r"actors/restarts", "accord_restarts", {"role": "rollout"}, "Restarts so far, per role"),
    (r"learner/restarts", "accord_restarts", {"role": "learner"}, "Restarts so far, per role"),
    (r"inference/restarts", "accord_restarts", {"role": "inference"}, "Restarts so far, per role"),
    (r"learner/updates_lost", "accord_learner_updates_lost", {},
     "Updates lost to learner restarts, at least (those the driver saw past the checkpoint each went back to)"),
    (r"actors/unreachable", "accord_actors_unreachable", {}, "Rollout actors that did not answer the last poll"),
    (r"actors/env_errors", "accord_env_errors", {}, "Environment errors so far"),
    (r"actors/env_steps", "accord_env_steps", {}, "Environment steps so far (all actors)"),
    # inference servers (actors.inference: server)
    (r"inference/unreachable", "accord_inference_unreachable", {}, "Inference servers that did not answer the last poll"),
    (r"inference/weight_fetches", "accord_inference_weight_fetches", {}, "Weight versions the inference servers fetched (since their last start)"),
    (r"inference/steps_per_batch", "accord_inference_steps_per_batch", {}, "Rollout actors' steps per inference forward (since the servers' last start)"),
    # the FIFO queue (IMPALA) and the replay table (SAC)
    (r"queue/depth", "accord_queue_depth", {}, "Unrolls waiting in the queue"),
    (r"queue/capacity", "accord_queue_capacity", {}, "Queue capacity in unrolls"),
    (r"queue/blocked_seconds", "accord_queue_blocked_seconds", {}, "Seconds inserts waited on a full queue"),
    (r"queue/wakeups", "accord_queue_wakeups", {}, "Blocked inserts and samples woken to check the queue again"),
    (r"replay/size", "accord_replay_depth", {"task": "all"}, "Transitions in the replay table"),
    (rf"replay/size/(?P<task>{_SEG})", "accord_replay_depth", {}, "Transitions in the replay table"),
    (r"replay/blocked_insert_seconds", "accord_replay_blocked_insert_seconds", {}, "Seconds inserts waited on the rate limiter"),
    (r"replay/samples_per_insert", "accord_replay_samples_per_insert", {}, "Observed samples per inserted transition"),
    # gRPC ingestion (ingest/): producers outside Ray
    (r"ingest/rows", "accord_ingest_rows", {"task": "all"}, "Transitions stored from gRPC producers"),
    (rf"ingest/rows/(?P<task>{_SEG})", "accord_ingest_rows", {}, "Transitions stored from gRPC producers"),
    (r"ingest/chunks", "accord_ingest_chunks", {}, "Chunks stored from gRPC producers"),
    (r"ingest/rejected", "accord_ingest_rejected", {"code": "all"}, "gRPC ingestion calls refused, per status code"),
    (rf"ingest/rejected/(?P<code>{_SEG})", "accord_ingest_rejected", {}, "gRPC ingestion calls refused, per status code"),
    # checkpoints and the run's own bookkeeping
    (r"checkpoints/(?P<kind>failed|corrupt_skipped)", "accord_checkpoint_problems", {}, "Checkpoints that failed to write or were skipped as corrupt"),
]

_COMPILED = [(re.compile(pattern), name, fixed, doc) for pattern, name, fixed, doc in TABLE]


def _label_names(pattern: re.Pattern, fixed: dict[str, str]) -> tuple[str, ...]:
    return tuple(sorted({*pattern.groupindex, *fixed}))


def _check_table() -> dict[str, tuple[str, ...]]:
    """Every row of a metric must give it the same label set (Ray fixes it at creation)."""
    labels: dict[str, tuple[str, ...]] = {}
    for pattern, name, fixed, _ in _COMPILED:
        names = _label_names(pattern, fixed)
        if labels.setdefault(name, names) != names:
            raise AssertionError(f"{name}: rows disagree on labels {labels[name]} vs {names}")
    return labels


LABELS = _check_table()


def ray_metric(key: str, task: str = "") -> RayMetric:
    """The Prometheus metric name and labels of a metrics.csv key. `task` fills the task label
    of keys that name none: a single-task run writes `loss/main/pg`, not `loss/<task>/main/pg`,
    yet its dashboard panels filter on the task."""
    for pattern, name, fixed, _ in _COMPILED:
        match = pattern.fullmatch(key)
        if match:
            values = {**fixed, **{k: v for k, v in match.groupdict().items() if v}}
            values = {k: values.get(k) or (task if k == "task" else "") for k in LABELS[name]}
            return RayMetric(name, tuple((k, values[k]) for k in LABELS[name]))
    name = "accord_" + re.sub(r"[^a-zA-Z0-9_]", "_", key).lower()
    # A labelled metric of the same name would clash (Ray fixes a metric's labels once).
    return RayMetric(name + "_unlabelled" if name in LABELS else name, ())


def describe(name: str) -> str:
    for _, metric, _, doc in _COMPILED:
        if metric == name:
            return doc
    return f"accord {name.removeprefix('accord_')}"
