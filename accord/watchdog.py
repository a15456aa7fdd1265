"""The driver's watchdog: when the driver dies without a clean exit (SIGKILL, an OOM kill), end
the processes it started and record in RUN_DIR/status.json that the run failed.

    python -m accord.watchdog RUN_DIR DRIVER_PID      (stdin: a pipe only the driver writes)

Why it is needed: an embedded Ray ties its GCS and raylet to the driver (the kernel kills them
with it), and its workers exit when the raylet does, but its dashboard and runtime-env agents
outlive a SIGKILLed driver. The watchdog knows the driver is gone when its stdin reaches EOF,
which the kernel guarantees however the driver ends. Until then it notes the driver's
descendants every second (pid and start time, so a reused pid is never taken for one of
them), the first time as soon as it starts; afterwards it sends SIGTERM, then SIGKILL, to
those still alive. After that first look it closes its stdout (it never writes there), so a
caller that gave it a pipe reads EOF once it knows every process the driver has by then,
instead of guessing how long a Python start-up takes. After a clean exit the
driver has already shut Ray down and nothing is left to end. A driver that joined a Ray it did
not start (`ray.init` in the same process: a notebook, a test) writes `keep` before it closes
the pipe: that Ray's processes are its children too, but they are its caller's, who goes on
using them. Linux only (/proc); elsewhere it only records the status.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time
from pathlib import Path

from accord.run_status import read_status, write_status

POLL_SECONDS = 1.0
TERM_GRACE_SECONDS = 5.0
KEEP = b"keep"  # written by a driver that lives on, before it closes the pipe


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, None if it is gone (a zombie
    has exited; it only waits for its parent to collect its status)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces
    return None if fields[0] == "Z" else (int(fields[1]), int(fields[19]))


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of `root`: pid -> start time."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit() and (info := _stat(int(entry))) is not None:
            children.setdefault(info[0], []).append(int(entry))
            started[int(entry)] = info[1]
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in started:
            found[pid] = started[pid]
            todo.extend(children.get(pid, []))
    return found


def end_processes(known: dict[int, int]) -> int:
    """SIGTERM, then SIGKILL after a grace period, to each of `known` still alive as itself;
    returns how many were ended."""
    def alive() -> list[int]:
        return [pid for pid, start in known.items() if (info := _stat(pid)) and info[1] == start]

    targets = alive()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass  # exited between the check and the signal: what we wanted
        deadline = time.monotonic() + TERM_GRACE_SECONDS
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
    return len(targets)


def _close_stdout() -> None:
    """/dev/null in place of fd 1: a pipe there is closed, so its reader sees EOF."""
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def watch(run_dir: Path, driver_pid: int) -> None:
    known: dict[int, int] = {}
    me = os.getpid()
    first = True
    heard = b""
    while True:
        known.update(descendants(driver_pid))
        known.pop(me, None)
        if first:
            _close_stdout()
            first = False
        readable, _, _ = select.select([sys.stdin], [], [], POLL_SECONDS)
        if readable:
            data = os.read(sys.stdin.fileno(), 64)
            if not data:
                break  # EOF: the driver has exited, cleanly or not
            heard += data
    ended = 0 if KEEP in heard else end_processes(known)
    record = read_status(run_dir)
    if record is not None and record.get("state") == "running":
        # The driver records every way it exits itself; "running" means it never got the chance.
        write_status(run_dir, "failed",
                     f"the driver (pid {driver_pid}) died without stopping cleanly (SIGKILL, an OOM "
                     f"kill or a crash); {ended} of its processes were ended; resume from the "
                     f"newest checkpoint with: accord train --resume {run_dir}")


def main() -> None:
    # Ctrl-C, a hangup or `ray job stop` reach the driver's whole group; the watchdog ends only
    # when the driver does.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    watch(Path(sys.argv[1]), int(sys.argv[2]))


if __name__ == "__main__":
    main()
