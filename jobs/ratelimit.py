"""The per-API-key limiter every worker shares, in Redis: sliding windows, lanes, 429 pauses and
an adaptive share of the budget for keys another program also spends.

OliAI allows 60 general and 10 bulk requests a minute per key (bulk also counts as general).
Each worker asks for a token before each call; the answer is "go" or "not before N seconds",
and the work is then put back for that moment rather than sleeping. The budget is split by
lane: a backfill may use all but ``LIVE_RESERVE`` of it, so a live lead finds a token while a
deep backfill drains the same key. A 429 pauses the key for every worker until its Retry-After
and, since we never send without a token, means someone else spends the key too: our budget for
it halves and grows back window by window while no 429 comes (AIMD, state shared in Redis).
Keys are identified by a hash: the API key itself is never written to Redis. Time is Redis's
own clock, so processes on different machines agree.
"""

from __future__ import annotations

import contextvars
import hashlib
import math
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis

from bridge import defaults, keys, metrics
from bridge.exceptions import RateLimited

GENERAL = "general"
BULK = "bulk"
#: The AIMD state lives as long as the budget is reduced, and a day at most.
AIMD_TTL_MS = 24 * 3600 * 1000

# KEYS: pause, general window, bulk window, aimd hash
# ARGV: window_ms, general_limit, bulk_limit, is_bulk (0/1), member, backfill (0/1),
#       live reserve (0..1), aimd step, take (0/1: 0 only tells the wait, writing nothing)
# Returns 0 when a token is free (and was taken, with take=1), else milliseconds to wait.
ACQUIRE = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local take = ARGV[9] == '1'
local pause = redis.call('PTTL', KEYS[1])
if pause > 0 then return pause end
local factor = tonumber(redis.call('HGET', KEYS[4], 'factor') or '1')
if factor < 1 then
  local changed = tonumber(redis.call('HGET', KEYS[4], 'changed') or '0')
  local windows = math.floor((now - changed) / window)
  if windows >= 1 then
    factor = math.min(1, factor + tonumber(ARGV[8]) * windows)
    if take then
      if factor >= 1 then
        redis.call('DEL', KEYS[4])
      else
        redis.call('HSET', KEYS[4], 'factor', tostring(factor),
                   'changed', tostring(changed + windows * window))
      end
    end
  end
end
local function limit_of(base)
  local limit = math.max(1, math.floor(tonumber(base) * factor))
  if ARGV[6] == '1' then
    limit = math.max(1, math.floor(limit * (1 - tonumber(ARGV[7]))))
  end
  return limit
end
local function wait_for(key, limit)
  local count = redis.call('ZCOUNT', key, now - window + 1, '+inf')
  if count < limit then return 0 end
  -- the (count - limit + 1)-th oldest stamp in the window has to leave it first
  local stamps = redis.call('ZRANGEBYSCORE', key, now - window + 1, '+inf', 'WITHSCORES',
                            'LIMIT', count - limit, 1)
  return math.max(1, tonumber(stamps[2]) + window - now)
end
local wait = wait_for(KEYS[2], limit_of(ARGV[2]))
if ARGV[4] == '1' then wait = math.max(wait, wait_for(KEYS[3], limit_of(ARGV[3]))) end
if wait > 0 or not take then return wait end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('PEXPIRE', KEYS[2], window + 1000)
if ARGV[4] == '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
  redis.call('ZADD', KEYS[3], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[3], window + 1000)
end
return 0
"""

# KEYS: pause, aimd hash; ARGV: milliseconds, window_ms, minimum share, ttl_ms
# Only ever lengthens a pause; halves the budget at most once per half window.
PAUSE = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = redis.call('PTTL', KEYS[1])
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
local cut = tonumber(redis.call('HGET', KEYS[2], 'cut') or '0')
if now - cut >= tonumber(ARGV[2]) / 2 then
  local factor = tonumber(redis.call('HGET', KEYS[2], 'factor') or '1')
  factor = math.max(tonumber(ARGV[3]), factor / 2)
  redis.call('HSET', KEYS[2], 'factor', tostring(factor), 'changed', tostring(now),
             'cut', tostring(now))
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return redis.call('PTTL', KEYS[1])
"""

# KEYS: aimd hash; ARGV: window_ms, step. The share now in force (1 = the whole budget).
SHARE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local factor = tonumber(redis.call('HGET', KEYS[1], 'factor') or '1')
if factor < 1 then
  local changed = tonumber(redis.call('HGET', KEYS[1], 'changed') or '0')
  local windows = math.floor((now - changed) / tonumber(ARGV[1]))
  factor = math.min(1, factor + tonumber(ARGV[2]) * windows)
end
return tostring(factor)
"""

#: The lane a worker is spending tokens for right now (``RateLimiter.for_lane``).
_lane: contextvars.ContextVar[str] = contextvars.ContextVar("lane", default=defaults.LIVE_LANE)


def key_id(api_key: str) -> str:
    """A stable, non-reversible name for an API key (for Redis keys and logs)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


