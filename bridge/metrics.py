"""Counters every process shares, kept in Redis and exposed at ``/metrics`` for Prometheus.

Web processes and workers run on several machines; a per-process ``prometheus_client`` registry
would show one process's view. So counts are ``HINCRBY`` on one Redis hash (the latency
histogram's buckets on another) and a custom collector turns them, and live gauges read at
scrape time (queues, deliveries, Redis memory), into metrics. API keys appear only as their
``key_id`` hash. docs/operating.md lists the alerts worth setting on them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError

from bridge import defaults, keys

log = logging.getLogger(__name__)

SEP = "|"
#: Hourly copies of the counters; a bucket outlives the 24 hours the overview adds up.
HOURLY_TTL_SECONDS = 26 * 3600
#: Upper bounds (seconds) of the receive-to-delivered histogram: a healthy bridge delivers in
#: about a second; retries move leads to minutes, a long outage to hours.
LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0)

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
    "oliai_answers": (
        "OliAI API answers by status class (2xx, 4xx, 5xx; none: no answer), per API key id",
        ("key", "status_class"),
    ),
    "oliai_rate_limited": ("429 answers from OliAI, per API key id", ("key",)),
    "limiter_waits": (
        "Deliveries put off because the rate limiter had no token free, per API key id",
        ("key",),
    ),
    "limiter_wait_seconds": (
        "Seconds of waiting the rate limiter asked for, per API key id",
        ("key",),
    ),
    "campaign_started": ("Campaigns the bridge started, by mode", ("route", "mode")),
    "campaign_failed": ("Campaign steps that failed for good", ("route",)),
    "admin_auth_failed": ("Admin sign-ins refused for a wrong token, by how it came", ("via",)),
    "admin_auth_locked": (
        "Admin sign-ins answered 429: too many wrong tokens from the address, by how it came",
        ("via",),
    ),
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
    """Counted in the totals and in the current hour's bucket (the admin overview's 24 h)."""
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


def count_float(redis: Redis, name: str, *labels: str, amount: float) -> None:
    try:
        redis.hincrbyfloat(keys.STATS, field_name(name, *labels), amount)
    except RedisError as exc:
        log.debug("metric %s not counted: %s", name, exc)


def read_counters(redis: Redis) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in redis.hgetall(keys.STATS).items()}


# --- what the workers record -------------------------------------------------------------------


def delivered(redis: Redis, route: str, received_at: str, now: float | None = None) -> float:
    """Count a delivered lead and its time from receipt (``received_at``, ISO 8601) to now;
    returns that time in seconds."""
    seconds = math.nan
    try:
        pipe = redis.pipeline(transaction=False)
        seconds = delivered_on(pipe, route, received_at, now)
        pipe.execute()
    except RedisError as exc:
        log.debug("delivery not counted: %s", exc)
    return seconds


def delivered_many_on(
    pipe: Pipeline, leads: list[tuple[str, str]], now: float | None = None
) -> list[float]:
    """``delivered_on`` for many ``(route, received_at)`` at once, in a handful of commands:
    counts and histogram buckets added up per route first (a batch of thousands). Returns each
    lead's time from receipt."""
    now = time.time() if now is None else now
    seconds_each = []
    counts: dict[str, float] = {}
    latency: dict[str, float] = {}
    sums: dict[str, float] = {}
    for route, received_at in leads:
        try:
            seconds = max(0.0, now - datetime.fromisoformat(received_at).timestamp())
        except ValueError:
            seconds = math.nan
        seconds_each.append(seconds)
        counts[route] = counts.get(route, 0) + 1
        if not math.isnan(seconds):
            bucket = next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), None)
            for name in ("inf" if bucket is None else bucket, "count"):
                key = field_name(route, name)
                latency[key] = latency.get(key, 0) + 1
            sums[field_name(route, "sum")] = sums.get(field_name(route, "sum"), 0.0) + seconds
    for route, amount in counts.items():
        count_on(pipe, "delivered", route, amount=int(amount))
    for key, amount in latency.items():
        pipe.hincrby(keys.STATS_LATENCY, key, int(amount))
    for key, amount in sums.items():
        pipe.hincrbyfloat(keys.STATS_LATENCY, key, amount)
    return seconds_each


def delivered_on(pipe: Pipeline, route: str, received_at: str, now: float | None = None) -> float:
    """``delivered``'s counting, queued on the caller's pipeline (a batch counts its leads in
    the transaction that records them)."""
    now = time.time() if now is None else now
    try:
        seconds = max(0.0, now - datetime.fromisoformat(received_at).timestamp())
    except ValueError:
        seconds = math.nan
    count_on(pipe, "delivered", route)
    if not math.isnan(seconds):
        bucket = next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), None)
        pipe.hincrby(keys.STATS_LATENCY, field_name(route, "inf" if bucket is None else bucket), 1)
        pipe.hincrbyfloat(keys.STATS_LATENCY, field_name(route, "sum"), seconds)
        pipe.hincrby(keys.STATS_LATENCY, field_name(route, "count"), 1)
    return seconds


def status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "none"


def oliai_answers(redis: Redis, key: str) -> Callable[[str, str, int | None, float], None]:
    """The client's ``on_answer`` for one API key (by its ``key_id``): counts answers by
    status class, and 429s."""

    def on_answer(method: str, path: str, status: int | None, seconds: float) -> None:
        count(redis, "oliai_answers", key, status_class(status))
        if status == 429:
            count(redis, "oliai_rate_limited", key)

    return on_answer


