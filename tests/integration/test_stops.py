"""Every way a run can stop, through the real CLI on CartPole: a closed terminal (SIGHUP), a
SIGKILLed driver, and a checkpoint directory that cannot be written mid-run; after each, the
checkpoints on disk, the exit code, the processes left and RUN_DIR/status.json.

Unwritable directories: the tests run as root, which chmod does not stop, so they mount over
the checkpoints directory instead (a read-only bind mount of itself: EROFS; a 16 KiB tmpfs:
ENOSPC), and skip where mounting is not allowed."""
from __future__ import annotations

import csv
import fcntl
import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.support.training_runs import cli_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ACCORD = str(Path(sys.executable).parent / "accord")
# No dashboard: nothing here looks at it, and it costs each start several seconds on 2 cores.
BASE = ["--set", "run.total_frames=100000000", "--set", "run.log_every=1", "--set", "run.dashboard=false"]


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    return list(csv.DictReader(open(path))) if path.exists() else []


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def _updates(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, weights_only=True)["counters"]["updates"])


def _frames(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, weights_only=True)["counters"]["frames"])


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("ckpt_*.pt"))


def _session(sid: int) -> list[str]:
    """Live processes of a session (the driver started one; Ray's processes and workers join it)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(f"{entry} {text[text.index('(') + 1:text.rindex(')')]}")
    return found


def _kill_session(sid: int) -> None:
    for line in _session(sid):
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_for(condition, proc, what: str, seconds: float = 180):
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert proc.poll() is None, f"the run exited ({proc.returncode}) before {what}:\n{_output(proc)}"
        assert time.monotonic() < deadline, f"no {what} within {seconds:.0f} s"
        time.sleep(0.25)
    return value


def _run_dir(root: Path) -> Path | None:
    dirs = [d for d in root.iterdir() if d.is_dir()] if root.exists() else []
    return dirs[0] if dirs else None


def _output(proc: subprocess.Popen, seconds: float = 10) -> str:
    """The end of what an exited run printed, where it printed to a pipe of ours. Read for at
    most `seconds`: a process the run left behind may hold the pipe open, and reading to its
    end would wait for that process."""
    if proc.stdout is None or proc.stdout.closed:
        return "(its output went elsewhere)"
    fd, chunks, deadline = proc.stdout.fileno(), [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")[-3000:]


def _start(root: Path, *overrides: str, **popen) -> subprocess.Popen:
    sets = [*BASE, "--set", f"run.root={root}", *[a for o in overrides for a in ("--set", o)]]
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.STDOUT)
    return subprocess.Popen([ACCORD, "train", "configs/cartpole.yaml", *sets], cwd=REPO, env=cli_env(),
                            text=True, start_new_session=True, **popen)


def _resume(run_dir: Path, frames: int) -> subprocess.CompletedProcess:
    return subprocess.run([ACCORD, "train", "--resume", str(run_dir), "--set", f"run.total_frames={frames}",
                           "--set", "run.progress=false"],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)


def test_closing_the_terminal_checkpoints_exits_0_and_resume_continues(tmp_path):
    """The run's terminal is a pty it controls; closing its master end is what closing the
    terminal window does: SIGHUP, and every later write to the terminal fails with EIO."""
    master, slave = pty.openpty()

    def controlling_terminal():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = _start(tmp_path, "run.checkpoint_every=100000", stdin=slave, stdout=slave, stderr=slave,
                  preexec_fn=controlling_terminal)
    os.close(slave)
    seen, reading = [], threading.Event()
    reading.set()

    def drain():  # a terminal that is never read blocks the writer
        while reading.is_set():
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen.append(os.read(master, 65536))
                except OSError:
                    return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        run_dir = _wait_for(lambda: _run_dir(tmp_path), proc, "run directory")
        _wait_for(lambda: any(float(r["updates"]) >= 3 for r in _rows(run_dir)), proc, "3 updates")
        assert not _checkpoints(run_dir)  # so the checkpoint below is the stop's own
        reading.clear()
        reader.join()
        os.close(master)                      # the window closes: the kernel hangs up the tty
        os.killpg(proc.pid, signal.SIGHUP)    # and the shell forwards SIGHUP to its jobs
        code = proc.wait(timeout=120)
        assert code == 0, f"exit {code}; status {_status(run_dir)}; saw {b''.join(seen)[-2000:]!r}"
    finally:
        _kill_session(proc.pid)
    assert b"frames" in b"".join(seen)  # it did write to the terminal before the hangup
    (checkpoint,) = _checkpoints(run_dir)
    stopped_at = _updates(checkpoint)
    assert stopped_at >= 3
    status = _status(run_dir)
    assert (status["state"], status["reason"], status["exit_code"]) == ("interrupted", "interrupted by SIGHUP", 0)
    assert status["checkpoint"] == str(checkpoint)
    # Rich still wraps at the terminal's width it measured at the start.
    after_hangup = (run_dir / "console.log").read_text().replace("\n", "")
    assert "interrupted by SIGHUP" in after_hangup and f"accord train --resume {run_dir}" in after_hangup

    frames = int(float(_rows(run_dir)[-1]["frames"]))
    resumed = _resume(run_dir, frames + 3200)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert "previous run: interrupted (interrupted by SIGHUP)" in resumed.stdout
    assert f"resuming from {checkpoint.name}" in resumed.stdout
    assert _updates(_checkpoints(run_dir)[-1]) > stopped_at
    assert _status(run_dir)["state"] == "finished"


def test_a_sigkilled_driver_keeps_its_clock_driven_checkpoints_and_leaves_no_process(tmp_path):
    """The update cadence is out of reach, so every checkpoint here is the clock's: the run keeps
    writing them however few updates it makes. How much a SIGKILL can lose (one interval) is
    the schedule's, held with a fake clock in tests/unit/test_loop_stops.py; here the kill
    lands just after the clock's third checkpoint, which must load and be where resume goes on."""
    interval = 3.0
    proc = _start(tmp_path, "run.checkpoint_every=100000000", f"run.checkpoint_every_seconds={interval}",
                  "run.keep_checkpoints=100", "run.progress=false")
    try:
        run_dir = _wait_for(lambda: _run_dir(tmp_path), proc, "run directory")
        _wait_for(lambda: len(_checkpoints(run_dir)) >= 3, proc, "three time-based checkpoints")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        checkpoints = _checkpoints(run_dir)
        left = []
        deadline = time.monotonic() + 30  # a hang guard: waits for the processes to end
        while (left := _session(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        _kill_session(proc.pid)
    newest = checkpoints[-1]
    written = [_updates(c) for c in checkpoints]
    assert len(written) >= 3 and written == sorted(set(written)), written  # each one new updates
    assert left == [], f"processes of the killed run still alive: {left}"
    status = _status(run_dir)
    assert status["state"] == "failed" and "died without stopping cleanly" in status["reason"]

    stopped_at = _updates(newest)
    # From the checkpoint's own frames: killed just after it, the last metrics row can be older.
    resumed = _resume(run_dir, _frames(newest) + 3200)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert "previous run: failed (the driver" in resumed.stdout
    assert f"resuming from {newest.name}" in resumed.stdout
    assert _updates(_checkpoints(run_dir)[-1]) > stopped_at
    assert _status(run_dir)["state"] == "finished"


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip()}): no way to make a directory unwritable for root")


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=True, capture_output=True)


