"""The driver's training loop: learner chunks, metric rows, actor health, checkpoints, stop.

The loop reaches Ray only through `RayRoles` (the learner, the queue service, the actor fleet),
so it can be driven by plain objects in tests. How each run ends is written to
RUN_DIR/status.json (accord/run_status.py): "finished", "interrupted" or "failed" with the reason.
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from accord.checkpoint_schedule import CheckpointSchedule
from accord.inference_health import ServerHealth
from accord.run_status import write_status
from learner.algorithm import NonFiniteLossError
from learner.checkpoint import list_checkpoints

EXIT_OK, EXIT_FAILED, EXIT_DIVERGED = 0, 1, 3
# A fleet that has stopped answering is given this long before the run gives up on it: an actor
# on a lost node answers again only after Ray has declared the node dead (its heartbeats missed,
# tens of seconds, more on a busy head), restarted the actor elsewhere and the actor has loaded
# its envs (minutes for MT10's ten Meta-World envs on a busy node).
FLEET_DEAD_SECONDS = 300.0
LEARNER_RESTART_SECONDS = 300.0  # for Ray to start a new learner process and for it to load


class LearnerLost(Exception):
    """The learner's process died during a call (Ray restarts it while restarts are left)."""


class LearnerGone(Exception):
    """The learner is dead for good: its restarts are used up, or it did not come back."""


