"""accord's SAC against Stable-Baselines3's SAC on Pendulum-v1, both from their defaults, on the
same machine, one after the other in one run (issue 18, item 5).

Each side trains until its deterministic policy's mean return over 5 evaluation episodes first
reaches -200, evaluated every E env steps past learning starts, or until the limit (seconds
from the start of its process, or env steps); a side past it is reported as not reached.
Reported for each: env steps and wall seconds to -200, the last evaluation's return, and
accord / SB3. Once learning starts, SB3 makes one update per env step and accord
`learner.sac.updates_per_step` (r); evaluating SB3 at every E-th update and accord at every
(r x E)-th puts both sides' evaluations on one grid of env steps (every E past learning
starts), so neither side is looked at more often.

- accord: `accord train configs/pendulum_defaults.yaml` in its own process, only `run.*`
  settings added (evaluation cadence, seed, limits, run directory, a row a second). Its
  evaluator plays the policy of every `run.eval_every`-th update (r x E); at the config's ratio
  of r updates per env step (replay.samples_per_insert: auto) that is every E env steps. An
  evaluation's env steps are those of the moment its policy was published: the
  version it reports is an update count, mapped to env steps through the (updates, frames) of
  the metric rows. Its seconds are the `wall_time` of the row that carries it (written within
  a second of the result), plus the time from the process start to the metrics clock's zero,
  so Ray's start-up and the actors' creation count.
- SB3: `SAC("MlpPolicy", "Pendulum-v1")` with its defaults and one torch thread, in a separate
  Python that has stable-baselines3 (never a dependency of this project), running this file
  as a script; a callback evaluates (SB3's `evaluate_policy`, 5 deterministic episodes) once
  its update count reaches each multiple of E, and each result is printed as one line, timed
  when it arrives here. (SB3's `EvalCallback` counts env steps, which run ahead of its updates
  by learning_starts: on it, SB3's evaluations fell 100 env steps earlier than accord's.)

    accord bench pendulum [--eval-every 500] [--limit 300] [--max-steps 30000] [--seed 0]
                          [--sb3-python /tmp/sb3/bin/python] [--set learner.bf16=true ...]

`--set` changes accord's side only (a variant of its defaults against the same SB3); the bench
sets `run.*` itself.

The module imports only the standard library at the top: the SB3 side runs it in a Python
that has no accord.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "pendulum_defaults.yaml"
TARGET = -200.0
EPISODES = 5
DEFAULT_SB3_PYTHON = Path("/tmp/sb3/bin/python")
SB3_VENV_HINT = ("python3 -m venv /tmp/sb3 && /tmp/sb3/bin/pip install torch==2.13.0 "
                 "stable-baselines3 gymnasium==1.2.2")
POLL_SECONDS = 0.2
SB3_LINE = re.compile(r"^sb3-eval steps=(\d+) updates=(\d+) return=(\S+)$")


@dataclass(frozen=True)
class Evaluation:
    steps: float          # env steps behind the evaluated policy
    seconds: float        # since the start of the side's process
    mean_return: float
    updates: float | None = None


@dataclass
class Side:
    name: str
    evaluations: list[Evaluation]
    end_steps: float      # how far the side got, for a lower bound when it did not reach
    end_seconds: float
    note: str = ""

    @property
    def reached(self) -> Evaluation | None:
        return first_reaching(self.evaluations, TARGET)


def first_reaching(evaluations: list[Evaluation], target: float) -> Evaluation | None:
    """The earliest evaluation (in env steps) whose mean return is at least `target`."""
    hits = [e for e in evaluations if e.mean_return >= target]
    return min(hits, key=lambda e: e.steps) if hits else None


# ---- Stable-Baselines3 ---------------------------------------------------------------------

def parse_sb3_line(line: str) -> tuple[int, int, float] | None:
    """(env steps, updates, mean return) from one line of the SB3 process; None for others."""
    match = SB3_LINE.match(line.strip())
    if match is None:
        return None
    return int(match[1]), int(match[2]), float(match[3])


def sb3_child(eval_every: int, limit: float, max_steps: int, seed: int) -> None:
    """Runs in the SB3 Python: SB3's SAC with its defaults, as the issue's figure was measured."""
    start = time.monotonic()  # the limit counts the imports too, as accord's counts Ray's start
    import gymnasium as gym
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    torch.set_num_threads(1)
    eval_env = DummyVecEnv([lambda: Monitor(gym.make("Pendulum-v1"))])
    eval_env.seed(seed + 10_000)

    class EvaluateEveryUpdates(BaseCallback):
        """At each multiple of `eval_every` updates: one evaluation, one line, and a stop once
        the target is reached."""

        def __init__(self):
            super().__init__()
            self.next_at = eval_every

        def _on_step(self) -> bool:
            if self.model._n_updates < self.next_at:
                return True
            self.next_at += eval_every
            mean_return, _ = evaluate_policy(self.model, eval_env, n_eval_episodes=EPISODES,
                                             deterministic=True)
            print(f"sb3-eval steps={self.num_timesteps} updates={self.model._n_updates} "
                  f"return={mean_return:.3f}", flush=True)
            return mean_return < TARGET

    class TimeLimit(BaseCallback):
        def _on_step(self) -> bool:
            return time.monotonic() - start < limit

    model = SAC("MlpPolicy", "Pendulum-v1", seed=seed)
    model.learn(total_timesteps=max_steps, callback=CallbackList([EvaluateEveryUpdates(), TimeLimit()]))
    print(f"sb3-done steps={model.num_timesteps}", flush=True)


def run_sb3(python: Path, eval_every: int, limit: float, max_steps: int, seed: int) -> Side:
    cmd = [str(python), str(Path(__file__).resolve()), "--sb3-child", "--eval-every",
           str(eval_every), "--limit", str(limit), "--max-steps", str(max_steps), "--seed", str(seed)]
    evaluations: list[Evaluation] = []
    steps = 0.0
    with tempfile.TemporaryFile("w+") as err:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        for line in proc.stdout:
            parsed = parse_sb3_line(line)
            if parsed is not None:
                steps = parsed[0]
                evaluations.append(Evaluation(parsed[0], time.monotonic() - start, parsed[2], parsed[1]))
        code = proc.wait()
        seconds = time.monotonic() - start
        if code != 0:
            err.seek(0)
            raise RuntimeError(f"the SB3 process failed ({code}): {err.read()[-1500:]}")
    return Side("SB3 SAC", evaluations, steps, seconds)


# ---- accord ----------------------------------------------------------------------------------

def csv_rows(text: str) -> list[dict]:
    """The complete rows of a metrics.csv that may be being appended to (a last line without
    its newline is still being written)."""
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return list(csv.DictReader(io.StringIO(text)))


def steps_at_update(rows: list[dict], update: float) -> float:
    """Env steps when the learner had made `update` updates, interpolated between metric rows;
    before the first row, that row's (an over-estimate, never an under-estimate)."""
    points = [(float(r["updates"]), float(r["frames"])) for r in rows if r.get("updates")]
    for (u0, f0), (u1, f1) in zip(points, points[1:]):
        if u0 <= update <= u1:
            return f0 if u1 == u0 else f0 + (f1 - f0) * (update - u0) / (u1 - u0)
    return points[0][1] if update < points[0][0] else points[-1][1]


