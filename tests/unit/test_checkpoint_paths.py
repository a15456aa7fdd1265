"""learner/checkpoint.py: resolving a checkpoint or a run directory, the default keep count, a
run directory that does not exist yet, readers that leave corrupt files alone, and the one-line
reason of a checkpoint that does not load."""
from __future__ import annotations

import pytest
import torch

from learner import checkpoint as ckpt
from learner.checkpoint import (checkpoint_dir, list_checkpoints, load_latest, resolve_checkpoint,
                                save_checkpoint, try_load)


def state(step: int) -> dict:
    return {"w": torch.full((2,), float(step)), "step": step}


def test_a_run_directory_resolves_to_its_newest_checkpoint(tmp_path):
    for s in (3, 12):
        save_checkpoint(tmp_path, state(s), step=s)
    assert resolve_checkpoint(tmp_path) == (checkpoint_dir(tmp_path) / "ckpt_000000012.pt", tmp_path)
    assert resolve_checkpoint(str(tmp_path))[0].name == "ckpt_000000012.pt"


def test_a_checkpoint_file_resolves_to_itself_and_its_run_directory(tmp_path):
    older = save_checkpoint(tmp_path, state(3), step=3)
    save_checkpoint(tmp_path, state(4), step=4)
    assert resolve_checkpoint(older) == (older, tmp_path)


def test_resolving_nothing_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as empty:
        resolve_checkpoint(tmp_path)
    assert str(empty.value) == f"{tmp_path} holds no checkpoints"
    with pytest.raises(FileNotFoundError) as missing:
        resolve_checkpoint(tmp_path / "ckpt_000000001.pt")
    assert str(missing.value) == f"no such checkpoint {tmp_path / 'ckpt_000000001.pt'}"


def test_the_last_three_are_kept_by_default(tmp_path):
    for s in range(1, 6):
        save_checkpoint(tmp_path, state(s), step=s)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt_000000003.pt", "ckpt_000000004.pt", "ckpt_000000005.pt"]


def test_a_run_directory_that_does_not_exist_yet_is_created(tmp_path):
    run_dir = tmp_path / "runs" / "a"
    path = save_checkpoint(run_dir, state(1), step=1)
    assert path == run_dir / "checkpoints" / "ckpt_000000001.pt"
    assert ckpt.load_checkpoint(path)["step"] == 1


def test_readers_leave_a_corrupt_checkpoint_where_it_is(tmp_path):
    older = save_checkpoint(tmp_path, state(1), step=1)
    newest = save_checkpoint(tmp_path, state(2), step=2)
    newest.write_bytes(b"junk")
    restored = load_latest(tmp_path, set_aside=False)
    assert restored.path == older and restored.state["step"] == 1
    assert restored.corrupt == [(newest, "not a torch checkpoint (no zip archive: truncated, or "
                                         "another kind of file)")]
    assert list_checkpoints(tmp_path) == [older, newest]


def test_load_latest_maps_to_the_device_asked_for(tmp_path):
    save_checkpoint(tmp_path, state(1), step=1)
    assert load_latest(tmp_path).state["w"].device.type == "cpu"
    assert load_latest(tmp_path, map_location="meta").state["w"].device.type == "meta"
    assert try_load(list_checkpoints(tmp_path)[0], map_location="meta")[0]["w"].device.type == "meta"


def test_the_reason_a_checkpoint_does_not_load_is_its_first_line_cut_at_200(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path, state(1), step=1)

    def refuses(p, map_location="cpu"):
        raise RuntimeError("x" * 300 + "\nsecond line")

    monkeypatch.setattr(ckpt, "load_checkpoint", refuses)
    assert try_load(path) == (None, ("RuntimeError: " + "x" * 300)[:200])
    monkeypatch.setattr(ckpt, "load_checkpoint", lambda p, map_location="cpu": (_ for _ in ()).throw(
        ValueError("short\nmore")))
    assert try_load(path) == (None, "ValueError: short")


def test_a_missing_file_is_a_load_error_not_a_zip_question(tmp_path):
    state_, error = try_load(tmp_path / "ckpt_000000001.pt")
    assert state_ is None and error.startswith("FileNotFoundError: ")
