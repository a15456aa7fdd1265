"""One checkpoint format: a torch file of tensors and plain values, loaded with
`weights_only=True` so that opening a checkpoint never unpickles arbitrary objects.

Writes are atomic (temp file in the same directory, fsync, rename), so a crash mid-write
leaves the previous checkpoint intact; the last `keep` are kept. A write that fails (disk full,
directory gone or read-only) removes its temp file and raises `CheckpointWriteError`; older
checkpoints are only rotated out after a new one is in place. A checkpoint that fails to
load is skipped, counted and reported, and the next older one is tried.
"""
from __future__ import annotations

import io
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

_NAME = re.compile(r"^ckpt_(\d{9})\.pt$")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous checkpoints are untouched."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def save_checkpoint(run_dir: str | Path, state: dict, step: int, keep: int = 3) -> Path:
    directory = checkpoint_dir(run_dir)
    final = directory / f"ckpt_{step:09d}.pt"
    tmp = directory / f".{final.name}.tmp"
    try:
        # Serialized in memory first: torch's zip writer turns a failed file write into an
        # opaque "unexpected pos" error, a plain write names the cause (ENOSPC, EROFS, ...).
        buffer = io.BytesIO()
        torch.save(state, buffer)
        directory.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except OSError as exc:  # a state torch cannot serialize is a bug, not a write failure: not caught
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the directory itself is gone or unreadable: no temp file can be left in it
        raise CheckpointWriteError(f"could not write {final}: {type(exc).__name__}: {exc}") from exc
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(checkpoint file, run directory) from either a checkpoint file or a run directory
    (then its newest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise FileNotFoundError(f"{path} holds no checkpoints")
        return found[-1], path
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint {path}")
    return path, path.parent.parent


@dataclass
class Restored:
    state: dict | None
    path: Path | None
    corrupt: list[tuple[Path, str]] = field(default_factory=list)


def try_load(path: str | Path, map_location="cpu") -> tuple[dict | None, str | None]:
    """(state, None), or (None, the first line of why it does not load)."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        # torch would try its pre-1.6 pickle format and fail with a long message about
        # weights_only; every checkpoint written here is a zip archive.
        return None, "not a torch checkpoint (no zip archive: truncated, or another kind of file)"
    try:
        return load_checkpoint(path, map_location), None
    except Exception as exc:  # truncated file, bad zip, refused pickle, not a torch file at all
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def load_latest(run_dir: str | Path, map_location="cpu", set_aside: bool = True) -> Restored:
    """The newest checkpoint that loads; corrupt ones are listed with their error and, with
    `set_aside` (a run that goes on writing checkpoints), renamed to `*.corrupt`: kept for
    inspection but out of the rotation (they would otherwise stay the "newest" and push good
    checkpoints out of the last `keep`). Readers (eval) leave the files as they are."""
    corrupt = []
    for path in reversed(list_checkpoints(run_dir)):
        state, error = try_load(path, map_location)
        if error is None:
            return Restored(state, path, corrupt)
        if set_aside:
            quarantined = path.with_name(path.name + ".corrupt")
            os.replace(path, quarantined)
            path = quarantined
        corrupt.append((path, error))
    return Restored(None, None, corrupt)
