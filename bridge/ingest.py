"""How a webhook becomes stored deliveries: verify, parse, normalize, map, dedup, store, enqueue.

``Ingest.handle`` is the whole web-side path for one request, independent of Flask. Parsing,
normalizing and mapping are ``bridge.pipeline``'s, shared with ``try``, replay and the job;
what ingest adds is the route's quota, the handshake, the signature check, dedup, storage and
metrics. A refused request (over a quota, unknown route, bad signature, ...) writes nothing to
Redis of its own: its count joins the process's ``Tally``. A 2xx is only ever answered after
the delivery and its ticket in its lane's pending set are in Redis (one MULTI/EXEC,
``jobs.lanes``; the first lead of an idle lane also starts its drain job); a Redis failure
becomes ``StorageUnavailable`` (503 + Retry-After), never a 2xx.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue

from bridge import keys, metrics
from bridge.deliveries import DeliveryStore
from bridge.event import InboundRequest, utcnow_iso
from bridge.exceptions import (
    IngestError,
    MethodNotAllowed,
    QuotaExceeded,
    SignatureInvalid,
    StorageUnavailable,
    UnknownRoute,
)
from bridge.pipeline import LeadResult, map_request
from bridge.queue import transaction
from bridge.quotas import ADDRESS_QUOTA, Quotas
from bridge.record import Delivery, new_delivery_id, raw_body, raw_record
from bridge.redaction import redact
from bridge.settings import Route, Settings
from bridge.sources import get_source
from bridge.sources.base import Accepted, Outcome, Reply, Source, error_reply
from bridge.storage import is_full
from jobs.lanes import Kick, lane_kid, requeue

log = logging.getLogger(__name__)

#: The ``route`` label of requests to routes that do not exist: their names are the sender's
#: to choose, and one counter each would let a flood of made-up names fill Redis.
UNKNOWN_ROUTE_LABEL = "(unknown)"


class Ingest:
    def __init__(self, settings: Settings, redis: Redis, queue: Queue):
        self.settings = settings
        self.redis = redis
        self.queue = queue
        self.store = DeliveryStore.for_settings(redis, settings)
        self.quotas = Quotas(redis, settings)
        #: Refusals, counted here and written at most once a second (``metrics.Tally``).
        self.refusals = metrics.Tally(redis)

    def handle(self, req: InboundRequest) -> Reply:
        route = self.settings.routes.get(req.route)
        if route is None:
            self.refusals.add("rejected", UNKNOWN_ROUTE_LABEL, "unknown_route")
            return error_reply(UnknownRoute(f"no route named {req.route[:64]!r} is configured"))
        try:
            self.quotas.admit(route, req.remote_addr)
        except QuotaExceeded as over:
            return self.over_quota(route, over)
        source = get_source(route.source)
        try:
            outcome = Outcome(accepted=self._accept(req, route, source), request=req)
        except IngestError as error:
            reason = error.reason if isinstance(error, SignatureInvalid) else error.error
            self.refusals.add("rejected", route.name, reason)
            log.info(
                "route %s: refused %s: %s",
                route.name,
                error.status,
                error.message,
                extra={"event": "webhook.refused", "route": route.name, "status": error.status},
            )
            outcome = Outcome(error=error, request=req)
        except _Handshake as answered:
            return answered.reply
        return source.reply(outcome)

    def over_quota(self, route: Route, over: QuotaExceeded) -> Reply:
        """The answer past a quota, counted. Before the source sees the request: every sender
        gets the same 429, and retries after it."""
        reason = "ip_quota_exceeded" if over.quota == ADDRESS_QUOTA else "quota_exceeded"
        self.refusals.add("rejected", route.name, reason)
        return error_reply(over)

    def _accept(self, req: InboundRequest, route: Route, source: Source) -> list[Accepted]:
        if req.method in ("GET", "HEAD"):
            reply = source.handshake(req, route)
            if reply is None:
                raise MethodNotAllowed(f"{req.method} is not accepted here: POST the webhook")
            raise _Handshake(reply)
        if req.method not in ("POST", "PUT"):
            raise MethodNotAllowed(f"{req.method} is not accepted here: POST the webhook")
        source.verify(req, route)
        results = map_request(req, route, source, utcnow_iso())
        prepared = [
            delivery_for(result, index, len(results), route, source)
            for index, result in enumerate(results)
        ]
        if not prepared:
            return []
        try:
            received = Received(req, source.kept_headers, prepared, source.dedups_body)
            return self.store_leads([received])
        except RedisError as exc:
            why = "Redis is full (maxmemory reached)" if is_full(exc) else "Redis is unavailable"
            log.error(
                "route %s: %s, answering 503: %s",
                route.name,
                why,
                exc,
                extra={"event": "webhook.not_stored", "route": route.name, "status": 503},
            )
            raise StorageUnavailable(
                "the bridge cannot store this webhook right now (queue unavailable): retry later"
            ) from None

    def store_leads(self, batch: list[Received]) -> list[Accepted]:
        """Store every delivery of ``batch`` with its request's raw payload and its job, unless
        its dedup key names a stored delivery already (then it is a duplicate of that one).

        One request's leads for a webhook, a chunk of rows for ``oliai-bridge import``: the
        dedup claims go in one round trip, the records and jobs in one MULTI/EXEC. Returns an
        ``Accepted`` per delivery, in order. A ``RedisError`` releases the claims made.
        """
        deliveries = [delivery for received in batch for delivery in received.deliveries]
        dedup_keys = [keys.dedup(d.route, d.event.event_id) for d in deliveries]
        claimed: list[str] = []
        try:
            firsts = self._claim(dedup_keys, deliveries, claimed)
            self._claim_bodies(batch, deliveries, firsts, claimed)
            fresh = {d.id for d, first in zip(deliveries, firsts, strict=True) if first == d.id}
            if fresh:
                self._write(batch, fresh)
        except RedisError:
            if claimed:
                try:
                    self.redis.delete(*claimed)
                except RedisError:
                    pass
            raise
        accepted = []
        duplicates: dict[str, int] = {}
        for delivery, first in zip(deliveries, firsts, strict=True):
            if first == delivery.id:
                accepted.append(Accepted(delivery.id, delivery.status, delivery.reason))
            else:
                accepted.append(Accepted(first, "duplicate"))
                duplicates[delivery.route] = duplicates.get(delivery.route, 0) + 1
        for route, amount in duplicates.items():
            metrics.count(self.redis, "duplicate", route, amount=amount)
        return accepted

    def _claim(
        self, dedup_keys: list[str], deliveries: list[Delivery], claimed: list[str]
    ) -> list[str]:
        """For each delivery, the id of the delivery its dedup key belongs to: its own when it
        claimed the key (``claimed`` collects those keys), else the first copy's."""
        ttl = self.settings.dedup_ttl_seconds
        firsts = [delivery.id for delivery in deliveries]
        pipe = self.redis.pipeline(transaction=False)
        for key, delivery in zip(dedup_keys, deliveries, strict=True):
            pipe.set(key, delivery.id, nx=True, ex=ttl)
        won = pipe.execute()
        claimed += [key for key, ok in zip(dedup_keys, won, strict=True) if ok]
        lost = [i for i, ok in enumerate(won) if not ok]
        if not lost:
            return firsts
        pipe = self.redis.pipeline(transaction=False)
        for i in lost:
            pipe.get(dedup_keys[i])
        for i, first in zip(lost, pipe.execute(), strict=True):
            firsts[i] = (first or b"").decode()
        # A key held by an earlier lead of this batch: a duplicate of a delivery stored with it.
        ours = {d.id for d in deliveries}
        elsewhere = [i for i in lost if firsts[i] and firsts[i] not in ours]
        pipe = self.redis.pipeline(transaction=False)
        for i in elsewhere:
            pipe.exists(keys.delivery(firsts[i]))
        stored = pipe.execute() if elsewhere else []
        gone = [i for i in lost if not firsts[i]]
        gone += [i for i, there in zip(elsewhere, stored, strict=True) if not there]
        if gone:
            # The first copy was claimed but never stored (a crash in between): take over.
            pipe = self.redis.pipeline(transaction=False)
            for i in gone:
                pipe.set(dedup_keys[i], deliveries[i].id, ex=ttl)
                firsts[i] = deliveries[i].id
            pipe.execute()
            claimed += [dedup_keys[i] for i in gone]
        return firsts

    def _claim_bodies(
        self,
        batch: list[Received],
        deliveries: list[Delivery],
        firsts: list[str],
        claimed: list[str],
    ) -> None:
        """For sources whose event id the signature does not cover (``dedups_body``): the same
        signed body under another event id (a captured request re-sent with its unsigned id
        header changed, or one event sent by two hooks) is a duplicate of the first."""
        ttl = self.settings.dedup_ttl_seconds
        index = {d.id: i for i, d in enumerate(deliveries)}
        for received in batch:
            fresh = [d for d in received.deliveries if firsts[index[d.id]] == d.id]
            if not received.dedups_body or not fresh:
                continue
            key, earlier = self._claim_body(received.req, fresh[0].route, fresh[0].id, ttl)
            if earlier is None:
                claimed.append(key)
                continue
            mine = [keys.dedup(d.route, d.event.event_id) for d in fresh]
            self.redis.delete(*mine)
            for key_ in mine:
                claimed.remove(key_)
            for d in received.deliveries:
                firsts[index[d.id]] = earlier

    def _claim_body(
        self, req: InboundRequest, route: str, delivery_id: str, ttl: int
    ) -> tuple[str, str | None]:
        """Claim the request's body hash for ``delivery_id``: (the key, None), or (the key, the
        delivery the same body made before)."""
        key = keys.dedup(route, f"body:{req.body_hash}")
        if self.redis.set(key, delivery_id, nx=True, ex=ttl):
            return key, None
        earlier = (self.redis.get(key) or b"").decode()
        if earlier and self.store.exists(earlier):
            return key, earlier
        self.redis.set(key, delivery_id, ex=ttl)  # claimed but never stored (a crash): take over
        return key, None

    def _write(self, batch: list[Received], fresh: set[str]) -> None:
        """One MULTI/EXEC: the raw request of each received item and its ``fresh`` deliveries,
        each with its history, indexes, metrics and (when queued) its job."""
        pipe = transaction(self.redis)
        kick = Kick(self.queue, self.settings.delivery.job_timeout_seconds)
        hidden = self.settings.secrets()
        for received in batch:
            new = [d for d in received.deliveries if d.id in fresh]
            if not new:
                continue
            raw_id = f"r{secrets.token_hex(8)}"
            raw = raw_record(received.req, received.kept_headers, hidden)
            self.store.add_raw(pipe, raw_id, raw)
            body = raw_body(raw)
            for delivery in new:
                delivery.event.fields = redact(delivery.event.fields, hidden)
                if delivery.contact is not None:
                    delivery.contact = redact(delivery.contact, hidden)
                delivery.raw_id = raw_id
                delivery.pack_against(body)  # its fields and contact repeat the body: say so
                if delivery.status == "queued":
                    # A ticket in its lane; the first for an idle lane starts the lane's drain.
                    kid = lane_kid(self.settings, self.settings.routes[delivery.route])
                    requeue(pipe, delivery, kid)
                    kick.arm(pipe, kid, delivery.lane)
                self.store.add(pipe, delivery)
                detail = f"{delivery.lane} lane" if delivery.status == "queued" else delivery.reason
                self.store.log_on(pipe, delivery.id, delivery.status, detail)
                metrics.count_on(pipe, delivery.status, delivery.route)
        results = pipe.execute()
        try:
            kick.fire(results)
        except RedisError as exc:
            # Stored already: the reaper starts the lane's drain if nobody else does.
            log.warning("stored, but no drain started (%s)", exc)
        backfill = 0
        for received in batch:
            for delivery in received.deliveries:
                if delivery.id not in fresh:
                    continue
                if delivery.lane != "live":  # an import's thousands: one line for the chunk
                    backfill += 1
                    continue
                log.info(
                    "route %s: %s %s",
                    delivery.route,
                    delivery.status,
                    delivery.id,
                    extra={
                        "event": f"webhook.{delivery.status}",
                        "route": delivery.route,
                        "delivery_id": delivery.id,
                    },
                )
        if backfill:
            log.info("stored %d backfill deliveries", backfill, extra={"event": "backfill.stored"})


