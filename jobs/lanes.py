"""Where stored leads wait for a worker: one pending set per (API key, lane), one trigger job
per set, and the batches workers claim from it.

Ingest stores a delivery and adds its *ticket* (``<delivery id>-<seq>``, also the delivery's
``job_id``) to ``pending:<key id>:<lane>`` in the same MULTI/EXEC, then arms the lane's trigger:
``SET trigger:<key id>:<lane> <job id> NX``. Only the request that wins that SET enqueues an RQ
job (``jobs.batch.drain``); while one is queued or running, more leads only join the set. A
worker claims up to N ready tickets at once (``CLAIM``, atomic) into a batch record held by a
lease; the reaper hands the tickets of a batch whose lease lapsed back to the set. A ticket
that no longer matches its delivery's ``job_id`` is stale (the delivery was re-queued since)
and is dropped when claimed.

Scores in a pending set: 0 for "ready now" (then ordered by ticket, which starts with the
delivery id, itself ordered by time), else the epoch milliseconds a retry is due.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis import Redis
from redis.client import Pipeline
from rq import Queue

from bridge import defaults, keys
from bridge.record import Delivery
from bridge.settings import Route, Settings
from jobs.ratelimit import key_id

DRAIN_FUNC = "jobs.batch.drain"
LANES_KEY = keys.LANES
BATCHES_KEY = keys.BATCHES
#: A trigger that is queued or waiting for the limiter keeps its mark this long at most; a lost
#: one (a web process that died between storing and enqueueing) is found by the reaper sooner.
TRIGGER_TTL_MS = 10 * 60 * 1000
#: RQ keeps a trigger that raised for a day, like a delivery job.
FAILURE_TTL = 24 * 3600
#: Key id for leads of a route without any API key: they fail visibly when claimed.
NO_KEY = "nokey"
#: Where OliAI's import-completion webhook reaches the bridge (``bridge.app``).
IMPORT_HINT_PATH = "/oliai/imports/done"

# KEYS: pending, batches, batch hash, batch lease
# ARGV: now_ms, max tickets, batch id, key id, lane, job id, lease_ms, delivery key prefix
# Due retries first (oldest due first), then fresh tickets in order. Returns the tickets.
CLAIM = """
local n = tonumber(ARGV[2])
local tickets = redis.call('ZRANGEBYSCORE', KEYS[1], '(0', ARGV[1], 'LIMIT', 0, n)
if #tickets < n then
  local fresh = redis.call('ZRANGEBYSCORE', KEYS[1], 0, 0, 'LIMIT', 0, n - #tickets)
  for _, t in ipairs(fresh) do table.insert(tickets, t) end
end
if #tickets == 0 then return tickets end
for i = 1, #tickets, 1000 do
  redis.call('ZREM', KEYS[1], unpack(tickets, i, math.min(i + 999, #tickets)))
end
redis.call('HSET', KEYS[3], 'kid', ARGV[4], 'lane', ARGV[5], 'job', ARGV[6],
           'tickets', cjson.encode(tickets), 'created', ARGV[1])
redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[7]), ARGV[3])
redis.call('SET', KEYS[4], ARGV[6], 'PX', ARGV[7])
for _, t in ipairs(tickets) do
  local key = ARGV[8] .. string.match(t, '^(.*)%-%d+$')
  if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, 'batch_id', ARGV[3]) end
end
return tickets
"""

# KEYS: trigger, pending, importing; ARGV: my job id, now_ms
# The drain stops holding the trigger when nothing is ready: 1 = released (or not mine).
RELEASE = """
if redis.call('ZCOUNT', KEYS[2], '-inf', ARGV[2]) > 0 then return 0 end
if redis.call('ZCOUNT', KEYS[3], '-inf', ARGV[2]) > 0 then return 0 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: trigger; ARGV: expected job id, new job id, ttl_ms. Hand the trigger on (1) or not (0).
PASS_ON = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


# The lanes' keys, by the names this module's callers use (all spelled in ``bridge.keys``).
pending_key = keys.pending
trigger_key = keys.trigger
wake_key = keys.wake
importing_key = keys.importing
noimport_key = keys.no_import
batch_key = keys.batch
batch_lease_key = keys.batch_lease
drain_lease_key = keys.drain_lease


def lane_kid(settings: Settings, route: Route) -> str:
    """The key id a route's leads queue under."""
    api_key = settings.api_key_for(route)
    return key_id(api_key) if api_key else NO_KEY


def ticket_of(delivery: Delivery) -> str:
    return f"{delivery.id}-{delivery.job_seq}"


def delivery_id_of(ticket: str) -> str:
    return ticket.rpartition("-")[0]


def hint_digest(token: str) -> str:
    """What Redis keeps of an import's webhook token (the token itself is a secret)."""
    return hashlib.sha256(token.encode()).hexdigest()


def now_ms() -> int:
    return int(time.time() * 1000)


def new_job_id(kid: str, lane: str) -> str:
    return f"drain-{kid}-{lane}-{secrets.token_hex(6)}"


def requeue(
    pipe: Pipeline, delivery: Delivery, kid: str, *, due_ms: int = 0, announce: bool = True
) -> str:
    """Give ``delivery`` a new ticket in its lane's pending set (ready now, or at ``due_ms``).

    The caller saves the delivery on the same pipeline; the old ticket, wherever it is, is
    stale from then on. ``announce=False``: the caller lists the lane itself (``announce_lane``),
    once for the leads it stores together.
    """
    delivery.lane = delivery.lane or defaults.LIVE_LANE
    delivery.job_seq += 1
    delivery.job_id = ticket_of(delivery)
    delivery.batch_id = None
    pipe.zadd(pending_key(kid, delivery.lane), {delivery.job_id: max(0, int(due_ms))})
    if announce:
        announce_lane(pipe, kid, delivery.lane)
    return delivery.job_id


def announce_lane(pipe: Pipeline, kid: str, lane: str) -> None:
    """List the lane among those the drains and the reaper look at."""
    pipe.sadd(LANES_KEY, f"{kid}:{lane}")


@dataclass
class Kick:
    """Triggers to start once a pipeline has run: ``arm`` queues ``SET trigger NX`` for each
    lane touched, ``fire`` enqueues a drain job for every lane whose SET won."""

    queue: Queue
    job_timeout: int = defaults.JOB_TIMEOUT_SECONDS
    armed: list[tuple[int, str, str, str]] = field(default_factory=list)
    _seen: set[tuple[str, str]] = field(default_factory=set)

    def arm(self, pipe: Pipeline, kid: str, lane: str) -> None:
        if (kid, lane) in self._seen:
            return
        self._seen.add((kid, lane))
        job_id = new_job_id(kid, lane)
        index = len(pipe.command_stack)
        pipe.set(trigger_key(kid, lane), job_id, nx=True, px=TRIGGER_TTL_MS)
        self.armed.append((index, kid, lane, job_id))

    def fire(self, results: list) -> list[str]:
        started = []
        for index, kid, lane, job_id in self.armed:
            if results[index] is True:
                enqueue_drain(self.queue, kid, lane, job_id, job_timeout=self.job_timeout)
                started.append(job_id)
        return started


def enqueue_drain(
    queue: Queue,
    kid: str,
    lane: str,
    job_id: str,
    *,
    job_timeout: int = defaults.JOB_TIMEOUT_SECONDS,
    at_ms: int | None = None,
    pipeline: Pipeline | None = None,
) -> str:
    """An RQ job draining (kid, lane): now, or at ``at_ms`` (a wake-up for due retries)."""
    options = dict(
        job_id=job_id,
        job_timeout=job_timeout,
        result_ttl=0,
        failure_ttl=FAILURE_TTL,
        description=f"drain {lane} leads of key {kid}",
        pipeline=pipeline,
    )
    if at_ms is None:
        queue.enqueue(DRAIN_FUNC, kid, lane, **options)
    else:
        # RQ's scheduled registry keeps whole seconds: round up, never run before the due time;
        # the job then handles everything due by the second it was scheduled for.
        second = math.ceil(at_ms / 1000)
        when = datetime.fromtimestamp(second, UTC)
        queue.enqueue_at(when, DRAIN_FUNC, kid, lane, second * 1000, **options)
    return job_id


class Lanes:
    """The Redis side of the lanes, for one connection (scripts registered once)."""

    def __init__(self, redis: Redis):
        self.redis = redis
        self._claim = redis.register_script(CLAIM)
        self._release = redis.register_script(RELEASE)
        self._pass_on = redis.register_script(PASS_ON)

    # --- pending sets ------------------------------------------------------------------------

    def ready_count(self, kid: str, lane: str, horizon_ms: int) -> int:
        return int(self.redis.zcount(pending_key(kid, lane), "-inf", horizon_ms))

    def next_due_ms(self, kid: str, lane: str, after_ms: int) -> int | None:
        """When the earliest retry after ``after_ms`` is due (None: none is waiting)."""
        first = self.redis.zrangebyscore(
            pending_key(kid, lane), f"({after_ms}", "+inf", start=0, num=1, withscores=True
        )
        return int(first[0][1]) if first else None

    def due_ms(self, delivery: Delivery, kid: str) -> int | None:
        """Where ``delivery``'s current ticket sits in its pending set (None: not there)."""
        score = self.redis.zscore(
            pending_key(kid, delivery.lane or defaults.LIVE_LANE), delivery.job_id or ""
        )
        return None if score is None else int(score)

    def claim(
        self,
        kid: str,
        lane: str,
        limit: int,
        *,
        job_id: str,
        horizon_ms: int,
        lease_ms: int,
    ) -> tuple[str, list[str]]:
        """Take up to ``limit`` ready tickets into a new batch held by ``job_id``'s lease."""
        batch_id = f"b{secrets.token_hex(8)}"
        tickets = self._claim(
            keys=[
                pending_key(kid, lane),
                BATCHES_KEY,
                batch_key(batch_id),
                batch_lease_key(batch_id),
            ],
            args=[horizon_ms, limit, batch_id, kid, lane, job_id, lease_ms, keys.delivery("")],
        )
        return batch_id, [t.decode() if isinstance(t, bytes) else t for t in tickets]

    # --- batches -----------------------------------------------------------------------------

    def end_batch(self, pipe: Pipeline, batch_id: str) -> None:
        pipe.delete(batch_key(batch_id), batch_lease_key(batch_id))
        pipe.zrem(BATCHES_KEY, batch_id)

    def batch(self, batch_id: str) -> dict | None:
        raw = self.redis.hgetall(batch_key(batch_id))
        if not raw:
            return None
        data = {k.decode(): v.decode() for k, v in raw.items()}
        data["tickets"] = json.loads(data.get("tickets") or "[]")
        return data

    def due_batches(self, now: int, limit: int = 100) -> list[str]:
        return [b.decode() for b in self.redis.zrangebyscore(BATCHES_KEY, "-inf", now, 0, limit)]

    # --- triggers ----------------------------------------------------------------------------

    def release(self, kid: str, lane: str, job_id: str, horizon_ms: int) -> bool:
        """Let go of the trigger when nothing is ready (True), so the next lead starts a new
        drain at once; False: work is ready, keep going."""
        return bool(
            self._release(
                keys=[trigger_key(kid, lane), pending_key(kid, lane), importing_key(kid, lane)],
                args=[job_id, horizon_ms],
            )
        )

    def pass_on(self, kid: str, lane: str, job_id: str, new_job_id: str, ttl_ms: int) -> bool:
        return bool(self._pass_on(keys=[trigger_key(kid, lane)], args=[job_id, new_job_id, ttl_ms]))

    def take_trigger(self, kid: str, lane: str, job_id: str) -> bool:
        """A drain may run when it holds the lane's trigger, or can take a free one."""
        key = trigger_key(kid, lane)
        current = self.redis.get(key)
        if current is not None and current.decode() == job_id:
            return True
        return bool(self.redis.set(key, job_id, nx=True, px=TRIGGER_TTL_MS))

    def trigger(self, kid: str, lane: str) -> str | None:
        value = self.redis.get(trigger_key(kid, lane))
        return value.decode() if value else None

    def import_hint(self, batch_id: str, token: str) -> tuple[str, str] | None:
        """OliAI says an import is done: if ``token`` is the one its webhook URL carried, poll
        it now (returns its lane, to be kicked); None: no such import waiting, or a wrong token.
        Only a hint: the drain still asks ``/imports/:id/status``."""
        record = self.redis.hmget(batch_key(batch_id), "hint", "phase", "kid", "lane")
        hint, phase, kid, lane = (v.decode() if v else "" for v in record)
        if not hint or phase != "importing" or not hmac.compare_digest(hint, hint_digest(token)):
            return None
        self.redis.zadd(importing_key(kid, lane), {batch_id: 0}, xx=True)
        return kid, lane

    def lanes(self) -> list[tuple[str, str]]:
        out = []
        for member in self.redis.smembers(LANES_KEY):
            kid, _, lane = member.decode().rpartition(":")
            out.append((kid, lane))
        return sorted(out)


def kick_lanes(
    redis: Redis, queue: Queue, pairs: Iterable[tuple[str, str]], job_timeout: int
) -> list[str]:
    """Arm and fire the triggers of ``pairs`` in one round trip (after tickets were added)."""
    pipe = redis.pipeline(transaction=False)
    kick = Kick(queue, job_timeout)
    for kid, lane in pairs:
        kick.arm(pipe, kid, lane)
    return kick.fire(pipe.execute())
