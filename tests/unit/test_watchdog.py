"""accord/watchdog.py and accord/run_status.py with real processes: a driver killed outright
leaves no process behind and a "failed" status; a clean exit keeps the status it wrote; a
driver that lives on keeps the processes of a Ray it joined but did not start."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accord.run_status import describe_status, read_status, write_status

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 120  # seconds; generous for three Python start-ups on a loaded machine

# A stand-in driver: a "raylet" whose own child (an "agent") would outlive it, as Ray's agents
# outlive a SIGKILLed driver, then the watchdog as accord.driver starts it. The watchdog closes
# its stdout after its first look at the driver's processes: reading that EOF is waiting for the
# watchdog to know the raylet and the agent, however long its start-up takes.
DRIVER = """
import os, subprocess, sys, time
from accord.run_status import write_status
run_dir = sys.argv[1]
middle = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; a = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
    "print(a.pid, flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
agent = int(middle.stdout.readline())
watchdog = subprocess.Popen([sys.executable, "-m", "accord.watchdog", run_dir, str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
watchdog.stdout.read()  # EOF: its first look is done
print(watchdog.pid, middle.pid, agent, flush=True)
if sys.argv[2] == "clean":
    middle.kill(); middle.wait(); os.kill(agent, 9)
    write_status(run_dir, "finished", "finished")
    watchdog.stdin.close(); watchdog.wait()
elif sys.argv[2] == "keep":  # the "raylet" is a Ray the driver's caller started and still uses
    write_status(run_dir, "finished", "finished")
    watchdog.stdin.write(b"keep"); watchdog.stdin.close(); watchdog.wait()
    time.sleep(600)
else:
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids, seconds=20.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _start(tmp_path, mode):
    write_status(tmp_path, "running", "training", updates=7, checkpoint="ckpt_000000007.pt")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path), mode], env=env,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    # A hang guard only: a watchdog that never signals its first look fails here.
    ready, _, _ = select.select([driver.stdout], [], [], READY_TIMEOUT)
    if not ready:
        os.killpg(driver.pid, signal.SIGKILL)
        pytest.fail(f"the watchdog did not report its first look within {READY_TIMEOUT} s")
    watchdog, middle, agent = map(int, driver.stdout.readline().split())
    return driver, watchdog, middle, agent


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="the watchdog follows processes through /proc")
def test_a_killed_driver_leaves_no_process_and_a_failed_status(tmp_path):
    driver, watchdog, middle, agent = _start(tmp_path, "kill")
    try:
        os.kill(middle, signal.SIGKILL)  # as the kernel kills Ray's raylet with its driver
        assert _wait_gone([middle]) == []
        driver.kill()
        driver.wait()
        assert _wait_gone([agent, watchdog]) == []
    finally:
        for pid in (middle, agent, watchdog):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    status = read_status(tmp_path)
    assert status["state"] == "failed"
    assert "died without stopping cleanly" in status["reason"] and "1 of its processes" in status["reason"]
    assert status["updates"] == 7 and status["checkpoint"] == "ckpt_000000007.pt"  # facts kept


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="the watchdog follows processes through /proc")
def test_a_clean_exit_keeps_the_status_the_driver_wrote(tmp_path):
    driver, watchdog, middle, agent = _start(tmp_path, "clean")
    try:
        assert driver.wait(timeout=30) == 0
        assert _wait_gone([watchdog]) == []
    finally:
        for pid in (middle, agent, watchdog):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert read_status(tmp_path)["state"] == "finished"


def test_status_records_keep_earlier_facts_and_reject_unknown_states(tmp_path):
    assert read_status(tmp_path) is None
    write_status(tmp_path, "running", "training", updates=3, checkpoint="a.pt")
    write_status(tmp_path, "interrupted", "interrupted by SIGHUP", updates=5)
    record = read_status(tmp_path)
    assert (record["state"], record["updates"], record["checkpoint"]) == ("interrupted", 5, "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temp file
    with pytest.raises(ValueError, match="'paused' is not one of running, finished"):
        write_status(tmp_path, "paused", "x")
    assert "did not stop cleanly" in describe_status({**record, "state": "running"})
    assert "did not stop cleanly" not in describe_status(record)


def test_a_status_write_into_a_missing_directory_raises(tmp_path):
    with pytest.raises(OSError):
        write_status(tmp_path / "gone", "running", "training")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="the watchdog follows processes through /proc")
def test_a_driver_that_lives_on_keeps_the_ray_it_joined(tmp_path):
    driver, watchdog, middle, agent = _start(tmp_path, "keep")
    try:
        assert _wait_gone([watchdog]) == []
        assert _alive(middle) and _alive(agent) and driver.poll() is None
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        for pid in (middle, agent, watchdog):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert read_status(tmp_path)["state"] == "finished"
