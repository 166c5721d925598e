"""Shared fixtures: the OliAI sandbox (``sandbox_fixtures``) and the bridge's own parts
(``bridge_fixtures``: real Redis, settings, the Flask app, workers, the e2e stack)."""

import pytest

# The source tests' shared checks (``tests/sources/harness.py``) explain a failure as well as a
# test's own asserts do.
pytest.register_assert_rewrite("tests.sources.harness")

pytest_plugins = ["tests.sandbox_fixtures", "tests.bridge_fixtures"]


@pytest.fixture
def evicting_redis(redis):
    """The shared test Redis with a memory limit and a policy that evicts, put back after."""
    redis.config_set("maxmemory", 512 * 1024 * 1024)
    redis.config_set("maxmemory-policy", "allkeys-lru")
    yield redis
    redis.config_set("maxmemory", 0)
    redis.config_set("maxmemory-policy", "noeviction")
