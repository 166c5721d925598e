"""How a webhook becomes stored deliveries: verify, parse, normalize, map, dedup, store, enqueue.

``Ingest.handle`` is the whole web-side path for one request, independent of Flask. A 2xx is
only ever answered after the delivery and its job are in Redis (one MULTI/EXEC); a Redis failure
becomes ``StorageUnavailable`` (503 + Retry-After), never a 2xx.
"""

from __future__ import annotations

import logging
import secrets

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue

from bridge import metrics
from bridge.deliveries import (
    Delivery,
    DeliveryStore,
    dedup_key,
    new_delivery_id,
    raw_record,
    redact,
)
from bridge.event import Event, InboundRequest, Lead, utcnow_iso
from bridge.exceptions import (
    IngestError,
    MalformedBody,
    MethodNotAllowed,
    SignatureInvalid,
    StorageUnavailable,
    UnknownRoute,
    Unmappable,
)
from bridge.mapping import map_event
from bridge.queue import enqueue, transaction
from bridge.settings import Route, Settings
from bridge.sources import get_source
from bridge.sources.base import MAX_EVENT_ID_CHARS, Accepted, Outcome, Reply, Source, error_reply
from bridge.storage import is_full

log = logging.getLogger(__name__)

#: Providers batch at most 100 records (Salesforce, HubSpot); a request carrying thousands is
#: garbage or abuse, and mapping and storing each would hold a web worker for a minute.
MAX_LEADS_PER_REQUEST = 1000


class Ingest:
    def __init__(self, settings: Settings, redis: Redis, queue: Queue):
        self.settings = settings
        self.redis = redis
        self.queue = queue
        self.store = DeliveryStore.for_settings(redis, settings)

    def handle(self, req: InboundRequest) -> Reply:
        route = self.settings.routes.get(req.route)
        if route is None:
            metrics.count(self.redis, "rejected", req.route[:64], "unknown_route")
            return error_reply(UnknownRoute(f"no route named {req.route[:64]!r} is configured"))
        source = get_source(route.source)
        try:
            outcome = Outcome(accepted=self._accept(req, route, source), request=req)
        except IngestError as error:
            reason = error.reason if isinstance(error, SignatureInvalid) else error.error
            metrics.count(self.redis, "rejected", route.name, reason)
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

    def _accept(self, req: InboundRequest, route: Route, source: Source) -> list[Accepted]:
        if req.method in ("GET", "HEAD"):
            reply = source.handshake(req, route)
            if reply is None:
                raise MethodNotAllowed(f"{req.method} is not accepted here: POST the webhook")
            raise _Handshake(reply)
        if req.method not in ("POST", "PUT"):
            raise MethodNotAllowed(f"{req.method} is not accepted here: POST the webhook")
        source.verify(req, route)
        payload = source.parse(req)
        leads = source.normalize(req, payload, route)
        if not leads:
            return []
        if len(leads) > MAX_LEADS_PER_REQUEST:
            raise MalformedBody(
                f"{len(leads)} leads in one request: at most {MAX_LEADS_PER_REQUEST} are accepted "
                "(split the batch)"
            )
        received_at = utcnow_iso()
        prepared = [
            self._prepare(req, route, source, lead, i, len(leads), received_at)
            for i, lead in enumerate(leads)
        ]
        try:
            return self._store(req, route, source, prepared)
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

    def _prepare(
        self,
        req: InboundRequest,
        route: Route,
        source: Source,
        lead: Lead,
        index: int,
        count: int,
        received_at: str,
    ) -> Delivery:
        event_id = event_id_for(req, lead, index, count)
        event = Event.from_lead(
            lead,
            route=route.name,
            source=source.name,
            event_id=event_id,
            received_at=received_at,
        )
        delivery = Delivery(
            id=new_delivery_id(),
            route=route.name,
            source=source.name,
            status="queued",
            event=event,
            received_at=received_at,
            lead_index=index,
        )
        if event.fetch:
            return delivery  # mapped by the job, after it fetched the lead
        try:
            delivery.contact = map_event(event, route)
        except Unmappable as exc:
            if source.unmappable == "reject" and count == 1:
                raise
            delivery.status = "skipped"
            delivery.reason_code = "unmappable"
            delivery.reason = exc.message
        return delivery

    def _store(
        self, req: InboundRequest, route: Route, source: Source, deliveries: list[Delivery]
    ) -> list[Accepted]:
        ttl = self.settings.dedup_ttl_seconds
        accepted: list[Accepted] = []
        fresh: list[Delivery] = []
        claimed: list[str] = []
        try:
            for delivery in deliveries:
                key = dedup_key(route.name, delivery.event.event_id)
                if self.redis.set(key, delivery.id, nx=True, ex=ttl):
                    claimed.append(key)
                    fresh.append(delivery)
                    accepted.append(Accepted(delivery.id, delivery.status, delivery.reason))
                    continue
                first_id = (self.redis.get(key) or b"").decode()
                if first_id and self.store.exists(first_id):
                    accepted.append(Accepted(first_id, "duplicate"))
                    metrics.count(self.redis, "duplicate", route.name)
                    continue
                # The first copy was claimed but never stored (a crash in between): take over.
                self.redis.set(key, delivery.id, ex=ttl)
                claimed.append(key)
                fresh.append(delivery)
                accepted.append(Accepted(delivery.id, delivery.status, delivery.reason))
            if fresh:
                pipe = transaction(self.redis)
                raw_id = f"r{secrets.token_hex(8)}"
                hidden = self.settings.secrets()
                self.store.add_raw(pipe, raw_id, raw_record(req, source.kept_headers, hidden))
                for delivery in fresh:
                    delivery.event.fields = redact(delivery.event.fields, hidden)
                    if delivery.contact is not None:
                        delivery.contact = redact(delivery.contact, hidden)
                    delivery.raw_id = raw_id
                    if delivery.status == "queued":
                        enqueue(
                            self.queue,
                            delivery,
                            pipe=pipe,
                            job_timeout=self.settings.delivery.job_timeout_seconds,
                        )
                    self.store.add(pipe, delivery)
                    detail = delivery.job_id if delivery.status == "queued" else delivery.reason
                    self.store.log_on(pipe, delivery.id, delivery.status, detail)
                    metrics.count_on(pipe, delivery.status, route.name)
                pipe.execute()
                for delivery in fresh:
                    log.info(
                        "route %s: %s %s",
                        route.name,
                        delivery.status,
                        delivery.id,
                        extra={
                            "event": f"webhook.{delivery.status}",
                            "route": route.name,
                            "delivery_id": delivery.id,
                        },
                    )
        except RedisError:
            if claimed:
                try:
                    self.redis.delete(*claimed)
                except RedisError:
                    pass
            raise
        return accepted


def event_id_for(req: InboundRequest, lead: Lead, index: int, count: int) -> str:
    """What dedup keys on: the provider's id, else the body hash (with the lead's place in a
    batch)."""
    event_id = str(lead.event_id).strip()[:MAX_EVENT_ID_CHARS] if lead.event_id else ""
    if event_id:
        return event_id
    return req.body_hash if count == 1 else f"{req.body_hash}:{index}"


class _Handshake(Exception):
    """A GET/HEAD verification the source answered itself."""

    def __init__(self, reply: Reply):
        self.reply = reply
