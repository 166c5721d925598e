"""Draining a lane: the leads queued for one API key (live or backfill), sent together.

``drain(kid, lane)`` is the RQ job a lane's trigger starts (``jobs.lanes``). It claims ready
tickets and sends them the cheapest way the queue allows:

- one lead alone goes out at once through the single path (``Deliverer.attempt``: create, 409
  → find and update, audience add): speed to lead;
- several go as one ``POST /contacts/bulk`` (an upsert by phone, at most the batch size the key
  last accepted) and one audience add per audience and 100 contacts;
- a backlog deeper than the bulk budget moves in one window goes through
  ``POST /imports/api/bulk`` with the audience, confirmed by polling ``/imports/:id/status``.

Per-lead outcomes land in each delivery's history as before. A row the API (or, earlier, our
own schemas in ``jobs.payloads``) refuses fails alone with its reason; a 400/413 on a bulk
request halves the batch (remembered per key) until the refused row stands alone. A lost answer
costs nothing twice: a bulk request is an upsert and an audience add is idempotent; before
sending an import again we look for the first one. 429s and empty token buckets put the batch
back, due when a token is, without counting an attempt; 5xx and timeouts retry it with
backoff; any other 4xx fails the leads it concerns.

A drain never sits on one key's limiter while another job waits for a worker: it waits in
place only for short gaps when the queue is empty, otherwise it hands the lane on (a job at the
back of the queue, or scheduled for when a token is free) and returns. It also hands on after
each batch when other jobs wait, after a slice of its job timeout, and when the worker is asked
to stop.
"""

from __future__ import annotations

import json
import logging
import math
import random
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlencode

from rq import get_current_job

from bridge import keys, logs, metrics
from bridge.exceptions import (
    ApiError,
    Deferred,
    NotFound,
    PayloadRefused,
    PermanentApiError,
    RateLimited,
    TransientApiError,
    ValidationFailed,
)
from bridge.queue import transaction
from bridge.record import Delivery
from bridge.settings import Route
from jobs import payloads
from jobs.audiences import forget_audience, resolve_audience
from jobs.campaigns import schedule_step
from jobs.context import Context, context
from jobs.deliver import LEASE_SECONDS, Deliverer, backoff, kept_alive, reason_code
from jobs.lanes import (
    IMPORT_HINT_PATH,
    Lanes,
    batch_key,
    batch_lease_key,
    delivery_id_of,
    drain_lease_key,
    enqueue_drain,
    hint_digest,
    importing_key,
    kick_lanes,
    new_job_id,
    noimport_key,
    now_ms,
    requeue,
    trigger_key,
    wake_key,
)
from jobs.ratelimit import BULK, GENERAL, RateLimiter

log = logging.getLogger(__name__)

#: Set by the worker when it is asked to stop: a drain hands its lane on after the current batch.
STOPPING = threading.Event()
#: A drain may sleep this long in place for a token or an import's answer, and only while no
#: other job waits for a worker; a longer wait is a scheduled job instead.
INLINE_WAIT_MAX = 2.0
INLINE_STEP = 0.05
#: Share of the job timeout a drain works before it hands the lane on (a fresh job, same lane).
SLICE_SHARE = 0.5
#: Deliveries written per MULTI/EXEC: big enough to be cheap, small enough not to stall Redis.
WRITE_CHUNK = 500
#: How many of a phone number's latest earlier deliveries a bulk row's metadata is merged from.
EARLIER_LEADS = 20
#: A backlog at least this deep (and deeper than the bulk budget moves in one window) becomes
#: an import: one request instead of dozens, at the price of per-row answers.
IMPORT_MIN_ROWS = 500
#: Import bodies stay below this size (#26: "a few MB at most"); a 413 halves it for the key.
IMPORT_MAX_BYTES = 1_000_000
#: Polling an import: first after this, doubling up to the cap (#28), given up after an hour.
IMPORT_POLL_FIRST = 0.25
IMPORT_POLL_MAX = 30.0
IMPORT_GIVE_UP_SECONDS = 3600
IMPORT_LOCK_MS = 10 * 60 * 1000
#: How far the API's clock may be from ours when we look for an import we sent (#31).
CLOCK_SKEW_SECONDS = 120
#: A batch size the API refused is remembered this long, then the documented one is tried again.
BULK_SIZE_TTL = 3600
FINAL_IMPORT = ("COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED")
NO_API_KEY = "no OliAI API key is configured for this route"
#: What a delivery's last write clears: a delivered lead keeps no reason and no batch.
FINAL_FIELDS = ("reason_code", "reason", "last_api", "failed_index")


def drain(kid: str, lane: str, wake_at_ms: int | None = None) -> str:
    """The RQ job: deliver what is ready in the (key, lane) pending set. Returns what it did."""
    job = get_current_job()
    job_id = job.id if job is not None else new_job_id(kid, lane)
    return Drainer(context(), kid, lane, job_id).run(wake_at_ms)


