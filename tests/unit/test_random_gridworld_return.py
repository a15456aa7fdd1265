"""The random-policy floor of the gridworld comparison (tests/learning/test_aux.py) is what the
gridworlds give now: a fresh, smaller measurement agrees with each stored value."""
import pytest

from tests.support.random_gridworld_return import RANDOM_RETURN, random_return


@pytest.mark.parametrize("world", sorted(RANDOM_RETURN))
def test_the_stored_floor_matches_a_fresh_measurement(world):
    mean, stderr = random_return(world, episodes=2_000, seed=1)
    assert abs(mean - RANDOM_RETURN[world]) < 4 * stderr + 0.01, (world, mean, stderr)
