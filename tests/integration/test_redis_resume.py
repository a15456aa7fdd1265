"""A resumed SAC run with `replay.backend: redis` restarts with its replay, not an empty table.

The real CLI: `accord train` starts its own redis-server in RUN_DIR/redis, Ctrl-C stops the run
(the whole foreground group is signalled, as a terminal would), `--resume RUN_DIR` restarts the
server on the same append-only file. The resumed run's first metrics row must show the replay
the first run left, before its actors could have refilled it.
"""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.training_runs import cli_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ACCORD = str(Path(sys.executable).parent / "accord")


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    return list(csv.DictReader(open(path))) if path.exists() else []


def test_resumed_sac_run_restarts_with_its_replay(tmp_path):
    env = cli_env()
    overrides = ["--set", "replay.backend=redis", "--set", f"run.root={tmp_path}",
                 "--set", "run.total_frames=100000000", "--set", "run.log_every=0.5",
                 "--set", "run.eval_every=0", "--set", "replay.learning_starts=100",
                 "--set", "run.dashboard=false"]  # nothing here looks at the dashboard
    proc = subprocess.Popen([ACCORD, "train", "configs/pendulum_sac.yaml", *overrides], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            dirs = list(tmp_path.iterdir())
            if dirs and any(float(r["updates"]) >= 1 for r in _rows(dirs[0])):
                break
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no update within 120 s"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    (run_dir,) = tmp_path.iterdir()
    before = _rows(run_dir)
    left = float(before[-1]["replay/size"])
    assert left >= 100 and float(before[0]["replay/restored"]) == 0

    resumed = subprocess.run([ACCORD, "train", "--resume", str(run_dir), "--set", "run.max_seconds=2"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    first = _rows(run_dir)[len(before)]
    print(f"\nreplay at the stop: {left:.0f} rows (last row); resumed run's first row: "
          f"replay/size {float(first['replay/size']):.0f}, replay/restored {float(first['replay/restored']):.0f}")
    # The last row before the stop is older than the final inserts, so at least that much.
    assert float(first["replay/restored"]) >= left
    assert float(first["replay/size"]) >= left
