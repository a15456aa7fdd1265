"""Bad input at every entry point of the real CLI: one line on stderr naming the problem, exit
code 2, no traceback, and nothing on disk lost or left half-written.

Each case is a fresh `python -m accord.cli ...`; all of them start together in one
module-scoped fixture (a CLI start costs a few seconds of imports), and each case is then
checked by its own test. Config fields have their own cases in test_cli_config_errors.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
GYM = "env: {kind: gym, tasks: [CartPole-v1]}\nlearner: {model: mlp}\n"
GARBAGE = b"not a checkpoint: the first bytes of a file cut short\n"


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]             # after `accord`; {tmp} is the fixture's directory
    names: tuple[str, ...]            # phrases the one error line must contain
    prefix: str = "error: "
    after: Callable[[Path], None] | None = None  # what must still (or never) be on disk
    needs_no_cuda: bool = False
    env: tuple[tuple[str, str], ...] = ()  # set for this case; {tmp} is replaced


def _no_run_dir_left(tmp: Path) -> None:
    assert list((tmp / "runs").iterdir()) == []


def _corrupt_run_kept(tmp: Path) -> None:
    run = tmp / "resume_corrupt"
    assert (run / "checkpoints" / "ckpt_000000001.pt.corrupt").read_bytes() == GARBAGE
    assert (run / "config.yaml").read_text() == GYM
    assert not (run / "status.json").exists()  # refused before anything was recorded


def _foreign_run_untouched(tmp: Path) -> None:
    run = tmp / "foreign"
    assert (run / "config.yaml").read_text() == GYM and not (run / "status.json").exists()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["ckpt_000000003.pt"]


def _eval_leaves_files_alone(tmp: Path) -> None:
    assert (tmp / "eval_corrupt" / "checkpoints" / "ckpt_000000001.pt").read_bytes() == GARBAGE


def _nothing_plotted(tmp: Path) -> None:
    assert not (tmp / "no_rows" / "plots").exists()


CASES = [
    # accord train
    Case("train_cuda_on_a_machine_without_gpu", ("train", "{tmp}/gym.yaml", "--set", "learner.device=cuda"),
         ("learner.device", "'cuda'", "no GPU"), prefix="config error: ", after=_no_run_dir_left,
         needs_no_cuda=True),
    Case("train_inference_server_on_a_machine_without_gpu",
         ("train", "{tmp}/gym.yaml", "--set", "actors.inference=server"),
         ("actors.inference_device", "'auto'", "has none", "actors.inference_device: cpu"),
         prefix="config error: ", after=_no_run_dir_left, needs_no_cuda=True),
    Case("train_unwritable_run_root", ("train", "{tmp}/gym.yaml", "--set", "run.root={tmp}/notes.txt/runs"),
         ("run.root", "cannot create the run directory")),
    Case("train_config_is_a_directory", ("train", "{tmp}/not_a_run"), ("is a directory", "--resume"),
         prefix="config error: "),
    Case("train_redis_url_unreachable",
         ("train", "configs/pendulum_sac.yaml", "--set", "run.root={tmp}/runs", "--set", "replay.backend=redis",
          "--set", "replay.redis.url=redis://127.0.0.1:1/0"),
         ("replay.redis.url", "cannot use Redis at redis://127.0.0.1:1/0", "refused"), after=_no_run_dir_left),
    Case("train_redis_password_not_shown",
         ("train", "configs/pendulum_sac.yaml", "--set", "run.root={tmp}/runs", "--set", "replay.backend=redis",
          "--set", "replay.redis.url=redis://127.0.0.1:1/0"),
         ("cannot use Redis at redis://127.0.0.1:1/0",),  # the password went in, and is not shown
         env=(("ACCORD_REDIS_PASSWORD", "s3cret"),), after=_no_run_dir_left),
    Case("train_redis_server_not_installed",
         ("train", "configs/pendulum_sac.yaml", "--set", "run.root={tmp}/runs", "--set", "replay.backend=redis"),
         ("replay.backend: redis needs redis-server", "replay.redis.url"),
         env=(("PATH", "{tmp}/empty_bin"),), after=_no_run_dir_left),
    Case("train_unknown_option", ("train", "{tmp}/gym.yaml", "--bogus"), ("accord train", "No such option: --bogus")),
    Case("unknown_command", ("trian",), ("No such command 'trian'", "train")),
    # accord train --resume
    Case("resume_missing_directory", ("train", "--resume", "{tmp}/nowhere"), ("--resume", "no such run directory"),
         prefix="config error: "),
    Case("resume_not_a_run", ("train", "--resume", "{tmp}/not_a_run"), ("--resume", "not a run directory"),
         prefix="config error: "),
    Case("resume_without_checkpoints", ("train", "--resume", "{tmp}/config_only"), ("--resume", "no checkpoints")),
    Case("resume_only_corrupt_checkpoints", ("train", "--resume", "{tmp}/resume_corrupt"),
         ("--resume", "none of the 1 checkpoints", "ckpt_000000001.pt", "kept"), after=_corrupt_run_kept),
    Case("resume_torch_file_of_something_else", ("train", "--resume", "{tmp}/foreign"),
         ("--resume", "ckpt_000000003.pt", "not a checkpoint of an accord impala learner"),
         after=_foreign_run_untouched),
    # accord eval
    Case("eval_missing_path", ("eval", "{tmp}/nowhere.pt"), ("no such checkpoint", "nowhere.pt")),
    Case("eval_file_not_a_checkpoint", ("eval", "{tmp}/notes.txt"), ("notes.txt", "does not load as a checkpoint")),
    Case("eval_run_with_only_corrupt_checkpoints", ("eval", "{tmp}/eval_corrupt"),
         ("none of the 1 checkpoints", "ckpt_000000001.pt"), after=_eval_leaves_files_alone),
    Case("eval_directory_not_a_run", ("eval", "{tmp}/not_a_run"), ("not a run directory",)),
    Case("eval_run_without_checkpoints", ("eval", "{tmp}/config_only"), ("holds no checkpoints",)),
    Case("eval_torch_file_of_something_else", ("eval", "{tmp}/foreign"), ("ckpt_000000003.pt", "no 'model' weights")),
    Case("eval_checkpoint_outside_a_run", ("eval", "{tmp}/loose/loose.pt"), ("loose.pt", "no config.yaml")),
    Case("eval_zero_episodes", ("eval", "{tmp}/foreign", "--episodes", "0"), ("--episodes",)),
    # accord plot
    Case("plot_missing_directory", ("plot", "{tmp}/nowhere"), ("no such run directory",)),
    Case("plot_directory_without_metrics", ("plot", "{tmp}/not_a_run"), ("not_a_run has no metrics.csv",)),
    Case("plot_cell_not_a_number", ("plot", "{tmp}/bad_cell"), ("metrics.csv", "not a number")),
    Case("plot_run_with_no_rows_yet", ("plot", "{tmp}/no_rows"), ("nothing to plot",), after=_nothing_plotted),
    Case("plot_unwritable_out", ("plot", "{tmp}/one_row", "--out", "{tmp}/notes.txt/plots"), ("--out", "cannot write")),
    # accord bench
    Case("bench_unknown_name", ("bench", "throughputt"), ("No such command 'throughputt'", "combiners")),
    Case("bench_unknown_device", ("bench", "combiners", "--device", "tpu"), ("--device", "'tpu'")),
    Case("bench_cuda_without_gpu", ("bench", "sac", "--device", "cuda"), ("--device cuda", "no CUDA device"),
         needs_no_cuda=True),
    Case("bench_service_learner_unknown_device", ("bench", "service", "--learner", "--device", "tpu"),
         ("--device", "'tpu'")),
    Case("bench_service_learner_cuda_without_gpu", ("bench", "service", "--learner", "--device", "cuda"),
         ("--device cuda", "no CUDA device"), needs_no_cuda=True),
    Case("bench_throughput_non_atari_config", ("bench", "throughput", "--config", "{tmp}/gym.yaml"),
         ("env.kind", "atari"), prefix="config error: "),
    Case("bench_mt10_non_metaworld_config", ("bench", "mt10", "--config", "{tmp}/gym.yaml"),
         ("env.kind", "metaworld"), prefix="config error: "),
    Case("bench_negative_seconds", ("bench", "throughput", "--seconds", "-1"), ("--seconds", "> 0")),
    Case("bench_pendulum_unknown_override", ("bench", "pendulum", "--set", "learner.bf17=true"),
         ("learner.bf17", "unknown field"), prefix="config error: "),
    Case("bench_pendulum_override_off_its_grid", ("bench", "pendulum", "--set", "replay.samples_per_insert=7"),
         ("pendulum_defaults.yaml", "samples_per_insert auto", "750.0 updates")),
]


def _make_inputs(tmp: Path) -> None:
    (tmp / "runs").mkdir()
    (tmp / "gym.yaml").write_text(GYM + f"run: {{root: {tmp / 'runs'}}}\n")
    (tmp / "notes.txt").write_text("a text file\n")
    (tmp / "not_a_run").mkdir()
    (tmp / "empty_bin").mkdir()
    for run in ("config_only", "resume_corrupt", "eval_corrupt", "foreign"):
        (tmp / run / "checkpoints").mkdir(parents=True)
        (tmp / run / "config.yaml").write_text(GYM)
    for run in ("resume_corrupt", "eval_corrupt"):
        (tmp / run / "checkpoints" / "ckpt_000000001.pt").write_bytes(GARBAGE)
    torch.save({"weights": torch.zeros(3)}, tmp / "foreign" / "checkpoints" / "ckpt_000000003.pt")
    (tmp / "loose").mkdir()
    torch.save({"model": {}}, tmp / "loose" / "loose.pt")
    for run, text in (("bad_cell", "frames,return/a\n1,fast\n"), ("no_rows", "frames,return/a\n"),
                      ("one_row", "frames,return/a\n1,2\n")):
        (tmp / run).mkdir()
        (tmp / run / "metrics.csv").write_text(text)


@dataclass
class Outcome:
    returncode: int
    stderr: str


def _run(case: Case, tmp: Path) -> Outcome:
    argv = [a.replace("{tmp}", str(tmp)) for a in case.argv]
    env = {**os.environ, **{k: v.replace("{tmp}", str(tmp)) for k, v in case.env}}
    try:
        proc = subprocess.run([sys.executable, "-m", "accord.cli", *argv], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:  # this case fails, the others still report
        return Outcome(-1, f"timed out after 300 s; stderr so far: {exc.stderr!r}")
    return Outcome(proc.returncode, proc.stderr)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, Outcome]]:
    tmp = tmp_path_factory.mktemp("user-errors")
    _make_inputs(tmp)
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = {c.id: pool.submit(_run, c, tmp) for c in CASES
                   if not (c.needs_no_cuda and torch.cuda.is_available())}
        return tmp, {k: f.result() for k, f in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_loses_nothing(case, runs):
    if case.needs_no_cuda and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    tmp, outcomes = runs
    out = outcomes[case.id]
    assert "Traceback" not in out.stderr, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert out.returncode == 2, out.stderr
    assert lines[0].startswith(case.prefix), lines[0]
    for name in case.names:
        assert name.replace("{tmp}", str(tmp)) in lines[0], f"{name!r} not in {lines[0]!r}"
    if case.after is not None:
        case.after(tmp)

