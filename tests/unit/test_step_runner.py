"""`learner.compile`'s modes: which one `auto` picks, where `graphs` is refused, and a compile
that fails part-way through the first update: the state is restored, the update runs eagerly
once, one line says why."""
import pytest
import torch

from accord.config import ConfigError, config_from_dict
from learner.step_runner import StepRunner, resolve_mode


def test_auto_is_eager_on_the_cpu_and_graphs_need_cuda():
    assert resolve_mode("auto", torch.device("cpu")) == "off"
    assert resolve_mode("auto", torch.device("cuda")) == "graphs"
    assert resolve_mode("compile", torch.device("cpu")) == "compile"
    with pytest.raises(ValueError, match="graphs.*needs learner.device cuda"):
        resolve_mode("graphs", torch.device("cpu"))
    with pytest.raises(ValueError, match="learner.compile must be one of"):
        resolve_mode("jit", torch.device("cpu"))


def test_graphs_on_a_cpu_learner_is_a_config_error():
    with pytest.raises(ConfigError, match="learner.compile: 'graphs'"):
        config_from_dict({"learner": {"compile": "graphs", "device": "cpu"}})


class _Counter:
    """A learner whose update adds 1 to its weight."""

    def __init__(self):
        self.w = torch.zeros(1)

    def update(self):
        self.w += 1

    def save(self):
        return {"w": self.w}

    def load(self, saved):
        self.w.copy_(saved["w"])


def test_a_compile_that_fails_part_way_restores_the_state_and_runs_eagerly(monkeypatch, capsys):
    learner = _Counter()

    def half_compiled(fn):
        def run():
            learner.w += 100           # a first piece ran compiled, then the next failed
            raise RuntimeError("unsupported op\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", half_compiled)
    runner = StepRunner(learner.update, "compile", torch.device("cpu"), learner.save,
                        learner.load, name="test update")
    runner()                                  # the first call: eager (a warm-up)
    runner()                                  # the first compiled call, which fails
    assert learner.w.item() == 2 and runner.mode == "off"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["learner.compile: compile of the test update failed (RuntimeError: unsupported "
                   "op); running it eagerly"]
    runner()
    assert learner.w.item() == 3


def test_a_fast_path_that_disagrees_with_the_eager_update_is_not_used(monkeypatch, capsys):
    learner = _Counter()
    monkeypatch.setattr(torch, "compile", lambda fn: lambda: learner.w.add_(1.01))
    runner = StepRunner(learner.update, "compile", torch.device("cpu"), learner.save,
                        learner.load, name="test update")
    runner()
    runner()
    assert learner.w.item() == 2 and runner.mode == "off"
    assert "its result differs from the eager update at w: max |difference| 0.01" in \
        capsys.readouterr().err


def test_a_fast_path_that_agrees_is_used_from_then_on(monkeypatch, capsys):
    learner = _Counter()
    compiled = []

    def fake_compile(fn):
        def run():
            compiled.append(1)
            fn()
        return run
    monkeypatch.setattr(torch, "compile", fake_compile)
    runner = StepRunner(learner.update, "compile", torch.device("cpu"), learner.save,
                        learner.load)
    for _ in range(4):
        runner()
    assert learner.w.item() == 4 and runner.mode == "compile" and len(compiled) == 3
    assert capsys.readouterr().err == ""
