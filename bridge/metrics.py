"""Counters every process shares, kept in Redis and exposed at ``/metrics`` for Prometheus.

Web processes and workers run on several machines; a per-process ``prometheus_client`` registry
would show one process's view. So counts are ``HINCRBY`` on one Redis hash and a custom
collector turns them (and live gauges: queue depth, active and failed deliveries) into metrics.
Each count also lands in an hourly bucket that lives a day, for the admin overview's "last 24 h".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

from bridge import defaults, keys

log = logging.getLogger(__name__)

SEP = "|"
#: Hourly copies of the counters; a bucket outlives the 24 hours the overview adds up.
HOURLY_TTL_SECONDS = 26 * 3600

# counter name → (help, label names)
COUNTERS = {
    "queued": ("Leads accepted and queued for delivery", ("route",)),
    "skipped": (
        "Leads accepted but not deliverable (e.g. no valid phone), kept for replay",
        ("route",),
    ),
    "duplicate": ("Repeated webhooks answered as duplicates", ("route",)),
    "rejected": ("Webhook requests refused, by reason", ("route", "reason")),
    "delivered": ("Deliveries that reached OliAI", ("route",)),
    "failed": ("Deliveries that failed for good, by reason", ("route", "reason")),
    "retried": ("Delivery attempts rescheduled, by cause", ("route", "cause")),
    "admin_auth_failed": ("Admin sign-ins refused for a wrong token, by how it came", ("via",)),
    "admin_csrf_refused": ("Admin page posts refused as cross-site, by check", ("check",)),
}


def field_name(name: str, *labels: str) -> str:
    return SEP.join((name, *(str(label).replace(SEP, "/") for label in labels)))


def count(redis: Redis, name: str, *labels: str, amount: int = 1) -> None:
    """Best effort: a metric must never turn an accepted webhook into an error."""
    try:
        pipe = redis.pipeline(transaction=False)
        count_on(pipe, name, *labels, amount=amount)
        pipe.execute()
    except RedisError as exc:
        log.debug("metric %s not counted: %s", name, exc)


def count_on(pipe: Pipeline, name: str, *labels: str, amount: int = 1) -> None:
    add_on(pipe, {field_name(name, *labels): amount})


def add_on(pipe: Pipeline, counts: dict[str, int]) -> None:
    """Add to counters by their field names, in the totals and this hour's bucket."""
    hourly = hourly_key(time.time())
    for field, amount in counts.items():
        pipe.hincrby(keys.STATS, field, amount)
        pipe.hincrby(hourly, field, amount)
    pipe.expire(hourly, HOURLY_TTL_SECONDS)


def hourly_key(when: float) -> str:
    return keys.stats_hour(int(when // 3600))


def recent_counters(redis: Redis, hours: int = 24, now: float | None = None) -> dict[str, int]:
    """The counters summed over the current hour and the ``hours - 1`` before it."""
    now = time.time() if now is None else now
    pipe = redis.pipeline(transaction=False)
    for back in range(hours):
        pipe.hgetall(hourly_key(now - back * 3600))
    totals: dict[str, int] = {}
    for bucket in pipe.execute():
        for key, value in bucket.items():
            totals[key.decode()] = totals.get(key.decode(), 0) + int(value)
    return totals


class Tally:
    """Counts kept in this process and added to the shared hash at most once per ``interval``,
    in one pipeline (``add_on``: a ``HINCRBY`` per counter for the totals and one for the hour's
    bucket, which expires): for what a flood can drive (refused
    requests), so that a million forged requests cost a few writes a second, not a million.

    A count is added by the first ``add`` after the interval, by ``flush`` (``/metrics`` calls
    it before answering, the web process's flusher every interval and at exit). Counts a flush
    could not write (Redis down) are kept for the next one; every label must come from a
    bounded set (configured routes, fixed reasons), which also bounds what is kept.
    """

    def __init__(
        self,
        redis: Redis,
        interval: float = defaults.TALLY_FLUSH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.redis = redis
        self.interval = interval
        self.clock = clock
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._flushed_at = clock()

    def add(self, name: str, *labels: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[field_name(name, *labels)] += amount
            due = self.clock() - self._flushed_at >= self.interval
        if due:
            self.flush()

    def pending(self) -> dict[str, int]:
        """What this process counted and has not written yet."""
        with self._lock:
            return dict(self._counts)

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
            self._flushed_at = self.clock()
        if not counts:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            add_on(pipe, counts)
            pipe.execute()
        except RedisError as exc:
            log.debug("%d counters kept for the next flush: %s", len(counts), exc)
            with self._lock:
                self._counts.update(counts)


def read_counters(redis: Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in redis.hgetall(keys.STATS).items()}


class RedisCollector(Collector):
    def __init__(self, redis: Redis, queue_name: str):
        self.redis = redis
        self.queue_name = queue_name

    def collect(self):
        from rq import Queue

        from bridge.deliveries import DeliveryStore

        counters = read_counters(self.redis)
        for name, (help_text, labels) in COUNTERS.items():
            family = CounterMetricFamily(f"oliai_bridge_{name}", help_text, labels=list(labels))
            for key, value in counters.items():
                parts = key.split(SEP)
                if parts[0] == name and len(parts) == len(labels) + 1:
                    family.add_metric(parts[1:], value)
            yield family
        queue = Queue(self.queue_name, connection=self.redis)
        depth = GaugeMetricFamily("oliai_bridge_queue_depth", "Jobs waiting", labels=["state"])
        depth.add_metric(["queued"], queue.count)
        depth.add_metric(["scheduled"], queue.scheduled_job_registry.count)
        depth.add_metric(["started"], queue.started_job_registry.count)
        yield depth
        counts = DeliveryStore(self.redis).counts()
        gauge = GaugeMetricFamily(
            "oliai_bridge_deliveries", "Deliveries by state", labels=["state"]
        )
        gauge.add_metric(["active"], counts["active"])
        gauge.add_metric(["failed_or_skipped"], counts["failed"])
        yield gauge


def registry_for(redis: Redis, queue_name: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(redis, queue_name))
    return registry
