"""The delivery job: one stored lead → one OliAI contact in its audience, exactly once.

Each finished step (contact created/updated, audience membership) is recorded on the delivery
before the next begins, so a retry resumes at the step that failed. Outcomes, each decided here
and only here:

- 429 (or our limiter says wait): the key is paused for every worker and the job is put in RQ's
  scheduled registry for the moment it may go; no worker sleeps.
- 5xx, timeouts, dropped connections, failed provider fetches: retried with exponential backoff
  and jitter, at most ``delivery.max_attempts`` attempts, then failed.
- any other 4xx: failed at once, keeping the API's message.
- a submission that cannot become a contact (after a fetch): skipped, with the reason.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import requests
from redis import Redis
from rq import get_current_job

from bridge import keys, logs, metrics
from bridge.exceptions import (
    ApiError,
    ApiForbidden,
    Conflict,
    Deferred,
    NotFound,
    PayloadRefused,
    PermanentApiError,
    ProviderFetchError,
    RateLimited,
    ServerError,
    TransientApiError,
    Unauthorized,
    Unmappable,
    ValidationFailed,
)
from bridge.pipeline import fetched_event, map_lead
from bridge.queue import transaction
from bridge.record import Delivery
from bridge.settings import Route
from bridge.sources import get_source
from jobs import payloads
from jobs.audiences import forget_audience, resolve_audience
from jobs.campaigns import schedule_step
from jobs.context import Context, context
from jobs.lanes import now_ms, requeue
from jobs.oliai import OliAIClient
from jobs.ratelimit import key_id

log = logging.getLogger(__name__)

#: A running delivery holds a lease refreshed every LEASE_REFRESH seconds; when its worker dies
#: the lease lapses and the reaper (``jobs.reaper``) hands the delivery to another worker.
LEASE_SECONDS = 15.0
LEASE_REFRESH = 5.0


@contextmanager
def kept_alive(redis: Redis, key: str, refresh: Callable[[], object], name: str) -> Iterator[None]:
    """While the block runs, call ``refresh`` every ``LEASE_REFRESH`` seconds in a thread (it
    renews the lease ``key`` and whatever else the holder keeps alive); then delete ``key``. A
    refresh that fails is not retried: the lease lapses and the reaper takes over."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(LEASE_REFRESH):
            try:
                refresh()
            except Exception:  # noqa: BLE001 - the reaper copes with a lapsed lease
                pass

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1)
        try:
            redis.delete(key)
        except Exception:  # noqa: BLE001
            pass


def deliver(delivery_id: str) -> str:
    """The RQ job. Returns the delivery's status after this attempt."""
    with logs.context(delivery_id=delivery_id):  # on every line logged while it runs
        return Deliverer(context()).run(delivery_id)


