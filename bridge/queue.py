"""The hand-off between the web side and the workers: one RQ job per delivery attempt.

The job carries only the delivery id. Each (re)scheduling gets a fresh job id
(``<delivery id>-<seq>``) recorded on the delivery, so a stale job (a duplicate trigger, or the
job a crashed worker left behind) sees that it is no longer current and does nothing.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

from redis import Redis
from redis.client import Pipeline
from rq import Queue

from bridge import defaults
from bridge.record import Delivery

JOB_FUNC = "jobs.deliver.deliver"
#: RQ keeps a job that raised for a day; our own record (with reason) lives longer.
FAILURE_TTL = 24 * 3600


def make_queue(redis: Redis, name: str = defaults.QUEUE_NAME) -> Queue:
    return Queue(name, connection=redis)


def enqueue(
    queue: Queue,
    delivery: Delivery,
    *,
    pipe: Pipeline | None = None,
    delay: float = 0.0,
    job_timeout: int = defaults.JOB_TIMEOUT_SECONDS,
) -> str:
    """Put a job for ``delivery`` on the queue now, or in the scheduled registry after ``delay``.

    Sets ``delivery.job_id``/``job_seq``; the caller saves the delivery in the same pipeline.
    """
    delivery.job_seq += 1
    delivery.job_id = f"{delivery.id}-{delivery.job_seq}"
    options = dict(
        job_id=delivery.job_id,
        job_timeout=job_timeout,
        result_ttl=0,
        failure_ttl=FAILURE_TTL,
        description=f"deliver {delivery.id} ({delivery.route})",
        pipeline=pipe,
    )
    if delay > 0:
        # RQ's scheduled registry keeps whole seconds: round up, never run before ``delay``.
        when = datetime.fromtimestamp(math.ceil(time.time() + delay), UTC)
        queue.enqueue_at(when, JOB_FUNC, delivery.id, **options)
    else:
        queue.enqueue(JOB_FUNC, delivery.id, **options)
    return delivery.job_id


def transaction(redis: Redis) -> Pipeline:
    """A MULTI/EXEC pipeline that RQ's enqueue can join (RQ calls ``multi()`` itself unless the
    transaction is already explicit, which fails once other commands are queued)."""
    pipe = redis.pipeline(transaction=True)
    pipe.multi()
    return pipe
