"""The per-API-key limiter every worker shares (``jobs.ratelimit``), over a real Redis: 85 % of
the published budget, bulk calls counted in both classes, pauses after a 429 that hold for every
worker, and the API key itself never written to Redis."""

from __future__ import annotations

import threading
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
        if kind == b"zset":
            values = redis.zrange(k, 0, -1)
        elif kind == b"hash":  # our share of the key after the pause's 429
            values = [*redis.hkeys(k), *redis.hvals(k)]
        else:
            values = [redis.get(k) or b""]
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


# --- lanes and the share of a key (AIMD) ----------------------------------------------------

LANES_KEY = "sk_live_" + "limitertest".ljust(32, "5")


def exact(redis, **kw) -> RateLimiter:
    """A limiter with the whole budget (no headroom), a 2 s window, 8 general and 4 bulk."""
    options = {
        "window_seconds": 2.0,
        "general_per_window": 8,
        "bulk_per_window": 4,
        "headroom": 1.0,
        **kw,
    }
    return RateLimiter(redis, LANES_KEY, **options)


def takes(lim: RateLimiter, count: int, rate_class="general", lane=None) -> int:
    taken = 0
    for _ in range(count):
        try:
            lim.acquire(rate_class, lane)
            taken += 1
        except RateLimited:
            pass
    return taken


def test_workers_share_one_budget_per_key(redis, redis_server):
    # Several workers, each with its own connection and limiter, all spending one key.
    granted = []
    lock = threading.Lock()

    def worker() -> None:
        own = exact(Redis.from_url(redis_server.url))
        got = takes(own, 10)
        with lock:
            granted.append(got)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 8  # 40 asked for, the key's 8 given out once in all
    other = RateLimiter(redis, "sk_live_" + "another".ljust(32, "6"), headroom=1.0)
    other.acquire()  # another key's budget is its own
    assert 0 < exact(redis).wait_time() <= 2.0


def test_bulk_counts_against_both_classes(redis):
    lim = exact(redis)
    assert takes(lim, 6, "bulk") == 4
    assert takes(lim, 6, "general") == 4  # 8 general in all, 4 of them were bulk
    assert lim.wait_time("general") > 0


def test_a_backfill_leaves_live_leads_a_share(redis):
    lim = exact(redis)
    assert lim.limits("backfill") == {"general": 6, "bulk": 3}
    assert takes(lim, 10, "general", "backfill") == 6
    assert lim.wait_time("general", "backfill") > 0
    assert lim.wait_time("general", "live") == 0
    assert takes(lim, 10, "general", "live") == 2
    with RateLimiter.for_lane("backfill"):
        with pytest.raises(RateLimited):
            lim.acquire("general")


def test_a_429_pauses_every_worker_and_halves_the_share(redis):
    lim = exact(redis, window_seconds=0.4)
    other_worker = exact(redis, window_seconds=0.4)
    assert lim.share() == 1.0
    assert lim.pause(0.3) > 0
    with pytest.raises(RateLimited):
        other_worker.acquire()
    assert other_worker.share() == 0.5
    assert other_worker.limits() == {"general": 4, "bulk": 2}
    lim.pause(0.3)  # more 429s from requests already in flight: one cut, not two
    assert lim.share() == 0.5
    time.sleep(0.35)
    assert takes(lim, 8) == 4  # the pause is over; half the budget


def test_the_share_grows_back_window_by_window_and_has_a_floor(redis):
    window = 0.2
    lim = exact(redis, window_seconds=window)
    shares = []
    for _ in range(5):
        lim.pause(0.001)
        cut_at = time.monotonic()
        shares.append(lim.share())
        time.sleep(window / 2 + 0.01)  # half a window: the next 429 may cut again
    assert shares[0] == 0.5 and shares[-1] == pytest.approx(0.1)  # never below a tenth
    assert exact(redis, window_seconds=window).limits() == {"general": 1, "bulk": 1}
    time.sleep(2 * window)
    share, windows = lim.share(), (time.monotonic() - cut_at) / window
    # a tenth back per whole window since the last cut (give or take the window in progress)
    assert 0.3 - 1e-9 <= share <= min(1.0, 0.1 + 0.1 * (int(windows) + 1)) + 1e-9
    lim.acquire()  # taking a token records the growth
    time.sleep(10 * window)
    assert lim.share() == 1.0
    assert takes(lim, 10) == 8
