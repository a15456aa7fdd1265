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


def test_a_compile_that_fails_part_way_restores_the_state_and_runs_eagerly(monkeypatch, capsys):
    state = {"w": 0}
    ran = []

    def update():
        state["w"] += 1
        ran.append(dict(state))

    def half_compiled(fn):
        def run():
            state["w"] += 100           # a first piece ran compiled, then the next failed
            raise RuntimeError("unsupported op\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", half_compiled)
    runner = StepRunner(update, "compile", torch.device("cpu"), name="test update",
                        save=lambda: dict(state), load=lambda saved: state.update(saved))
    runner()
    assert ran == [{"w": 1}] and runner.mode == "off"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["learner.compile: compile of the test update failed (RuntimeError: unsupported "
                   "op); running it eagerly"]
    runner()
    assert state["w"] == 2