bulk_size_key = keys.bulk_size
import_bytes_key = keys.import_bytes
import_lock_key = keys.import_lock
known_imports_key = keys.known_imports


@dataclass
class Plan:
    kind: str  # single | bulk | import
    count: int
    rate_class: str


class Handed(Exception):
    """The drain handed its lane on (``reason``); the job ends."""

    def __init__(self, reason: str):
        self.reason = reason


class Drainer:
    def __init__(self, ctx: Context, kid: str, lane: str, job_id: str):
        self.ctx = ctx
        self.kid = kid
        self.lane = lane
        self.job_id = job_id
        self.settings = ctx.settings
        self.redis = ctx.redis
        self.store = ctx.store
        self.lanes: Lanes = ctx.lanes
        self.deliverer = Deliverer(ctx)
        api_key = ctx.api_key_for_kid(kid)
        self.client = ctx.client_for(api_key) if api_key else None
        self.limiter: RateLimiter | None = self.client.limiter if self.client else None
        self.job_timeout = self.settings.delivery.job_timeout_seconds
        self.slice = max(5.0, self.job_timeout * SLICE_SHARE)
        self.started = time.monotonic()
        self.wake_at_ms = 0
        self.held: set[str] = set()  # batch ids whose lease this drain keeps alive
        self.importing: set[str] = set()  # claimed batches that became imports
        self.imported_rows: dict[str, list[Delivery]] = {}  # their leads, while this run lasts
        self.audiences: dict[str, str] = {}

    # --- the loop ----------------------------------------------------------------------------

    def run(self, wake_at_ms: int | None = None) -> str:
        if not self.lanes.take_trigger(self.kid, self.lane, self.job_id):
            return "another drain has this lane"
        # A wake-up handles what is due by its time even if it runs a little early.
        self.wake_at_ms = int(wake_at_ms or 0)
        if wake_at_ms:
            wake = wake_key(self.kid, self.lane)
            if self.redis.get(wake) == str(self.wake_at_ms).encode():
                self.redis.delete(wake)  # this is that wake-up: a later one is needed anew
        with self.keepalive(), RateLimiter.for_lane(self.lane):
            try:
                return self.loop()
            except Handed as handed:
                return handed.reason

    def horizon(self) -> int:
        return max(now_ms(), self.wake_at_ms)

    def loop(self) -> str:
        while True:
            if STOPPING.is_set():
                self.hand_on("the worker is stopping")
            if time.monotonic() - self.started > self.slice:
                self.hand_on("slice used up")
            self.poll_imports()
            horizon = self.horizon()
            ready = self.lanes.ready_count(self.kid, self.lane, horizon)
            if not ready:
                due = self.next_due(horizon)
                if due is None:
                    if self.lanes.release(self.kid, self.lane, self.job_id, horizon):
                        return "done"
                    continue
                wait = (due - now_ms()) / 1000.0
                if self.next_import_poll() == due and self.wait_inline(wait):
                    continue
                self.sleep_until(due, hold=False)
            plan = self.plan(ready)
            if self.limiter is not None:
                wait = self.limiter.wait_time(plan.rate_class)
                if wait > 0:
                    if self.wait_inline(wait):
                        continue
                    self.sleep_until(now_ms() + int(wait * 1000) + 1, hold=True)
            batch_id, tickets = self.lanes.claim(
                self.kid,
                self.lane,
                plan.count,
                job_id=self.job_id,
                horizon_ms=horizon,
                lease_ms=int(LEASE_SECONDS * 1000),
            )
            if not tickets:
                continue
            self.held.add(batch_id)
            try:
                self.process(batch_id, tickets, plan)
            finally:
                self.end_batch(batch_id)
            if self.others_waiting():
                self.hand_on("other jobs are waiting")

    def plan(self, ready: int) -> Plan:
        if ready == 1:
            return Plan("single", 1, GENERAL)
        size = self.bulk_size()
        if ready >= self.import_threshold(size) and not self.redis.exists(
            import_lock_key(self.kid)
        ):
            return Plan("import", min(ready, payloads.IMPORT_MAX_ROWS), BULK)
        return Plan("bulk", size, BULK)

    def import_threshold(self, bulk_size: int) -> int:
        per_window = self.limiter.limits(self.lane)[BULK] if self.limiter else 1
        return max(IMPORT_MIN_ROWS, per_window * bulk_size + 1)

    def bulk_size(self) -> int:
        remembered = self.redis.get(bulk_size_key(self.kid))
        return int(remembered) if remembered else payloads.BULK_MAX_ITEMS

    def next_due(self, horizon: int) -> int | None:
        due = [
            t
            for t in (
                self.lanes.next_due_ms(self.kid, self.lane, horizon),
                self.next_import_poll(),
            )
            if t is not None
        ]
        return min(due) if due else None

    def next_import_poll(self) -> int | None:
        first = self.redis.zrange(importing_key(self.kid, self.lane), 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    def others_waiting(self) -> bool:
        return self.ctx.queue.count > 0

    def wait_inline(self, seconds: float) -> bool:
        """Sleep ``seconds`` in place if that is short and no other job waits for a worker."""
        if seconds > INLINE_WAIT_MAX:
            return False
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            if STOPPING.is_set() or self.others_waiting():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(INLINE_STEP, left))

    def hand_on(self, reason: str) -> None:
        """Another job carries the lane on, at the back of the queue; this one ends."""
        job_id = new_job_id(self.kid, self.lane)
        if self.lanes.pass_on(self.kid, self.lane, self.job_id, job_id, 600_000):
            enqueue_drain(self.ctx.queue, self.kid, self.lane, job_id, job_timeout=self.job_timeout)
        raise Handed(reason)

    def sleep_until(self, due_ms: int, *, hold: bool) -> None:
        """Come back at ``due_ms`` as a scheduled job. ``hold``: keep the lane's trigger (its
        leads wait for a token anyway); else let it go, so a new lead starts a drain at once."""
        job_id = new_job_id(self.kid, self.lane)
        ttl = max(0, due_ms - now_ms()) + 600_000

        def wake_up() -> None:  # this lane's next drain, scheduled for due_ms
            enqueue_drain(
                self.ctx.queue,
                self.kid,
                self.lane,
                job_id,
                job_timeout=self.job_timeout,
                at_ms=due_ms,
            )

        if hold:
            if self.lanes.pass_on(self.kid, self.lane, self.job_id, job_id, ttl):
                wake_up()
            raise Handed(f"waiting for a token until {due_ms}")
        if not self.lanes.release(self.kid, self.lane, self.job_id, self.horizon()):
            return  # something became ready meanwhile: keep draining
        wake = wake_key(self.kid, self.lane)
        scheduled = self.redis.get(wake)
        # A wake-up already due has fired (it may be this very run): a later one is needed.
        if scheduled is None or not now_ms() < int(scheduled) <= due_ms:
            self.redis.set(wake, math.ceil(due_ms / 1000) * 1000, px=ttl)
            wake_up()
        raise Handed(f"next retry due at {due_ms}")

    @contextmanager
    def keepalive(self) -> Iterator[None]:
        """Refresh the trigger, this run's lease and its batches' leases while it works."""
        lease_ms = int(LEASE_SECONDS * 1000)

        def refresh() -> None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(drain_lease_key(self.job_id), "1", px=lease_ms)
            for batch_id in list(self.held):
                pipe.set(batch_lease_key(batch_id), self.job_id, px=lease_ms, xx=True)
                pipe.zadd(keys.BATCHES, {batch_id: now_ms() + lease_ms}, xx=True)
            pipe.execute()
            current = self.redis.get(trigger_key(self.kid, self.lane))
            if current is not None and current.decode() == self.job_id:
                self.redis.pexpire(trigger_key(self.kid, self.lane), 600_000)

        self.redis.set(drain_lease_key(self.job_id), "1", px=lease_ms)
        with kept_alive(self.redis, drain_lease_key(self.job_id), refresh, f"drain-{self.job_id}"):
            yield

    # --- one batch -----------------------------------------------------------------------------

    def end_batch(self, batch_id: str) -> None:
        self.held.discard(batch_id)
        if batch_id in self.importing:
            return  # now an import's record, kept until the import is confirmed
        pipe = self.redis.pipeline(transaction=False)
        self.lanes.end_batch(pipe, batch_id)
        pipe.execute()

    def load(self, tickets: list[str]) -> list[Delivery]:
        """The claimed deliveries still waiting for this ticket (others are done or stale)."""
        out = []
        for start in range(0, len(tickets), WRITE_CHUNK):
            chunk = tickets[start : start + WRITE_CHUNK]
            read = self.store.read([delivery_id_of(ticket) for ticket in chunk])
            for ticket, d in zip(chunk, read, strict=True):
                if d is None:
                    continue
                if d.terminal or d.job_id != ticket:
                    continue
                out.append(d)
        return out

    def process(self, batch_id: str, tickets: list[str], plan: Plan) -> None:
        deliveries = self.load(tickets)
        if not deliveries:
            return
        if self.client is None:
            for d in deliveries:
                self.deliverer.fail(d, "no_api_key", NO_API_KEY)
            return
        alone: list[Delivery] = []  # the single path: fetch first, skip-on-duplicate, lone lead
        together: list[Delivery] = []
        moved: list[Delivery] = []
        for d in deliveries:
            route = self.settings.routes.get(d.route)
            if route is None:
                message = f"route {d.route!r} is no longer configured"
                self.deliverer.fail(d, "route_removed", message)
            elif self.ctx.kid_for(d) != self.kid:
                moved.append(d)  # its route uses another key now
            elif d.contact is None or route.on_duplicate == "skip" or len(deliveries) == 1:
                alone.append(d)
            else:
                together.append(d)
        if moved:
            self.move(moved)
        if together:
            self.send_together(batch_id, together, import_ok=plan.kind == "import")
        for d in alone:
            with logs.context(delivery_id=d.id, route=d.route):  # on its lines, calls included
                self.deliverer.alone(d)

    def move(self, deliveries: list[Delivery]) -> None:
        pipe = transaction(self.redis)
        pairs = set()
        for d in deliveries:
            kid = self.ctx.kid_for(d)
            requeue(pipe, d, kid)
            d.status = "queued"
            self.store.update(d, "moved", "its route uses another API key now", pipe=pipe)
            pairs.add((kid, d.lane))
        pipe.execute()
        kick_lanes(self.redis, self.ctx.queue, pairs, self.job_timeout)

    def send_together(self, batch_id: str, deliveries: list[Delivery], *, import_ok: bool) -> None:
        """Bulk upsert (or import) and audience adds for leads that may share requests."""
        valid: list[Delivery] = []
        refused = []
        for d in deliveries:
            try:
                payloads.contact(d.contact or {})
            except PayloadRefused as exc:
                refused.append((d, exc))
                continue
            valid.append(d)
        for d, exc in refused:  # OliAI would refuse it: it fails alone, no request spent
            self.deliverer.fail(d, reason_code(exc), str(exc))
        if not valid:
            return
        work = Work(self, valid)
        try:
            # Once for the batch: the rows an import or /contacts/bulk sends (#7: whole contacts).
            work.contacts = self.merged_contacts([d for d in valid if not d.contact_id])
            if import_ok:
                self.try_import(work, batch_id)
            rest = work.pending()
            if rest:
                # Short: a history entry over 64 bytes costs the record Redis's compact form.
                detail = f"in batch {batch_id} of {len(rest)}"
                work.attempt(rest, lambda d: f"attempt {d.attempts} {detail}")
                upsert = [d for d in rest if not d.contact_id]
                if upsert:
                    self.upsert(work, upsert)
                self.add_to_audiences(work, [d for d in rest if d.id in work.active])
        except RateLimited as exc:
            work.rate_limited(exc)
        except Deferred as exc:
            work.later(exc.retry_after + random.uniform(0, 0.3), "deferred", exc.message)
        except TransientApiError as exc:
            work.transient(exc)
        except PermanentApiError as exc:
            work.permanent(exc)
        except Exception as exc:  # a bug must not strand the leads: retry, then fail visibly
            log.exception("batch %s: unexpected error", batch_id)
            work.transient(None, f"internal error: {type(exc).__name__}: {exc}")
        # Rows a bulk answer left out go alone: the single path says why (#7).
        for d in work.alone:
            with logs.context(delivery_id=d.id, route=d.route):
                self.deliverer.alone(d, counted=True)

    # --- /contacts/bulk ---------------------------------------------------------------------

    def upsert(self, work: Work, deliveries: list[Delivery]) -> None:
        by_phone: dict[str, list[Delivery]] = {}
        for d in deliveries:  # one row per phone number (#7), its leads' data merged
            by_phone.setdefault(d.contact["phoneNumber"], []).append(d)
        rows = list(by_phone.values())
        size = self.bulk_size()
        for start in range(0, len(rows), size):
            try:
                self.upsert_chunk(work, rows[start : start + size])
            except RateLimited as exc:
                # The bulk budget ran out: the rest waits for it, the upserted go on.
                rest = [d for group in rows[start:] for d in group if d.id in work.active]
                work.rate_limited(exc, rest)
                return

    def upsert_chunk(self, work: Work, rows: list[list[Delivery]]) -> None:
        items = [payloads.contact(work.contact_for(group[-1])) for group in rows]
        try:
            answer = self.client.bulk_upsert_contacts(items)
        except ValidationFailed as exc:
            if len(rows) == 1:
                work.refused(rows[0], exc)
                return
            # Too big, or one bad row: halve, remember the size for this key, try the halves.
            half = (len(rows) + 1) // 2
            current = self.redis.get(bulk_size_key(self.kid))
            if current is None or int(current) > half:
                self.redis.set(bulk_size_key(self.kid), half, ex=BULK_SIZE_TTL)
            log.info(
                "key %s: /contacts/bulk refused %d rows (%s); halving",
                self.kid,
                len(rows),
                exc.message,
            )
            self.upsert_chunk(work, rows[:half])
            self.upsert_chunk(work, rows[half:])
            return
        found = {}
        for item in (answer or {}).get("contacts") or []:
            if isinstance(item, dict) and item.get("id") and item.get("phoneNumber"):
                found[item["phoneNumber"]] = str(item["id"])
        done = []
        for group in rows:
            contact_id = found.get(group[-1].contact["phoneNumber"])
            for d in group:
                if contact_id is None:
                    work.alone.append(d)
                    work.active.pop(d.id, None)
                else:
                    d.contact_id = contact_id
                    done.append(d)
        self.mark(
            done,
            "contact_upserted",
            lambda d: f"{d.contact_id} (bulk)",
            only=("contact_id",),
        )

    # --- audiences -----------------------------------------------------------------------------

    def add_to_audiences(self, work: Work, deliveries: list[Delivery]) -> None:
        groups: dict[str, list[Delivery]] = {}
        routes: dict[str, Route] = {}
        for d in deliveries:
            if d.audience_added:
                continue
            route = self.settings.routes[d.route]
            audience_id = self.audience_for(route)
            routes[audience_id] = route
            groups.setdefault(audience_id, []).append(d)
        for audience_id, group in groups.items():
            ids = list(dict.fromkeys(d.contact_id for d in group))
            for start in range(0, len(ids), payloads.AUDIENCE_MAX_IDS):
                chunk = ids[start : start + payloads.AUDIENCE_MAX_IDS]
                try:
                    self.client.add_audience_contacts(audience_id, chunk)
                except NotFound as exc:
                    route = routes[audience_id]
                    if route.audience_name:
                        # Deleted in OliAI since we cached it: look it up (or create it) again.
                        forget_audience(self.redis, route, self.kid)
                        self.audiences.pop(route.name, None)
                        gone = f"audience {audience_id} is gone; will resolve it again"
                        work.transient(exc, gone)
                        return
                    work.permanent(exc, [d for d in group if d.id in work.active])
                    continue
                members = set(chunk)
                done = [d for d in group if d.contact_id in members]
                self.finish(done, audience_id)
                work.done(done)

    def audience_for(self, route: Route) -> str:
        if route.name not in self.audiences:
            self.audiences[route.name] = resolve_audience(self.client, self.redis, route, self.kid)
        return self.audiences[route.name]

    def finish(self, deliveries: list[Delivery], audience_id: str, note: str | None = None) -> None:
        """In the audience: delivered (``note``: the import that put them there); a route's
        campaign step follows, as after a lead sent alone."""
        changed = ("audience_id", "audience_added", "contact_id", "batch_id", *FINAL_FIELDS)
        for start in range(0, len(deliveries), WRITE_CHUNK):
            chunk = deliveries[start : start + WRITE_CHUNK]
            pipe = transaction(self.redis)
            for d in chunk:
                d.audience_id = audience_id
                d.audience_added = True
                entry = ("imported", note) if note else ("audience_added", audience_id)
                self.store.log_on(pipe, d.id, *entry)
                d.status = "delivered"
                d.reason_code = d.reason = None
                d.last_api = None
                d.batch_id = None
                # The entries before it and the record name the contact and the audience.
                self.store.update(d, "delivered", None, pipe=pipe, only=changed)
                route = self.settings.routes.get(d.route)
                if route is not None:
                    schedule_step(pipe, self.ctx.queue, d.id, route)
            latencies = metrics.delivered_many_on(pipe, [(d.route, d.received_at) for d in chunk])
            pipe.execute()
            self.log_delivered(chunk, latencies, note)

    def log_delivered(self, deliveries: list[Delivery], latencies: list[float], note) -> None:
        """A line per lead of a bulk request; one for an import's chunk (thousands of lines
        would say nothing more than the history does)."""
        if len(deliveries) > payloads.BULK_MAX_ITEMS:
            log.info(
                "delivered %d leads (%s)",
                len(deliveries),
                note,
                extra={"event": "delivery.delivered_many", "count": len(deliveries)},
            )
            return
        for d, latency in zip(deliveries, latencies, strict=True):
            log.info(
                "delivered %.1f s after receipt",
                latency,
                extra={
                    "event": "delivery.delivered",
                    "latency_seconds": round(latency, 3),
                    "delivery_id": d.id,
                    "route": d.route,
                },
            )

    def mark(
        self,
        deliveries: list[Delivery],
        what: str,
        detail,
        *,
        attempt: bool = False,
        recheck_in: float = LEASE_SECONDS,
        only: tuple[str, ...] | None = None,
    ) -> None:
        """Record a step for each of ``deliveries`` (``attempt``: one more attempt begins;
        ``only``: the fields it changes)."""
        for start in range(0, len(deliveries), WRITE_CHUNK):
            pipe = transaction(self.redis)
            for d in deliveries[start : start + WRITE_CHUNK]:
                if attempt:
                    d.status = "delivering"
                    d.attempts += 1
                self.store.update(d, what, detail(d), pipe=pipe, recheck_in=recheck_in, only=only)
            pipe.execute()

    # --- what a contact keeps -------------------------------------------------------------------

    def merged_contacts(self, deliveries: list[Delivery]) -> dict[str, dict]:
        """The contact to send per phone number (``on_duplicate = "update"``): the metadata of
        every earlier lead of that number, oldest first, under this lead's.

        The lone path merges with what OliAI holds (read, merge, PATCH). A bulk upsert or an
        import sends the whole contact instead (oliai-api.md #7, #26), so a contact the bridge
        made before would lose the metadata keys this lead does not set. What earlier leads
        put there is in the bridge's own records: the deliveries of the same number through
        the same API key (the phone index), and the leads of the same number in this batch.
        """
        by_phone: dict[str, list[Delivery]] = {}
        for d in deliveries:
            if d.contact and self.settings.routes[d.route].on_duplicate == "update":
                by_phone.setdefault(d.contact["phoneNumber"], []).append(d)
        if not by_phone:
            return {}
        phones = list(by_phone)
        ours = {d.id for d in deliveries}
        earlier_ids = [
            [i for i in reversed(ids) if i not in ours]  # oldest first
            for ids in self.store.phone_ids(phones, EARLIER_LEADS)
        ]
        read = self.store.read([i for ids in earlier_ids for i in ids])
        earlier = {d.id: d for d in read if d is not None}
        out = {}
        for phone, ids in zip(phones, earlier_ids, strict=True):
            before = [earlier[i] for i in ids if i in earlier]
            sent = [
                e.contact
                for e in before
                if e.contact and e.contact_id and self.ctx.kid_for(e) == self.kid
            ]
            leads = [d.contact for d in by_phone[phone]]
            if len(sent) + len(leads) == 1:
                continue
            metadata: dict = {}
            for contact in [*sent, *leads]:
                metadata.update(contact.get("metadata") or {})
            out[phone] = {**leads[-1], "metadata": metadata} if metadata else leads[-1]
        return out

    # --- imports -------------------------------------------------------------------------------

    def try_import(self, work: Work, batch_id: str) -> None:
        """Send the rows an import can carry (the claimed batch becomes the import's record);
        the rest stay in ``work`` for /contacts/bulk."""
        candidates = [d for d in work.pending() if not d.contact_id and not d.audience_added]
        flagged = set()
        if candidates:
            found = self.redis.smismember(
                noimport_key(self.kid, self.lane), [d.id for d in candidates]
            )
            flagged = {d.id for d, f in zip(candidates, found, strict=True) if f}
        by_audience: dict[str, list[tuple[Delivery, dict]]] = {}
        for d in candidates:
            if d.id in flagged:
                continue
            try:
                row = payloads.import_row(work.contact_for(d))
            except PayloadRefused:
                continue  # a metadata key the import format reserves: /contacts/bulk takes it
            route = self.settings.routes[d.route]
            if route.campaign is not None:
                continue  # its campaign step needs the contact id, which an import does not give
            by_audience.setdefault(self.audience_for(route), []).append((d, row))
        audience_id, rows = max(by_audience.items(), key=lambda kv: len(kv[1]), default=("", []))
        if len(rows) < IMPORT_MIN_ROWS:
            return
        if not self.redis.set(import_lock_key(self.kid), self.job_id, nx=True, px=IMPORT_LOCK_MS):
            return  # one import at a time per key, so a lost answer can be looked up
        if self.send_import(work, batch_id, audience_id, rows):
            work.done(d for d, _ in rows)
        else:
            self.redis.delete(import_lock_key(self.kid))

    def send_import(
        self, work: Work, batch_id: str, audience_id: str, rows: list[tuple[Delivery, dict]]
    ) -> bool:
        """POST the import and keep the batch for polling; False: not sent, do these rows here."""
        by_phone: dict[str, dict] = {}
        for _, row in rows:
            by_phone[row["phoneNumber"]] = row  # one row per phone (#26), the latest wins
        body_rows = list(by_phone.values())
        limit = int(self.redis.get(import_bytes_key(self.kid)) or IMPORT_MAX_BYTES)
        size = len(json.dumps(body_rows).encode())
        if size > limit:
            return False  # several smaller imports would do; /contacts/bulk takes them instead
        sent_at = time.time()
        record = {
            "tickets": json.dumps([d.job_id for d, _ in rows]),
            "phase": "sending",
            "sent_at": f"{sent_at:.3f}",
            "total": len(body_rows),
            "audience": audience_id,
        }
        webhook_url = None
        if self.settings.public_url:
            # OliAI's completion webhook is unsigned (#28): an unguessable token in its URL.
            token = secrets.token_urlsafe(24)
            record["hint"] = hint_digest(token)
            query = urlencode({"batch": batch_id, "token": token})
            webhook_url = f"{self.settings.public_url.rstrip('/')}{IMPORT_HINT_PATH}?{query}"
        self.redis.hset(batch_key(batch_id), mapping=record)
        try:
            answer = self.client.bulk_import(
                body_rows, audience_id=audience_id, webhook_url=webhook_url
            )
            import_id = str(answer.get("importId") or "")
        except ValidationFailed as exc:
            if exc.status == 413:
                self.redis.set(import_bytes_key(self.kid), max(1, size // 2), ex=BULK_SIZE_TTL)
            log.info("key %s: import of %d rows refused (%s)", self.kid, len(body_rows), exc)
            return False
        except TransientApiError:
            import_id = self.find_sent_import(sent_at, len(body_rows)) or ""
            if not import_id:
                raise
            log.info("key %s: the import's answer was lost; found it: %s", self.kid, import_id)
        if not import_id:
            return False
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            batch_key(batch_id),
            mapping={"phase": "importing", "import_id": import_id, "interval": IMPORT_POLL_FIRST},
        )
        pipe.sadd(known_imports_key(self.kid), import_id)
        pipe.expire(known_imports_key(self.kid), 86400)
        pipe.zadd(
            importing_key(self.kid, self.lane),
            {batch_id: now_ms() + int(IMPORT_POLL_FIRST * 1000)},
        )
        pipe.zrem(keys.BATCHES, batch_id)
        pipe.delete(batch_lease_key(batch_id))
        pipe.execute()
        self.held.discard(batch_id)
        self.importing.add(batch_id)
        self.imported_rows[batch_id] = [d for d, _ in rows]
        work.attempt(
            [d for d, _ in rows],
            lambda d: (
                f"attempt {d.attempts}: import {import_id} of {len(body_rows)} rows "
                f"into audience {audience_id}"
            ),
            recheck_in=IMPORT_GIVE_UP_SECONDS,
        )
        return True

    def find_sent_import(self, sent_at: float, total: int) -> str | None:
        """After a lost answer: the import we sent, if the API has it (#31). None if not seen."""
        known = {k.decode() for k in self.redis.smembers(known_imports_key(self.kid))}
        try:
            page = self.client.list_imports(page=1, limit=payloads.AUDIENCE_MAX_IDS)
        except ApiError:
            return None
        for item in page.get("data") or []:
            import_id = str(item.get("id") or item.get("importId") or "")
            created = _epoch(item.get("createdAt"))
            if (
                import_id
                and import_id not in known
                and item.get("total") == total
                and created is not None
                and created >= sent_at - CLOCK_SKEW_SECONDS
            ):
                return import_id
        return None

    def poll_imports(self) -> None:
        now = now_ms()
        due = self.redis.zrangebyscore(importing_key(self.kid, self.lane), "-inf", now, 0, 10)
        for raw in due:
            import_batch = raw.decode()
            if self.limiter is not None and self.limiter.wait_time(GENERAL) > 0:
                return
            self.poll_import(import_batch)

    def poll_import(self, import_batch: str) -> None:
        record = self.lanes.batch(import_batch)
        if record is None:
            self.redis.zrem(importing_key(self.kid, self.lane), import_batch)
            return
        import_id = record.get("import_id", "")
        try:
            status = self.client.import_status(import_id)
        except NotFound:
            status = {"status": "FAILED", "message": "the API no longer knows this import"}
        except (RateLimited, TransientApiError):
            status = {"status": "UNKNOWN"}
        state = str(status.get("status") or "UNKNOWN")
        age = time.time() - float(record.get("sent_at") or time.time())
        if state not in FINAL_IMPORT:
            if age < IMPORT_GIVE_UP_SECONDS:
                interval = min(IMPORT_POLL_MAX, float(record.get("interval") or 1) * 2)
                pipe = self.redis.pipeline(transaction=True)
                pipe.hset(batch_key(import_batch), "interval", interval)
                pipe.zadd(
                    importing_key(self.kid, self.lane),
                    {import_batch: now_ms() + int(interval * 1000)},
                )
                pipe.pexpire(import_lock_key(self.kid), IMPORT_LOCK_MS)
                pipe.execute()
                return
            state = "GAVE_UP"
        deliveries = self.imported_rows.pop(import_batch, None) or self.load(record["tickets"])
        counts = ", ".join(
            f"{k} {status[k]}" for k in ("total", "created", "updated", "failed") if k in status
        )
        if state == "COMPLETED":
            note = f"import {import_id} into audience {record['audience']}: {counts}"
            self.finish(deliveries, record["audience"], note=note)
        else:
            # Which rows failed is not said (#27): every row goes through /contacts/bulk, whose
            # answer is per row (the imported ones are upserted again, harmlessly).
            pipe = transaction(self.redis)
            for d in deliveries:
                pipe.sadd(noimport_key(self.kid, self.lane), d.id)
                d.status = "queued"
                requeue(pipe, d, self.kid)
                self.store.update(
                    d,
                    "import_incomplete",
                    f"import {import_id} ended {state} ({counts}): each lead goes again alone "
                    "or in a bulk request",
                    pipe=pipe,
                )
            pipe.expire(noimport_key(self.kid, self.lane), 30 * 86400)
            pipe.execute()
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(importing_key(self.kid, self.lane), import_batch)
        pipe.delete(batch_key(import_batch))
        pipe.execute()
        if self.redis.get(import_lock_key(self.kid)) is not None:
            self.redis.delete(import_lock_key(self.kid))


class Work:
    """The leads of one batch still in flight, and what happens to them on each outcome."""

    def __init__(self, drainer: Drainer, deliveries: list[Delivery]):
        self.drainer = drainer
        self.active: dict[str, Delivery] = {d.id: d for d in deliveries}
        self.alone: list[Delivery] = []
        self.counted: set[str] = set()  # leads whose attempt is recorded
        #: Per phone number, the contact to send with earlier leads' metadata merged in.
        self.contacts: dict[str, dict] = {}

    def contact_for(self, d: Delivery) -> dict:
        contact = d.contact or {}
        return self.contacts.get(contact.get("phoneNumber", ""), contact)

    def attempt(self, deliveries: list[Delivery], detail, **kw) -> None:
        """One more attempt at each of ``deliveries`` begins (recorded before any request)."""
        self.drainer.mark(deliveries, "attempt", detail, attempt=True, only=("attempts",), **kw)
        self.counted.update(d.id for d in deliveries)

    def pending(self) -> list[Delivery]:
        return list(self.active.values())

    def done(self, deliveries: Iterable[Delivery]) -> None:
        for d in deliveries:
            self.active.pop(d.id, None)

    def refused(self, group: list[Delivery], exc: ApiError) -> None:
        """The API refused this row alone: it fails with the API's reason, nobody else does."""
        self.permanent(exc, group)

    def permanent(self, exc: PermanentApiError, deliveries: list[Delivery] | None = None) -> None:
        for d in deliveries if deliveries is not None else self.pending():
            if not isinstance(exc, PayloadRefused):
                self.drainer.deliverer.note_api(d, exc)
            self.drainer.deliverer.fail(d, reason_code(exc), str(exc))
            self.active.pop(d.id, None)

    def rate_limited(self, exc: RateLimited, deliveries: list[Delivery] | None = None) -> None:
        delay = exc.retry_after + random.uniform(0.05, 0.5)
        pending = self.pending() if deliveries is None else deliveries
        for d in pending:
            if exc.status is not None:  # the API's own 429, not our limiter
                self.drainer.deliverer.note_api(d, exc)
            if d.id in self.counted:
                d.attempts -= 1  # waiting out a rate limit is not an attempt at these leads
                self.counted.discard(d.id)
        if pending:
            metrics.count(self.drainer.redis, "retried", pending[0].route, "rate_limited")
        detail = f"{exc.message}: next try in {delay:.1f} s"
        self.later(delay, "rate_limited", detail, pending)

    def transient(self, exc: ApiError | None, message: str | None = None) -> None:
        message = message or str(exc)
        cfg = self.drainer.settings.delivery
        retry = []
        for d in self.pending():
            if exc is not None:
                self.drainer.deliverer.note_api(d, exc)
            d.failures += 1
            if d.failures >= cfg.max_attempts:
                self.drainer.deliverer.fail(
                    d,
                    "retries_exhausted",
                    f"gave up after {d.failures} failed attempts; last: {message}",
                )
                self.active.pop(d.id, None)
            else:
                retry.append(d)
        if retry:
            failures = max(d.failures for d in retry)
            delay = backoff(failures, cfg.retry_base_seconds, cfg.retry_max_seconds)
            metrics.count(self.drainer.redis, "retried", retry[0].route, "transient")
            self.later(
                delay,
                "retry_scheduled",
                f"{message} (attempt {failures} of {cfg.max_attempts}; next in {delay:.1f} s)",
            )

    def later(
        self, delay: float, what: str, detail: str, deliveries: list[Delivery] | None = None
    ) -> None:
        """Back to the lane, due in ``delay`` seconds; what is saved (contact ids) stays."""
        drainer = self.drainer
        deliveries = self.pending() if deliveries is None else deliveries
        for start in range(0, len(deliveries), WRITE_CHUNK):
            pipe = transaction(drainer.redis)
            for d in deliveries[start : start + WRITE_CHUNK]:
                d.status = "retrying"
                requeue(pipe, d, drainer.kid, due_ms=now_ms() + int(delay * 1000))
                drainer.store.update(d, what, detail, pipe=pipe, recheck_in=delay + 4)
            pipe.execute()
        self.done(deliveries)


def _epoch(value: object) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
