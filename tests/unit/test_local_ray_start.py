"""tests/support/local_ray.py: a local Ray node that missed Ray's fixed registration window is
started once more, with a warning; any other start-up error is raised at once."""
import pytest
import ray

from tests.support.local_ray import init_local_ray

TIMED_OUT = ("The current node timed out during startup. This could happen because some of the "
             "raylet failed to startup or the GCS has become overloaded.")


def test_a_start_that_timed_out_is_tried_once_more_with_a_warning(monkeypatch):
    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise Exception(TIMED_OUT)

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    with pytest.warns(RuntimeWarning, match="registration window"):
        init_local_ray(num_cpus=1)
    assert calls == [{"address": "local", "num_cpus": 1}, "shutdown", {"address": "local", "num_cpus": 1}]


def test_a_second_timeout_and_any_other_error_are_raised(monkeypatch):
    def timed_out(**kwargs):
        raise Exception(TIMED_OUT)

    monkeypatch.setattr(ray, "init", timed_out)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.warns(RuntimeWarning), pytest.raises(Exception, match="timed out during startup"):
        init_local_ray()

    def bad_argument(**kwargs):
        raise ValueError("unknown argument")

    monkeypatch.setattr(ray, "init", bad_argument)
    with pytest.raises(ValueError):
        init_local_ray()
