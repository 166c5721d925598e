"""``oliai-bridge worker``: an RQ worker with the scheduler on and our reaper beside it.

``SimpleWorker`` runs jobs in the worker process instead of forking one child per job (5x
the throughput for our short, IO-bound jobs; see DESIGN.md). SIGTERM (Heroku's stop signal)
makes RQ finish the current job and exit; a delivery takes seconds, well inside the 30 s
before SIGKILL, and one killed anyway is recovered by the reaper within seconds.
"""

from __future__ import annotations

import logging
import os
import socket

from redis import Redis
from rq import SimpleWorker

from bridge.queue import make_queue
from bridge.settings import Settings
from jobs.context import configure
from jobs.reaper import ReaperThread

log = logging.getLogger(__name__)


def run_worker(
    settings: Settings, redis: Redis, *, burst: bool = False, name: str | None = None
) -> bool:
    """Work until stopped; True when stopped on purpose (a signal, or burst mode done)."""
    ctx = configure(settings, redis)
    queue = make_queue(redis, settings.queue_name)
    worker = SimpleWorker(
        [queue],
        connection=redis,
        name=name or f"bridge-{socket.gethostname()}-{os.getpid()}",
    )
    reaper = ReaperThread(ctx)
    reaper.start()
    try:
        worker.work(with_scheduler=True, burst=burst, logging_level="WARNING")
    finally:
        reaper.stop()
    # RQ's loop also ends, "quitting", on any error it did not expect (a Redis connection lost
    # mid-job): tell the caller whether this was the stop it asked for.
    # (RQ records the time of a SIGTERM/SIGINT; its stop flag is only set when one came mid-job.)
    return burst or getattr(worker, "_shutdown_requested_date", True) is not None