@dataclass
class Received:
    """The leads of one request, ready to store: the request (kept as the raw payload that
    replay ``--remap`` reads again), the headers its source keeps, a delivery per lead."""

    req: InboundRequest
    kept_headers: tuple[str, ...]
    deliveries: list[Delivery]
    #: The source's ``dedups_body``: the body hash is claimed too.
    dedups_body: bool = False


def delivery_for(
    result: LeadResult,
    index: int,
    count: int,
    route: Route,
    source: Source,
    lane: str = "live",
) -> Delivery:
    """The delivery to store for one lead of a request: queued, or skipped as unmappable
    (refused with a 422 instead when it is the request's only lead and the sender shows
    errors to its user)."""
    delivery = Delivery(
        id=new_delivery_id(),
        route=route.name,
        source=source.name,
        status="queued",
        event=result.event,
        received_at=result.event.received_at,
        lead_index=index,
        lane=lane,
    )
    if result.unmappable is None:
        delivery.contact = result.contact  # None for a lead the job fetches first
        return delivery
    if source.unmappable == "reject" and count == 1:
        raise result.unmappable
    delivery.status = "skipped"
    delivery.reason_code = "unmappable"
    delivery.reason = result.unmappable.message
    return delivery


class _Handshake(Exception):
    """A GET/HEAD verification the source answered itself."""

    def __init__(self, reply: Reply):
        self.reply = reply
