"""The per-API-key limiter every worker shares, in Redis: sliding windows and 429 pauses.

OliAI allows 60 general and 10 bulk requests a minute per key (bulk also counts as general).
Each worker asks for a token before each call; the answer is "go" or "not before N seconds",
and the job is then rescheduled for that moment rather than sleeping. A 429 pauses the key for
every worker until its Retry-After. Keys are identified by a hash: the API key itself is never
written to Redis. Time is Redis's own clock, so processes on different machines agree.
"""

from __future__ import annotations

import hashlib
import math

from redis import Redis

from bridge import defaults, keys, metrics
from bridge.exceptions import RateLimited

# KEYS: pause, general window, bulk window
# ARGV: window_ms, general_limit, bulk_limit, is_bulk (0/1), member
# Returns 0 when a token was taken, else milliseconds to wait.
ACQUIRE = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local pause = redis.call('PTTL', KEYS[1])
if pause > 0 then return pause end
local function wait_for(key, limit)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) < limit then return 0 end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
local wait = wait_for(KEYS[2], tonumber(ARGV[2]))
if ARGV[4] == '1' then wait = math.max(wait, wait_for(KEYS[3], tonumber(ARGV[3]))) end
if wait > 0 then return wait end
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('PEXPIRE', KEYS[2], window + 1000)
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[3], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[3], window + 1000)
end
return 0
"""

# Like ACQUIRE without taking the token: milliseconds until one would be free (0: now).
# KEYS: pause, general window; ARGV: window_ms, general_limit
PEEK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause = redis.call('PTTL', KEYS[1])
if pause > 0 then return pause end
local window = tonumber(ARGV[1])
local stamps = redis.call('ZRANGEBYSCORE', KEYS[2], now - window, '+inf', 'WITHSCORES')
local count = #stamps / 2
if count < tonumber(ARGV[2]) then return 0 end
local oldest = tonumber(stamps[2 * (count - tonumber(ARGV[2])) + 2])
return math.max(1, oldest + window - now)
"""

# KEYS: pause; ARGV: milliseconds. Only ever lengthens a pause.
PAUSE = """
local current = redis.call('PTTL', KEYS[1])
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return redis.call('PTTL', KEYS[1])
"""


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
    ):
        self.redis = redis
        self.kid = key_id(api_key)
        self.pause_key = keys.pause(self.kid)
        self.general_key = keys.rate_window(self.kid, "general")
        self.bulk_key = keys.rate_window(self.kid, "bulk")
        self.window_ms = int(window_seconds * 1000)
        self.general_limit = max(1, math.floor(general_per_window * headroom))
        self.bulk_limit = max(1, math.floor(bulk_per_window * headroom))
        self._acquire = redis.register_script(ACQUIRE)
        self._pause = redis.register_script(PAUSE)
        self._peek = redis.register_script(PEEK)
        self._seq = 0

    def __repr__(self) -> str:
        return f"RateLimiter(key={self.kid}, general={self.general_limit}, bulk={self.bulk_limit})"

    def acquire(self, rate_class: str = "general") -> None:
        """Take a token or raise ``RateLimited`` with the seconds until one is free."""
        self._seq += 1
        member = f"{id(self)}:{self._seq}:{self.redis.connection_pool.pid}"
        wait_ms = self._acquire(
            keys=[self.pause_key, self.general_key, self.bulk_key],
            args=[
                self.window_ms,
                self.general_limit,
                self.bulk_limit,
                "1" if rate_class == "bulk" else "0",
                member,
            ],
        )
        if wait_ms and int(wait_ms) > 0:
            metrics.limiter_wait(self.redis, self.kid, int(wait_ms) / 1000.0)
            raise RateLimited(int(wait_ms) / 1000.0, "local rate limit: no token free yet")

    def wait_time(self) -> float:
        """Seconds until a general token would be free (0: now), without taking one."""
        ms = self._peek(
            keys=[self.pause_key, self.general_key],
            args=[self.window_ms, self.general_limit],
        )
        wait = max(0, int(ms)) / 1000.0
        if wait > 0:  # the caller puts the delivery off for this long
            metrics.limiter_wait(self.redis, self.kid, wait)
        return wait

    @property
    def window_seconds(self) -> float:
        return self.window_ms / 1000.0

    def pause(self, seconds: float) -> float:
        """Pause the key for every worker; returns the pause now in force, in seconds."""
        ms = max(1, int(math.ceil(seconds * 1000)))
        return int(self._pause(keys=[self.pause_key], args=[ms])) / 1000.0

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