class Deliverer:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.settings = ctx.settings
        self.store = ctx.store
        self.redis = ctx.redis

    def run(self, delivery_id: str) -> str:
        d = self.store.get(delivery_id)
        if d is None:
            log.warning("delivery %s: not found (expired?), nothing to do", delivery_id)
            return "missing"
        logs.bind(route=d.route)
        if d.terminal:
            return d.status
        if self.stale(d):
            return "stale"
        return self.alone(d)

    def alone(self, d: Delivery, *, counted: bool = False) -> str:
        """A lead sent by itself: by ``run`` once its job is known to be current, or by a drain
        (``jobs.batch``), whose claim checked its ticket; ``counted``: its batch recorded the
        attempt."""
        route = self.settings.routes.get(d.route)
        if route is None:
            return self.fail(d, "route_removed", f"route {d.route!r} is no longer configured")
        api_key = self.settings.api_key_for(route)
        if not api_key:
            return self.fail(d, "no_api_key", "no OliAI API key is configured for this route")
        client = self.ctx.client_for(api_key)
        waiting = self.wait_for_token(d, client, counted=counted)
        if waiting is not None:
            return waiting
        return self.attempt(d, route, client, key_id(api_key), counted=counted)

    def stale(self, d: Delivery) -> bool:
        """True when this job is not the delivery's current one (a duplicate or late job)."""
        job = get_current_job()
        if job is not None and d.job_id and job.id != d.job_id:
            log.info("delivery %s: job %s is stale (current %s)", d.id, job.id, d.job_id)
            return True
        return False

    def wait_for_token(
        self, d: Delivery, client: OliAIClient, *, counted: bool = False
    ) -> str | None:
        """Reschedule the delivery when its key has no token free now (its status then), without
        counting an attempt; None when it may go."""
        wait = client.limiter.wait_time() if client.limiter is not None else 0.0
        if wait <= 0:
            return None
        if counted:
            d.attempts -= 1  # its batch counted an attempt that never reached the API
        # Spread the comeback over part of the window, or every waiting job would return at
        # the same instant and all but a few would wait again.
        spread = random.uniform(0.05, max(0.5, client.limiter.window_seconds / 4))
        said = self.store.last_history(d.id).get("what") == "rate_limited"
        return self.reschedule(
            d,
            wait + spread,
            None if said else "rate_limited",
            f"no token free for this API key: next try in {wait + spread:.1f} s",
        )

    def attempt(
        self, d: Delivery, route: Route, client: OliAIClient, kid: str, *, counted: bool = False
    ) -> str:
        """One attempt at the steps left, under the lease; every outcome is decided here."""
        d.status = "delivering"
        d.batch_id = None  # from here on its own lease says it is alive
        if not counted:
            d.attempts += 1
            self.store.update(d, "attempt", f"attempt {d.attempts}", recheck_in=LEASE_SECONDS)
        with self.lease(d.id):
            try:
                self.work(d, route, client, kid)
            except RateLimited as exc:
                if exc.status is not None:  # the API's own 429, not our limiter
                    self.note_api(d, exc)
                d.attempts -= 1  # waiting out a rate limit is not an attempt at this lead
                delay = exc.retry_after + random.uniform(0.05, 0.5)
                metrics.count(self.redis, "retried", d.route, "rate_limited")
                return self.reschedule(
                    d, delay, "rate_limited", f"{exc.message}: next try in {delay:.1f} s"
                )
            except Deferred as exc:
                return self.reschedule(
                    d, exc.retry_after + random.uniform(0, 0.3), "deferred", exc.message
                )
            except TransientApiError as exc:
                self.note_api(d, exc)
                return self.transient(d, str(exc))
            except ProviderFetchError as exc:
                if exc.transient:
                    return self.transient(d, f"fetching the lead: {exc.message}")
                return self.fail(d, "fetch_failed", f"fetching the lead: {exc.message}")
            except PermanentApiError as exc:
                if not isinstance(exc, PayloadRefused):  # refused here: the API said nothing
                    self.note_api(d, exc)
                return self.fail(d, reason_code(exc), str(exc))
            except Unmappable as exc:
                return self.skip(d, exc.message)
            except Exception as exc:  # a bug must not strand the lead: retry, then fail visibly
                log.exception("delivery %s: unexpected error", d.id)
                return self.transient(d, f"internal error: {type(exc).__name__}: {exc}")
        d.status = "delivered"
        d.reason_code = d.reason = None
        d.last_api = None
        pipe = transaction(self.redis)
        # The entries before it and the record name the contact and the audience.
        self.store.update(d, "delivered", None, pipe=pipe)
        schedule_step(pipe, self.ctx.queue, d.id, route)
        pipe.execute()
        seconds = metrics.delivered(self.redis, d.route, d.received_at)
        log.info(
            "delivered %.1f s after receipt",
            seconds,
            extra={"event": "delivery.delivered", "latency_seconds": round(seconds, 3)},
        )
        return d.status

    # --- the steps -----------------------------------------------------------------------

    def work(self, d: Delivery, route: Route, client: OliAIClient, kid: str) -> None:
        if d.unreadable and d.contact is None:
            raise Unmappable(d.unreadable)
        if d.contact is None:
            if d.event.fetch:
                source = get_source(d.source)
                lead = source.fetch(
                    d.event, route, self.ctx.http, self.settings.oliai.timeout_seconds
                )
                d.event = fetched_event(d.event, lead)
                self.store.update(
                    d,
                    "fetched",
                    f"lead fields: {', '.join(sorted(d.event.fields))}",
                    recheck_in=LEASE_SECONDS,
                )
            d.contact = map_lead(d.event, route).contact_or_raise()
            self.store.update(d, "mapped", d.contact["phoneNumber"], recheck_in=LEASE_SECONDS)
        if not d.contact_id:
            d.contact_id, what = self.upsert(d.contact, route, client)
            self.store.update(d, what, d.contact_id, recheck_in=LEASE_SECONDS)
        if not d.audience_added:
            audience_id = resolve_audience(client, self.redis, route, kid)
            try:
                client.add_audience_contacts(audience_id, [d.contact_id])
            except NotFound as exc:
                if route.audience_name:
                    # Deleted in OliAI since we cached it: look it up (or create it) again.
                    forget_audience(self.redis, route, kid)
                    raise ServerError(
                        f"audience {audience_id} is gone; will resolve it again",
                        status=404,
                        method=exc.method,
                        path=exc.path,
                    ) from None
                raise
            d.audience_id = audience_id
            d.audience_added = True
            self.store.update(d, "audience_added", audience_id, recheck_in=LEASE_SECONDS)

    def upsert(self, contact: dict, route: Route, client: OliAIClient) -> tuple[str, str]:
        """Create the contact; on 409 find it by phone and update it (or leave it)."""
        body = payloads.contact(contact)  # a row OliAI would refuse fails here, field named
        try:
            created = client.create_contact(
                body["name"],
                body["phoneNumber"],
                language=body.get("language"),
                metadata=body.get("metadata") or None,
            )
            return created["id"], "contact_created"
        except Conflict:
            existing = client.find_contact_by_phone(contact["phoneNumber"])
        if existing is None:
            raise ServerError("409 on create, but no contact with this phone number was found")
        if route.on_duplicate == "skip":
            return existing["id"], "contact_exists"
        changes: dict = {}
        if contact["name"] != existing.get("name"):
            changes["name"] = contact["name"]
        if contact.get("language") and contact["language"] != existing.get("language"):
            changes["language"] = contact["language"]
        # PATCH replaces metadata as a whole (unknowns #13): read, merge, write.
        merged = {**(existing.get("metadata") or {}), **(contact.get("metadata") or {})}
        if merged != (existing.get("metadata") or {}):
            changes["metadata"] = merged
        if not changes:
            return existing["id"], "contact_unchanged"
        client.update_contact(existing["id"], **payloads.contact_patch(changes))
        return existing["id"], "contact_updated"

    # --- outcomes --------------------------------------------------------------------------

    def reschedule(self, d: Delivery, delay: float, what: str | None, detail: str | None) -> str:
        pipe = transaction(self.redis)
        d.status = "retrying"
        # Back in its lane, due after ``delay``: the lane's drain wakes up for it (and one queued
        # as its own RQ job before lanes existed moves into its lane here).
        requeue(pipe, d, self.ctx.kid_for(d), due_ms=now_ms() + int(delay * 1000))
        # The reaper looks just after the due time, in case no scheduler promotes it.
        self.store.update(d, what, detail, pipe=pipe, recheck_in=delay + 4)
        pipe.execute()
        log.info("next try in %.1f s: %s", delay, detail, extra={"event": "delivery.retrying"})
        return d.status

    def transient(self, d: Delivery, message: str) -> str:
        cfg = self.settings.delivery
        d.failures += 1
        if d.failures >= cfg.max_attempts:
            return self.fail(
                d,
                "retries_exhausted",
                f"gave up after {d.failures} failed attempts; last: {message}",
            )
        delay = backoff(d.failures, cfg.retry_base_seconds, cfg.retry_max_seconds)
        metrics.count(self.redis, "retried", d.route, "transient")
        return self.reschedule(
            d,
            delay,
            "retry_scheduled",
            f"{message} (attempt {d.failures} of {cfg.max_attempts}; next in {delay:.1f} s)",
        )

    def fail(self, d: Delivery, code: str, message: str) -> str:
        d.status = "failed"
        d.reason_code = code
        d.reason = message
        self.store.update(d, "failed", message)
        metrics.count(self.redis, "failed", d.route, code)
        log.warning(
            "delivery %s (route %s) failed: %s: %s",
            d.id,
            d.route,
            code,
            message,
            extra={"event": "delivery.failed", "reason": code},
        )
        alert(self.ctx, d)
        return d.status

    def skip(self, d: Delivery, message: str) -> str:
        d.status = "skipped"
        d.reason_code = "unmappable"
        d.reason = message
        self.store.update(d, "skipped", message)
        metrics.count(self.redis, "skipped", d.route)
        log.warning(
            "delivery %s (route %s) skipped: %s",
            d.id,
            d.route,
            message,
            extra={"event": "delivery.skipped"},
        )
        return d.status

    def note_api(self, d: Delivery, exc: ApiError) -> None:
        d.last_api = {
            "status": exc.status,
            "message": exc.message,
            "call": f"{exc.method} {exc.path}" if exc.method else None,
        }

    @contextmanager
    def lease(self, delivery_id: str) -> Iterator[None]:
        """Hold ``lease:<id>`` while working, refreshed by a thread, so the reaper can tell a
        running delivery from one whose worker died."""
        key = keys.lease(delivery_id)
        ms = int(LEASE_SECONDS * 1000)
        self.redis.set(key, "1", px=ms)
        with kept_alive(
            self.redis, key, lambda: self.redis.set(key, "1", px=ms), f"lease-{delivery_id}"
        ):
            yield


def backoff(failures: int, base: float, cap: float) -> float:
    """Exponential backoff with ±25 % jitter, so retries of many leads do not move in step."""
    delay = min(cap, base * (2 ** (failures - 1)))
    return delay * random.uniform(0.75, 1.25)


def reason_code(exc: PermanentApiError) -> str:
    for cls, code in (
        (Unauthorized, "unauthorized"),
        (ApiForbidden, "forbidden"),
        (NotFound, "not_found"),
        (Conflict, "conflict"),
        (ValidationFailed, "invalid"),
    ):
        if isinstance(exc, cls):
            return code
    return f"http_{exc.status}" if exc.status else "api_error"


def alert(ctx: Context, d: Delivery) -> None:
    """POST a short notice (no payload, no secret) to ``delivery.alert_webhook_url``."""
    url = ctx.settings.delivery.alert_webhook_url
    if not url:
        return
    try:
        ctx.http.post(url, json={"event": "delivery.failed", **d.summary()}, timeout=(2, 5))
    except requests.RequestException as exc:
        log.warning("alert webhook for %s not sent: %s", d.id, type(exc).__name__)
