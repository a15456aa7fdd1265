"""RUN_DIR/status.json: how a run stands or how it ended, so a crash can be told from a clean stop.

    {"state": "running" | "finished" | "interrupted" | "failed", "reason": "...",
     "updates": ..., "frames": ..., "checkpoint": "...", "checkpoint_failures": ...,
     "pid": ..., "host": "...", "updated": "2026-11-23T18:40:00Z"}

The driver writes it when it starts, at every checkpoint and when it exits; if the driver dies
without exiting (SIGKILL, an OOM kill) its watchdog (accord/watchdog.py) turns a "running"
record into "failed". A record still "running" whose driver is gone means the machine itself
was lost. Writes are atomic (temp file, rename), and each one keeps the facts of the last
(updates, checkpoint, ...) that it does not replace. Imports nothing heavy: the watchdog uses it.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

STATES = ("running", "finished", "interrupted", "failed")
STATUS_FILE = "status.json"


def status_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / STATUS_FILE


def read_status(run_dir: str | Path) -> dict | None:
    """The run's last record; None if it has none or the file cannot be read as one."""
    try:
        record = json.loads(status_path(run_dir).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_status(run_dir: str | Path, state: str, reason: str, **facts) -> dict:
    """Record `state` and `reason` (and any facts given) over the previous record; raises OSError
    if the run directory cannot be written."""
    if state not in STATES:
        raise ValueError(f"run status: {state!r} is not one of {', '.join(STATES)}")
    record = {**(read_status(run_dir) or {}), **facts, "state": state, "reason": reason,
              "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = status_path(run_dir)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):  # the directory may be the thing that is gone
            tmp.unlink(missing_ok=True)
        raise
    return record


def driver_facts() -> dict:
    """Who writes the record: the driver's pid and host, so a reader can check it is alive."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def describe_status(record: dict | None) -> str:
    """One line for the console: how the previous run of a directory ended."""
    if record is None:
        return "no status file (a run from before status files, or one that never started)"
    line = f"{record.get('state')} ({record.get('reason')}), last recorded {record.get('updated')}"
    if record.get("state") == "running":
        line += ": it did not stop cleanly (its driver or its machine was lost)"
    return line