class RateLimiter:
    """``acquire(rate_class)`` before each call; ``pause(seconds)`` after a 429."""

    def __init__(
        self,
        redis: Redis,
        api_key: str,
        *,
        window_seconds: float = defaults.RATE_WINDOW_SECONDS,
        general_per_window: int = defaults.GENERAL_PER_MINUTE,
        bulk_per_window: int = defaults.BULK_PER_MINUTE,
        headroom: float = defaults.RATE_HEADROOM,
        live_reserve: float = defaults.LIVE_RESERVE,
    ):
        self.redis = redis
        self.kid = key_id(api_key)
        self.pause_key = keys.pause(self.kid)
        self.general_key = keys.rate_window(self.kid, GENERAL)
        self.bulk_key = keys.rate_window(self.kid, BULK)
        self.aimd_key = keys.rate_share(self.kid)
        self.window_ms = int(window_seconds * 1000)
        self.general_limit = max(1, math.floor(general_per_window * headroom))
        self.bulk_limit = max(1, math.floor(bulk_per_window * headroom))
        self.live_reserve = live_reserve
        self._acquire = redis.register_script(ACQUIRE)
        self._pause = redis.register_script(PAUSE)
        self._share = redis.register_script(SHARE)
        self._seq = 0
        self._uid = secrets.token_hex(8)

    def __repr__(self) -> str:
        return f"RateLimiter(key={self.kid}, general={self.general_limit}, bulk={self.bulk_limit})"

    @property
    def window_seconds(self) -> float:
        return self.window_ms / 1000.0

    @staticmethod
    @contextmanager
    def for_lane(lane: str) -> Iterator[None]:
        """Tokens taken inside the block are the ``lane``'s (a backfill's leave the reserve)."""
        token = _lane.set(lane)
        try:
            yield
        finally:
            _lane.reset(token)

    def _run(self, rate_class: str, lane: str | None, take: bool) -> int:
        lane = lane or _lane.get()
        self._seq += 1
        # Unique across processes and limiter objects: a member taken twice would count once
        # (an ``id()`` is reused once its object is gone, so it cannot name the limiter).
        member = f"{self._uid}:{self._seq}"
        return int(
            self._acquire(
                keys=[self.pause_key, self.general_key, self.bulk_key, self.aimd_key],
                args=[
                    self.window_ms,
                    self.general_limit,
                    self.bulk_limit,
                    "1" if rate_class == BULK else "0",
                    member,
                    "1" if lane == defaults.BACKFILL_LANE else "0",
                    self.live_reserve,
                    defaults.AIMD_STEP,
                    "1" if take else "0",
                ],
            )
        )

    def acquire(self, rate_class: str = GENERAL, lane: str | None = None) -> None:
        """Take a token or raise ``RateLimited`` with the seconds until one is free."""
        wait_ms = self._run(rate_class, lane, take=True)
        if wait_ms > 0:
            metrics.limiter_wait(self.redis, self.kid, wait_ms / 1000.0)
            raise RateLimited(wait_ms / 1000.0, "local rate limit: no token free yet")

    def wait_time(self, rate_class: str = GENERAL, lane: str | None = None) -> float:
        """Seconds until a token of ``rate_class`` would be free (0: now), taking none."""
        wait = max(0, self._run(rate_class, lane, take=False)) / 1000.0
        if wait > 0:  # the caller puts the work off for this long
            metrics.limiter_wait(self.redis, self.kid, wait)
        return wait

    def pause(self, seconds: float) -> float:
        """The API said 429: pause the key for every worker and halve our budget for it.
        Returns the pause now in force, in seconds."""
        ms = max(1, int(math.ceil(seconds * 1000)))
        return (
            int(
                self._pause(
                    keys=[self.pause_key, self.aimd_key],
                    args=[ms, self.window_ms, defaults.AIMD_MIN_SHARE, AIMD_TTL_MS],
                )
            )
            / 1000.0
        )

    def paused_for(self) -> float:
        ms = self.redis.pttl(self.pause_key)
        return max(0, ms) / 1000.0

    def usage(self) -> dict[str, float]:
        """Tokens taken in the current window and the pause left, read without taking one."""
        seconds, micros = self.redis.time()  # Redis's clock, as the scripts use
        since = seconds * 1000 + micros // 1000 - self.window_ms
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcount(self.general_key, f"({since}", "+inf")
        pipe.zcount(self.bulk_key, f"({since}", "+inf")
        pipe.pttl(self.pause_key)
        general, bulk, pause_ms = pipe.execute()
        return {
            "general_used": general,
            "general_limit": self.general_limit,
            "bulk_used": bulk,
            "bulk_limit": self.bulk_limit,
            "paused_for": max(0, pause_ms) / 1000.0,
        }

    def share(self) -> float:
        """The share of the budget in force now (1.0: all of it; less after 429s)."""
        return float(self._share(keys=[self.aimd_key], args=[self.window_ms, defaults.AIMD_STEP]))

    def limits(self, lane: str = defaults.LIVE_LANE) -> dict[str, int]:
        """Requests per window the ``lane`` may make now, by class."""
        factor = self.share()
        out = {}
        for name, base in ((GENERAL, self.general_limit), (BULK, self.bulk_limit)):
            limit = max(1, math.floor(base * factor))
            if lane == defaults.BACKFILL_LANE:
                limit = max(1, math.floor(limit * (1 - self.live_reserve)))
            out[name] = limit
        return out
