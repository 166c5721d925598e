"""Finds deliveries nobody is working on any more and hands them back to the queue.

RQ notices a job whose worker was SIGKILLed only after its timeout plus maintenance intervals
(minutes). We do not wait for that: every unfinished delivery sits in an index with the time it
should next be looked at, a running delivery holds a short lease its worker keeps refreshing,
and the reaper (run every few seconds by one worker at a time) re-enqueues a delivery whose
lease lapsed, or whose job vanished, under a new job id (the old job, if it ever runs, sees it
is stale). Most deliveries are done long before they are due, so this costs little.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from datetime import UTC, datetime

from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from bridge import keys
from bridge.queue import enqueue, transaction
from jobs import campaigns
from jobs.context import Context
from jobs.deliver import LEASE_SECONDS

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 5.0
#: How long a delivery may stay queued before we check that its job still exists.
QUEUED_RECHECK_SECONDS = 60.0
#: How often the listing indexes are trimmed of entries whose records have expired.
TRIM_EVERY_SECONDS = 600
#: A scheduled retry this late means no scheduler is running: we enqueue it ourselves.
OVERDUE = 3.0

LIVE_JOB_STATES = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED)


def reap_once(ctx: Context, now: float | None = None) -> list[str]:
    """One pass; returns the ids re-enqueued."""
    store, redis = ctx.store, ctx.redis
    revived = []
    now = time.time() if now is None else now
    if redis.set(keys.REAPER_TRIMMED, "1", nx=True, ex=TRIM_EVERY_SECONDS):
        store.trim_indexes(now)
    for delivery_id in store.due_active(now):
        d = store.get(delivery_id)
        if d is None or d.terminal:
            redis.zrem(keys.ACTIVE, delivery_id)
            continue
        if redis.exists(keys.lease(d.id)):
            redis.zadd(keys.ACTIVE, {d.id: now + LEASE_SECONDS})
            continue
        job = fetch_job(ctx, d.job_id)
        status = job.get_status(refresh=False) if job else None
        overdue = status == JobStatus.SCHEDULED and scheduled_for(ctx, d.job_id) < now - OVERDUE
        if status == JobStatus.QUEUED and not in_queue(ctx, d.job_id):
            # Taken off the queue by a worker that died (or lost Redis) before starting it:
            # RQ still calls it queued, and nothing will ever run it.
            status = "taken by a worker that is gone"
        if d.status != "delivering" and status in LIVE_JOB_STATES and not overdue:
            redis.zadd(keys.ACTIVE, {d.id: now + QUEUED_RECHECK_SECONDS})
            continue
        if status == JobStatus.STARTED and d.status != "delivering":
            started = as_epoch(job.started_at) if job.started_at else now
            if now - started < LEASE_SECONDS:
                # Picked up a moment ago; its lease is about to be taken.
                redis.zadd(keys.ACTIVE, {d.id: now + LEASE_SECONDS})
                continue
            status = "started by a worker that is gone"
        if d.status == "delivering":
            why = "its worker stopped mid-delivery"
        elif overdue:
            # The scheduler lock is held by a dead worker (RQ frees it only after minutes).
            why = f"its retry {d.job_id} is overdue"
        else:
            why = f"its job {d.job_id} is {status or 'gone'}"
        pipe = transaction(redis)
        d.status = "queued"
        enqueue(ctx.queue, d, pipe=pipe, job_timeout=ctx.settings.delivery.job_timeout_seconds)
        store.update(
            d,
            "recovered",
            f"{why}; re-queued as {d.job_id}",
            pipe=pipe,
            recheck_in=QUEUED_RECHECK_SECONDS,
        )
        pipe.execute()
        log.warning("delivery %s: %s; re-queued", d.id, why)
        revived.append(d.id)
    campaigns.recover(ctx, now)
    return revived


def scheduled_for(ctx: Context, job_id: str | None) -> float:
    """When a scheduled job is due (epoch seconds); +inf when it is not scheduled."""
    score = ctx.redis.zscore(ctx.queue.scheduled_job_registry.key, job_id or "")
    return float("inf") if score is None else float(score)


def fetch_job(ctx: Context, job_id: str | None) -> Job | None:
    if not job_id:
        return None
    try:
        return Job.fetch(job_id, connection=ctx.redis)
    except NoSuchJobError:
        return None


def as_epoch(moment: datetime) -> float:
    """RQ's datetimes are UTC, with or without tzinfo."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def in_queue(ctx: Context, job_id: str | None) -> bool:
    """Whether the job id is still on the queue's list, waiting for a worker."""
    return ctx.redis.lpos(ctx.queue.key, job_id or "") is not None


class ReaperThread(threading.Thread):
    """Runs ``reap_once`` every few seconds while no other worker's reaper holds the lock."""

    def __init__(self, ctx: Context, interval: float = INTERVAL_SECONDS):
        super().__init__(name="oliai-bridge-reaper", daemon=True)
        self.ctx = ctx
        self.interval = interval
        self.stopped = threading.Event()
        self.token = secrets.token_hex(8)

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                if self.ctx.redis.set(
                    keys.REAPER_LOCK, self.token, nx=True, px=int(self.interval * 2000)
                ):
                    try:
                        reap_once(self.ctx)
                    finally:
                        self.ctx.redis.eval(
                            "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                            "return redis.call('DEL', KEYS[1]) end return 0",
                            1,
                            keys.REAPER_LOCK,
                            self.token,
                        )
            except RedisError as exc:
                log.warning("reaper: Redis unavailable (%s); will try again", exc)
            except Exception:  # noqa: BLE001 - the reaper must outlive one bad record
                log.exception("reaper pass failed")

    def stop(self) -> None:
        self.stopped.set()