def test_a_read_only_checkpoint_directory_is_counted_and_training_goes_on(tmp_path):
    # keep_checkpoints=100: the checkpoints written before the mount are never pruned by the
    # ones written after it, however many of those come before the stop
    proc = _start(tmp_path, "run.checkpoint_every=100000000", "run.checkpoint_every_seconds=2",
                  "run.checkpoint_failure_tolerance_seconds=600", "run.keep_checkpoints=100",
                  "run.progress=false")
    ckpts, mounted = None, False
    try:
        run_dir = _wait_for(lambda: _run_dir(tmp_path), proc, "run directory")
        _wait_for(lambda: len(_checkpoints(run_dir)) >= 1, proc, "a first checkpoint")
        ckpts = run_dir / "checkpoints"
        _mount("--bind", str(ckpts), str(ckpts))
        mounted = True
        _mount("-o", "remount,bind,ro", str(ckpts))
        before = {p: _updates(p) for p in _checkpoints(run_dir)}
        _wait_for(lambda: _status(run_dir).get("checkpoint_failures", 0) >= 2, proc, "two failed writes")
        _umount(ckpts)
        mounted = False
        # Training went on: writes come back once the directory is writable again.
        _wait_for(lambda: set(_checkpoints(run_dir)) - set(before), proc, "a checkpoint after the mount")
        proc.send_signal(signal.SIGTERM)  # as `kill PID` and `ray job stop` send it
        out, _ = proc.communicate(timeout=120)
    finally:
        if mounted:
            _umount(ckpts)
        _kill_session(proc.pid)
    assert proc.returncode == 0, out[-3000:]
    for path, updates in before.items():  # intact and loadable, though nothing could be written
        assert path.exists() and _updates(path) == updates
    assert out.count("checkpoint failed") >= 2 and "Read-only file system" in out
    assert "checkpoints are written again" in out
    assert not list(ckpts.glob(".*.tmp"))
    failed = [float(r["checkpoints/failed"]) for r in _rows(run_dir)]
    assert failed[0] == 0 and failed[-1] >= 2
    status = _status(run_dir)
    assert status["state"] == "interrupted" and status["checkpoint_failures"] >= 2


