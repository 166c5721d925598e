"""The per-API-key limiter every worker shares (``jobs.ratelimit``), over a real Redis: 85 % of
the published budget, bulk calls counted in both classes, pauses after a 429 that hold for every
worker, and the API key itself never written to Redis."""

from __future__ import annotations

import time

import pytest
from redis import Redis

from bridge.exceptions import RateLimited
from jobs.ratelimit import RateLimiter, key_id

KEY = "sk_live_" + "ratelimitertest".ljust(32, "7")
OTHER_KEY = "sk_live_" + "anotherorgkey".ljust(32, "8")


@pytest.fixture
def limiter(redis, redis_server):
    """``limiter(api_key=KEY, **options)``: a limiter on its own connection, as each worker
    process has one."""
    connections = []

    def make(api_key: str = KEY, **options) -> RateLimiter:
        connection = Redis.from_url(redis_server.url)
        connections.append(connection)
        return RateLimiter(connection, api_key, **options)

    yield make
    for connection in connections:
        connection.close()


def take(limiter: RateLimiter, rate_class: str = "general") -> int:
    """Take tokens until refused; how many were given."""
    for given in range(10_000):
        try:
            limiter.acquire(rate_class)
        except RateLimited:
            return given
    raise AssertionError("the limiter never refused")


def test_gives_85_percent_of_the_published_budget_then_names_the_wait(limiter):
    worker = limiter(window_seconds=60, general_per_window=60)
    assert take(worker) == 51
    with pytest.raises(RateLimited) as refused:
        worker.acquire()
    assert 0 < refused.value.retry_after <= 60
    assert refused.value.status is None  # our limiter, not the API's 429


def test_a_tiny_budget_still_allows_one_call(limiter):
    assert take(limiter(general_per_window=1, bulk_per_window=1)) == 1


def test_every_worker_shares_one_budget_per_key(limiter):
    one, two = limiter(general_per_window=20), limiter(general_per_window=20)
    assert take(one) + take(two) == 17  # floor(20 * 0.85), not twice that


def test_keys_are_limited_apart(limiter):
    assert take(limiter(general_per_window=20)) == 17
    assert take(limiter(OTHER_KEY, general_per_window=20)) == 17


def test_bulk_calls_count_against_both_classes(limiter):
    worker = limiter(general_per_window=60, bulk_per_window=10)
    assert take(worker, "bulk") == 8  # floor(10 * 0.85)
    assert take(worker, "general") == 51 - 8


def test_general_calls_do_not_use_up_the_bulk_budget(limiter):
    worker = limiter(general_per_window=60, bulk_per_window=10)
    for _ in range(20):
        worker.acquire("general")
    assert take(worker, "bulk") == 8


def test_a_token_comes_back_when_the_window_has_passed(limiter):
    worker = limiter(window_seconds=0.5, general_per_window=2)
    assert take(worker) == 1
    with pytest.raises(RateLimited) as refused:
        worker.acquire()
    time.sleep(refused.value.retry_after + 0.05)
    worker.acquire()  # no RateLimited


def test_wait_time_looks_without_taking(limiter):
    worker = limiter(general_per_window=20)
    for _ in range(50):
        assert worker.wait_time() == 0
    assert take(worker) == 17
    assert 0 < worker.wait_time() <= 60


def test_a_pause_stops_every_worker_on_the_key_until_it_ends(limiter):
    one, two = limiter(), limiter()
    assert 4 < one.pause(5) <= 5
    with pytest.raises(RateLimited) as refused:
        two.acquire()
    assert 4 < refused.value.retry_after <= 5
    assert 4 < two.wait_time() <= 5
    assert 4 < two.paused_for() <= 5
    limiter(OTHER_KEY).acquire()  # another key is not paused


def test_a_pause_is_only_ever_lengthened(limiter):
    worker = limiter()
    worker.pause(5)
    assert 4 < worker.pause(1) <= 5  # a shorter Retry-After does not cut the pause
    assert 9 < worker.pause(10) <= 10


def test_a_pause_ends(limiter):
    worker = limiter()
    worker.pause(0.3)
    time.sleep(0.35)
    assert worker.paused_for() == 0
    worker.acquire()


def test_the_api_key_is_never_written_to_redis(limiter, redis):
    worker = limiter()
    worker.acquire("bulk")
    worker.pause(5)
    assert key_id(KEY) not in KEY and len(key_id(KEY)) == 16
    keys = list(redis.scan_iter("*"))
    assert keys and all(key_id(KEY).encode() in k for k in keys)
    for k in keys:
        kind = redis.type(k)
        values = redis.zrange(k, 0, -1) if kind == b"zset" else [redis.get(k) or b""]
        assert not [v for v in [k, *values] if KEY.encode() in v]
    assert KEY not in repr(worker)


# --- the limiter in the delivery job ------------------------------------------------------------


def test_our_limiter_keeps_under_the_published_limit(make_client, run_jobs, sandbox):
    sandbox.configure(general_limit=10)
    client = make_client(oliai={"general_per_minute": 10})
    ids = []
    for i in range(5):
        r = client.post("/hooks/leads", json={"name": f"L{i}", "phone": f"98765432{i:02d}"})
        assert r.status_code == 202, r.json
        ids.append(r.json["deliveryId"])
    deadline = time.time() + 30
    while time.time() < deadline:
        run_jobs(client.settings, promote_scheduled=True)
        if all(client.store.get(i).status == "delivered" for i in ids):
            break
        time.sleep(0.3)
    assert {client.store.get(i).status for i in ids} == {"delivered"}
    assert all(e["status"] != 429 for e in sandbox.requests())
    # waiting for a token is neither an attempt nor an answer from the API
    assert [client.store.get(i).attempts for i in ids] == [1] * 5
    assert [client.store.get(i).last_api for i in ids] == [None] * 5
