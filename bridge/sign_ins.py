"""Wrong admin tokens counted per client address in Redis, so that every web process shares the
count: past ``defaults.ADMIN_SIGN_IN_FAILURES`` within ``ADMIN_SIGN_IN_WINDOW_SECONDS`` of the
first, the address is refused with 429 until the window ends, whatever it sends.

Refusing the right token too is the point: were it let through, a guesser would go on at full
speed and tell a hit from the 429s. A session signed in before keeps working (it holds no token
to guess). Addresses are counted as the quotas count senders (``bridge.quotas.sender``): an
IPv6 host is given a whole /64 to pick from.
"""

from __future__ import annotations

import math

from redis import Redis

from bridge import defaults, keys
from bridge.quotas import sender


class SignInLimit:
    """The shared count of wrong admin tokens per client address, and the wait it imposes."""

    def __init__(
        self,
        redis: Redis,
        *,
        failures: int = defaults.ADMIN_SIGN_IN_FAILURES,
        window_seconds: int = defaults.ADMIN_SIGN_IN_WINDOW_SECONDS,
    ):
        self.redis = redis
        self.failures = failures
        self.window_seconds = window_seconds

    def retry_after(self, address: str | None) -> int | None:
        """Whole seconds until ``address`` may send a token again; None while it may."""
        key = keys.sign_in_failures(sender(address or ""))
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        count, ttl_ms = pipe.execute()
        if count is None or int(count) < self.failures:
            return None
        if ttl_ms < 0:  # no expiry (never set so by us): wait one window from now
            self.redis.expire(key, self.window_seconds)
            ttl_ms = self.window_seconds * 1000
        return max(1, math.ceil(ttl_ms / 1000))

    def failed(self, address: str | None) -> None:
        """Count a wrong token from ``address``; the first of a window starts it."""
        key = keys.sign_in_failures(sender(address or ""))
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(key, 0, ex=self.window_seconds, nx=True)
        pipe.incr(key)
        pipe.execute()


def waiting_message(seconds: int) -> str:
    """What a refused address is told."""
    minutes = math.ceil(seconds / 60)
    wait = f"{minutes} minute{'s' if minutes != 1 else ''}" if seconds > 60 else f"{seconds} s"
    return (
        f"Too many wrong admin tokens from your address: try again in {wait}. "
        "The sign-in stays closed to it until then, even for the right token."
    )
