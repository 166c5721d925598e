"""Inbound quotas: how many requests a route, and one sender address on it, may make a minute.

``bridge.ingest`` asks ``Quotas.admit`` before it reads anything of a request but its route,
so a flood is answered 429 for the price of a dictionary look-up. The count that matters is
shared by every web process on every machine: a counter per route (and address) and minute in
Redis. Each process counts what it admits and adds it to that counter in batches of a twentieth
of the quota (``defaults.QUOTA_SYNC_SHARE``), one INCRBY + EXPIRE pipeline that also reads the
total back: about twenty round trips per route and minute whatever the traffic. Once the total
it knows of is at the limit, the process refuses by itself until the window ends, so the rest of
a flood costs no Redis call at all.

A refusal is never wrong (the shared count only grows within a window). Admissions may pass a
quota by what the other processes admitted and have not pushed yet, less than a batch each; a
process's last unfinished batch of a window is not counted anywhere.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError

from bridge import defaults, keys
from bridge.exceptions import QuotaExceeded
from bridge.settings import Route, Settings

log = logging.getLogger(__name__)

ROUTE_QUOTA = "max_requests_per_minute"
ADDRESS_QUOTA = "max_requests_per_minute_per_ip"


def sender(address: str) -> str:
    """The unit a per-address quota counts: an IPv4 address, or the /64 network of an IPv6 one
    (a single host is commonly given a whole /64 to pick addresses from)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class _Count:
    """One quota's counter as this process knows it, for the current window."""

    shared: int = 0  # the total in Redis when last read (this process's pushes included)
    pushing: int = 0  # admitted here and being added to the total right now
    pending: int = 0  # admitted here and not pushed yet

    def known(self) -> int:
        return self.shared + self.pushing + self.pending


@dataclass(frozen=True)
class _Quota:
    name: str  # the config key, named in the 429
    scope: str
    limit: int
    #: Requests a process admits before it adds them to the shared count. At least two for an
    #: address: a flood from ever new addresses, one request each, then costs no write (the
    #: process still refuses a second request from one address past a limit of one).
    batch: int


def _quota(name: str, scope: str, limit: int) -> _Quota:
    least = 2 if name == ADDRESS_QUOTA else 1
    return _Quota(name, scope, limit, max(least, math.ceil(limit * defaults.QUOTA_SYNC_SHARE)))


class Quotas:
    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        *,
        window_seconds: int = defaults.QUOTA_WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
    ):
        self.redis = redis
        self.settings = settings
        self.window_seconds = window_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._window = -1
        self._routes: dict[str, _Count] = {}
        self._senders: dict[str, _Count] = {}

    def admit(self, route: Route, address: str | None) -> None:
        """Count one request on ``route`` from ``address`` (None: unknown), or raise
        ``QuotaExceeded`` without counting it. At most one Redis round trip; none when Redis
        is down (the request is admitted: storing it will say whether Redis works)."""
        quotas = self._quotas_of(route, address)
        now = self.clock()
        window = int(now // self.window_seconds)
        with self._lock:
            if window != self._window:
                self._window = window
                self._routes.clear()
                self._senders.clear()
            counts = [self._count(quota) for quota in quotas]
            for quota, count in zip(quotas, counts, strict=True):
                if count.known() >= quota.limit:
                    raise self._exceeded(quota, route, now, window)
            pushes = []
            for quota, count in zip(quotas, counts, strict=True):
                count.pending += 1
                if not count.pushing and count.pending >= quota.batch:
                    count.pushing, count.pending = count.pending, 0
                    pushes.append((quota, count))
        if pushes:
            self._push(pushes, route, now, window)

    def refusal(self, route: Route, address: str | None) -> QuotaExceeded | None:
        """The refusal this process already knows a request would get, found without counting
        the request or asking Redis; None: ``admit`` decides."""
        quotas = self._quotas_of(route, address)
        now = self.clock()
        window = int(now // self.window_seconds)
        with self._lock:
            if window != self._window:
                return None
            for quota in quotas:
                count = self._table(quota).get(quota.scope)
                if count is not None and count.known() >= quota.limit:
                    return self._exceeded(quota, route, now, window)
        return None

    def _quotas_of(self, route: Route, address: str | None) -> list[_Quota]:
        per_route, per_address = self.settings.quotas_for(route)
        quotas = [_quota(ROUTE_QUOTA, route.name, per_route)]
        if per_address and address:
            quotas.append(_quota(ADDRESS_QUOTA, f"{route.name}:ip:{sender(address)}", per_address))
        return quotas

    def _table(self, quota: _Quota) -> dict[str, _Count]:
        return self._senders if quota.name == ADDRESS_QUOTA else self._routes

    def _count(self, quota: _Quota) -> _Count:
        table = self._table(quota)
        count = table.get(quota.scope)
        if count is None:
            if len(self._senders) >= defaults.MAX_QUOTA_COUNTERS:
                # Ever new addresses: forget the per-address counts of this window (each
                # holds less than its share unpushed) rather than grow without bound.
                self._senders.clear()
            count = table[quota.scope] = _Count()
        return count

    def _push(self, pushes: list[tuple[_Quota, _Count]], route: Route, now: float, window: int):
        pipe = self.redis.pipeline(transaction=False)
        for quota, count in pushes:
            key = keys.quota(quota.scope, window)
            pipe.incrby(key, count.pushing)
            pipe.expire(key, 2 * self.window_seconds)
        try:
            answers = pipe.execute()
        except RedisError as exc:
            log.debug("quota counts kept for later: %s", exc)
            with self._lock:
                for _, count in pushes:
                    count.pending += count.pushing
                    count.pushing = 0
            return
        over = None
        with self._lock:
            for (quota, count), total in zip(pushes, answers[::2], strict=True):
                count.shared = max(count.shared, int(total))
                count.pushing = 0
                if count.shared > quota.limit and over is None:
                    over = quota
        if over is not None:
            # Other processes took the rest meanwhile: this request is the one past the limit.
            raise self._exceeded(over, route, now, window)

    def _exceeded(self, quota: _Quota, route: Route, now: float, window: int) -> QuotaExceeded:
        retry_after = max(1, math.ceil((window + 1) * self.window_seconds - now))
        who = " from one address" if quota.name == ADDRESS_QUOTA else ""
        return QuotaExceeded(
            f"route {route.name!r} accepts at most {quota.limit} requests a minute{who} "
            f"({quota.name}): retry in {retry_after} s",
            quota=quota.name,
            limit=quota.limit,
            retry_after=retry_after,
        )
