"""The checks behind the CLI's one-line errors, in process: what each raises, and that a
refusal leaves the files it looked at as they were."""
from __future__ import annotations

import pytest
import torch
import typer

from accord import cli
from accord.config import ConfigError, check_resources, config_from_dict, load_config
from accord.errors import UserError
from accord.evaluate import open_checkpoint
from accord.plot import plot_runs
from accord.run_dir import new_run_dir
from learner.checkpoint import list_checkpoints, load_latest, save_checkpoint, try_load

GYM = {"env": {"kind": "gym", "tasks": ["CartPole-v1"]}, "learner": {"model": "mlp"}}


def _cfg(**learner):
    return config_from_dict({**GYM, "learner": {**GYM["learner"], **learner}})


def test_a_config_error_is_a_user_error():
    assert issubclass(ConfigError, UserError) and issubclass(UserError, ValueError)


@pytest.mark.parametrize("resources", [{}, {"CPU": 8.0}, {"CPU": 8.0, "GPU": 0.0}])
def test_cuda_learner_needs_a_gpu_resource(resources):
    with pytest.raises(ConfigError, match=r"^learner\.device: 'cuda' but the Ray cluster has no GPU"):
        check_resources(_cfg(device="cuda"), resources)
    with pytest.raises(ConfigError, match="this machine has no GPU"):
        check_resources(_cfg(device="cuda"), resources, where="this machine")


@pytest.mark.parametrize("device,resources", [
    ("cuda", {"CPU": 8.0, "GPU": 1.0}), ("auto", {"CPU": 1.0}), ("cpu", {}), ("auto", {"GPU": 2.0})])
def test_devices_the_cluster_can_run_pass(device, resources):
    check_resources(_cfg(device=device), resources)


def test_a_directory_given_as_config_names_resume(tmp_path):
    with pytest.raises(ConfigError, match=r"is a directory, not a YAML file .*--resume"):
        load_config(tmp_path)


def test_new_run_dir_under_a_file_is_a_user_error_and_creates_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    cfg = config_from_dict({**GYM, "run": {"root": str(tmp_path / "file" / "runs")}})
    with pytest.raises(UserError, match=r"^run\.root: cannot create the run directory .*NotADirectoryError"):
        new_run_dir(cfg)
    cfg = config_from_dict({**GYM, "run": {"root": str(tmp_path / "runs"), "name": "x"}})
    assert new_run_dir(cfg).parent == tmp_path / "runs"


def test_try_load_names_a_file_that_is_no_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    state, error = try_load(tmp_path / "notes.txt")
    assert state is None and error.startswith("not a torch checkpoint")
    path = save_checkpoint(tmp_path, {"x": torch.ones(2)}, step=1)
    state, error = try_load(path)
    assert error is None and torch.equal(state["x"], torch.ones(2))


def _run(tmp_path, *checkpoints: bytes | dict):
    (tmp_path / "config.yaml").write_text("env: {kind: gym, tasks: [CartPole-v1]}\nlearner: {model: mlp}\n")
    paths = []
    for step, content in enumerate(checkpoints, start=1):
        path = save_checkpoint(tmp_path, content if isinstance(content, dict) else {}, step=step, keep=9)
        if isinstance(content, bytes):
            path.write_bytes(content)
        paths.append(path)
    return paths


def test_load_latest_for_a_reader_leaves_corrupt_files_in_place(tmp_path):
    good, bad = _run(tmp_path, {"model": {}}, b"junk")
    restored = load_latest(tmp_path, set_aside=False)
    assert restored.path == good and [p for p, _ in restored.corrupt] == [bad]
    assert list_checkpoints(tmp_path) == [good, bad] and bad.read_bytes() == b"junk"


def test_open_checkpoint_of_a_run_falls_back_and_reports_the_skip(tmp_path):
    good, bad = _run(tmp_path, {"model": {"w": torch.zeros(1)}}, b"junk")
    skipped = []
    path, run_dir, state = open_checkpoint(tmp_path, skipped.append)
    assert (path, run_dir) == (good, tmp_path) and "w" in state["model"]
    assert len(skipped) == 1 and skipped[0].startswith(f"skipped corrupt checkpoint {bad.name}: ")


def test_open_checkpoint_refusals(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint or run directory"):
        open_checkpoint(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not a run directory"):
        open_checkpoint(tmp_path)
    (bad,) = _run(tmp_path, b"junk")
    skipped = []
    with pytest.raises(UserError, match=rf"none of the 1 checkpoints .*{bad.name}: not a torch checkpoint"):
        open_checkpoint(tmp_path, skipped.append)
    assert skipped == []  # the error line says it all
    with pytest.raises(UserError, match="does not load as a checkpoint"):
        open_checkpoint(bad)  # a file named outright is never swapped for another
    loose = save_checkpoint(tmp_path / "elsewhere", {"model": {}}, step=1)
    with pytest.raises(UserError, match="no config.yaml in"):
        open_checkpoint(loose)


def test_plot_refusals_write_nothing(tmp_path):
    with pytest.raises(UserError, match="no such run directory"):
        plot_runs([tmp_path / "nowhere"], tmp_path / "out")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("frames,return/a\n")
    with pytest.raises(UserError, match="nothing to plot"):
        plot_runs([tmp_path / "run"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "run" / "metrics.csv").write_text("frames,return/a\n1,2\n2,3\n")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"^--out: cannot write the plots to .*file/plots"):
        plot_runs([tmp_path / "run"], tmp_path / "file" / "plots")


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cpu:0", "CUDA"])
def test_unknown_devices(device):
    with pytest.raises(UserError, match=rf"^--device: '{device}' is not a device"):
        cli._torch_device("--device", device)


def test_cuda_device_must_exist():
    assert cli._torch_device("--device", "cpu") == "cpu"
    count = torch.cuda.device_count()
    with pytest.raises(UserError, match="--device cuda:"):
        cli._torch_device("--device", f"cuda:{count}")


def test_bad_input_becomes_one_line_and_exit_2(capsys):
    with pytest.raises(typer.Exit) as info:
        with cli._one_line_errors():
            raise UserError("thing: wrong")
    assert info.value.exit_code == 2
    assert capsys.readouterr().err == "error: thing: wrong\n"
    with pytest.raises(typer.Exit):
        with cli._one_line_errors():
            raise ConfigError("learner.lr: must be > 0")
    assert capsys.readouterr().err == "config error: learner.lr: must be > 0\n"


@pytest.mark.parametrize("bug", [RuntimeError("bug"), KeyError("bug"), ValueError("bug"), FileNotFoundError("bug")])
def test_a_bug_keeps_its_traceback(bug):
    with pytest.raises(type(bug)):
        with cli._one_line_errors():
            raise bug