def accord_evaluations(rows: list[dict], clock_zero: float) -> list[Evaluation]:
    """The periodic evaluations in metric rows; `clock_zero`: the process's age when the rows'
    `wall_time` clock started."""
    column = next((k for k in rows[0] if k.startswith("eval/return/")), None) if rows else None
    if column is None:
        return []
    return [Evaluation(steps_at_update(rows, float(r["eval/version"])),
                       clock_zero + float(r["wall_time"]), float(r[column]),
                       float(r["eval/version"]))
            for r in rows if r.get(column)]


def accord_eval_every(eval_every: int, sets: tuple[str, ...] = ()) -> int:
    """accord's `run.eval_every` (updates) for an evaluation every `eval_every` env steps past
    learning starts, at the config's updates per env step."""
    from accord.config import load_config  # not at the top: the SB3 side has no accord

    cfg = load_config(CONFIG, list(sets))
    sac = cfg.learner.sac
    updates = eval_every * sac.updates_per_step
    if cfg.replay.samples_per_insert != sac.batch_per_task * sac.updates_per_step \
            or updates != int(updates):
        raise ValueError(f"{CONFIG.name}: the bench needs replay.samples_per_insert auto and a whole "
                         f"number of updates per {eval_every} env steps; got "
                         f"samples_per_insert {cfg.replay.samples_per_insert}, {updates} updates")
    return int(updates)


def accord_command(root: str, eval_every: int, limit: float, max_steps: int, seed: int,
                   sets: tuple[str, ...] = ()) -> list[str]:
    """`accord train` of the config with the caller's `sets`, then the bench's `run.*` (later
    overrides win, so the bench's own settings stand)."""
    cmd = [sys.executable, "-m", "accord.cli", "train", str(CONFIG)]
    for item in (*sets, f"run.root={root}", f"run.eval_every={accord_eval_every(eval_every, sets)}",
                 f"run.eval_episodes={EPISODES}", f"run.seed={seed}",
                 f"run.max_seconds={limit}", f"run.total_frames={max_steps}",
                 "run.log_every=1", "run.progress=false"):
        cmd += ["--set", item]
    return cmd