def test_a_full_disk_stops_the_run_when_no_failure_is_tolerated(tmp_path):
    proc = _start(tmp_path, "run.checkpoint_every=100000000", "run.checkpoint_every_seconds=2",
                  "run.checkpoint_failure_tolerance_seconds=0", "run.progress=false")
    ckpts, mounted = None, False
    try:
        run_dir = _wait_for(lambda: _run_dir(tmp_path), proc, "run directory")
        # One checkpoint, or two where the poll came late: the newest of those written before
        # the mount is the one the run must name.
        saved = {p: p.read_bytes()
                 for p in _wait_for(lambda: _checkpoints(run_dir), proc, "a first checkpoint")}
        ckpts = run_dir / "checkpoints"
        _mount("-t", "tmpfs", "-o", "size=16k", "tmpfs", str(ckpts))  # smaller than one checkpoint
        mounted = True
        out, _ = proc.communicate(timeout=120)
        assert not list(ckpts.iterdir()), "a partial temp file was left on the full disk"
        _umount(ckpts)
        mounted = False
    finally:
        if mounted:
            _umount(ckpts)
        _kill_session(proc.pid)
    assert proc.returncode == 1, out[-3000:]
    assert "No space left on device" in out
    # Untouched under the mount (and one more may have been written before the mount took).
    newest = _checkpoints(run_dir)[-1]
    assert all(p.read_bytes() == data for p, data in saved.items()) and _updates(newest) >= 0
    status = _status(run_dir)
    assert status["state"] == "failed" and status["reason"].startswith("no checkpoint could be written")
    assert status["checkpoint"] == str(newest)


def _learner_pid(sid: int, actor_class: str = "LearnerActor") -> int | None:
    """An actor's process in the run's session (Ray titles it ray::<class>...): the learner's
    unless another class is named."""
    for line in _session(sid):
        pid = int(line.split()[0])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(f"ray::{actor_class}".encode()):
            return pid
    return None


def test_a_killed_learner_restarts_from_the_newest_checkpoint_and_past_max_restarts_the_run_stops(tmp_path):
    """SIGKILL the learner: Ray restarts it from the newest checkpoint, the run goes on and its
    rows count the restart. Killed again past learner.max_restarts (1): one clear reason, the
    resume command, exit code 1, no traceback."""
    # keep_checkpoints=100: a checkpoint listed here is not pruned before it is read
    proc = _start(tmp_path, "run.checkpoint_every=100000000", "run.checkpoint_every_seconds=1",
                  "learner.max_restarts=1", "run.keep_checkpoints=100", "run.progress=false")
    try:
        run_dir = _wait_for(lambda: _run_dir(tmp_path), proc, "run directory")
        _wait_for(lambda: any(_updates(p) > 0 for p in _checkpoints(run_dir)), proc, "a checkpoint with updates")
        first = _wait_for(lambda: _learner_pid(proc.pid), proc, "the learner process")
        newest_at_kill = max(_updates(p) for p in _checkpoints(run_dir))
        os.kill(first, signal.SIGKILL)
        second = _wait_for(lambda: (pid := _learner_pid(proc.pid)) != first and pid, proc, "a new learner process")
        _wait_for(lambda: any(float(r.get("learner/restarts") or 0) == 1 and float(r["updates"]) > newest_at_kill
                              for r in _rows(run_dir)), proc, "a row after the restart, with more updates")
        os.kill(second, signal.SIGKILL)
        out, _ = proc.communicate(timeout=180)
    finally:
        _kill_session(proc.pid)
    restart = next(line for line in out.splitlines() if "the learner restarted" in line)
    restored_at = int(restart.split(" at update ")[1].split(";")[0])
    # It went back to the newest checkpoint of the kill (or one written in the moment before).
    assert restored_at >= newest_at_kill > 0, restart
    assert "(1 of learner.max_restarts 1)" in restart
    assert proc.returncode == 1, out[-3000:]
    assert "is not coming back after 1 restarts (learner.max_restarts: 1)" in out
    assert f"resume with: accord train --resume {run_dir}" in out
    assert "Traceback" not in out, out[-3000:]
    assert _status(run_dir)["state"] == "failed"
    assert _updates(_checkpoints(run_dir)[-1]) > restored_at  # trained on after the restart


def test_a_killed_replay_shard_stops_the_run_with_a_checkpoint_and_one_clear_reason(tmp_path):
    """The learner outlives the shard it samples from: the run says which role died, writes a
    final checkpoint, exits 1 with the resume command and no traceback."""
    proc = subprocess.Popen(
        [ACCORD, "train", "configs/pendulum_sac.yaml", *BASE, "--set", f"run.root={tmp_path}",
         "--set", "run.progress=false", "--set", "run.eval_every=0", "--set", "replay.learning_starts=100"],
        cwd=REPO, env=cli_env(), text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        run_dir = _wait_for(lambda: _run_dir(tmp_path), proc, "run directory")
        _wait_for(lambda: any(float(r["updates"]) > 0 for r in _rows(run_dir)), proc, "a row with updates")
        os.kill(_wait_for(lambda: _learner_pid(proc.pid, "ReplayActor"), proc, "the replay shard"), signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        _kill_session(proc.pid)
    assert proc.returncode == 1, out[-3000:]
    assert "a service actor died (" in out and "nothing is left to train on" in out
    assert f"resume with: accord train --resume {run_dir}" in out
    # The rollout actors print why they exit (Ray prefixes their lines); the driver prints none.
    assert not [line for line in out.splitlines() if line.startswith("Traceback")], out[-3000:]
    assert _status(run_dir)["state"] == "failed"
    assert _updates(_checkpoints(run_dir)[-1]) > 0  # the final checkpoint of the living learner
