"""Ctrl-C saves a checkpoint and exits cleanly; `accord train --resume RUN_DIR` continues it.

Ctrl-C in a terminal signals the whole foreground process group, Ray's own processes
included, so the test signals the group too."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.support.training_runs import cli_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ACCORD = str(Path(sys.executable).parent / "accord")


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    return list(csv.DictReader(open(path))) if path.exists() else []


def _updates(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, weights_only=True)["counters"]["updates"])


def test_ctrl_c_checkpoints_and_resume_continues(tmp_path):
    env = cli_env()
    overrides = ["--set", f"run.root={tmp_path}", "--set", "run.total_frames=100000000",
                 "--set", "run.log_every=1", "--set", "run.checkpoint_every=1000",
                 "--set", "run.dashboard=false"]  # nothing here looks at the dashboard
    proc = subprocess.Popen([ACCORD, "train", "configs/smoke.yaml", *overrides], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            dirs = list(tmp_path.iterdir())
            if dirs and any(float(r["updates"]) >= 3 for r in _rows(dirs[0])):
                break
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no updates within 180 s"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert "interrupted by SIGINT" in out
    (run_dir,) = tmp_path.iterdir()
    assert f"accord train --resume {run_dir}" in out
    (first,) = sorted((run_dir / "checkpoints").glob("ckpt_*.pt"))
    stopped_at = _updates(first)
    assert stopped_at >= 3

    # A newer checkpoint that is garbage (a crash mid-copy, a bad disk) is skipped and counted.
    (run_dir / "checkpoints" / "ckpt_999999999.pt").write_bytes(b"not a checkpoint")
    frames_at_stop = float(_rows(run_dir)[-1]["frames"])
    resumed = subprocess.run(
        [ACCORD, "train", "--resume", str(run_dir), "--set", f"run.total_frames={int(frames_at_stop) + 3200}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert f"resuming from {first.name}" in resumed.stdout
    assert "skipped corrupt checkpoint ckpt_999999999.pt.corrupt" in resumed.stdout
    assert (run_dir / "checkpoints" / "ckpt_999999999.pt.corrupt").exists()
    last = sorted((run_dir / "checkpoints").glob("ckpt_*.pt"))[-1]
    assert _updates(last) > stopped_at
    rows = _rows(run_dir)
    # One history: the resumed run appended to the same metrics file, counters kept growing.
    assert float(rows[-1]["frames"]) >= frames_at_stop + 3200
    assert float(rows[-1]["updates"]) > stopped_at
    assert float(rows[-1]["checkpoints/corrupt_skipped"]) == 1