def run_accord(eval_every: int, limit: float, max_steps: int, seed: int,
               sets: tuple[str, ...] = ()) -> Side:
    with tempfile.TemporaryDirectory() as root:
        cmd = accord_command(root, eval_every, limit, max_steps, seed, sets)
        # The worktree's code, in the driver and in Ray's workers, whatever is installed.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        with tempfile.TemporaryFile("w+") as log:
            start = time.monotonic()
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            rows, clock_zero, stopping = [], float("inf"), False
            while proc.poll() is None:
                time.sleep(POLL_SECONDS)
                age = time.monotonic() - start
                rows = _read_rows(Path(root))
                if rows:  # the least delay seen between a row's clock and its arrival here
                    clock_zero = min(clock_zero, age - float(rows[-1]["wall_time"]))
                reached = first_reaching(accord_evaluations(rows, clock_zero), TARGET)
                if not stopping and (reached is not None or age >= limit):
                    proc.send_signal(signal.SIGINT)  # checkpoints, evaluates once more, exits
                    stopping = True
            seconds = time.monotonic() - start
            rows = _read_rows(Path(root))
            # Stopped at the limit before its training loop began, a run may leave no rows and
            # no clean exit (a signal during Ray's start-up); that is "not reached", not a failure.
            if not stopping and (proc.returncode != 0 or not rows):
                log.seek(0)
                raise RuntimeError(f"accord train failed ({proc.returncode}): {log.read()[-1500:]}")
    if not rows:
        return Side("accord SAC", [], 0.0, seconds, "no metrics row before the limit")
    last = rows[-1]
    note = (f"{float(last['updates']):,.0f} updates at {float(last['frames']):,.0f} env steps, "
            f"metrics clock started {clock_zero:.1f} s after the process")
    return Side("accord SAC", accord_evaluations(rows, clock_zero), float(last["frames"]),
                seconds, note)


def _read_rows(root: Path) -> list[dict]:
    found = list(root.glob("*/metrics.csv"))
    return csv_rows(found[0].read_text()) if found else []


# ---- report ----------------------------------------------------------------------------------

def ratio(accord: Side, sb3: Side, field: str) -> str:
    """accord / SB3 of steps or seconds to the target; '> x' when only SB3 reached it (x from
    how far accord got), '-' when SB3 did not."""
    a, b = accord.reached, sb3.reached
    if b is None:
        return "-"
    if a is not None:
        return f"{getattr(a, field) / getattr(b, field):.2f}"
    end = accord.end_steps if field == "steps" else accord.end_seconds
    return f"> {end / getattr(b, field):.2f}"


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(eval_every: int = 500, limit: float = 300.0, max_steps: int = 30_000, seed: int = 0,
         sb3_python: Path | None = None, sets: tuple[str, ...] = ()) -> dict[str, Side]:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    sb3_python = sb3_python or DEFAULT_SB3_PYTHON
    sides: dict[str, Side] = {}
    if sb3_python.is_file():
        console.print(f"SB3 SAC ({sb3_python}), {_load()} ...")
        sides["sb3"] = run_sb3(sb3_python, eval_every, limit, max_steps, seed)
    else:
        console.print(f"SB3 side skipped: no {sb3_python}; make it with: {SB3_VENV_HINT}")
    variant = "".join(f" --set {item}" for item in sets)
    console.print(f"accord SAC ({CONFIG.relative_to(REPO)}{variant}), {_load()} ...")
    sides["accord"] = run_accord(eval_every, limit, max_steps, seed, tuple(sets))
    console.print(f"done, {_load()}")

    table = Table(title=f"Pendulum-v1 to a mean return of {TARGET:.0f} (deterministic, "
                        f"{EPISODES} episodes every {eval_every} env steps; limit {limit:.0f} s "
                        f"or {max_steps:,} env steps; seed {seed}{'; accord' + variant if sets else ''})")
    for col in ("method", "env steps to -200", "seconds to -200", "updates then",
                "return then", "final eval return"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for side in sides.values():
        hit, last = side.reached, side.evaluations[-1] if side.evaluations else None
        table.add_row(side.name, f"{hit.steps:,.0f}" if hit else "not reached",
                      f"{hit.seconds:.1f}" if hit else "not reached",
                      f"{hit.updates:,.0f}" if hit and hit.updates is not None else "-",
                      f"{hit.mean_return:.1f}" if hit else "-",
                      f"{last.mean_return:.1f}" if last else "-")
    if "sb3" in sides:
        table.add_row("accord / SB3", ratio(sides["accord"], sides["sb3"], "steps"),
                      ratio(sides["accord"], sides["sb3"], "seconds"), "", "", "")
    console.print(table)
    for side in sides.values():  # one 5-episode mean is noisy: the whole course, to judge it
        console.print(f"{side.name} evaluations (env steps: return): " + ", ".join(
            f"{e.steps:,.0f}: {e.mean_return:.0f}" for e in side.evaluations))
    console.print(f"accord: {sides['accord'].note}")
    return sides


if __name__ == "__main__":  # the SB3 side: this file run by the Python that has stable-baselines3
    parser = argparse.ArgumentParser()
    parser.add_argument("--sb3-child", action="store_true", required=True)
    parser.add_argument("--eval-every", type=int, required=True)
    parser.add_argument("--limit", type=float, required=True)
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    sb3_child(args.eval_every, args.limit, args.max_steps, args.seed)
