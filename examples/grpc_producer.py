"""A producer outside Ray: steps gymnasium envs of a run's tasks with random actions and streams
the transitions into the running SAC run over gRPC (ingest/client.py).

    .venv/bin/accord train configs/point_goal_sac.yaml --set replay.grpc.port=50051 &
    .venv/bin/python examples/grpc_producer.py --run-dir runs/point-goal-sac-<stamp> --steps 500

The run directory gives the address (RUN_DIR/ingest_address) and the token (RUN_DIR/ingest_token,
or $ACCORD_INGEST_TOKEN when the run was given one); --target and --token-file override them.
Actions are drawn in [-1, 1]^A, the range the run exchanges, and rescaled to each env's own
bounds before stepping. Prints one JSON line at the end: the rows the server acknowledged per task.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import grpc
import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers accord's own gymnasium tasks, e.g. PointGoal-*)
from ingest.client import IngestClient


class TaskEnvs:
    """M envs of one task, stepped one after another; rows are step-major like the actors'."""

    def __init__(self, name: str, task_id: int, num_envs: int, seed: int):
        self.task_id = task_id
        self.envs = [gym.make(name) for _ in range(num_envs)]
        self.obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(self.envs)])
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, dtype=np.int64)
        space = self.envs[0].action_space
        self.low, self.high = space.low.astype(np.float64), space.high.astype(np.float64)

    def step(self, actions: np.ndarray) -> dict:
        rows = {k: [] for k in ("obs", "action", "reward", "next_obs", "terminated", "truncated")}
        episodes = []
        for i, (env, action) in enumerate(zip(self.envs, actions)):
            scaled = self.low + (action + 1.0) * 0.5 * (self.high - self.low)
            next_obs, reward, terminated, truncated, info = env.step(scaled.astype(env.action_space.dtype))
            for k, v in zip(rows, (self.obs[i].copy(), action, reward, next_obs, terminated, truncated)):
                rows[k].append(v)
            self.returns[i] += reward
            self.lengths[i] += 1
            if terminated or truncated:
                episodes.append((self.task_id, self.returns[i], self.lengths[i],
                                 float(info["success"]) if "success" in info else np.nan))
                self.returns[i], self.lengths[i] = 0.0, 0
                next_obs, _ = env.reset()
            self.obs[i] = next_obs
        return {k: np.asarray(v) for k, v in rows.items()} | {"episodes": episodes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="the run to feed (its ingest_address and ingest_token)")
    parser.add_argument("--target", help="host:port of the ingestion server")
    parser.add_argument("--token-file", type=Path, help="file holding the bearer token")
    parser.add_argument("--tls-ca", type=Path, help="PEM certificate that signed the server's (TLS servers)")
    parser.add_argument("--tasks", nargs="+", help="task names of the run to feed (default: all of them; a run without rollout "
                             "actors samples only once every task holds replay.learning_starts rows)")
    parser.add_argument("--steps", type=int, default=1000, help="steps of each env (rows per task: steps x envs)")
    parser.add_argument("--envs", type=int, default=4, help="envs per task")
    parser.add_argument("--chunk-steps", type=int, default=25, help="steps of every env per chunk")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.run_dir is None and (args.target is None or args.token_file is None):
        parser.error("give --run-dir, or --target and --token-file")
    target = args.target or (args.run_dir / "ingest_address").read_text().strip()
    token_file = args.token_file or args.run_dir / "ingest_token"
    root = args.tls_ca.read_bytes() if args.tls_ca else None
    client = IngestClient(target, token_file.read_text().strip(), root_certificates=root)
    try:
        return _produce(args, client)
    except grpc.RpcError as exc:  # the run ended, or refused a chunk: say which, no traceback
        print(f"{target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()


def _produce(args, client: IngestClient) -> int:
    spec = client.describe(timeout=60)
    names = args.tasks or list(spec.tasks)
    unknown = [n for n in names if n not in spec.tasks]
    if unknown:
        print(f"--tasks: {unknown} are not tasks of this run ({list(spec.tasks)})", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    tasks = [TaskEnvs(n, list(spec.tasks).index(n), args.envs, args.seed + 1000 * k) for k, n in enumerate(names)]
    acked = {n: 0 for n in names}
    start, steps = time.monotonic(), 0
    while steps < args.steps:
        t_chunk = min(args.chunk_steps, args.steps - steps)
        for name, task in zip(names, tasks):
            parts = [task.step(rng.uniform(-1, 1, (args.envs, spec.action_dim))) for _ in range(t_chunk)]
            rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "episodes"}
            episodes = [e for p in parts for e in p["episodes"]]
            acked[name] += client.send(np.full(len(rows["reward"]), task.task_id), rows["obs"],
                                       rows["action"], rows["reward"], rows["next_obs"],
                                       rows["terminated"], rows["truncated"],
                                       episodes=np.asarray(episodes, dtype=np.float64).reshape(-1, 4))
        steps += t_chunk
    seconds = time.monotonic() - start
    print(json.dumps({"acked": acked, "seconds": round(seconds, 2),
                      "rows_per_s": round(sum(acked.values()) / seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
