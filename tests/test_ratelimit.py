"""The limiter every worker shares, over a real Redis: windows, lanes, pauses and AIMD."""

import threading
import time

import pytest
from redis import Redis

from bridge.exceptions import RateLimited
from jobs.ratelimit import RateLimiter

KEY = "sk_live_" + "limitertest".ljust(32, "5")


def limiter(redis, **kw) -> RateLimiter:
    options = {
        "window_seconds": 2.0,
        "general_per_window": 8,
        "bulk_per_window": 4,
        "headroom": 1.0,
        **kw,
    }
    return RateLimiter(redis, KEY, **options)


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
        own = limiter(Redis.from_url(redis_server.url))
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
    assert 0 < limiter(redis).wait_time() <= 2.0


def test_bulk_counts_against_both_classes(redis):
    lim = limiter(redis)
    assert takes(lim, 6, "bulk") == 4
    assert takes(lim, 6, "general") == 4  # 8 general in all, 4 of them were bulk
    assert lim.wait_time("general") > 0


def test_a_backfill_leaves_live_leads_a_share(redis):
    lim = limiter(redis)
    assert lim.limits("backfill") == {"general": 6, "bulk": 3}
    assert takes(lim, 10, "general", "backfill") == 6
    assert lim.wait_time("general", "backfill") > 0
    assert lim.wait_time("general", "live") == 0
    assert takes(lim, 10, "general", "live") == 2
    with RateLimiter.for_lane("backfill"):
        with pytest.raises(RateLimited):
            lim.acquire("general")


def test_a_429_pauses_every_worker_and_halves_the_share(redis):
    lim = limiter(redis, window_seconds=0.4)
    other_worker = limiter(redis, window_seconds=0.4)
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
    lim = limiter(redis, window_seconds=window)
    shares = []
    for _ in range(5):
        lim.pause(0.001)
        cut_at = time.monotonic()
        shares.append(lim.share())
        time.sleep(window / 2 + 0.01)  # half a window: the next 429 may cut again
    assert shares[0] == 0.5 and shares[-1] == pytest.approx(0.1)  # never below a tenth
    assert limiter(redis, window_seconds=window).limits() == {"general": 1, "bulk": 1}
    time.sleep(2 * window)
    share, windows = lim.share(), (time.monotonic() - cut_at) / window
    # a tenth back per whole window since the last cut (give or take the window in progress)
    assert 0.3 - 1e-9 <= share <= min(1.0, 0.1 + 0.1 * (int(windows) + 1)) + 1e-9
    lim.acquire()  # taking a token records the growth
    time.sleep(10 * window)
    assert lim.share() == 1.0
    assert takes(lim, 10) == 8