def limiter_wait(redis: Redis, key: str, seconds: float) -> None:
    count(redis, "limiter_waits", key)
    count_float(redis, "limiter_wait_seconds", key, amount=seconds)


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
        yield self.latency()
        queue = Queue(self.queue_name, connection=self.redis)
        depth = GaugeMetricFamily("oliai_bridge_queue_depth", "Jobs waiting", labels=["state"])
        depth.add_metric(["queued"], queue.count)
        depth.add_metric(["scheduled"], queue.scheduled_job_registry.count)
        depth.add_metric(["started"], queue.started_job_registry.count)
        yield depth
        yield from self.queues()
        counts = DeliveryStore(self.redis).counts()
        gauge = GaugeMetricFamily(
            "oliai_bridge_deliveries", "Deliveries by state", labels=["state"]
        )
        gauge.add_metric(["active"], counts["active"])
        gauge.add_metric(["failed_or_skipped"], counts["failed"])
        yield gauge
        yield from self.redis_memory()

    def latency(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "oliai_bridge_delivery_latency_seconds",
            "Time from receiving a lead to its delivery to OliAI",
            labels=["route"],
        )
        routes: dict[str, dict[str, float]] = {}
        for key, value in self.redis.hgetall(keys.STATS_LATENCY).items():
            route, _, part = key.decode().rpartition(SEP)
            routes.setdefault(route, {})[part] = float(value)
        for route, parts in sorted(routes.items()):
            cumulative = 0.0
            buckets = []
            for i, bound in enumerate(LATENCY_BUCKETS):
                cumulative += parts.get(str(i), 0.0)
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", cumulative + parts.get("inf", 0.0)))
            family.add_metric([route], buckets, sum_value=parts.get("sum", 0.0))
        return family

    def queues(self):
        """Per RQ queue of the bridge (its name and lanes named after it): jobs by state, and
        how long the job at the head of the queue has waited."""
        from rq import Queue

        jobs = GaugeMetricFamily(
            "oliai_bridge_queue_jobs", "Jobs per queue and state", labels=["queue", "state"]
        )
        oldest = GaugeMetricFamily(
            "oliai_bridge_queue_oldest_age_seconds",
            "How long the oldest job still waiting in the queue has waited (0: queue empty)",
            labels=["queue"],
        )
        now = time.time()
        queues = [q for q in Queue.all(connection=self.redis) if q.name.startswith(self.queue_name)]
        if not any(q.name == self.queue_name for q in queues):
            queues.insert(0, Queue(self.queue_name, connection=self.redis))
        for queue in sorted(queues, key=lambda q: q.name):
            jobs.add_metric([queue.name, "queued"], queue.count)
            jobs.add_metric([queue.name, "scheduled"], queue.scheduled_job_registry.count)
            jobs.add_metric([queue.name, "started"], queue.started_job_registry.count)
            head = queue.get_jobs(0, 1)
            enqueued = head[0].enqueued_at if head else None
            age = max(0.0, now - enqueued.timestamp()) if enqueued else 0.0
            oldest.add_metric([queue.name], age)
        yield jobs
        yield oldest
        yield self.lanes(now)

    def lanes(self, now: float) -> GaugeMetricFamily:
        """Leads waiting in each (API key id, lane) (``jobs.lanes``): ready now, or retries
        due later. The backlog a drain works through is here, not in the RQ queue."""
        leads = GaugeMetricFamily(
            "oliai_bridge_lane_leads",
            "Leads waiting in a lane, by API key id, lane and state (ready, later)",
            labels=["key", "lane", "state"],
        )
        pipe = self.redis.pipeline(transaction=False)
        lanes = []
        for member in sorted(self.redis.smembers(keys.LANES)):
            kid, _, lane = member.decode().rpartition(":")
            lanes.append((kid, lane))
            pipe.zcount(keys.pending(kid, lane), "-inf", int(now * 1000))
            pipe.zcard(keys.pending(kid, lane))
        counts = pipe.execute()
        for i, (kid, lane) in enumerate(lanes):
            ready, total = counts[2 * i], counts[2 * i + 1]
            leads.add_metric([kid, lane, "ready"], ready)
            leads.add_metric([kid, lane, "later"], total - ready)
        return leads

    def redis_memory(self):
        from bridge.storage import SAFE_POLICY, memory

        try:
            mem = memory(self.redis)
        except RedisError as exc:  # INFO refused by a managed Redis: leave these out
            log.debug("Redis INFO unavailable: %s", exc)
            return
        yield GaugeMetricFamily(
            "oliai_bridge_redis_used_memory_bytes", "Memory Redis uses", value=mem["used_memory"]
        )
        yield GaugeMetricFamily(
            "oliai_bridge_redis_maxmemory_bytes",
            "Redis's maxmemory (0: no limit)",
            value=mem["maxmemory"],
        )
        policy = GaugeMetricFamily(
            "oliai_bridge_redis_may_evict",
            "1 when Redis's maxmemory-policy may evict keys (undelivered leads): set noeviction",
            labels=["policy"],
        )
        policy.add_metric(
            [mem["maxmemory_policy"]], 0 if mem["maxmemory_policy"] == SAFE_POLICY else 1
        )
        yield policy


def registry_for(redis: Redis, queue_name: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(redis, queue_name))
    return registry
