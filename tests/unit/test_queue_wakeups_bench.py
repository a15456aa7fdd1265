"""`accord bench service --wakeups` on a small scale: both rules run, and the counts it reports
are the rules' (structure and counts only, no timing)."""
from bench.queue_wakeups import measure


def test_every_blocked_producer_checks_under_the_old_rule_and_two_under_the_new():
    old, new = measure(producers=20, capacity=8, n=2, seconds=0.2)
    assert (old["rule"], new["rule"]) == ("all", "one")
    assert old["samples"] > 0 and new["samples"] > 0
    assert old["wakeups_per_sample"] == 20.0     # each sample wakes all 20 blocked producers
    assert new["wakeups_per_sample"] == 2.0      # one per freed slot