class ServiceLost(Exception):
    """An actor the learner draws from or publishes to (a queue or replay shard, the weight
    store) died: nothing is left to train on, though the learner itself lives."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class RunResult:
    run_dir: Path
    exit_code: int
    reason: str
    counters: dict = field(default_factory=dict)
    returns: dict = field(default_factory=dict)
    checkpoint: str | None = None


class ActorHealth:
    """Counts rollout-actor restarts (a new incarnation id), actors that stopped answering, and
    the env steps and env errors of every incarnation (a restart starts its counters at 0);
    and, through `ServerHealth`, the same of the inference servers."""

    def __init__(self, actors, servers=()):
        self.actors = actors
        self.servers = ServerHealth(servers)
        self.incarnations: dict[int, str] = {}
        self.restarts = 0
        self.unreachable = 0
        # (actor, incarnation) -> latest (steps, env errors, weight fetches), so totals survive restarts.
        self._counters: dict[tuple[int, str], tuple[int, int, int]] = {}
        self._reported = (0, 0)  # (restarts, unreachable) as the last `news` said them
        self.dead: set[int] = set()  # actors Ray will not restart (their restarts are used up)
        self.silent: set[int] = set()  # actors that did not answer the last poll

    def news(self) -> list[str]:
        """One line for each change of the fleet since the last call: actors restarted (their
        process or their node was lost and Ray started them again), the fleet shrinking (actors
        that do not answer: restarting, or waiting for room on a node where they may run) or
        growing back. Training goes on with the actors that answer."""
        restarts = self.restarts
        # Actors still starting (never answered) are not news: every run begins with them.
        unreachable = sum(1 for i in self.silent if i in self.incarnations or i in self.dead)
        seen_restarts, seen_unreachable = self._reported
        self._reported = (restarts, unreachable)
        lines = []
        if restarts > seen_restarts:
            lines.append(f"{restarts - seen_restarts} rollout actor(s) restarted by Ray after their "
                         f"process or node was lost ({restarts} restarts in this run)")
        fleet = len(self.actors)
        if unreachable > seen_unreachable:
            lines.append(f"the fleet shrinks to {fleet - unreachable} of {fleet} rollout actors: "
                         f"{unreachable} not answering (restarting, or no room on a node they may "
                         f"run on); training goes on")
        elif unreachable < seen_unreachable:
            lines.append(f"the fleet is back to {fleet - unreachable} of {fleet} rollout actors")
        return lines

    def poll(self, timeout: float = 2.0) -> None:
        self.servers.poll(timeout)
        if not self.actors:
            return
        refs = {a.stats.remote(): i for i, a in enumerate(self.actors)}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        self.unreachable = len(refs) - len(ready)
        self.silent = {i for ref, i in refs.items() if ref not in set(ready)}
        for ref in ready:
            i = refs[ref]
            try:
                stats = ray.get(ref)
            except ray.exceptions.RayActorError:  # dead for good: restarts used up
                self.unreachable += 1
                self.silent.add(i)
                self.dead.add(i)
                continue
            known = self.incarnations.get(i)
            if known is not None and known != stats["incarnation"]:
                self.restarts += 1
            self.incarnations[i] = stats["incarnation"]
            self._counters[(i, stats["incarnation"])] = (stats["steps"], stats["env_errors"],
                                                         stats["weight_fetches"],
                                                         stats["weight_fetch_timeouts"])

    @property
    def steps(self) -> int:
        return sum(c[0] for c in self._counters.values())

    @property
    def weight_fetches(self) -> int:
        return sum(c[2] for c in self._counters.values())

    @property
    def all_unreachable(self) -> bool:
        """No actor answers, and each has answered before or is dead for good. An actor that
        has never answered is still starting: on a cluster it may wait minutes for its node to
        join or for its envs to load, which is no reason to give up on the run.
        No fleet at all (a run fed over gRPC alone) is not a dead one."""
        started = all(i in self.incarnations or i in self.dead for i in range(len(self.actors)))
        return bool(self.actors) and self.unreachable == len(self.actors) and started

    def metrics(self) -> dict[str, float]:
        return {"actors/restarts": self.restarts, "actors/unreachable": self.unreachable,
                "actors/env_errors": sum(c[1] for c in self._counters.values()),
                "actors/env_steps": self.steps, "actors/weight_fetches": self.weight_fetches,
                "actors/weight_fetch_timeouts": sum(c[3] for c in self._counters.values()),
                **self.servers.metrics()}


class RayRoles:
    """The loop's one seam to Ray: blocking calls on the learner, the queue or replay service
    (its shards) and the evaluator, and the fleet's health. An exception raised inside the
    learner (NonFiniteLossError, CheckpointWriteError) reaches the loop as itself, chained to
    Ray's wrapper."""

    def __init__(self, learner, service: list, actors, evaluator=None, inference=()):
        self.learner, self.service, self.evaluator = learner, service, evaluator
        self.health = ActorHealth(actors, inference)

    def counters(self) -> dict:
        return _learner_get(self.learner.counters.remote())

    def train(self, max_updates: int, max_seconds: float) -> dict:
        return _learner_get(self.learner.train.remote(max_updates=max_updates, max_seconds=max_seconds))

    def save(self, run_dir: str, keep: int) -> str:
        return _learner_get(self.learner.save.remote(run_dir, keep))

    def restarted_learner(self, timeout: float = LEARNER_RESTART_SECONDS) -> dict:
        """After `LearnerLost`: wait for the learner Ray restarts and return what it restored
        (`checkpoint`, `updates`, `frames`, ...). `LearnerGone` if Ray will not restart it or it
        is not back within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                recovered = ray.get(self.learner.recovery.remote(), timeout=max(deadline - time.monotonic(), 1.0))
                if recovered:
                    return recovered
                # None: the process we had answered (it was unreachable, not dead; or, asked
                # right after a kill, it answered before it died): go on as is if it still
                # answers (LearnerLost: it does not; wait on for the one Ray starts in its place).
                return {"checkpoint": None, **self.counters()}
            except ray.exceptions.ActorDiedError as exc:
                raise LearnerGone(_first_line(exc)) from None
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError, LearnerLost) as exc:
                if time.monotonic() >= deadline:
                    raise LearnerGone(f"not back after {timeout:.0f} s ({_first_line(exc)})") from None
                time.sleep(0.5)

    def service_stats(self) -> dict:
        try:
            return merge_service_stats(_get([s.stats.remote() for s in self.service]))
        except ray.exceptions.RayActorError as exc:
            raise ServiceLost(_first_line(exc)) from exc

    @property
    def can_evaluate(self) -> bool:
        return self.evaluator is not None

    def start_evaluation(self):
        return self.evaluator.evaluate.remote()

    def evaluation_result(self, pending, timeout: float) -> dict | None:
        """The evaluation's metrics once it has finished within `timeout` seconds, else None."""
        ready, _ = ray.wait([pending], timeout=timeout)
        return _get(pending) if ready else None


def _get(ref):
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        _raise_cause(exc)


def _raise_cause(exc: ray.exceptions.RayTaskError):
    """The exception the task itself raised, chained to Ray's wrapper (which is raised when the
    cause is no Exception)."""
    if isinstance(exc.cause, Exception):
        raise exc.cause from exc
    raise exc


