"""The cluster of deploy/cluster.yaml rehearsed on one machine: a head and N worker nodes as
local Ray processes on 127.0.0.1, made from the same node types, resources, file mounts and setup
scripts that `ray up` uses on the cloud.

    python deploy/rehearse.py up DIR [--workers 2] [--head-cpus 2] [--worker-cpus 2]
    python deploy/rehearse.py kill-node DIR worker-1      # a node lost: its processes killed
    python deploy/rehearse.py down DIR

What `up` does, in `ray up`'s order, for each node (its own home under DIR/nodes/<name>):
  1. file_mounts: each `~/...` target becomes a link to the checkout's path (a copy for single
     files, so the token's mode can change), the caller's ~/.ray/auth_token included;
  2. setup: every line of setup_commands (and head_setup_commands on the head) that runs a
     script under deploy/setup/, run for real with HOME set to the node's home. Lines that
     reach a cloud provider's API are listed as not rehearsed. The Python running this script
     plays ~/accord-venv (ACCORD_VENV), so node.sh finds accord installed and skips the install;
  3. `ray start` under the node's ~/.bashrc (which node.sh wrote), handed the node type's
     resources and labels the way Ray's cluster launcher hands them (RAY_OVERRIDE_RESOURCES,
     RAY_OVERRIDE_LABELS), with CPUs scaled to this machine and no GPU where it has none;
then Prometheus on the head with deploy/monitoring/prometheus.yml, as the head's start commands
run it. Ports are free ones on 127.0.0.1 (the cloud's fixed ones may be taken here). `up`
returns once every node has joined; DIR/cluster.json then says where everything is.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout: accord's monitor helpers

from accord.monitor import RAY_SD_FILE, SHIPPED_CONFIG, adapted_config, prometheus_command  # noqa: E402

CLUSTER_YAML = REPO / "deploy" / "cluster.yaml"
SETUP_SCRIPTS = "deploy/setup/"
OBJECT_STORE_BYTES = 150 * 1024 ** 2  # per node: a rehearsal moves little data
JOIN_TIMEOUT = 180.0
START_ATTEMPTS = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_types(cluster: dict, workers: int) -> list[tuple[str, str, dict]]:
    """(node name, node type, its config) for the head and `workers` workers; workers take the
    first worker type (the shape of deploy/cluster.yaml: one head type, one worker type)."""
    types = cluster["available_node_types"]
    head_type = cluster["head_node_type"]
    worker_type = next(t for t in types if t != head_type)
    return [("head", head_type, types[head_type])] + [
        (f"worker-{i}", worker_type, types[worker_type]) for i in range(1, workers + 1)]


def scaled_resources(resources: dict, cpus: int, gpus: int) -> dict:
    """The node type's resources with CPUs scaled to this machine and GPUs to what it has;
    custom resources stay as the config gives them."""
    out = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
    out["CPU"] = cpus
    if gpus and resources.get("GPU"):
        out["GPU"] = min(gpus, resources["GPU"])
    return out


def mount_files(cluster: dict, home: Path) -> None:
    """file_mounts into a node's home: directories linked, single files copied."""
    for remote, local in cluster["file_mounts"].items():
        if not remote.startswith("~/"):
            raise SystemExit(f"file_mounts: {remote!r} is not under ~/, which the rehearsal maps")
        source = Path(os.path.expanduser(local)) if local.startswith("~") else REPO / local
        target = home / remote[2:]
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            target.symlink_to(source.resolve(), target_is_directory=True)
        else:
            shutil.copy2(source, target)


def setup_lines(cluster: dict, head: bool) -> tuple[list[str], list[str]]:
    """(lines the rehearsal runs, lines it leaves to the cloud) of a node's setup."""
    lines = list(cluster.get("setup_commands", []))
    lines += cluster.get("head_setup_commands" if head else "worker_setup_commands", [])
    run = [line for line in lines if SETUP_SCRIPTS in line]
    return run, [line for line in lines if SETUP_SCRIPTS not in line]


