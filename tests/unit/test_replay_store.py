"""The Redis URL of a durable replay: the password joins it from the environment, and never
reaches a message."""
import redis

from accord.replay_store import redacted, with_password
from replay.sharding import is_loopback_url


def test_the_password_joins_a_url_that_has_none_and_never_replaces_one():
    assert with_password("redis://h:6380/0", "p@ss w") == "redis://:p%40ss%20w@h:6380/0"
    assert with_password("redis://user@h:6380/0", "pw") == "redis://user:pw@h:6380/0"
    assert with_password("redis://:mine@h:6380/0", "pw") == "redis://:mine@h:6380/0"
    assert with_password("redis://h:6380/0", None) == "redis://h:6380/0"
    unix = with_password("unix:///run/redis.sock?db=1", "p w/")
    assert unix == "unix:///run/redis.sock?db=1&password=p+w%2F"
    assert redis.connection.parse_url(unix) == {"path": "/run/redis.sock", "db": 1, "password": "p w/",
                                                "connection_class": redis.UnixDomainSocketConnection}
    assert with_password("unix:///run/redis.sock?password=mine", "pw") == "unix:///run/redis.sock?password=mine"
    # Characters that would end the user or the host part are escaped; a user part is kept as
    # written (escaped already), and an empty password in the URL counts as none.
    assert with_password("redis://h:6380/0", "a/b@c:d") == "redis://:a%2Fb%40c%3Ad@h:6380/0"
    assert with_password("redis://us%40er@h:6380/0", "pw") == "redis://us%40er:pw@h:6380/0"
    assert with_password("redis://user:@h:6380/0", "pw") == "redis://user:pw@h:6380/0"
    # A unix socket's URL with a user part keeps its two slashes.
    assert with_password("unix://user@/run/redis.sock", "pw") == "unix://user@/run/redis.sock?password=pw"


def test_messages_show_the_url_without_its_password():
    assert redacted("redis://:s3cret@h:6380/0") == "redis://h:6380/0"
    assert redacted("redis://user:s3cret@h:6380/0") == "redis://h:6380/0"
    assert redacted("redis://:p@ss@h:6380/0") == "redis://h:6380/0"  # an @ in the password itself
    assert redacted("unix:///run/redis.sock?db=1&password=s3cret") == "unix:///run/redis.sock?db=1&password=%2A%2A%2A"


def test_only_a_loopback_redis_pins_the_replay_shards_to_the_driver_s_node():
    assert is_loopback_url("redis://:pw@127.0.0.1:6380/0")
    assert is_loopback_url("redis://localhost:6380/0")
    assert is_loopback_url("unix:///run/redis.sock")
    assert not is_loopback_url("redis://10.0.0.5:6380/0")
