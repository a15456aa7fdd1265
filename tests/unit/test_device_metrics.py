"""The device-side metric sums and non-finite guard: means over the updates that recorded a
value, a skipped update left out, one read that starts the sums again; runs of skipped updates
counted on the device and judged at the read, even a run that a later good update ended."""
import pytest
import torch

from learner.algorithm import NonFiniteLossError
from learner.device_metrics import DeviceMetrics, DeviceNonFiniteGuard

T = torch.tensor


def test_a_read_gives_each_values_mean_over_the_updates_that_recorded_it():
    metrics = DeviceMetrics("cpu")
    metrics.record({"loss": T(1.0), "norm": T(4.0)})
    metrics.record({"loss": T(3.0)})
    metrics.record({"loss": T(float("nan")), "norm": T(float("inf"))}, ok=T(False))
    metrics.record({"loss": T(5.0), "norm": 2.0}, ok=T(True))   # a host number is taken too
    assert metrics.read() == {"loss": 3.0, "norm": 3.0}
    assert metrics.read() == {}
    metrics.record({"norm": T(7.0)})
    assert metrics.read() == {"norm": 7.0}


def test_a_snapshot_restored_undoes_the_records_since():
    metrics = DeviceMetrics("cpu")
    metrics.record({"loss": T(1.0)})
    saved = {k: v.clone() for k, v in metrics.snapshot().items()}
    metrics.record({"loss": T(100.0)})
    metrics.restore(saved)
    assert metrics.read() == {"loss": 1.0}


def _observe(guard, ok, part=0, detail=(0.0, 0.0)):
    guard.observe(T(ok), T(part), T(detail))


def test_the_guard_counts_on_the_device_and_judges_at_the_read():
    guard = DeviceNonFiniteGuard(3, "cpu", parts=("critic", "actor"))
    _observe(guard, False)
    _observe(guard, False)
    _observe(guard, True)
    assert (guard.total, guard.run) == (0, 0)          # nothing read yet
    guard.read()
    assert (guard.total, guard.run) == (2, 0)
    _observe(guard, False)
    _observe(guard, False)
    _observe(guard, False, part=1, detail=(float("nan"), 2.5))
    _observe(guard, True)                               # the run ended, but it happened
    with pytest.raises(NonFiniteLossError,
                       match=r"^3 consecutive non-finite updates \(last: actor losses \[nan\], "
                             r"gradient norm 2.5\)"):
        guard.read()
    assert (guard.total, guard.run) == (5, 0)


def test_a_run_carries_across_reads_and_sync_never_raises():
    guard = DeviceNonFiniteGuard(2, "cpu")
    _observe(guard, False)
    guard.read()
    _observe(guard, False)
    guard.sync()                                        # a checkpoint's read: no judgement
    assert (guard.total, guard.run) == (2, 2)
    with pytest.raises(NonFiniteLossError, match="^2 consecutive"):
        guard.read()
    guard.load(7, 1)
    assert (guard.total, guard.run) == (7, 1)
    _observe(guard, False)
    with pytest.raises(NonFiniteLossError, match="^2 consecutive"):
        guard.read()
