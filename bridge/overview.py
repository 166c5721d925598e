"""What the admin overview shows, read from Redis: routes, queues, rate limits, workers.

Every figure comes from state the bridge already keeps for its own work (the route hash and
hourly counters written beside each delivery, RQ's registries and worker hashes, the limiter's
windows), so drawing the page costs a few pipelined reads and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis import Redis
from rq import Queue, Worker

from bridge import keys, metrics
from bridge.settings import Settings

#: The outcomes counted per route over the last 24 hours, in the order the page shows them.
OUTCOMES = ("queued", "delivered", "failed", "skipped", "retried", "duplicate", "rejected")


@dataclass
class RouteRow:
    name: str
    source: str
    audience: str
    last_received: datetime | None
    last_delivered: datetime | None
    counts: dict[str, int]


@dataclass
class QueueRow:
    name: str
    queued: int
    scheduled: int
    started: int
    failed: int


@dataclass
class LimiterRow:
    key_id: str
    routes: list[str]
    general_used: int
    general_limit: int
    bulk_used: int
    bulk_limit: int
    paused_until: datetime | None


@dataclass
class WorkerRow:
    name: str
    state: str
    queues: list[str]
    current_job: str | None
    last_heartbeat: datetime | None
    successful: int
    failed: int


@dataclass
class Overview:
    routes: list[RouteRow] = field(default_factory=list)
    queues: list[QueueRow] = field(default_factory=list)
    limiters: list[LimiterRow] = field(default_factory=list)
    workers: list[WorkerRow] = field(default_factory=list)


def read_overview(redis: Redis, settings: Settings) -> Overview:
    return Overview(
        routes=route_rows(redis, settings),
        queues=queue_rows(redis, settings),
        limiters=limiter_rows(redis, settings),
        workers=worker_rows(redis),
    )


def route_rows(redis: Redis, settings: Settings) -> list[RouteRow]:
    pipe = redis.pipeline(transaction=False)
    for name in settings.routes:
        pipe.hgetall(keys.route_state(name))
    stamps = pipe.execute()
    recent = recent_by_route(metrics.recent_counters(redis, hours=24))
    rows = []
    for route, times in zip(settings.routes.values(), stamps, strict=True):
        times = {k.decode(): float(v) for k, v in times.items()}
        rows.append(
            RouteRow(
                name=route.name,
                source=route.source,
                audience=route.audience_id or route.audience_name or "",
                last_received=_when(times.get("last_received")),
                last_delivered=_when(times.get("last_delivered")),
                counts={o: recent.get(route.name, {}).get(o, 0) for o in OUTCOMES},
            )
        )
    return rows


def recent_by_route(counters: dict[str, int]) -> dict[str, dict[str, int]]:
    """``{"failed|leads|bad_request": 2, ...}`` → ``{"leads": {"failed": 2}}`` (labels after the
    route, such as a reason, are added up)."""
    out: dict[str, dict[str, int]] = {}
    for key, value in counters.items():
        parts = key.split(metrics.SEP)
        if len(parts) >= 2 and parts[0] in OUTCOMES:
            per_route = out.setdefault(parts[1], {})
            per_route[parts[0]] = per_route.get(parts[0], 0) + value
    return out


def queue_rows(redis: Redis, settings: Settings) -> list[QueueRow]:
    """Every RQ queue in this Redis (ours first), with the registries that hold its jobs."""
    queues = {q.name: q for q in Queue.all(connection=redis)}
    queues.setdefault(settings.queue_name, Queue(settings.queue_name, connection=redis))
    ordered = sorted(queues.values(), key=lambda q: (q.name != settings.queue_name, q.name))
    return [
        QueueRow(
            name=q.name,
            queued=q.count,
            scheduled=q.scheduled_job_registry.count,
            started=q.started_job_registry.count,
            failed=q.failed_job_registry.count,
        )
        for q in ordered
    ]


def limiter_rows(redis: Redis, settings: Settings) -> list[LimiterRow]:
    """One row per API key the config uses, named by its key id (a hash), never the key."""
    from jobs.ratelimit import RateLimiter

    keys: dict[str, list[str]] = {}
    for route in settings.routes.values():
        key = settings.api_key_for(route)
        if key:
            keys.setdefault(key, []).append(route.name)
    if settings.oliai.api_key:
        keys.setdefault(settings.oliai.api_key, [])
    o = settings.oliai
    rows = []
    for api_key, routes in keys.items():
        limiter = RateLimiter(
            redis,
            api_key,
            window_seconds=o.rate_window_seconds,
            general_per_window=o.general_per_minute,
            bulk_per_window=o.bulk_per_minute,
        )
        usage = limiter.usage()
        paused = usage["paused_for"]
        rows.append(
            LimiterRow(
                key_id=limiter.kid,
                routes=routes,
                general_used=int(usage["general_used"]),
                general_limit=int(usage["general_limit"]),
                bulk_used=int(usage["bulk_used"]),
                bulk_limit=int(usage["bulk_limit"]),
                paused_until=_when(datetime.now(UTC).timestamp() + paused) if paused else None,
            )
        )
    return rows


def worker_rows(redis: Redis) -> list[WorkerRow]:
    rows = []
    for worker in Worker.all(connection=redis):
        heartbeat = worker.last_heartbeat
        if heartbeat is not None and heartbeat.tzinfo is None:
            heartbeat = heartbeat.replace(tzinfo=UTC)  # RQ keeps UTC without saying so
        state = worker.get_state()
        rows.append(
            WorkerRow(
                name=worker.name,
                state=getattr(state, "value", str(state)),
                queues=worker.queue_names(),
                current_job=worker.get_current_job_id(),
                last_heartbeat=heartbeat,
                successful=worker.successful_job_count,
                failed=worker.failed_job_count,
            )
        )
    return sorted(rows, key=lambda w: w.name)


def _when(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch else None
