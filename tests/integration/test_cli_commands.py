"""Every command and subcommand of the real CLI, run once at its smallest size in a fresh
`python -m accord.cli`, so that a command no other test runs cannot break unnoticed (`accord
bench peer` once ended in a NameError before doing anything). Each must exit 0 without a
traceback and print what it exists to print; the numbers are not judged (seconds-long
benchmarks measure nothing worth comparing).

`test_every_command_has_a_case` reads the commands from the CLI itself, so a new command
fails until it is given a case here.

Cost: the commands start in a module-scoped fixture, two at a time (much of a command's time
is Ray, RLlib or torch starting up, which overlaps well; not more, since Ray gives a starting
node a fixed 30 s to register, which three at once missed on a machine already loaded eightfold);
`eval` and `plot` reuse the run that `train` wrote.
"""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.training_runs import cli_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 900  # a hang guard per command, never a speed requirement

# The smallest fleet the configs allow: one actor, two envs, one unroll per batch.
SMALL_FLEET = ("--set", "actors.num_actors=1", "--set", "env.envs_per_actor=2",
               "--set", "learner.batch_size=2")
CARTPOLE_FLEET = tuple(a.replace("--set", "--cartpole-set") for a in SMALL_FLEET)

# argv after `accord`; {tmp} is the module's directory. train, eval, plot and monitor have
# their own tests below.
BENCH = {
    "bench throughput": ("bench", "throughput", "--seconds", "1", *SMALL_FLEET),
    "bench combiners": ("bench", "combiners", "--tiny", "--case", "mtsac"),
    "bench sac": ("bench", "sac", "--quick"),
    "bench mt10": ("bench", "mt10", "--seconds", "1", "--set", "actors.num_actors=1",
                   "--set", "learner.sac.hidden=[16,16]", "--set", "learner.sac.batch_per_task=4",
                   "--set", "replay.learning_starts=4", "--set", "replay.capacity_per_task=1000"),
    "bench service": ("bench", "service", "--producers", "1", "--shards", "2", "--seconds", "1"),
    "bench peer": ("bench", "peer", "--seconds", "1", "--cartpole-limit", "1", *SMALL_FLEET,
                   *CARTPOLE_FLEET),
    "bench pendulum": ("bench", "pendulum", "--eval-every", "100", "--max-steps", "200",
                       "--limit", "90", "--set", "learner.bf16=true"),
}
# What each one prints once it has measured (the title of its table or a row of it).
BENCH_PRINTS = {
    "bench throughput": ("fleet",),
    "bench combiners": ("mtsac critic",),
    "bench sac": ("sac + pcgrad (task-split)",),
    "bench mt10": ("accord",),
    "bench service": ("inserts/s",),
    "bench peer": ("Breakout learner frames/s", "CartPole-v1 to mean return 150", "RLlib PPO"),
    "bench pendulum": ("Pendulum-v1 to a mean return of -200", "learner.bf16=true"),
}
TRAIN = ("train", "configs/cartpole.yaml", "--set", "run.root={tmp}/runs", *SMALL_FLEET,
         "--set", "run.total_frames=800", "--set", "run.log_every=0.5", "--set", "run.eval_every=5",
         "--set", "run.eval_episodes=1", "--set", "run.progress=false")


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _accord(tmp: Path, argv: tuple[str, ...]) -> Outcome:
    argv = tuple(a.replace("{tmp}", str(tmp)) for a in argv)
    try:
        proc = subprocess.run([sys.executable, "-m", "accord.cli", *argv], cwd=REPO, env=cli_env(),
                              capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:  # this command fails, the others still report
        return Outcome(-1, str(exc.stdout or ""), f"timed out after {TIMEOUT} s: {exc.stderr!r}")
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def _run_dir(tmp: Path) -> Path | None:
    runs = sorted((tmp / "runs").glob("cartpole-*")) if (tmp / "runs").exists() else []
    return runs[0] if runs else None


def _train_eval_plot(tmp: Path) -> dict[str, Outcome]:
    out = {"train": _accord(tmp, TRAIN)}
    run_dir = _run_dir(tmp)
    if out["train"].returncode == 0 and run_dir is not None:
        out["eval"] = _accord(tmp, ("eval", str(run_dir), "--episodes", "1"))
        out["plot"] = _accord(tmp, ("plot", str(run_dir), "--out", str(tmp / "plots")))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, Outcome]]:
    tmp = tmp_path_factory.mktemp("cli-commands")
    # The longest command first (bench peer: three RLlib algorithms built, about 90 s alone), so
    # that it is not the one left running alone at the end.
    longest = "bench peer"
    with ThreadPoolExecutor(max_workers=2) as pool:
        benches = {longest: pool.submit(_accord, tmp, BENCH[longest])}
        chain = pool.submit(_train_eval_plot, tmp)
        benches.update({name: pool.submit(_accord, tmp, argv) for name, argv in BENCH.items()
                        if name != longest})
        outcomes = {**chain.result(), **{name: f.result() for name, f in benches.items()}}
    return tmp, outcomes


