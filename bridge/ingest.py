"""How a webhook becomes stored deliveries: verify, parse, normalize, map, dedup, store, enqueue.

``Ingest.handle`` is the whole web-side path for one request, independent of Flask. Parsing,
normalizing and mapping are ``bridge.pipeline``'s, shared with ``try``, replay and the job;
what ingest adds is the route's quota, the handshake, the signature check, dedup, storage and
metrics. A refused request (over a quota, unknown route, bad signature, ...) writes nothing to
Redis of its own: its count joins the process's ``Tally``. A 2xx is only ever answered after
the delivery and its ticket in its lane's pending set are in Redis (one Lua script with the
dedup claims, ``bridge.admission``; the first lead of an idle lane also starts its drain job,
``jobs.lanes``); requests stored at the same moment share that call (``bridge.commit``). A Redis
failure becomes ``StorageUnavailable`` (503 + Retry-After), never a 2xx.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue

from bridge import metrics
from bridge.admission import Admission, Claim
from bridge.commit import GroupCommit
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
from bridge.quotas import ADDRESS_QUOTA, Quotas
from bridge.record import RAW_INLINE_MAX, Delivery, dump_raw_parts, new_delivery_id, raw_parts
from bridge.redaction import redact
from bridge.settings import Route, Settings
from bridge.sources import get_source
from bridge.sources.base import Accepted, Outcome, Reply, Source, error_reply
from bridge.storage import is_full
from jobs.lanes import Kick, announce_lane, lane_kid, requeue

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
        self._admit = Admission.register(redis)
        #: Every secret of the settings, redacted from what is stored (settings never change).
        self._hidden = settings.secrets()
        self._lane_kids: dict[str, str] = {}
        self.quotas = Quotas(redis, settings)
        #: Refusals, counted here and written at most once a second (``metrics.Tally``).
        self.refusals = metrics.Tally(redis)
        #: A webhook's leads stored, in one call with those of the requests waiting with it;
        #: one call at a time, on a connection of its own (no pool to take it from and check).
        self.commit = GroupCommit(self._store_requests, weight=lambda r: len(r.deliveries))
        self._commit_connection = redis.connection_pool.make_connection()

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
        received = Received(req, source.kept_headers, prepared, source.dedups_body)
        try:
            return self.commit(self._prepare([received]))
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

    def store_leads(self, batch: list[Received], connection: Any = None) -> list[Accepted]:
        """Store every delivery of ``batch`` with its request's raw payload and its ticket,
        unless its dedup claim names a stored delivery already (then it is a duplicate of that one).

        One request's leads for a webhook, a chunk of rows for ``oliai-bridge import``: the
        dedup claims and the writes of the leads that won them go to Redis together, in one
        round trip (``bridge.admission``), on ``connection`` if given (used by one call at a
        time), else one of the pool's. Returns an ``Accepted`` per delivery, in order. A
        ``RedisError`` leaves nothing written (or, when only the answer was lost, everything:
        a retry is then answered as a duplicate of what was stored).
        """
        return self._store_prepared([self._prepare(batch)], connection)

    def _prepare(self, batch: list[Received]) -> _Prepared:
        """What storing ``batch`` writes, recorded and not yet sent (``_record``). A webhook
        records its own before it waits for its call (``_accept``): the call then carries what
        is ready, and one request's work overlaps another's round trip."""
        ttl = self.settings.dedup_ttl_seconds
        prepared = _Prepared(Admission(self.redis, self._admit, ttl))
        for received in batch:
            leads = prepared.admission.request(
                body_claim(received), [(dedup_claim(d), d.id) for d in received.deliveries]
            )
            self._record(prepared.admission, received, leads, prepared.together)
            prepared.deliveries += received.deliveries
        return prepared

    def _store_prepared(self, batch: list[_Prepared], connection: Any = None) -> list[Accepted]:
        """``store_leads`` of what ``batch`` recorded, in one call: an ``Accepted`` per
        delivery, in order."""
        admission = Admission(self.redis, self._admit, self.settings.dedup_ttl_seconds, connection)
        kick = Kick(self.queue, self.settings.delivery.job_timeout_seconds)
        together = _Together()
        deliveries: list[Delivery] = []
        for prepared in batch:
            together.add(prepared.together, offset=admission.merge(prepared.admission))
            deliveries += prepared.deliveries
        # What the leads share is written once for those of them that won: a call of a busy
        # bridge carries many leads, and these writes would otherwise be made once per lead.
        for (kid, lane), leads in together.lanes.items():
            with admission.for_leads(leads) as pipe:
                announce_lane(pipe, kid, lane)
                kick.arm(pipe, kid, lane)  # the first ticket for an idle lane starts its drain
        for (status, route), leads in together.counted.items():
            with admission.for_leads(leads, counted=True) as pipe:
                metrics.count_on(pipe, status, route)  # once per lead that won
                self.store.received_on(pipe, route, admission.window.now)
        firsts, results = admission.run(wanted=[index for index, *_ in kick.armed])
        try:
            kick.fire(results)
        except RedisError as exc:
            # Stored already: the reaper starts the lane's drain if nobody else does.
            log.warning("stored, but no drain started (%s)", exc)
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
        self._log_stored(deliveries, firsts)
        return accepted

    def _store_requests(self, batch: list[_Prepared]) -> list[list[Accepted]]:
        """``_store_prepared`` for requests stored together: each one's ``Accepted``, apart."""
        accepted = self._store_prepared(batch, self._commit_connection)
        apart, at = [], 0
        for prepared in batch:
            apart.append(accepted[at : at + len(prepared.deliveries)])
            at += len(prepared.deliveries)
        return apart

    def _record(
        self,
        admission: Admission,
        received: Received,
        leads: list[int],
        together: _Together,
    ) -> None:
        """Queue on ``admission`` what storing ``received`` writes: its raw request when any
        of its leads wins, and each lead's record, history, indexes and ticket when that lead
        wins. ``together`` collects the leads per lane and per counter, for what they share
        (``store_leads``)."""
        head, body = raw_parts(received.req, received.kept_headers, self._hidden)
        stored = dump_raw_parts(head, body)
        raw_id = None  # a webhook's only lead keeps the request in its record
        if len(received.deliveries) > 1 or len(stored) > RAW_INLINE_MAX:
            raw_id = f"r{secrets.token_hex(8)}"
            with admission.for_leads(leads) as pipe:
                self.store.add_raw(pipe, raw_id, stored)
        for delivery, lead in zip(received.deliveries, leads, strict=True):
            delivery.event.fields = redact(delivery.event.fields, self._hidden)
            if delivery.contact is not None:
                delivery.contact = redact(delivery.contact, self._hidden)
            delivery.raw_id = raw_id
            delivery.raw_inline = None if raw_id else stored
            delivery.pack_against(body)  # its fields and contact repeat the body: say so
            with admission.for_leads([lead]) as pipe:
                if delivery.status == "queued":
                    kid = self._lane_kid(delivery.route)
                    requeue(pipe, delivery, kid, announce=False)  # a ticket in its lane
                    together.lanes.setdefault((kid, delivery.lane), []).append(lead)
                detail = f"{delivery.lane} lane" if delivery.status == "queued" else delivery.reason
                then = (delivery.status, detail)
                self.store.add(pipe, delivery, then=then, route_seen=False)
            together.counted.setdefault((delivery.status, delivery.route), []).append(lead)

    def _lane_kid(self, route: str) -> str:
        """The key id a route's leads queue under, worked out once per route (a hash)."""
        kid = self._lane_kids.get(route)
        if kid is None:
            kid = self._lane_kids[route] = lane_kid(self.settings, self.settings.routes[route])
        return kid

    def _log_stored(self, deliveries: list[Delivery], firsts: list[str]) -> None:
        backfill = 0
        for delivery, first in zip(deliveries, firsts, strict=True):
            if first != delivery.id:
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
            # (debug: the import command shows its own progress; a line per chunk would break it)
            log.debug("stored %d backfill deliveries", backfill, extra={"event": "backfill.stored"})


