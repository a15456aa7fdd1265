"""learner/checkpoint.py: keep-last-k, atomic writes, skipping corrupt files, weights_only loads."""
from __future__ import annotations

import pickle

import pytest
import torch

from learner import checkpoint as ckpt
from learner.checkpoint import (
    CheckpointWriteError,
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)


def state(step: int) -> dict:
    return {"model": {"w": torch.full((3,), float(step))},
            "counters": {"updates": step, "frames": 10 * step}, "rng": [1, 2, 3]}


class Payload:
    """An arbitrary object: loading it would mean running pickle's code paths."""

    def __init__(self):
        self.value = 42


def test_save_keeps_the_last_k(tmp_path):
    paths = [save_checkpoint(tmp_path, state(s), step=s, keep=2) for s in (5, 10, 15, 20)]
    assert [p.name for p in paths] == ["ckpt_000000005.pt", "ckpt_000000010.pt",
                                       "ckpt_000000015.pt", "ckpt_000000020.pt"]
    assert list_checkpoints(tmp_path) == paths[-2:]
    assert sorted(p.name for p in checkpoint_dir(tmp_path).iterdir()) == [p.name for p in paths[-2:]]
    loaded = load_checkpoint(paths[-1])
    assert torch.equal(loaded["model"]["w"], torch.full((3,), 20.0))
    assert loaded["counters"] == {"updates": 20, "frames": 200}


def test_steps_order_numerically_and_other_files_are_ignored(tmp_path):
    for s in (9, 100, 1000):
        save_checkpoint(tmp_path, state(s), step=s, keep=5)
    (checkpoint_dir(tmp_path) / "notes.txt").write_text("x")
    (checkpoint_dir(tmp_path) / "ckpt_5.pt").write_bytes(b"not ours")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt_000000009.pt", "ckpt_000000100.pt", "ckpt_000001000.pt"]
    assert list_checkpoints(tmp_path / "elsewhere") == []


def test_no_temp_file_is_left_after_a_save(tmp_path):
    save_checkpoint(tmp_path, state(1), step=1)
    names = [p.name for p in checkpoint_dir(tmp_path).iterdir()]
    assert names == ["ckpt_000000001.pt"]


def test_a_crash_mid_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    good = save_checkpoint(tmp_path, state(1), step=1)
    real_save = torch.save

    def crashing_save(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a zip")  # some bytes reach the disk, then the process dies
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crashing_save)
    with pytest.raises(CheckpointWriteError, match="ckpt_000000002.pt: OSError: disk full"):
        save_checkpoint(tmp_path, state(2), step=2)
    monkeypatch.setattr(ckpt.torch, "save", real_save)

    # No half-written temp file is left to fill the disk further.
    assert [p.name for p in checkpoint_dir(tmp_path).iterdir()] == [good.name]
    assert list_checkpoints(tmp_path) == [good]
    restored = load_latest(tmp_path)
    assert restored.path == good and restored.corrupt == []
    assert restored.state["counters"]["updates"] == 1
    # The next save goes through and the keep count still holds.
    save_checkpoint(tmp_path, state(3), step=3, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_000000003.pt"]


def test_load_latest_skips_a_corrupt_newest_file(tmp_path):
    older = save_checkpoint(tmp_path, state(1), step=1)
    newest = save_checkpoint(tmp_path, state(2), step=2)
    newest.write_bytes(b"\x00garbage\xff" * 50)
    restored = load_latest(tmp_path)
    assert restored.path == older
    assert restored.state["counters"]["updates"] == 1
    # Quarantined, not deleted: kept for inspection, out of the rotation.
    quarantined = newest.with_name(newest.name + ".corrupt")
    assert [p for p, _ in restored.corrupt] == [quarantined]
    assert quarantined.exists() and not newest.exists()
    assert list_checkpoints(tmp_path) == [older]
    reason = restored.corrupt[0][1]
    assert reason and "\n" not in reason and len(reason) <= 200


def test_load_latest_skips_a_truncated_file(tmp_path):
    older = save_checkpoint(tmp_path, state(1), step=1)
    newest = save_checkpoint(tmp_path, state(2), step=2)
    newest.write_bytes(newest.read_bytes()[:100])
    restored = load_latest(tmp_path)
    assert restored.path == older
    assert [p for p, _ in restored.corrupt] == [newest.with_name(newest.name + ".corrupt")]


def test_load_latest_with_nothing_loadable(tmp_path):
    assert load_latest(tmp_path) == ckpt.Restored(None, None, [])
    bad = save_checkpoint(tmp_path, state(1), step=1)
    bad.write_bytes(b"junk")
    restored = load_latest(tmp_path)
    assert restored.state is None and restored.path is None
    assert [p for p, _ in restored.corrupt] == [bad.with_name(bad.name + ".corrupt")]


def test_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only"):
        load_checkpoint(path)


def test_load_latest_falls_back_past_a_refused_checkpoint(tmp_path):
    older = save_checkpoint(tmp_path, state(1), step=1)
    save_checkpoint(tmp_path, {**state(2), "extra": Payload()}, step=2)
    restored = load_latest(tmp_path)
    assert restored.path == older
    assert len(restored.corrupt) == 1 and "UnpicklingError" in restored.corrupt[0][1]


def test_map_location_is_applied(tmp_path):
    path = save_checkpoint(tmp_path, state(1), step=1)
    assert load_checkpoint(path, map_location="cpu")["model"]["w"].device.type == "cpu"
    assert load_checkpoint(path, map_location="meta")["model"]["w"].device.type == "meta"


def test_a_failed_rename_keeps_every_older_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    older = [save_checkpoint(tmp_path, state(s), step=s, keep=2) for s in (1, 2)]

    def refused(src, dst):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(ckpt.os, "replace", refused)
    with pytest.raises(CheckpointWriteError, match="Read-only file system"):
        save_checkpoint(tmp_path, state(3), step=3, keep=2)
    # Rotation happens only after a new checkpoint is in place: both older ones survive.
    assert sorted(checkpoint_dir(tmp_path).iterdir()) == older
    assert load_latest(tmp_path).state["counters"]["updates"] == 2


def test_a_checkpoints_path_that_is_not_a_directory_is_a_clear_write_error(tmp_path):
    checkpoint_dir(tmp_path).write_text("a file where the directory should be")
    with pytest.raises(CheckpointWriteError, match="could not write .*ckpt_000000001.pt: FileExistsError"):
        save_checkpoint(tmp_path, state(1), step=1)
    assert checkpoint_dir(tmp_path).read_text() == "a file where the directory should be"


def test_a_state_torch_cannot_serialize_is_not_taken_for_a_write_failure(tmp_path, monkeypatch):
    def refuses(obj, fh, *args, **kwargs):
        raise RuntimeError("cannot pickle 'generator' object")

    monkeypatch.setattr(ckpt.torch, "save", refuses)
    with pytest.raises(RuntimeError, match="cannot pickle") as caught:
        save_checkpoint(tmp_path, state(1), step=1)
    assert not isinstance(caught.value, CheckpointWriteError)  # a bug stops the run, a full disk does not
    assert list_checkpoints(tmp_path) == []
