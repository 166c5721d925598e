"""Finds deliveries nobody is working on any more and hands them back to the queue.

RQ notices a job whose worker was SIGKILLed only after its timeout plus maintenance intervals
(minutes). We do not wait for that: every unfinished delivery sits in an index with the time it
should next be looked at, a running delivery (or the batch holding it) has a short lease its
worker keeps refreshing, and the reaper (run every few seconds by one worker at a time):

- gives the tickets of a batch whose lease lapsed back to their lane (``jobs.lanes``);
- gives a delivery whose lease lapsed, whose ticket vanished or whose retry is overdue a new
  ticket (the old one, if it ever turns up, is stale);
- starts a drain for every lane with work whose trigger job is gone, was taken by a worker that
  died, or is an overdue scheduled job (no scheduler running);
- for deliveries queued as their own RQ job (before lanes), does the same with their job.

Most deliveries are done long before they are due, so this costs little.
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
from bridge.queue import transaction
from bridge.record import Delivery
from jobs import campaigns
from jobs.context import Context
from jobs.deliver import LEASE_SECONDS
from jobs.lanes import (
    BATCHES_KEY,
    TRIGGER_TTL_MS,
    batch_key,
    batch_lease_key,
    delivery_id_of,
    drain_lease_key,
    enqueue_drain,
    importing_key,
    kick_lanes,
    new_job_id,
    requeue,
    trigger_key,
)

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 5.0
#: How long a delivery may stay queued before we check that its job still exists.
QUEUED_RECHECK_SECONDS = 60.0
#: How often the listing indexes are trimmed of entries whose records have expired.
TRIM_EVERY_SECONDS = 600
#: A scheduled retry this late means no scheduler is running: we enqueue it ourselves.
OVERDUE = 3.0


def reap_once(ctx: Context, now: float | None = None) -> list[str]:
    """One pass; returns the ids of the deliveries it handed back."""
    store, redis = ctx.store, ctx.redis
    revived = []
    now = time.time() if now is None else now
    if redis.set(keys.REAPER_TRIMMED, "1", nx=True, ex=TRIM_EVERY_SECONDS):
        store.trim_indexes(now)
    revived += recover_batches(ctx, now)
    for delivery_id in store.due_active(now):
        d = store.get(delivery_id)
        if d is None or d.terminal:
            redis.zrem(keys.ACTIVE, delivery_id)
            continue
        # Every delivery waits in a lane (one queued as its own RQ job before lanes existed
        # gets a ticket here; its old job, if it ever runs, is stale).
        if check_laned(ctx, d, now):
            revived.append(d.id)
    check_lanes(ctx, now)
    campaigns.recover(ctx, now)
    return revived


# --- lanes (jobs.lanes, jobs.batch) ------------------------------------------------------------


def check_laned(ctx: Context, d: Delivery, now: float) -> bool:
    """A delivery waiting in a lane: hand it back if nothing will ever pick it up (True)."""
    redis = ctx.redis
    kid = ctx.kid_for(d)
    if d.status == "delivering":
        if redis.exists(keys.lease(d.id)) or batch_alive(ctx, d.batch_id):
            redis.zadd(keys.ACTIVE, {d.id: now + LEASE_SECONDS})
            return False
        why = "its worker stopped mid-delivery"
    else:
        due = ctx.lanes.due_ms(d, kid)
        if due is None and batch_alive(ctx, d.batch_id):
            redis.zadd(keys.ACTIVE, {d.id: now + LEASE_SECONDS})
            return False
        if due == 0 or (due is not None and due / 1000 >= now - OVERDUE):
            # Waiting its turn (``check_lanes`` keeps a drain on the lane) or not due yet.
            recheck = max(now, (due or 0) / 1000) + QUEUED_RECHECK_SECONDS
            redis.zadd(keys.ACTIVE, {d.id: recheck})
            return False
        # Overdue: no scheduler woke its lane (the lock may be with a dead worker).
        why = f"its retry {d.job_id} is overdue" if due is not None else "its ticket is gone"
    requeue_recovered(ctx, [d], kid, why)
    return True


def batch_alive(ctx: Context, batch_id: str | None) -> bool:
    """A batch a worker still holds, or an import still being waited for."""
    if not batch_id:
        return False
    if ctx.redis.exists(batch_lease_key(batch_id)):
        return True
    return ctx.redis.hget(batch_key(batch_id), "phase") == b"importing"


def requeue_recovered(ctx: Context, deliveries: list[Delivery], kid: str, why: str) -> None:
    pipe = transaction(ctx.redis)
    pairs = set()
    for d in deliveries:
        d.status = "queued"
        requeue(pipe, d, kid)
        ctx.store.update(
            d,
            "recovered",
            f"{why}; re-queued as {d.job_id}",
            pipe=pipe,
            recheck_in=QUEUED_RECHECK_SECONDS,
        )
        pairs.add((kid, d.lane))
    pipe.execute()
    for d in deliveries:
        log.warning("delivery %s: %s; re-queued", d.id, why)
    kick_lanes(ctx.redis, ctx.queue, pairs, ctx.settings.delivery.job_timeout_seconds)


def recover_batches(ctx: Context, now: float) -> list[str]:
    """The tickets of batches whose worker died go back to their lane."""
    revived: list[str] = []
    lanes = ctx.lanes
    for batch_id in lanes.due_batches(int(now * 1000)):
        if ctx.redis.exists(batch_lease_key(batch_id)):
            ctx.redis.zadd(BATCHES_KEY, {batch_id: int((now + LEASE_SECONDS) * 1000)})
            continue
        record = lanes.batch(batch_id)
        pipe = ctx.redis.pipeline(transaction=False)
        lanes.end_batch(pipe, batch_id)
        if record is None:
            pipe.execute()
            continue
        left = []
        for ticket in record["tickets"]:
            d = ctx.store.get(delivery_id_of(ticket))
            if d is not None and not d.terminal and d.job_id == ticket:
                left.append(d)
        if left:
            requeue_recovered(ctx, left, record["kid"], f"its worker stopped mid-batch {batch_id}")
            revived += [d.id for d in left]
        pipe.execute()
    return revived


def check_lanes(ctx: Context, now: float) -> list[tuple[str, str]]:
    """Start a drain for every lane with work and no live trigger; returns those lanes."""
    started = []
    lanes = ctx.lanes
    redis = ctx.redis
    horizon = int(now * 1000)
    for kid, lane in lanes.lanes():
        current = lanes.trigger(kid, lane)
        if current is not None and trigger_alive(ctx, current, now):
            continue
        work = lanes.ready_count(kid, lane, horizon) or redis.zcount(
            importing_key(kid, lane), "-inf", horizon
        )
        if not work:
            if current is not None:
                lanes.pass_on(kid, lane, current, current, 1)  # let the dead mark lapse
            continue
        job_id = new_job_id(kid, lane)
        redis.set(trigger_key(kid, lane), job_id, px=TRIGGER_TTL_MS)
        enqueue_drain(
            ctx.queue, kid, lane, job_id, job_timeout=ctx.settings.delivery.job_timeout_seconds
        )
        why = f"its drain {current} is gone" if current else "no drain was started"
        log.warning("lane %s of key %s: %s; started %s", lane, kid, why, job_id)
        started.append((kid, lane))
    return started


def trigger_alive(ctx: Context, job_id: str, now: float) -> bool:
    """Whether the trigger job will run (or is running) the lane's drain."""
    job = fetch_job(ctx, job_id)
    if job is None:
        return False
    status = job.get_status(refresh=False)
    if status == JobStatus.QUEUED:
        if in_queue(ctx, job_id):
            return True
        enqueued = as_epoch(job.enqueued_at) if job.enqueued_at else now
        return now - enqueued < LEASE_SECONDS  # popped a moment ago, about to start
    if status == JobStatus.SCHEDULED:
        return scheduled_for(ctx, job_id) >= now - OVERDUE
    if status == JobStatus.STARTED:
        if ctx.redis.exists(drain_lease_key(job_id)):
            return True
        started = as_epoch(job.started_at) if job.started_at else now
        return now - started < LEASE_SECONDS
    return False


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