def _ok(outcome: Outcome) -> None:
    assert outcome.returncode == 0, outcome.output[-4000:]
    assert "Traceback" not in outcome.output, outcome.output[-4000:]


def _command_paths(group, prefix: str = "") -> set[str]:
    found = set()
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if hasattr(command, "commands"):  # a group (typer carries its own copy of click's)
            found |= _command_paths(command, path + " ")
        else:
            found.add(path)
    return found


def test_every_command_has_a_case():
    import typer

    from accord.cli import app

    cli = typer.main.get_command(app)
    assert _command_paths(cli) == {"train", "eval", "plot", "monitor", *BENCH}


def test_train_writes_metrics_checkpoints_and_evaluations(runs):
    tmp, out = runs
    _ok(out["train"])
    assert "finished:" in out["train"].stdout
    run_dir = _run_dir(tmp)
    assert list((run_dir / "checkpoints").glob("ckpt_*.pt"))
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "return/CartPole-v1" in header and "eval/return/CartPole-v1" in header
    # The evaluator's log reaches the driver's: no "non-writable NumPy array" warning there.
    assert "not writable" not in out["train"].output


def test_eval_plays_the_runs_newest_checkpoint(runs):
    _, out = runs
    _ok(out["eval"])
    assert "Warning" not in out["eval"].stderr, out["eval"].stderr
    assert "CartPole-v1: mean return" in out["eval"].stdout and "over 1 episodes" in out["eval"].stdout


def test_plot_draws_the_run(runs):
    tmp, out = runs
    _ok(out["plot"])
    written = [Path(line) for line in out["plot"].stdout.splitlines() if line.endswith(".png")]
    assert written and all(p.parent == tmp / "plots" and p.stat().st_size > 0 for p in written)


@pytest.mark.parametrize("name", list(BENCH))
def test_bench(name, runs):
    _, out = runs
    _ok(out[name])
    for text in BENCH_PRINTS[name]:
        assert text in out[name].output, out[name].output[-4000:]


def test_bench_mt10_measures_after_the_fleet_is_up(runs):
    """Even a one-second window sees the learner updating: it starts once the learner has
    updated on the actors' rows (it once began at a fixed time and, on 2 cores, read 0
    updates/s and 0 env steps/s). Updates, not env steps: an actor's rows arrive a whole unroll
    of its envs at a time, which a loaded machine may not finish within one second."""
    _, out = runs
    row = re.search(r"learner updates/s[^│|]*[│|]\s*([\d,.]+)", out["bench mt10"].stdout)
    assert row, out["bench mt10"].output[-4000:]
    assert float(row.group(1).replace(",", "")) > 0, row.group(0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=5).status == 200
    except OSError:
        return False


def test_monitor_serves_prometheus_until_ctrl_c(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "accord.cli", "monitor", f"--port={port}", f"--data-dir={tmp_path / 'prom'}",
         f"--sd-file={tmp_path / 'sd.json'}"],
        cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # as a shell starts a background job: SIGINT ignored, which Ctrl-C must still override
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 120  # a hang guard: waits for Prometheus to answer
        while not _ready(f"http://127.0.0.1:{port}/-/ready"):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "Prometheus never answered"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert f"Prometheus at http://127.0.0.1:{port}" in stdout
    assert not _ready(f"http://127.0.0.1:{port}/-/ready")  # its Prometheus stopped with it