def _learner_get(ref):
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # raised by the code inside the learner
        if isinstance(exc.cause, ray.exceptions.RayActorError):  # an actor it called died
            raise ServiceLost(_first_line(exc.cause)) from exc
        _raise_cause(exc)
    except ray.exceptions.RayActorError as exc:  # the learner's own process died
        raise LearnerLost(_first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


class TrainingLoop:
    def __init__(self, cfg, run_dir, roles: RayRoles, sink, episodes, console, stop,
                 static_metrics: dict | None = None, learner_restarts: int = 0):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.roles, self.health = roles, roles.health
        self.sink, self.episodes, self.console = sink, episodes, console
        self.stop = stop  # .signal_name is set once SIGINT/SIGTERM/SIGHUP arrives
        self.static_metrics = static_metrics or {}  # facts of the start, repeated in every row
        self.learner_restarts = learner_restarts  # from a checkpoint: resumes and Ray's restarts
        self.restarts_in_run = 0  # Ray's restarts of this driver's learner
        self.updates_lost = 0  # seen updates past the checkpoint each restart went back to
        self.service_lost = False  # a queue/replay shard died: rows go without its stats
        self._silent_since: float | None = None  # when every actor stopped answering
        self.status_failures = 0  # status.json writes that failed (counted, reported once each)
        self.checkpoints: CheckpointSchedule | None = None
        self._eval_pending = None  # an evaluation of the newest policy every run.eval_every updates
        self._eval_at = 0
        self._eval_metrics: dict = {}

    def run(self) -> RunResult:
        cfg = self.cfg
        counters = self.roles.counters()
        self.console.start(cfg.run.total_frames, counters["frames"])
        start = last_log = time.monotonic()
        existing = list_checkpoints(self.run_dir)  # a resumed run starts from the newest
        self.checkpoints = CheckpointSchedule(cfg.run, self._save, self.console.log,
                                              counters["updates"], start,
                                              newest=str(existing[-1]) if existing else None)
        last_frames, last_updates = counters["frames"], counters["updates"]
        chunk_metrics: dict = {}
        reason, code = "finished", EXIT_OK
        learner_alive = True
        try:
            while counters["frames"] < cfg.run.total_frames:
                if self.stop.signal_name:
                    reason = f"interrupted by {self.stop.signal_name}"
                    break
                if cfg.run.max_seconds and time.monotonic() - start >= cfg.run.max_seconds:
                    reason = "time limit"
                    break
                if self._fleet_dead():
                    reason, code = (f"no rollout actor has answered for {FLEET_DEAD_SECONDS:.0f} s "
                                    f"(restarts used up? see the actor tracebacks above)"), EXIT_FAILED
                    break
                try:
                    chunk = self.roles.train(max_updates=self._chunk_updates(counters["updates"]),
                                             max_seconds=min(1.0, cfg.run.log_every))
                except LearnerLost as exc:
                    if self.stop.signal_name:  # the stop signal reached Ray's processes as well
                        learner_alive = False
                        reason, code = (f"interrupted by {self.stop.signal_name}; the learner died "
                                        f"before the final checkpoint ({exc})"), EXIT_FAILED
                        break
                    counters = self._learner_restarted(exc, counters)  # Ray restarts it
                    last_frames, last_updates = counters["frames"], counters["updates"]
                    continue
                counters, chunk_metrics = chunk["counters"], chunk["metrics"]
                self.episodes.add(chunk["episodes"])
                if self._reached_stop_return():
                    reason = f"every task reached mean return {cfg.run.stop_return}"
                    break
                self._poll_eval(counters["updates"])
                now = time.monotonic()
                if self.checkpoints.due(counters["updates"], now):
                    self._checkpoint(counters, now)
                    if self.checkpoints.given_up(now):
                        reason, code = (f"no checkpoint could be written for "
                                        f"{now - self.checkpoints.failing_since:.0f} s "
                                        f"({self.checkpoints.failures} failed; last: "
                                        f"{self.checkpoints.last_error})"), EXIT_FAILED
                        break
                if now - last_log >= cfg.run.log_every:
                    self._log(counters, chunk_metrics, now - last_log,
                              counters["frames"] - last_frames, counters["updates"] - last_updates)
                    last_log, last_frames, last_updates = now, counters["frames"], counters["updates"]
        except NonFiniteLossError as exc:
            reason, code = f"diverged: {exc}", EXIT_DIVERGED
        except ServiceLost as exc:
            self.service_lost = True
            reason, code = (f"a service actor died ({exc}); nothing is left to train on"
                            + ("; the replay is kept in Redis for --resume"
                               if cfg.learner.algorithm == "sac" and cfg.replay.backend == "redis" else "")
                            ), EXIT_FAILED
        except (LearnerLost, LearnerGone) as exc:  # no restart left, or a death while saving
            learner_alive = False
            reason, code = (f"the learner died ({exc}) and is not coming back after "
                            f"{self.restarts_in_run} restarts (learner.max_restarts: "
                            f"{cfg.learner.max_restarts}); its newest checkpoint holds the run"), EXIT_FAILED
        # Further signals would abort the checkpoint that makes the stop resumable.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
        try:
            if learner_alive:
                try:
                    counters = self.roles.counters()
                except LearnerLost as exc:  # e.g. the stop signal was sent to Ray's processes too
                    learner_alive = False
                    reason, code = (f"{reason}; the learner died before the final checkpoint "
                                    f"({exc})"), EXIT_FAILED
            if learner_alive:
                path = self._checkpoint(counters, time.monotonic())
                if path is None and code == EXIT_OK:
                    reason, code = f"{reason}; the final checkpoint could not be written", EXIT_FAILED
                self._final_eval()
            final_eval = dict(self._eval_metrics)
            # A row only for work (or an evaluation) not yet logged.
            if counters["updates"] > last_updates or self._eval_metrics:
                self._log(counters, chunk_metrics, max(time.monotonic() - last_log, 1e-9),
                          counters["frames"] - last_frames, counters["updates"] - last_updates)
            state = ("interrupted" if reason.startswith("interrupted") and code == EXIT_OK
                     else "finished" if code == EXIT_OK else "failed")
            # Chunks that ran past their seconds by more than their own updates (a wait that
            # was not bounded) are counted by the learner; the record keeps them.
            self._status(state, reason, counters, exit_code=code,
                         learner_chunks=counters.get("chunks"), late_chunks=counters.get("late_chunks"))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.console.close()
        path = self.checkpoints.newest
        returns = {n: self.episodes.mean_return(n) for n in cfg.env.tasks}
        self.console.log(f"{reason}: {counters['updates']} updates, {counters['frames']:,} frames; "
                         f"checkpoint {path}; returns {_fmt_returns(returns)}")
        if "eval/success_mean" in final_eval:
            self.console.log(f"evaluation: mean success rate {final_eval['eval/success_mean']:.2f} "
                             f"over {len(cfg.env.tasks)} tasks")
        if reason.startswith("interrupted") or code == EXIT_FAILED:
            self.console.log(f"resume with: accord train --resume {self.run_dir}")
        return RunResult(self.run_dir, code, reason, counters, returns, path)

    def _learner_restarted(self, exc: LearnerLost, before: dict) -> dict:
        """The learner died during a chunk: wait for Ray's restart (`LearnerGone` past
        `learner.max_restarts`), count it, log what it went back to; its counters."""
        self.console.log(f"[red]the learner died: {exc}")
        if self.restarts_in_run >= self.cfg.learner.max_restarts:
            raise LearnerGone(str(exc))
        recovered = self.roles.restarted_learner()
        self.restarts_in_run += 1
        self.learner_restarts += 1
        lost = max(before["updates"] - recovered["updates"], 0)
        self.updates_lost += lost
        self.checkpoints.rewind(recovered["updates"])
        self.console.log(
            f"the learner restarted ({self.restarts_in_run} of learner.max_restarts "
            f"{self.cfg.learner.max_restarts}) from {recovered['checkpoint'] or 'its initial weights'} "
            f"at update {recovered['updates']}; the updates past it are lost (the driver had seen "
            f"update {before['updates']}: {lost} lost at least), and the actors resync")
        return {k: v for k, v in recovered.items() if k not in ("checkpoint", "corrupt_skipped")}

    @property
    def _evaluates(self) -> bool:
        """The run has an evaluator and run.eval_every asks for evaluations."""
        return self.roles.can_evaluate and bool(self.cfg.run.eval_every)

    def _chunk_updates(self, updates: int) -> int:
        """A chunk ends by run.checkpoint_every updates, and where the next evaluation is due:
        the chunk's end publishes its weights, so the evaluation plays the policy of that very
        update (every run.eval_every updates, as SB3's EvalCallback evaluates every eval_freq
        steps), not of wherever a second's chunk happened to end past it."""
        limit = self.cfg.run.checkpoint_every
        if self._evaluates:
            due_in = self._eval_at + self.cfg.run.eval_every - updates
            # Past the due update with the last evaluation still playing, the next one starts
            # when that one is back: the chunks go on at full length until then.
            if due_in > 0 or self._eval_pending is None:
                limit = min(limit, max(1, due_in))
        return limit

    def _poll_eval(self, updates: int) -> None:
        """Start an evaluation every run.eval_every updates (one at a time); collect a finished one."""
        if not self._evaluates:
            return
        if self._eval_pending is not None:
            result = self.roles.evaluation_result(self._eval_pending, timeout=0)
            if result is not None:
                self._eval_metrics.update(result)
                self._eval_pending = None
        if self._eval_pending is None and updates - self._eval_at >= self.cfg.run.eval_every:
            self._eval_pending = self.roles.start_evaluation()
            self._eval_at = updates

    def _final_eval(self) -> None:
        """The end of a run is evaluated too, so the last row says how well it ended."""
        if not self._evaluates:
            return
        pending = self._eval_pending or self.roles.start_evaluation()
        self._eval_pending = None
        result = self.roles.evaluation_result(pending, timeout=600)
        if result is not None:
            self._eval_metrics.update(result)
        else:
            self.console.log("[yellow]the final evaluation did not finish within 600 s; skipped")

    def _fleet_dead(self) -> bool:
        """True once every actor has been unreachable for FLEET_DEAD_SECONDS (checked at log
        ticks); a restarting actor answers again within seconds."""
        if not self.health.all_unreachable:
            self._silent_since = None
            return False
        now = time.monotonic()
        self._silent_since = self._silent_since or now
        return now - self._silent_since >= FLEET_DEAD_SECONDS

    def _reached_stop_return(self) -> bool:
        target = self.cfg.run.stop_return
        if target is None:
            return False
        # A full window, so that a few lucky first episodes do not end the run.
        window = self.episodes.scores[self.cfg.env.tasks[0]].maxlen
        returns = [self.episodes.mean_return(n, min_episodes=window) for n in self.cfg.env.tasks]
        return all(r is not None and r >= target for r in returns)

    def _save(self) -> str:
        return self.roles.save(str(self.run_dir), self.cfg.run.keep_checkpoints)

    def _checkpoint(self, counters: dict, now: float) -> str | None:
        """Write a checkpoint (a failure is counted and reported, not raised) and record it."""
        path = self.checkpoints.write(counters["updates"], now)
        self._status("running", "training", counters)
        return path

    def _status(self, state: str, reason: str, counters: dict, **facts) -> None:
        try:
            write_status(self.run_dir, state, reason, updates=counters["updates"],
                         frames=counters["frames"], checkpoint=self.checkpoints.newest,
                         checkpoint_failures=self.checkpoints.failures,
                         last_checkpoint_error=self.checkpoints.last_error, **facts)
        except OSError as exc:
            self.status_failures += 1
            self.console.log(f"[red]could not write {self.run_dir}/status.json "
                             f"({self.status_failures} failed so far): {exc}")

    def _log(self, counters, chunk_metrics, seconds, frames, updates) -> None:
        fetches_before = self.health.weight_fetches
        self.health.poll()
        # The weights the fleet pulled since the last row: every fetch is one published copy.
        fleet_bytes = (self.health.weight_fetches - fetches_before) * counters.get("publish_bytes", 0)
        for line in self.health.news():
            self.console.log(f"[yellow]{line}")
        service_stats = {} if self.service_lost else self.roles.service_stats()
        eval_metrics, self._eval_metrics = self._eval_metrics, {}  # each evaluation in one row
        row = {
            **chunk_metrics, **service_stats, **self.health.metrics(), **self.episodes.metrics(),
            **eval_metrics, **self.checkpoints.metrics(), "run/status_write_failures": float(self.status_failures),
            **self.static_metrics, "learner/restarts": float(self.learner_restarts),
            "learner/updates_lost": float(self.updates_lost),
            "frames": counters["frames"], "updates": counters["updates"],
            "fps": frames / seconds, "updates_per_s": updates / seconds,
            "weights/fleet_bytes_per_s": fleet_bytes / seconds,
        }
        self.sink.write(counters["frames"], row)
        returns = {n: self.episodes.mean_return(n) for n in self.cfg.env.tasks}
        if "queue/depth" in service_stats:
            fill = f"queue {service_stats['queue/depth']:.0f}/{service_stats['queue/capacity']:.0f}"
        else:
            fill = f"replay {service_stats.get('replay/size', 0):,.0f}"
        self.console.update(counters["frames"], (
            f"{row['fps']:,.0f} fps | {row['updates_per_s']:.1f} upd/s | {fill} | lag "
            f"{chunk_metrics.get('learner/lag_mean', 0):.1f} | return {_fmt_returns(returns)}"))


def merge_service_stats(per_shard: list[dict[str, float]]) -> dict[str, float]:
    """One row for all shards: counts and sizes add up; a ratio is recomputed from the sums."""
    merged: dict[str, float] = {}
    for stats in per_shard:
        for key, value in stats.items():
            merged[key] = merged.get(key, 0.0) + value
    if "replay/samples_per_insert" in merged:
        merged["replay/samples_per_insert"] = (
            merged.get("replay/sampled", 0.0) / max(merged.get("replay/inserted", 0.0), 1.0))
    return merged


def _fmt_returns(returns: dict) -> str:
    return ", ".join(f"{n} {'-' if r is None else f'{r:.1f}'}" for n, r in returns.items())