def run_setup(lines: list[str], env: dict, log: Path) -> None:
    with open(log, "a") as out:
        for line in lines:
            out.write(f"$ {line}\n")
            out.flush()
            done = subprocess.run(["bash", "-c", line], env=env, stdout=out, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                raise SystemExit(f"setup failed ({done.returncode}): {line}; see {log}")


def start_node(name: str, node_type: dict, cpus: int, gpus: int, env: dict, args: list[str],
               log: Path) -> subprocess.Popen:
    """`ray start --block` in a new session (so `down` and `kill-node` find its tree), after
    ~/.bashrc as Ray's launcher runs start commands."""
    env = {**env, "RAY_OVERRIDE_RESOURCES": json.dumps(scaled_resources(node_type["resources"], cpus, gpus)),
           # plus one label naming the rehearsal's node, so `kill-node` targets can be looked up
           "RAY_OVERRIDE_LABELS": json.dumps({**node_type.get("labels", {}), "rehearsal-node": name})}
    command = "source ~/.bashrc && exec ray start --block " + " ".join(args)
    with open(log, "a") as out:
        return subprocess.Popen(["bash", "-c", command], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


class NodeStartFailed(Exception):
    """A node's `ray start` exited before the node joined."""


def wait_for_nodes(dashboard: str, token: str, count: int, started: dict[str, subprocess.Popen],
                   state_dir: Path) -> list[dict]:
    deadline = time.monotonic() + JOIN_TIMEOUT
    while True:
        for name, process in started.items():
            if process.poll() is not None:
                tail = (state_dir / f"{name}.log").read_text().strip().splitlines()[-3:]
                raise NodeStartFailed(f"{name}: `ray start` exited with {process.returncode}: " + " | ".join(tail))
        try:
            request = urllib.request.Request(f"{dashboard}/api/v0/nodes?limit=100",
                                             headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=10) as reply:
                nodes = json.load(reply)["data"]["result"]["result"]
            alive = [n for n in nodes if n["state"] == "ALIVE"]
            if len(alive) >= count:
                return alive
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the cluster did not reach {count} nodes within {JOIN_TIMEOUT:.0f} s")
        time.sleep(1)


def up(state_dir: Path, workers: int, head_cpus: int, worker_cpus: int, skip: str) -> dict:
    cluster = yaml.safe_load(CLUSTER_YAML.read_text())
    token_file = Path.home() / ".ray" / "auth_token"
    if not token_file.is_file():
        raise SystemExit(f"no token at {token_file}: `ray get-auth-token --generate` makes one")
    token = token_file.read_text().strip()
    gpus = 0  # no GPU claimed: the learner's placement rests on accord-head (accord/placement.py)
    state_dir.mkdir(parents=True, exist_ok=True)
    # Ray's socket paths must stay short, so its temp dir is under /tmp, not state_dir.
    temp_dir = tempfile.mkdtemp(prefix="rayr-", dir="/tmp")
    port, dashboard_port, prom_port = free_port(), free_port(), free_port()
    dashboard, prometheus = f"http://127.0.0.1:{dashboard_port}", f"http://127.0.0.1:{prom_port}"
    base_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    base_env.update({"ACCORD_VENV": sys.prefix, "ACCORD_SETUP_SKIP": skip,
                     # the head's start line exports these on the cloud (deploy/cluster.yaml)
                     "RAY_JOB_STOP_WAIT_TIME_S": "60", "RAY_PROMETHEUS_HOST": prometheus})
    state = {"gcs": f"127.0.0.1:{port}", "dashboard": dashboard, "prometheus": prometheus,
             "temp_dir": temp_dir, "nodes": {}, "not_rehearsed": []}
    started: dict[str, subprocess.Popen] = {}
    for name, type_name, node_type in node_types(cluster, workers):
        home = state_dir / "nodes" / name
        home.mkdir(parents=True)
        env = {**base_env, "HOME": str(home)}
        log = state_dir / f"{name}.log"
        mount_files(cluster, home)
        lines, left = setup_lines(cluster, head=name == "head")
        run_setup(lines, env, log)
        state["not_rehearsed"] += [line for line in left if line not in state["not_rehearsed"]]
        # Several nodes on one address: each needs its own agent and metrics ports.
        args = ["--node-ip-address=127.0.0.1", f"--object-store-memory={OBJECT_STORE_BYTES}",
                f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                "--disable-usage-stats"]
        if name == "head":
            args += ["--head", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
                     f"--temp-dir={temp_dir}"]
            cpus = head_cpus
        else:
            args += [f"--address=127.0.0.1:{port}"]
            cpus = worker_cpus
        # One node at a time: `ray start` gives its raylet a fixed 30 s to register, which
        # several nodes starting at once on a busy machine can miss. Such a miss is retried
        # (START_ATTEMPTS in all), each retry said and counted in cluster.json.
        for attempt in range(1, START_ATTEMPTS + 1):
            process = started[name] = start_node(name, node_type, cpus, gpus, env, args, log)
            state["nodes"][name] = {"pid": process.pid, "type": type_name, "home": str(home),
                                    "resources": node_type["resources"], "cpus": cpus}
            _save(state_dir, state)
            try:
                wait_for_nodes(dashboard, token, len(started), started, state_dir)
                break
            except NodeStartFailed as exc:
                if attempt == START_ATTEMPTS or "timed out during startup" not in str(exc):
                    raise SystemExit(str(exc)) from None
                state["start_retries"] = state.get("start_retries", 0) + 1
                print(f"{name}: {exc}; starting it once more", flush=True)
                _signal(_tree(process.pid), signal.SIGKILL)
    state["prometheus_pid"] = start_prometheus(state_dir, temp_dir, prom_port)
    _save(state_dir, state)
    return state


def start_prometheus(state_dir: Path, temp_dir: str, port: int) -> int:
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("no `prometheus` on PATH (deploy/setup/head.sh installs it)")
    data = state_dir / "prometheus"
    data.mkdir(exist_ok=True)
    config = data / "prometheus.yml"
    config.write_text(adapted_config(SHIPPED_CONFIG.read_text(), Path(temp_dir) / Path(RAY_SD_FILE).name))
    with open(state_dir / "prometheus.log", "a") as out:
        process = subprocess.Popen(prometheus_command(binary, config, data, port), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return process.pid


def _save(state_dir: Path, state: dict) -> None:
    (state_dir / "cluster.json").write_text(json.dumps(state, indent=1))


def load(state_dir: Path) -> dict:
    return json.loads((state_dir / "cluster.json").read_text())


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # the command name (field 2) may hold spaces: split after its closing parenthesis
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


def _tree(pid: int) -> set[int]:
    """A node's processes: the descendants of its `ray start` and everything in its session
    (started with a new session, so a worker that was re-parented still counts)."""
    table = _processes()
    found = {p for p, (_, session) in table.items() if session == pid}
    found |= {pid} if pid in table else set()
    grew = True
    while grew:
        more = {p for p, (parent, _) in table.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def _signal(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        alive = {p for p in pids if Path(f"/proc/{p}").exists()
                 and not (Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def kill_node(state_dir: Path, name: str) -> int:
    """SIGKILL every process of one node (its raylet, agents and workers), as when a machine
    is lost; returns how many were killed."""
    tree = _tree(load(state_dir)["nodes"][name]["pid"])
    _signal(tree, signal.SIGKILL)
    _wait_gone(tree, 30)
    return len(tree)


def down(state_dir: Path) -> None:
    """SIGTERM to Prometheus and to every node's `ray start --block` (workers first), which stops
    its node's processes; what is left after 30 s gets SIGKILL."""
    state = load(state_dir)
    roots = [state.get("prometheus_pid"), *[n["pid"] for n in reversed(list(state["nodes"].values()))]]
    everything: set[int] = set()
    for pid in filter(None, roots):
        everything |= _tree(pid)
        _signal({pid}, signal.SIGTERM)
    try:
        _signal(_wait_gone(everything, 30), signal.SIGKILL)
    except OSError:
        pass
    shutil.rmtree(state["temp_dir"], ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start the head and the workers")
    start.add_argument("dir", type=Path)
    start.add_argument("--workers", type=int, default=2)
    start.add_argument("--head-cpus", type=int, default=2)
    start.add_argument("--worker-cpus", type=int, default=2)
    start.add_argument("--skip", default="", help="ACCORD_SETUP_SKIP for deploy/setup/head.sh, e.g. grafana")
    lose = commands.add_parser("kill-node", help="kill every process of one node")
    lose.add_argument("dir", type=Path)
    lose.add_argument("node")
    stop = commands.add_parser("down", help="stop every node")
    stop.add_argument("dir", type=Path)
    args = parser.parse_args()
    if args.command == "up":
        state = up(args.dir, args.workers, args.head_cpus, args.worker_cpus, args.skip)
        print(f"up: {len(state['nodes'])} nodes; dashboard {state['dashboard']}, "
              f"Ray at {state['gcs']}, Prometheus {state['prometheus']}")
        for line in state["not_rehearsed"]:
            print(f"not rehearsed (needs the cloud): {line}")
    elif args.command == "kill-node":
        print(f"{args.node}: {kill_node(args.dir, args.node)} processes killed")
    else:
        down(args.dir)
        print("down")


if __name__ == "__main__":
    main()