def dedup_claim(delivery: Delivery) -> Claim:
    return Claim(delivery.route, delivery.event.event_id)


def body_claim(received: Received) -> Claim | None:
    """The body hash's claim, for sources whose event id the signature does not cover
    (``dedups_body``): the same signed body under another event id (a captured request re-sent
    with its unsigned id header changed, or one event sent by two hooks) is a duplicate of the
    first. None for the others."""
    if not received.dedups_body or not received.deliveries:
        return None
    return Claim(received.deliveries[0].route, f"body:{received.req.body_hash}")


@dataclass
class _Together:
    """The leads of one call per lane, and per counter (status, route): the counter's group
    also writes its route's time of last receipt."""

    lanes: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    counted: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def add(self, other: _Together, offset: int) -> None:
        """``other``'s leads, numbered from ``offset`` here."""
        for mine, theirs in ((self.lanes, other.lanes), (self.counted, other.counted)):
            for key, leads in theirs.items():
                mine.setdefault(key, []).extend(n + offset for n in leads)


@dataclass
class _Prepared:
    """Requests ready to store (``Ingest._prepare``): their claims and writes, recorded on an
    admission of their own, their deliveries in order, and their leads per lane and counter
    (numbered in that admission)."""

    admission: Admission
    deliveries: list[Delivery] = field(default_factory=list)
    together: _Together = field(default_factory=_Together)


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
